"""Alembic migrations; ``latent-atlas db upgrade`` runs them (see ``migrations.runner``)."""
