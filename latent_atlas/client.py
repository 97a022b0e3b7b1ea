"""A Python client of the portal's JSON API, for notebooks and scripts.

::

    from latent_atlas.client import Atlas
    atlas = Atlas("http://127.0.0.1:8050", token="la_...")   # or $ATLAS_API_TOKEN
    run = atlas.submit("geometry", model="smollm2-135m", prompts=["The capital of France is"])
    run.wait()                       # a progress bar (tqdm when installed, else one plain line)
    arrays = run.arrays()            # {name: numpy array}, the run's NPZ export
    run.summary                      # the run's small summary (dict)
    run.figure("layer-evolution")    # the Plotly figure the run page shows (geometry runs)
    atlas.runs(kind="geometry", status="succeeded", tag="capitals", starred=True)
    run.update(title="capitals", tags=["capitals"], note="**PCA**"); run.star(); run.delete()

Invariants: only the standard library, numpy and plotly are imported (no web
stack, nothing of the portal's server side); every request carries the token
as ``Authorization: Bearer ...`` (the API asks bearer clients for no CSRF
header); an answer of 4xx/5xx raises ``ApiError`` carrying the API's own
message(s); a run that ends failed or cancelled makes ``wait`` raise
``RunFailed`` with the run's error (unless ``check=False``). Submitting params
identical to a succeeded run hands back that run (``Run.reused``) unless
``force=True``.
"""

from __future__ import annotations

import io
import json
import os
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np

__all__ = ["ApiError", "Atlas", "Run", "RunFailed"]

TERMINAL = frozenset({"succeeded", "failed", "cancelled"})


class ApiError(RuntimeError):
    """The API answered with an error: ``status`` (HTTP), ``error`` and ``messages`` (its own words)."""

    def __init__(self, status: int, error: str, messages: list[str]) -> None:
        detail = "; ".join(messages) if messages and messages != [error] else error
        super().__init__(f"{status} {error}" + (f": {detail}" if detail != error else ""))
        self.status = status
        self.error = error
        self.messages = messages


class RunFailed(RuntimeError):
    """A waited-for run ended ``failed`` or ``cancelled``; ``record`` is its last JSON form."""

    def __init__(self, record: dict[str, Any]) -> None:
        error = record.get("error") or record.get("stage") or ""
        super().__init__(f"run {record.get('id')} {record.get('status')}" + (f": {error}" if error else ""))
        self.record = record


class Atlas:
    """A connection to one portal as one member (an API token)."""

    def __init__(self, url: str, token: str | None = None, *, timeout: float = 60.0) -> None:
        token = token or os.environ.get("ATLAS_API_TOKEN")
        if not token:
            raise ValueError("an API token is needed: Atlas(url, token) or $ATLAS_API_TOKEN "
                             "(create one on the Users page or with `latent-atlas users token NAME`)")
        self.url = url.rstrip("/")
        self.token = token
        self.timeout = timeout

    def __repr__(self) -> str:
        return f"Atlas({self.url!r})"

    # -- transport ------------------------------------------------------------
    def request(self, method: str, path: str, body: dict[str, Any] | None = None,
                query: dict[str, Any] | None = None) -> bytes:
        """The raw body of one API call; raises ``ApiError`` on an error answer."""
        url = self.url + path
        if query:
            url += "?" + urllib.parse.urlencode({k: v for k, v in query.items() if v is not None})
        headers = {"Authorization": f"Bearer {self.token}", "Accept": "application/json"}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        request = urllib.request.Request(url, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return response.read()
        except urllib.error.HTTPError as exc:
            raise _api_error(exc.code, exc.read()) from None

    def json(self, method: str, path: str, body: dict[str, Any] | None = None,
             query: dict[str, Any] | None = None) -> Any:
        return json.loads(self.request(method, path, body, query))

    # -- runs -----------------------------------------------------------------
    def submit(self, kind: str, params: dict[str, Any] | None = None, *, title: str | None = None,
               tags: list[str] | None = None, parent_id: str | None = None, force: bool = False,
               **more: Any) -> Run:
        """Submit a run of ``kind``; params as keywords (or a ``params`` dict, merged under them).

        Returns the new queued run, or an identical succeeded one (``.reused``)
        unless ``force``. Rejected params raise ``ApiError`` (400) listing why.
        """
        body: dict[str, Any] = {"kind": kind, "params": {**(params or {}), **more}, "force": force}
        if title is not None:
            body["title"] = title
        if tags is not None:
            body["tags"] = tags
        if parent_id is not None:
            body["parent_id"] = parent_id
        return Run(self, record=self.json("POST", "/api/runs", body))

    def run(self, run_id: str) -> Run:
        """The run with this ID (fetched now; ``ApiError`` 404 when there is none)."""
        return Run(self, record=self.json("GET", f"/api/runs/{urllib.parse.quote(run_id, safe='')}"))

    def runs(self, *, kind: str | None = None, status: str | None = None, model: str | None = None,
             owner: str | None = None, text: str | None = None, tag: str | None = None,
             starred: bool = False, limit: int = 200, offset: int = 0) -> list[Run]:
        """Runs newest first, filtered as ``/runs`` filters them (``starred``: the ones you starred;
        short records: ``.refresh()`` for all)."""
        query = {"kind": kind, "status": status, "model": model, "owner": owner, "q": text, "tag": tag,
                 "starred": "true" if starred else None, "limit": limit, "offset": offset}
        return [Run(self, record=row) for row in self.json("GET", "/api/runs", query=query)["runs"]]


class Run:
    """A handle on one run; ``record`` is its JSON form as last fetched."""

    def __init__(self, atlas: Atlas, *, record: dict[str, Any]) -> None:
        self.atlas = atlas
        self.record = record
        self.id: str = record["id"]
        self.reused: bool = bool(record.get("reused", False))

    def __repr__(self) -> str:
        return f"<Run {self.id} {self.record.get('kind')} {self.status}>"

    @property
    def _path(self) -> str:
        return f"/api/runs/{urllib.parse.quote(self.id, safe='')}"

    @property
    def status(self) -> str:
        return str(self.record.get("status"))

    @property
    def kind(self) -> str:
        return str(self.record.get("kind"))

    @property
    def summary(self) -> dict[str, Any]:
        """The run's small summary (fetched when the record at hand has none)."""
        if "summary" not in self.record or (not self.record["summary"] and self.status not in TERMINAL):
            self.refresh()
        return dict(self.record.get("summary") or {})

    @property
    def params(self) -> dict[str, Any]:
        if "params" not in self.record:
            self.refresh()
        return dict(self.record.get("params") or {})

    def refresh(self) -> Run:
        """Fetch the full record again."""
        reused = self.reused
        self.record = self.atlas.json("GET", self._path)
        self.reused = reused
        return self

    def cancel(self) -> Run:
        self.record = self.atlas.json("POST", self._path + "/cancel")
        return self

    def update(self, *, title: str | None = None, tags: list[str] | None = None,
               note: str | None = None) -> Run:
        """Rename, re-tag and/or annotate the run (owner or admin; ``None``: unchanged)."""
        body = {k: v for k, v in (("title", title), ("tags", tags), ("note", note)) if v is not None}
        self.record = self.atlas.json("PATCH", self._path, body)
        return self

    def star(self, starred: bool = True) -> Run:
        """Star (or unstar) the run for yourself."""
        self.record = self.atlas.json("POST", self._path + "/star", {"starred": starred})
        return self

    def delete(self) -> Run:
        """Delete the run (owner or admin): its record stays, its arrays go."""
        self.record = self.atlas.json("DELETE", self._path)
        return self

    def wait(self, timeout: float | None = None, *, poll: float = 1.0, progress: bool = True,
             check: bool = True) -> Run:
        """Poll until the run ends; show its progress and stage; ``RunFailed`` if it did not succeed.

        ``TimeoutError`` after ``timeout`` seconds (None: no limit); the run goes on.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        with _progress_display(self.id, enabled=progress) as show:
            while True:
                if self.status not in TERMINAL or "summary" not in self.record:
                    self.refresh()
                show(float(self.record.get("progress") or 0.0), str(self.record.get("stage") or self.status))
                if self.status in TERMINAL:
                    break
                if deadline is not None and time.monotonic() >= deadline:
                    raise TimeoutError(f"run {self.id} is still {self.status} after {timeout} s")
                time.sleep(poll)
        if check and self.status != "succeeded":
            raise RunFailed(self.record)
        return self

    def export(self, format: str = "npz") -> bytes:  # noqa: A002  the API's own word
        """The run's export as bytes: ``npz`` (arrays), ``json`` (record) or ``zip`` (both)."""
        return self.atlas.request("GET", self._path + "/export", query={"format": format})

    def arrays(self) -> dict[str, np.ndarray]:
        """Every stored array of the run (its NPZ export; nothing is unpickled)."""
        with np.load(io.BytesIO(self.export("npz")), allow_pickle=False) as archive:
            return {name: archive[name] for name in archive.files}

    def figure(self, view: str):
        """The Plotly figure the run page shows for ``view`` (a geometry view's slug, e.g.
        ``"layer-evolution"``; an unknown one is an ``ApiError`` listing the views)."""
        import plotly.io

        text = self.atlas.request("GET", self._path + f"/figure/{urllib.parse.quote(view, safe='')}")
        return plotly.io.from_json(text.decode())


def _api_error(status: int, body: bytes) -> ApiError:
    try:
        document = json.loads(body)
    except ValueError:
        document = None
    if isinstance(document, dict) and "error" in document:
        messages = document.get("messages") or [document["error"]]
        return ApiError(status, str(document["error"]), [str(m) for m in messages])
    text = body.decode(errors="replace").strip()[:500] or f"HTTP {status}"
    return ApiError(status, text, [text])


@contextmanager
def _progress_display(run_id: str, *, enabled: bool) -> Iterator[Any]:
    """``show(fraction, stage)``: a tqdm bar when tqdm is installed, else one rewritten line on stderr."""
    if not enabled:
        yield lambda fraction, stage: None
        return
    try:
        from tqdm.auto import tqdm
    except ImportError:
        tqdm = None
    if tqdm is not None:
        bar = tqdm(total=100, desc=f"run {run_id}", unit="%", bar_format="{desc}: {percentage:3.0f}%|{bar}| {postfix}")

        def show_bar(fraction: float, stage: str) -> None:
            bar.n = round(100 * min(max(fraction, 0.0), 1.0))
            bar.set_postfix_str(stage[:60], refresh=False)
            bar.refresh()

        try:
            yield show_bar
        finally:
            bar.close()
        return

    def show_line(fraction: float, stage: str) -> None:
        sys.stderr.write(f"\rrun {run_id}: {100 * fraction:5.1f}% {stage[:60]:<60}")
        sys.stderr.flush()

    try:
        yield show_line
    finally:
        sys.stderr.write("\n")
