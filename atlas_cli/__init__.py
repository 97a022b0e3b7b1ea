"""``latent-atlas``: the command line that starts, manages and scripts the portal.

It sits above the science package (``latent_atlas``), the web app, the
workers and the migrations, and imports them lazily per command; nothing
imports it. ``python -m atlas_cli`` is the same as ``latent-atlas``.
"""
