"""Server-side cluster clouds: one ``ClusterCloud`` per browser tab, kept in this web process.

A page holds a random key (``sae-cloud-key``) and the picked list; a redraw
asks ``update(data, key, picked)``, which moves the cloud the page had to the
new pick set by adding / removing only the latents that changed (the cloud's
own incremental path) and says how long that took. A web process that has
not seen the key (another gunicorn worker answered, or it restarted) builds
the cloud by adding the picked latents one by one, and says so.

Invariants: at most ``MAX_CLOUDS`` clouds per process (least recently used
go first); one lock per cloud, so concurrent callbacks of a tab never
interleave updates; a key is bound to one run.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from dataclasses import dataclass

from latent_atlas.analyses.sae.cloud import ClusterCloud
from webapp.views.sae.data import SaeData

MAX_CLOUDS = 32
MAX_PICKED = 256


@dataclass(frozen=True)
class Update:
    added: list[int]
    removed: list[int]
    touched: int  # activations read and written (the delta's size)
    seconds: float  # time of the cloud update itself
    incremental: bool  # False: a new cloud in this process (first draw of the tab, or another worker had it)


class _Entry:
    def __init__(self, cloud: ClusterCloud, run_id: str) -> None:
        self.cloud, self.run_id, self.lock = cloud, run_id, threading.Lock()


_clouds: OrderedDict[str, _Entry] = OrderedDict()
_clouds_lock = threading.Lock()


def new_cloud(data: SaeData) -> ClusterCloud:
    return ClusterCloud(data.n_tokens, int(data.summary.get("d_in") or data.decoder_row(0).shape[0]),
                        data.activations, data.decoder_row)


def _entry(data: SaeData, key: str) -> tuple[_Entry, bool]:
    with _clouds_lock:
        entry = _clouds.get(key)
        if entry is not None and entry.run_id == data.run_id:
            _clouds.move_to_end(key)
            return entry, True
        entry = _Entry(new_cloud(data), data.run_id)
        _clouds[key] = entry
        while len(_clouds) > MAX_CLOUDS:
            _clouds.popitem(last=False)
        return entry, False


def update(data: SaeData, key: str, picked: list[int]):
    """(entry, Update) after moving the key's cloud to ``picked``; read ``entry.cloud`` under ``entry.lock``."""
    if len(picked) > MAX_PICKED:
        raise ValueError(f"at most {MAX_PICKED} latents in a cloud")
    entry, known = _entry(data, key)
    with entry.lock:
        before = set(entry.cloud.picked)
        start = time.perf_counter()
        touched = 0
        removed = [j for j in entry.cloud.picked if j not in set(picked)]
        for j in removed:
            touched += entry.cloud.remove(j)
        added = []
        for j in dict.fromkeys(picked):
            if j not in before:
                touched += entry.cloud.add(j)
                added.append(j)
        seconds = time.perf_counter() - start
    return entry, Update(added, removed, touched, seconds, known)
