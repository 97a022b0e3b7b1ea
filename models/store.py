"""Content-addressed artifact store on the data directory (or any fsspec URL).

Invariants:

* An array is stored as a ``.npy`` file (never pickled) at
  ``<root>/<sha256[:2]>/<sha256>.npy``; the name is the hash of the bytes, so
  writing the same array twice (a retried run) writes one file, and a file is
  complete before it is visible (written to a temporary name, then renamed).
  Writing streams the array in chunks (hashed on the way), so storing a large
  array needs no second copy of it in memory.
* ``read_array`` verifies nothing by default (hot path for the web); ``verify``
  re-hashes the bytes and is what integrity checks use.
"""

from __future__ import annotations

import hashlib
import io
import uuid
from dataclasses import dataclass

import fsspec
import numpy as np

from latent_atlas.settings import get_settings


@dataclass(frozen=True)
class StoredArray:
    uri: str  # relative to the store root
    dtype: str
    shape: tuple[int, ...]
    nbytes: int
    sha256: str


class _HashingWriter:
    """A write-only file wrapper that hashes and counts what passes through.

    Not a real file object, so ``np.lib.format.write_array`` writes in 16 MiB
    chunks through ``write`` instead of one ``tofile``: bytes are identical to
    ``np.save`` and memory stays bounded.
    """

    def __init__(self, handle) -> None:
        self.handle = handle
        self.sha256 = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:
        view = memoryview(data)
        self.sha256.update(view)
        self.size += view.nbytes
        self.handle.write(view)
        return view.nbytes


class ArtifactStore:
    def __init__(self, root_url: str | None = None) -> None:
        self.root_url = (root_url or get_settings().artifact_url).rstrip("/")
        self.fs, self.root = fsspec.core.url_to_fs(self.root_url)

    def _path(self, uri: str) -> str:
        return f"{self.root}/{uri}"

    def write_array(self, array: np.ndarray) -> StoredArray:
        """Store ``array`` as ``.npy``, streamed: hashed while written, never copied whole in memory."""
        if array.dtype == object:
            raise TypeError("object arrays cannot be stored (no pickling)")
        self.fs.makedirs(self.root, exist_ok=True)
        tmp = f"{self.root}/.{uuid.uuid4().hex}.npy.tmp"
        with self.fs.open(tmp, "wb") as handle:
            writer = _HashingWriter(handle)
            np.lib.format.write_array(writer, np.ascontiguousarray(array), allow_pickle=False)
        digest = writer.sha256.hexdigest()
        uri = f"{digest[:2]}/{digest}.npy"
        path = self._path(uri)
        if self.fs.exists(path):
            self.fs.rm(tmp)
        else:
            self.fs.makedirs(f"{self.root}/{digest[:2]}", exist_ok=True)
            self.fs.mv(tmp, path)
        return StoredArray(uri, str(array.dtype), tuple(array.shape), writer.size, digest)

    def read_bytes(self, uri: str) -> bytes:
        with self.fs.open(self._path(uri), "rb") as handle:
            return handle.read()

    def read_array(self, uri: str) -> np.ndarray:
        return np.load(io.BytesIO(self.read_bytes(uri)), allow_pickle=False)

    def read_rows(self, uri: str, rows: np.ndarray) -> np.ndarray:
        """Rows ``rows`` (indices along axis 0) of a stored C-order array, reading only those rows.

        Works on any fsspec filesystem (seek + read per row); the result keeps
        the stored dtype and the order of ``rows``.
        """
        rows = np.asarray(rows, dtype=np.int64)
        with self.fs.open(self._path(uri), "rb") as handle:
            version = np.lib.format.read_magic(handle)
            read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                           else np.lib.format.read_array_header_2_0)
            shape, fortran, dtype = read_header(handle)
            if fortran or dtype.hasobject:
                raise ValueError(f"{uri}: row reads need a C-order array of plain values")
            if rows.size and (rows.min() < 0 or rows.max() >= shape[0]):
                raise IndexError(f"{uri}: rows must be in 0..{shape[0] - 1}")
            offset = handle.tell()
            row_bytes = int(np.prod(shape[1:], dtype=np.int64)) * dtype.itemsize
            out = np.empty((len(rows), *shape[1:]), dtype=dtype)
            for i, row in enumerate(rows):
                handle.seek(offset + int(row) * row_bytes)
                out[i] = np.frombuffer(handle.read(row_bytes), dtype=dtype).reshape(shape[1:])
        return out

    def read_range(self, uri: str, start: int, stop: int) -> np.ndarray:
        """Rows ``start:stop`` (axis 0) of a stored C-order array with one seek and one read.

        Bounds are clipped like a slice (``stop`` past the end reads to the end);
        what the views use for one latent's slice of a CSC array.
        """
        return self.read_ranges(uri, [(start, stop)])[0]

    def read_ranges(self, uri: str, ranges: list[tuple[int, int]]) -> list[np.ndarray]:
        """``read_range`` for several ranges of one array, opening the file once."""
        out = []
        with self.fs.open(self._path(uri), "rb") as handle:
            version = np.lib.format.read_magic(handle)
            read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                           else np.lib.format.read_array_header_2_0)
            shape, fortran, dtype = read_header(handle)
            if fortran or dtype.hasobject:
                raise ValueError(f"{uri}: range reads need a C-order array of plain values")
            offset = handle.tell()
            row_bytes = int(np.prod(shape[1:], dtype=np.int64)) * dtype.itemsize
            for start, stop in ranges:
                start, stop, _ = slice(int(start), int(stop)).indices(shape[0])
                count = max(0, stop - start)
                handle.seek(offset + start * row_bytes)
                data = handle.read(count * row_bytes)
                out.append(np.frombuffer(data, dtype=dtype).reshape(count, *shape[1:]).copy())
        return out

    def verify(self, uri: str, sha256: str) -> bool:
        return hashlib.sha256(self.read_bytes(uri)).hexdigest() == sha256

    def exists(self, uri: str) -> bool:
        return self.fs.exists(self._path(uri))

    def delete(self, uri: str) -> bool:
        """Remove one stored file; False when it was not there. Callers check no run refers to it."""
        path = self._path(uri)
        if not self.fs.exists(path):
            return False
        self.fs.rm(path)
        return True
