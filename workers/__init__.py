"""Celery workers: the app, thin tasks, the run lifecycle and the sweeper."""
