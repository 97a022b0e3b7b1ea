"""The demo corpus: Debian packages unpacked in Python, cookies and prose paragraphs, licences kept.

Packages are built here in Debian's format (an ``ar`` archive around
``data.tar.xz``); the real download (``apt-get download``) and the >= 1M token
count on the demo model's tokenizer run with the ``demo_model`` tests.
"""

from __future__ import annotations

import io
import json
import lzma
import tarfile
from pathlib import Path

import pytest

from latent_atlas.analyses.corpus import read_corpus
from latent_atlas.analyses.sae.corpus_demo import (
    DEMO_CORPUS_FILE,
    DEMO_CORPUS_MANIFEST,
    DemoCorpusError,
    build_demo_corpus,
    deb_members,
    demo_corpus_path,
    fetch_demo_corpus,
    rst_prose,
)

RST = """.. _tut-if:

:keyword:`!if` Statements
=========================

Perhaps the most well-known statement type is the :keyword:`if` statement.  For
example::

   >>> x = int(input("Please enter an integer: "))

There can be zero or more :keyword:`elif` parts, and the ``else`` part is
optional, as `the reference <https://example.org>`_ explains in detail.

.. note::
   A note body that is indented.

* A bullet item that has enough words in it to be kept as prose text.

+------+------+
| a    | b    |
+------+------+
"""


def _deb(path: Path, files: dict[str, bytes]) -> Path:
    tar_bytes = io.BytesIO()
    with tarfile.open(fileobj=tar_bytes, mode="w") as archive:
        for name, data in files.items():
            info = tarfile.TarInfo(f"./{name}")
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    members = [(b"debian-binary", b"2.0\n"), (b"control.tar.xz", lzma.compress(b"")),
               (b"data.tar.xz", lzma.compress(tar_bytes.getvalue()))]
    out = bytearray(b"!<arch>\n")
    for name, data in members:
        out += name.ljust(16) + b"0".ljust(12) + b"0".ljust(6) + b"0".ljust(6) + b"100644".ljust(8)
        out += str(len(data)).encode().ljust(10) + b"`\n" + data + (b"\n" if len(data) % 2 else b"")
    path.write_bytes(bytes(out))
    return path


def test_rst_prose_keeps_paragraph_text_only() -> None:
    paragraphs = rst_prose(RST)
    assert paragraphs == [
        "Perhaps the most well-known statement type is the if statement. For example:",
        "There can be zero or more elif parts, and the else part is optional, as the reference explains in detail.",
        "A bullet item that has enough words in it to be kept as prose text.",
    ]


def test_build_from_packages(tmp_path: Path) -> None:
    fortunes = _deb(tmp_path / "fortunes_1_all.deb", {
        "usr/share/games/fortunes/wisdom": b"A stitch in time\nsaves nine.\n%\nLook before you leap.\n%\n",
        "usr/share/games/fortunes/wisdom.dat": b"\x00\x01binary index",
        "usr/share/games/fortunes/ascii-art": b"  /\\_/\\\n ( o.o )\n%\n",
        "usr/share/doc/fortunes/copyright": b"BSD licence text",
    })
    docs = _deb(tmp_path / "python3.11-doc_3.11_all.deb", {
        "usr/share/doc/python3.11/html/_sources/tutorial/controlflow.rst.txt": RST.encode(),
        "usr/share/doc/python3.11-doc/copyright": b"PSF licence text",
    })
    assert set(deb_members(fortunes)) >= {"usr/share/games/fortunes/wisdom"}
    dest = tmp_path / "corpora"
    manifest = build_demo_corpus({"fortunes": fortunes, "python3.11-doc": docs}, dest)
    documents = read_corpus(DEMO_CORPUS_FILE, (dest / DEMO_CORPUS_FILE).read_bytes(), "jsonl")
    assert documents[:2] == ["A stitch in time\nsaves nine.", "Look before you leap."]
    assert len(documents) == 3 and documents[2].startswith("Perhaps the most")
    assert manifest["documents"] == 3
    assert json.loads((dest / DEMO_CORPUS_MANIFEST).read_text()) == manifest
    assert (dest / "demo-english-licenses" / "fortunes.copyright").read_bytes() == b"BSD licence text"
    assert [p["licence"] for p in manifest["packages"]] == ["BSD (fortune-mod)", "PSF License"]
    # present: nothing is fetched again
    assert fetch_demo_corpus(dest) == dest / DEMO_CORPUS_FILE
    assert demo_corpus_path(tmp_path) == dest / DEMO_CORPUS_FILE


def test_not_a_package(tmp_path: Path) -> None:
    (tmp_path / "x.deb").write_bytes(b"PK\x03\x04 not an ar archive")
    with pytest.raises(DemoCorpusError, match="not a Debian package"):
        deb_members(tmp_path / "x.deb")


@pytest.mark.demo_model
def test_real_demo_corpus_has_a_million_tokens(demo_lm) -> None:
    """Fetched for real (apt-get download) into the repo's data dir, as ``make up`` does."""
    path = fetch_demo_corpus(Path(__file__).resolve().parents[3] / ".atlas" / "corpora")
    documents = read_corpus(path.name, path.read_bytes(), "jsonl")
    tokens = sum(len(ids) for ids in demo_lm.tokenizer(documents, add_special_tokens=False)["input_ids"])
    assert tokens >= 1_000_000, tokens
    manifest = json.loads((path.parent / DEMO_CORPUS_MANIFEST).read_text())
    assert {p["package"] for p in manifest["packages"]} >= {"fortunes", "fortunes-min"}
