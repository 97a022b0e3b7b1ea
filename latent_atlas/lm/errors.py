"""Errors raised while loading a model.

Invariant: every message reads on its own to a person who only typed a model
name, e.g. ``could not load model 'foo/bar': <reason>``; the original exception
is kept as ``__cause__`` for the owner's traceback.
"""

from __future__ import annotations

__all__ = ["ModelLoadError", "UnsupportedArchitecture"]


class ModelLoadError(Exception):
    """A model or tokenizer could not be loaded; the message says which and why."""


class UnsupportedArchitecture(ModelLoadError):
    """The model loaded, but no architecture adapter knows where its hook points are."""
