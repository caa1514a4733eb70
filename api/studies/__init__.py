"""Studies: hyperparameter searches whose trials are ordinary jobs."""
