"""adaprec inside the tools researchers already use (optional extras; the core imports none).

- ``adaprec.integrations.lightning``: :class:`AdaptivePrecisionPlugin`, a Lightning ``Precision``
  plugin (``pip install adaprec[lightning]``).
- ``adaprec.integrations.hf``: :class:`AdaptivePrecisionTrainer`, a Hugging Face ``Trainer``
  (``pip install transformers``).
- ``adaprec.integrations.trackers``: TensorBoard, MLflow and Weights & Biases trackers
  (``adaprec[tensorboard]``, ``adaprec[mlflow]``, ``adaprec[wandb]``).

Each module imports its library when it is imported, never before.
"""
