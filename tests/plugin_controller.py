"""A user's own controller, selected with controller._target_=tests.plugin_controller.MyController
(the README's plugin example): bf16 everywhere except layers whose activations get large."""
from adaprec import Plan


class MyController:
    """bf16 for every layer; fp32 for a layer once its output's |max| exceeded ``limit``."""

    def __init__(self, limit: float = 100.0):
        self.limit = limit
        self.reasons = {}      # layer -> why it switched (lands in decisions.csv)
        self.precise = set()   # layers moved to fp32 for good

    def setup(self, context):  # called once with the layer names (and costs, if known)
        self.layers = list(context.layers)

    def observe(self, record):  # every step; record.stats is None on unsampled steps
        self.reasons = {}
        for name, s in (record.stats or {}).items():
            if name not in self.precise and s.act is not None and s.act.absmax > self.limit:
                self.precise.add(name)
                self.reasons[name] = f"act |max| {s.act.absmax:.3g} > {self.limit:g}"

    def decide(self, step):  # the plan for step `step`
        return Plan({n: "fp32" if n in self.precise else "bf16" for n in self.layers})

    def state_dict(self):
        return {"precise": sorted(self.precise)}

    def load_state_dict(self, state):
        self.precise = set(state["precise"])
