"""Runtime floor: plans, layer discovery, executors, the monitor, culprit diagnosis, distributed helpers."""
