"""What the ``sae`` run page reads, and how little: ``SaeData`` over a finished run's artifacts.

Invariants:

* nothing per latent is loaded whole: one latent's rows (histogram, top
  examples, interval samples, logit effects, edges, decoder row) are read with
  ``ArtifactStore.read_rows`` and its sparse activations with ``read_range`` on
  the CSC arrays (``lat_ptr`` says where); only the ``(d,)`` / ``(d, 2)`` arrays
  every view draws (``SMALL``) are loaded once per run and cached;
* the harvested token arrays (``token_id``, ``token_doc``, ``token_pos``; 12 bytes
  a token) are loaded only by views that show many contexts at once (the cloud's
  hover); an example's window is read as a range;
* ``parse_latent`` turns any user input (URL, ``g`` box, API path) into a latent id
  or a ``LatentError`` whose message names the valid range;
* token strings come from the run's ``vocab`` (``summary["vocab"]``) and are
  only ever shown as text children or escaped hover text.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from models.store import ArtifactStore

KIND = "sae"
SMALL = ("fire_count", "density", "max_act", "mean_act", "umap", "cluster_spectral",
         "cluster_components", "lat_ptr", "hist_edges")
EDGE_KINDS = {"cosine": "decoder cosine", "jaccard": "Jaccard (co-firing)", "coact": "co-activation"}
ROW_ARRAYS = ("hist_counts", "top_value", "top_token", "interval_value", "interval_token",
              "logit_top_id", "logit_top_val", "logit_bottom_id", "logit_bottom_val")
TOKEN_ARRAYS = ("token_id", "token_doc", "token_pos")


class LatentError(ValueError):
    """A latent id that is not a whole number in ``0..d_sae-1``; the message says so."""


def parse_latent(raw: Any, d_sae: int) -> int:
    """``raw`` (int or text) as a latent id of an SAE with ``d_sae`` latents, or ``LatentError``."""
    if isinstance(raw, bool):
        raise LatentError(f"a latent id is a whole number from 0 to {d_sae - 1}")
    if isinstance(raw, str):
        text = raw.strip()
        if not text:
            raise LatentError(f"type a latent id from 0 to {d_sae - 1}")
        if not (text.isascii() and text.lstrip("-").isdigit()) or len(text) > 18:
            raise LatentError(f"{text[:40]!r} is not a latent id: a whole number from 0 to {d_sae - 1}")
        raw = int(text)
    if isinstance(raw, float) and raw.is_integer():
        raw = int(raw)
    if not isinstance(raw, int | np.integer):
        raise LatentError(f"a latent id is a whole number from 0 to {d_sae - 1}")
    if not 0 <= int(raw) < d_sae:
        raise LatentError(f"latent {int(raw)} does not exist: this SAE has {d_sae:,} latents "
                          f"(ids 0 to {d_sae - 1})")
    return int(raw)


@dataclass(frozen=True)
class Example:
    """One example of a latent: the token at ``center`` and its window (same document)."""

    token: int  # global token index of the example
    value: float  # the latent's activation there
    tokens: list[int]  # global token indices of the window, in order
    token_ids: list[int]
    acts: list[float]  # the latent's activation at each window token (0 where it did not fire)
    doc: int
    pos: int


@dataclass(frozen=True)
class Latent:
    """Everything the browser shows for one latent (read row by row)."""

    id: int
    label: str
    fire_count: int
    density: float
    max_act: float
    mean_act: float
    hist_counts: np.ndarray
    top: list[Example]
    intervals: list[Example]
    logit_top: list[tuple[int, float]]
    logit_bottom: list[tuple[int, float]]
    edges: dict[str, list[tuple[int, float]]]
    cluster_spectral: int
    cluster_components: int


class SaeData:
    """A finished ``sae`` run's artifacts, read lazily (see the module docstring)."""

    def __init__(self, run_id: str, summary: Mapping[str, Any], uris: Mapping[str, str],
                 store: ArtifactStore | None = None, shapes: Mapping[str, Any] | None = None) -> None:
        self.run_id = run_id
        self.shapes = {name: tuple(shape) for name, shape in (shapes or {}).items()}
        self.summary = dict(summary)
        self.uris = dict(uris)
        self.store = store or ArtifactStore()
        missing = [name for name in (*SMALL, *ROW_ARRAYS, "lat_token", "lat_value", "decoder", *TOKEN_ARRAYS)
                   if name not in self.uris]
        if missing:
            raise LookupError(f"run {run_id} lacks the arrays {', '.join(missing)}")
        self.small = {name: self.store.read_array(self.uris[name]) for name in SMALL}
        self.d_sae = int(self.small["density"].shape[0])
        self.n_tokens = int(self.summary.get("n_tokens") or 0)
        labels = self.summary.get("labels") or []
        self.labels = [str(x) for x in labels] if len(labels) == self.d_sae else [""] * self.d_sae
        self.vocab: dict[str, str] = {str(k): str(v) for k, v in (self.summary.get("vocab") or {}).items()}
        self._lock = threading.Lock()
        self._edges: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        self._tokens: dict[str, np.ndarray] | None = None

    # ----------------------------------------------------------------- basics

    def store_shape(self, name: str) -> tuple[int, ...]:
        """The shape of a stored array (from the run's record, else its ``.npy`` header)."""
        if name not in self.shapes:
            with self.store.fs.open(self.store._path(self.uris[name]), "rb") as handle:
                version = np.lib.format.read_magic(handle)
                header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                          else np.lib.format.read_array_header_2_0)(handle)
            self.shapes[name] = tuple(header[0])
        return self.shapes[name]

    def latent_id(self, raw: Any) -> int:
        return parse_latent(raw, self.d_sae)

    def token_text(self, token_id: int) -> str:
        return self.vocab.get(str(int(token_id)), f"[{int(token_id)}]")

    def label(self, latent: int) -> str:
        return self.labels[latent] or f"latent {latent}"

    def search(self, text: str, limit: int = 20) -> list[int]:
        """Latents whose label contains ``text`` (case-insensitive), densest first; a number matches its id."""
        needle = (text or "").strip().lower()
        if not needle:
            return []
        hits = [j for j, label in enumerate(self.labels) if needle in label.lower()]
        if needle.isdigit() and int(needle) < self.d_sae:
            hits = [int(needle), *[j for j in hits if j != int(needle)]]
        density = self.small["density"]
        head = hits[:1] if needle.isdigit() else []
        rest = sorted(hits[len(head):], key=lambda j: -float(density[j]))
        return (head + rest)[:limit]

    # ----------------------------------------------------------------- per-latent reads

    def rows(self, name: str, latents: np.ndarray | list[int]) -> np.ndarray:
        return self.store.read_rows(self.uris[name], np.asarray(latents, dtype=np.int64))

    def decoder_row(self, latent: int) -> np.ndarray:
        return self.rows("decoder", [latent])[0]

    def activations(self, latent: int) -> tuple[np.ndarray, np.ndarray]:
        """(ascending token indices, activations) of one latent: two range reads of the CSC arrays."""
        ptr = self.small["lat_ptr"]
        start, stop = int(ptr[latent]), int(ptr[latent + 1])
        return (self.store.read_range(self.uris["lat_token"], start, stop).astype(np.int64),
                self.store.read_range(self.uris["lat_value"], start, stop))

    def edges(self, kind: str) -> tuple[np.ndarray, np.ndarray]:
        """(idx, val) ``(d, E)`` of one edge kind, loaded once per run (the graph draws them all)."""
        if kind not in EDGE_KINDS:
            raise ValueError(f"edge kind must be one of {', '.join(EDGE_KINDS)}")
        with self._lock:
            if kind not in self._edges:
                self._edges[kind] = (self.store.read_array(self.uris[f"edge_{kind}_idx"]),
                                     self.store.read_array(self.uris[f"edge_{kind}_val"]))
            return self._edges[kind]

    def token_arrays(self) -> dict[str, np.ndarray]:
        """``token_id``, ``token_doc``, ``token_pos`` whole (12 bytes a token), loaded once per run."""
        with self._lock:
            if self._tokens is None:
                self._tokens = {name: self.store.read_array(self.uris[name]) for name in TOKEN_ARRAYS}
            return self._tokens

    def windows(self, tokens: list[int], window: int) -> list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
        """Per token: (indices, token ids, docs, positions) of ``token ± window`` within its document."""
        out = []
        last = self.n_tokens or None
        spans = [(max(0, t - window), t + window + 1 if last is None else min(last, t + window + 1)) for t in tokens]
        ids_all, docs_all, pos_all = (self.store.read_ranges(self.uris[name], spans) for name in TOKEN_ARRAYS)
        for token, (start, _), ids, docs, pos in zip(tokens, spans, ids_all, docs_all, pos_all, strict=True):
            index = np.arange(start, start + len(ids))
            same = docs == docs[token - start]
            out.append((index[same], ids[same], docs[same], pos[same]))
        return out

    def latent(self, latent: int, window: int | None = None) -> Latent:
        """One latent, read row by row (``window`` tokens each side of an example; default: the run's)."""
        j = self.latent_id(latent)
        if window is None:
            window = int(self.summary.get("window") or 8)
        rows = {name: self.rows(name, [j])[0] for name in ROW_ARRAYS}
        act_tokens, act_values = self.activations(j)
        wanted = [(rows["top_token"], rows["top_value"]), (rows["interval_token"], rows["interval_value"])]
        keeps = [[(int(t), float(v)) for t, v in zip(tokens, values, strict=True) if t >= 0 and np.isfinite(v)]
                 for tokens, values in wanted]
        all_windows = self.windows([t for keep in keeps for t, _ in keep], window)

        def examples(keep: list[tuple[int, float]], windows: list) -> list[Example]:
            found = []
            for (token, value), (index, ids, docs, pos) in zip(keep, windows, strict=True):
                where = np.searchsorted(act_tokens, index)
                where = np.minimum(where, max(len(act_tokens) - 1, 0))
                hit = (act_tokens[where] == index) if len(act_tokens) else np.zeros(len(index), bool)
                acts = np.where(hit, act_values[where] if len(act_values) else 0.0, 0.0)
                centre = int(np.flatnonzero(index == token)[0])
                found.append(Example(token, value, index.tolist(), ids.tolist(), acts.astype(float).tolist(),
                                     int(docs[centre]), int(pos[centre])))
            return found

        edge_lists = {}
        for kind in EDGE_KINDS:
            if kind in self._edges:  # the graph loaded them whole already
                idx, val = self._edges[kind][0][j], self._edges[kind][1][j]
            else:
                idx, val = self.rows(f"edge_{kind}_idx", [j])[0], self.rows(f"edge_{kind}_val", [j])[0]
            edge_lists[kind] = [(int(i), float(v)) for i, v in zip(idx, val, strict=True) if i >= 0]
        return Latent(
            id=j, label=self.label(j), fire_count=int(self.small["fire_count"][j]),
            density=float(self.small["density"][j]), max_act=float(self.small["max_act"][j]),
            mean_act=float(self.small["mean_act"][j]), hist_counts=rows["hist_counts"],
            top=examples(keeps[0], all_windows[:len(keeps[0])]),
            intervals=examples(keeps[1], all_windows[len(keeps[0]):]),
            logit_top=[(int(i), float(v)) for i, v in zip(rows["logit_top_id"], rows["logit_top_val"], strict=True)],
            logit_bottom=[(int(i), float(v)) for i, v in
                          zip(rows["logit_bottom_id"], rows["logit_bottom_val"], strict=True)],
            edges=edge_lists, cluster_spectral=int(self.small["cluster_spectral"][j]),
            cluster_components=int(self.small["cluster_components"][j]),
        )

    def cluster_members(self, latent: int, which: str = "spectral") -> list[int]:
        """The latents in ``latent``'s cluster (``spectral`` or ``components``; a singleton is itself)."""
        labels = self.small[f"cluster_{which}"]
        cluster = int(labels[latent])
        if cluster < 0:
            return [latent]
        return np.flatnonzero(labels == cluster).tolist()


def latent_document(data: SaeData, latent: int) -> dict[str, Any]:
    """The per-latent JSON export (``/api/runs/<id>/latents/<n>.json``): plain JSON values only."""
    record = data.latent(latent)

    def example(item: Example) -> dict[str, Any]:
        return {"token": item.token, "value": item.value, "doc": item.doc, "pos": item.pos,
                "window": [{"token": t, "id": i, "text": data.token_text(i), "act": a}
                           for t, i, a in zip(item.tokens, item.token_ids, item.acts, strict=True)]}

    def finite(value: float) -> float | None:
        return value if np.isfinite(value) else None

    return {
        "run": data.run_id, "latent": record.id, "d_sae": data.d_sae, "label": record.label,
        "fire_count": record.fire_count, "density": finite(record.density),
        "max_act": finite(record.max_act), "mean_act": finite(record.mean_act),
        "histogram": {"edges": [float(x) for x in data.small["hist_edges"]],
                      "counts": [int(x) for x in record.hist_counts]},
        "top_examples": [example(x) for x in record.top],
        "interval_samples": [example(x) for x in record.intervals],
        "logit_top": [{"id": i, "text": data.token_text(i), "value": v} for i, v in record.logit_top],
        "logit_bottom": [{"id": i, "text": data.token_text(i), "value": v} for i, v in record.logit_bottom],
        "edges": {kind: [{"latent": i, "value": finite(v)} for i, v in items]
                  for kind, items in record.edges.items()},
        "cluster_spectral": record.cluster_spectral, "cluster_components": record.cluster_components,
        "umap": [float(x) for x in data.small["umap"][record.id]],
    }


def data_for_run(run: Any) -> SaeData:
    """``SaeData`` of a run object (its artifacts' URIs and summary); uncached."""
    return SaeData(run.id, run.summary or {}, {a.name: a.uri for a in run.artifacts},
                   shapes={a.name: a.shape for a in run.artifacts if a.shape is not None})


@functools.lru_cache(maxsize=4)
def load_sae_data(run_id: str) -> SaeData:
    """``SaeData`` of a finished run, cached per process (a finished run never changes)."""
    from webapp import runs_service

    run = runs_service.get_run(run_id)
    if run.kind != KIND:
        raise LookupError(f"run {run_id} is a {run.kind} run, not an SAE harvest")
    if run.status != "succeeded":
        raise LookupError(f"run {run_id} is {run.status}")
    return data_for_run(run)
