"""The parts of the training loop: checkpoints, objectives, optimizers, reports, CLI."""
