"""Floor 3: the Optuna search and the holdout evaluation."""
