"""The offline demo corpus: natural English from two Debian packages, for training a demo SAE.

Sources (fetched with ``apt-get download``, a registry the portal may use, never the hub):

* ``fortunes`` + ``fortunes-min``: the BSD fortune cookie files (quotations,
  literature, jokes, definitions; about 2.6 MB of English; the offensive
  cookies live in another package and are not used; ``ascii-art`` is left
  out). Licence: BSD (see the package's ``copyright``).
* ``python3.X-doc``: the reStructuredText sources of Python's documentation,
  kept as prose paragraphs only (code blocks, directives, tables and headings
  dropped, inline markup reduced to its text). Licence: PSF License.

Together over 1.5M tokens of the demo model's tokenizer (tested). ``fetch_demo_corpus(dir)``
writes, atomically:

* ``demo-english.jsonl``: one JSON object ``{"text": ...}`` per document
  (a cookie, or a documentation page), read by ``corpus.read_corpus(..., "jsonl")``;
* ``demo-english.json``: the manifest (packages with versions and sha256,
  documents, characters, licences);
* ``demo-english-licenses/<package>.copyright``: each package's licence file.

Invariants: nothing is downloaded when the manifest exists; the corpus file is
complete whenever the manifest exists (the manifest is written last); the same
packages give the same file (documents in sorted file order).
"""

from __future__ import annotations

import hashlib
import io
import json
import lzma
import os
import re
import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path

__all__ = [
    "DEMO_CORPUS_FILE",
    "DEMO_CORPUS_MANIFEST",
    "DemoCorpusError",
    "build_demo_corpus",
    "deb_members",
    "demo_corpus_path",
    "fetch_demo_corpus",
    "fortune_documents",
    "rst_prose",
]

DEMO_CORPUS_FILE = "demo-english.jsonl"
DEMO_CORPUS_MANIFEST = "demo-english.json"
LICENSES_DIR = "demo-english-licenses"
FORTUNE_PACKAGES = ("fortunes-min", "fortunes")
DOC_PACKAGES = ("python3.11-doc", "python3.12-doc", "python3.13-doc")  # the first one the registry has
_SKIP_FORTUNE_FILES = {"ascii-art"}


class DemoCorpusError(RuntimeError):
    """The demo corpus could not be downloaded or built; the message says what to do instead."""


def demo_corpus_path(data_dir: Path) -> Path:
    """Where the demo corpus lives: ``{data_dir}/corpora/demo-english.jsonl``."""
    return Path(data_dir) / "corpora" / DEMO_CORPUS_FILE


def deb_members(deb: Path) -> dict[str, bytes]:
    """The regular files of a ``.deb`` (an ``ar`` archive holding ``data.tar.*``) by path."""
    data = Path(deb).read_bytes()
    if not data.startswith(b"!<arch>\n"):
        raise DemoCorpusError(f"{deb} is not a Debian package")
    offset, payload = 8, None
    while offset + 60 <= len(data):
        header = data[offset:offset + 60]
        name = header[:16].decode().strip().rstrip("/")
        size = int(header[48:58].decode().strip())
        body = data[offset + 60:offset + 60 + size]
        if name.startswith("data.tar"):
            payload = (name, body)
        offset += 60 + size + (size % 2)
    if payload is None:
        raise DemoCorpusError(f"{deb} has no data.tar")
    name, body = payload
    if name.endswith(".xz"):
        body = lzma.decompress(body)
    elif name.endswith(".zst"):
        raise DemoCorpusError(f"{deb}: zstd-compressed packages are not supported")
    mode = "r:gz" if name.endswith(".gz") else "r:"
    out: dict[str, bytes] = {}
    with tarfile.open(fileobj=io.BytesIO(body), mode=mode) as archive:
        for member in archive.getmembers():
            if member.isfile():
                handle = archive.extractfile(member)
                if handle is not None:
                    out[member.name.removeprefix("./")] = handle.read()
    return out


def fortune_documents(members: dict[str, bytes]) -> list[str]:
    """One document per cookie of the fortune files (``%`` lines separate cookies)."""
    documents: list[str] = []
    for path in sorted(members):
        parent, _, name = path.rpartition("/")
        if not parent.endswith("games/fortunes") or "." in name or name in _SKIP_FORTUNE_FILES:
            continue
        text = members[path].decode("utf-8", "replace")
        for cookie in re.split(r"^%\s*$", text, flags=re.MULTILINE):
            cookie = cookie.strip("\n")
            if cookie.strip():
                documents.append(cookie)
    return documents


_ROLE = re.compile(r":[a-zA-Z:]+:`!?~?([^`<]*?)(?:\s*<[^`>]*>)?`")
_LINK = re.compile(r"`([^`<]+?)\s*<[^`>]*>`_{1,2}")
_LITERAL = re.compile(r"``([^`]+)``")
_REF = re.compile(r"`([^`]+)`_{0,2}")
_HEADING = re.compile(r"^([=\-*^~#+\"'`.:_])\1{2,}\s*$")


def _inline(text: str) -> str:
    text = _ROLE.sub(lambda m: m.group(1), text)
    text = _LINK.sub(lambda m: m.group(1), text)
    text = _LITERAL.sub(lambda m: m.group(1), text)
    text = _REF.sub(lambda m: m.group(1), text)
    text = re.sub(r"\*\*([^*]+)\*\*|\*([^*\s][^*]*)\*", lambda m: m.group(1) or m.group(2), text)
    text = re.sub(r"::$", ":", text)
    return re.sub(r"\s+", " ", text).strip()


def rst_prose(source: str) -> list[str]:
    """The prose paragraphs of a reStructuredText page, inline markup reduced to its text.

    Dropped: indented blocks (code, directive bodies, quotes), directives and
    comments (``..``), headings and their underlines, tables, bullet/field
    lists' markers (their text is kept), doctest lines and short fragments.
    """
    paragraphs: list[str] = []
    for block in re.split(r"\n\s*\n", source):
        lines = [line for line in block.splitlines() if line.strip()]
        if not lines or lines[0][:1].isspace() or lines[0].startswith(".."):
            continue
        if any(_HEADING.match(line) for line in lines) or any(line.lstrip().startswith(("+-", "|", ">>>")) for line in lines):
            continue
        text = " ".join(re.sub(r"^\s*(?:[-*]|\d+\.|#\.)\s+", "", line) for line in lines)
        text = _inline(text)
        letters = sum(c.isalpha() or c.isspace() for c in text)
        if len(text) >= 40 and letters >= 0.85 * len(text):
            paragraphs.append(text)
    return paragraphs


def _doc_documents(members: dict[str, bytes]) -> list[str]:
    documents = []
    for path in sorted(members):
        if "/html/_sources/" in path and path.endswith(".rst.txt") and "/c-api/" not in path:
            paragraphs = rst_prose(members[path].decode("utf-8", "replace"))
            if paragraphs:
                documents.append("\n\n".join(paragraphs))
    return documents


def _copyright(members: dict[str, bytes], package: str) -> bytes:
    for path, data in members.items():
        if path.endswith(f"doc/{package}/copyright"):
            return data
    raise DemoCorpusError(f"package {package} has no copyright file")


def _write_atomic(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def build_demo_corpus(debs: dict[str, Path], dest_dir: Path) -> dict:
    """Build the corpus from downloaded packages (name -> ``.deb``) into ``dest_dir``; return the manifest."""
    dest_dir = Path(dest_dir)
    (dest_dir / LICENSES_DIR).mkdir(parents=True, exist_ok=True)
    documents: list[str] = []
    packages = []
    for package in sorted(debs, key=lambda p: (p not in FORTUNE_PACKAGES, p)):
        deb = Path(debs[package])
        members = deb_members(deb)
        found = fortune_documents(members) if package in FORTUNE_PACKAGES else _doc_documents(members)
        if not found:
            raise DemoCorpusError(f"package {package} ({deb.name}) gave no text")
        documents.extend(found)
        _write_atomic(dest_dir / LICENSES_DIR / f"{package}.copyright", _copyright(members, package))
        packages.append({
            "package": package,
            "file": deb.name,
            "sha256": hashlib.sha256(deb.read_bytes()).hexdigest(),
            "documents": len(found),
            "characters": sum(len(d) for d in found),
            "licence": "PSF License" if "doc" in package else "BSD (fortune-mod)",
            "licence_file": f"{LICENSES_DIR}/{package}.copyright",
        })
    body = "".join(json.dumps({"text": d}, ensure_ascii=False) + "\n" for d in documents).encode()
    _write_atomic(dest_dir / DEMO_CORPUS_FILE, body)
    manifest = {
        "file": DEMO_CORPUS_FILE,
        "format": "jsonl",
        "documents": len(documents),
        "characters": sum(len(d) for d in documents),
        "bytes": len(body),
        "sha256": hashlib.sha256(body).hexdigest(),
        "packages": packages,
    }
    _write_atomic(dest_dir / DEMO_CORPUS_MANIFEST, json.dumps(manifest, indent=2).encode())
    return manifest


def _apt_download(package: str, directory: Path) -> Path | None:
    done = subprocess.run(["apt-get", "download", package], cwd=directory, capture_output=True, text=True)
    if done.returncode != 0:
        return None
    found = sorted(directory.glob(f"{package}_*.deb"))
    return found[0] if found else None


def fetch_demo_corpus(dest_dir: Path) -> Path:
    """Make sure the demo corpus is in ``dest_dir`` (``apt-get download`` if needed); return its path."""
    dest_dir = Path(dest_dir)
    if (dest_dir / DEMO_CORPUS_MANIFEST).is_file() and (dest_dir / DEMO_CORPUS_FILE).is_file():
        return dest_dir / DEMO_CORPUS_FILE
    if shutil.which("apt-get") is None:
        raise DemoCorpusError(
            "the demo corpus comes from Debian packages (fortunes, python3.X-doc) and this machine has no "
            "apt-get; upload a text corpus or name a Hugging Face dataset instead"
        )
    with tempfile.TemporaryDirectory(prefix="atlas-corpus-") as tmp:
        directory = Path(tmp)
        os.chmod(directory, 0o755)  # apt's sandbox user may write here
        debs: dict[str, Path] = {}
        for package in FORTUNE_PACKAGES:
            deb = _apt_download(package, directory)
            if deb is None:
                raise DemoCorpusError(f"apt-get download {package} failed (run apt-get update first?)")
            debs[package] = deb
        for package in DOC_PACKAGES:
            deb = _apt_download(package, directory)
            if deb is not None:
                debs[package] = deb
                break
        else:
            raise DemoCorpusError(f"none of {', '.join(DOC_PACKAGES)} could be downloaded (run apt-get update first?)")
        build_demo_corpus(debs, dest_dir)
    return dest_dir / DEMO_CORPUS_FILE
