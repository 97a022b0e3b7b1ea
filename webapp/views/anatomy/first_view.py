"""The figures an anatomy page draws at load, built once per run, and a warm-up of the figure code.

Invariants:

* ``first_figures`` returns the flat architecture diagram, the thumbnail
  sheet and head 0 of layer 0 as Plotly JSON dicts; a succeeded run's data
  never changes, so they are cached per (run, store) for the last
  ``CACHED_RUNS`` runs (a page view then only serialises them: building
  them costs ~0.2 s of the server's answer);
* ``warm_up`` builds one tiny figure of each kind, so a web worker's first
  anatomy page does not pay Plotly's one-time costs (lazy validator imports,
  the template: ~1.4 s on a loaded machine); ``start_warm_up`` runs it once in
  a daemon thread (started by ``webapp.app.wsgi``, i.e. only in a web worker), so the
  worker answers ``/healthz`` without waiting for it.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any

import numpy as np

from latent_atlas.analyses.anatomy import figures as af
from webapp.views.anatomy.data import AnatomyData, head_pattern

CACHED_RUNS = 4
_cache: OrderedDict[tuple[str, str | None], tuple[dict, dict, dict]] = OrderedDict()
_lock = threading.Lock()
_warmed = threading.Event()
_started = threading.Event()


def head_figure(data: AnatomyData, layer: int, head: int) -> Any:
    """One head's heatmap, titled with its layer, head and (grouped-query attention) key/value head."""
    kv = int(data.summary.get("n_kv_heads") or data.n_heads)
    group = f" (key/value head {head // max(data.n_heads // kv, 1)})" if kv != data.n_heads else ""
    return af.attention_figure(head_pattern(data, layer, head), data.tokens,
                               f"Attention, layer {layer}, head {head}{group}")


def first_figures(data: AnatomyData) -> tuple[dict, dict, dict]:
    """(flat diagram, thumbnail sheet, head 0 of layer 0) of ``data``'s run as Plotly JSON, cached."""
    key = (data.run_id, data.store_url)
    with _lock:
        if key in _cache:
            _cache.move_to_end(key)
            return _cache[key]
    figures = (af.architecture_flat_figure(data.summary.get("diagram") or []).to_plotly_json(),
               af.thumbnail_sheet(data.arrays["attention_thumbs"], data.n_layers, data.n_heads).to_plotly_json(),
               head_figure(data, 0, 0).to_plotly_json())
    with _lock:
        _cache[key] = figures
        while len(_cache) > CACHED_RUNS:
            _cache.popitem(last=False)
    return figures


def warm_up() -> None:
    """Build and serialise one tiny figure of each kind the page draws at load."""
    import plotly.io as pio

    block = {"kind": "block", "layer": 0, "label": "block", "count": 2, "attention": 1, "mlp": 1, "heads": 1}
    for figure in (af.architecture_flat_figure([block]), af.attention_figure(np.eye(2), ["a", "b"], "warm-up"),
                   af.thumbnail_sheet(np.zeros((1, 2, 2), np.uint8), 1, 1)):
        pio.to_json(figure)
    _warmed.set()


def start_warm_up() -> threading.Thread | None:
    """``warm_up`` in a daemon thread, once per process (``None`` if already started)."""
    with _lock:
        if _started.is_set():
            return None
        _started.set()
    thread = threading.Thread(target=warm_up, name="anatomy-warm-up", daemon=True)
    thread.start()
    return thread
