"""The application (Hydra side): the training loop, run directories, checkpoints, config schemas."""
