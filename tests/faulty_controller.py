"""A controller that fails mid-run for chosen seeds: the fault injected into a load-test sweep
(``controller=plugin controller._target_=tests.faulty_controller.FailForSeeds``)."""
from adaprec import Plan


class FailForSeeds:
    """bf16 everywhere; raises at step ``at_step`` when ``seed`` is one of ``fail_seeds``."""

    def __init__(self, seed: int, fail_seeds: list[int], at_step: int = 1):
        self.fails = int(seed) in {int(s) for s in fail_seeds}
        self.seed, self.at_step = int(seed), int(at_step)

    def setup(self, context):
        self.layers = list(context.layers)

    def observe(self, record):
        pass

    def decide(self, step):
        if self.fails and step >= self.at_step:
            raise RuntimeError(f"injected fault: seed {self.seed} fails at step {step}")
        return Plan({n: "bf16" for n in self.layers})

    def state_dict(self):
        return {}

    def load_state_dict(self, state):
        pass
