"""Cost model: FLOPs and bytes per layer (counted once) x a device profile -> modeled step cost.

    cm = CostModel.count(model, (x,), loss_fn=lambda out: F.cross_entropy(out, y))
    cost = cm.price(plan, "h100")          # PlanCost: total seconds, rel_to_fp32, cast, flop_shares
    cm.layer_format_costs("local")         # {layer: {fmt: seconds}} for controllers

Profiles live in ``conf/cost/<name>.yaml``; ``python -m adaprec.tools.calibrate`` measures this machine.
"""
from adaprec.cost.counting import OP_KINDS, LayerCount, count_layers
from adaprec.cost.meter import CostMeter
from adaprec.cost.model import CostModel, PlanCost
from adaprec.cost.profiles import DeviceProfile, conf_dir, load_profile, profile_names

__all__ = ["CostModel", "PlanCost", "CostMeter", "DeviceProfile", "LayerCount", "OP_KINDS", "load_profile",
           "profile_names", "conf_dir", "count_layers"]
