"""Tasks: classification, language modelling, regression — loss, metrics, quality, batching.

    from adaprec.tasks import Task, register_task

    @register_task
    class MyTask(Task):
        name, quality, higher_is_better = "my_task", "val_score", True
        def loss(self, output, y): ...
        def metrics(self, val_loss, sums, count): return {"val_score": ...}

A new task is that one file; ``task_names()`` lists the registered ones. No Hydra, OmegaConf or
pandas here: the library, the app and the analysis all import it.
"""
from adaprec.tasks.base import Task, eval_batches
from adaprec.tasks.registry import (get_task, higher_is_better, quality_metrics, register_task,
                                    task_names, unregister_task)
from adaprec.tasks import classification, lm, regression  # noqa: F401  (register the built-ins)
from adaprec.tasks.evaluate import evaluate

__all__ = ["Task", "register_task", "unregister_task", "get_task", "task_names",
           "quality_metrics", "higher_is_better", "evaluate", "eval_batches"]
