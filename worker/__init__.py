"""Celery workers: the task that runs the training core for one job."""
