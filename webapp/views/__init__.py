"""One view module per run kind: its form, its figures and its run view.

A view package (``webapp/views/<kind>/``, one module per concern) provides

* ``form_fields(settings) -> list`` — the kind's own fields of the New-run form;
  every input uses ``field_id(kind, name)`` as its ID and ``value`` as its
  property, so the New-run page collects them without knowing the kind;
* ``params_from_form(model, values, limits) -> dict`` — the raw params for
  ``runs_service.submit_run`` (raises ``FormError`` on what the form itself can
  tell is wrong; the service validates again with the kind's pydantic model);
* ``render(run, arrays) -> component`` — the view of a finished run;
* pure figure functions (data in, Plotly figure out) and its own callbacks,
  with component IDs prefixed by the kind (``geometry-...``).

Invariant: importing this package imports every view module, so their
callbacks are registered before the app serves its first request.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any

FIELD_TYPE = "new-run-field"
VIEW_MODULES: dict[str, str] = {"geometry": "webapp.views.geometry", "grid": "webapp.views.grid",
                                "geometry_reproject": "webapp.views.geometry",
                                "geometry_lens": "webapp.views.geometry.lens",
                                "anatomy": "webapp.views.anatomy",
                                "sae": "webapp.views.sae", "scan": "webapp.views.scan",
                                "sae_train": "webapp.views.sae_train"}


class FormError(ValueError):
    """The form cannot be turned into params; ``messages`` say why, one line each."""

    def __init__(self, messages: list[str]) -> None:
        super().__init__("; ".join(messages))
        self.messages = messages


def field_id(kind: str, name: str) -> dict[str, str]:
    """The pattern-matching ID of one field of a kind's New-run form."""
    return {"type": FIELD_TYPE, "kind": kind, "name": name}


def form_values(kind: str, states: list[dict[str, Any]]) -> dict[str, Any]:
    """``{name: value}`` of ``kind``'s fields from a callback's ALL-state list."""
    values: dict[str, Any] = {}
    for state in states:
        ident = state.get("id") or {}
        if isinstance(ident, dict) and ident.get("kind") == kind:
            values[ident["name"]] = state.get("value")
    return values


VIEWS: dict[str, ModuleType] = {kind: importlib.import_module(path)
                                for kind, path in VIEW_MODULES.items()}


def get_view(kind: str) -> ModuleType | None:
    return VIEWS.get(kind)
