"""Print the project's requirements from ``pyproject.toml``, one per line.

Used by the Dockerfile to install the dependencies in their own layer (before
the source is copied), so a code change does not reinstall torch & co.

    python deploy/requirements_from_pyproject.py pyproject.toml [EXTRA,...]

Invariant: standard library only (it runs before anything is installed).
An unknown extra is an error, not silently ignored.
"""

from __future__ import annotations

import sys
import tomllib


def requirements(pyproject_path: str, extras: str = "") -> list[str]:
    with open(pyproject_path, "rb") as handle:
        project = tomllib.load(handle)["project"]
    reqs = list(project.get("dependencies", []))
    optional = project.get("optional-dependencies", {})
    for extra in (e.strip() for e in extras.split(",")):
        if not extra:
            continue
        if extra not in optional:
            raise SystemExit(f"unknown extra {extra!r}; known: {', '.join(sorted(optional))}")
        reqs += optional[extra]
    return reqs


def main(argv: list[str]) -> int:
    if not 1 <= len(argv) <= 2:
        print(__doc__, file=sys.stderr)
        return 2
    print("\n".join(requirements(*argv)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
