"""Celery side of the service: the app, task routing and the tasks (thin adapters from a job
record to model/).  ``worker.celery_app`` and ``core.names`` never import torch; the task
bodies import model/ lazily, in the worker process that runs them."""
