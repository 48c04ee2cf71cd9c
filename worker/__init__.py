"""Celery worker: loads the model once per process and scores texts from many jobs in shared batches."""
