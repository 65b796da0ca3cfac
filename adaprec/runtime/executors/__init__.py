"""Executors apply a Plan to a model's forward: native torch.autocast regions or emulated rounding."""
