"""Per-epoch metrics of a job, paged, optionally downsampled."""
