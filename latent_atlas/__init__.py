"""Latent Atlas: the science of the portal, importable from a notebook.

Nothing under ``latent_atlas`` imports Dash, Celery, Flask or SQLAlchemy.
"""

__version__ = "0.1.0"
