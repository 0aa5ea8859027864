"""State shared by the API and the workers: settings, the data directory, the model registry,
training-request checks, job records and stores, task and queue names, and the Celery producer.

Nothing here imports torch or FastAPI, so both the slim API image and the workers can use it.
"""
