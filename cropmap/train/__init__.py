"""The one training loop: builders, evaluation, hooks (SWA, EMA), checkpoints and the run's log."""
