"""SHA-256 digests recorded beside a file (`<file>.sha256`) and checked when it is read, so a
checkpoint or an export with flipped bytes is refused instead of loaded with wrong numbers.

A file replaced atomically (write a temporary, rename it) and its digest cannot change in one step.
So the writer first records the new digest *beside* the previous one, then renames the file, then
drops the previous digest: a crash at any point leaves a file whose digest is recorded.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

SUFFIX = ".sha256"
CHUNK = 1 << 20


def sha256_file(path: Path) -> str:
    """The hex SHA-256 of a file's bytes, read in chunks (checkpoints can be large)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(CHUNK):
            h.update(block)
    return h.hexdigest()


def digest_path(path: Path) -> Path:
    return path.with_name(path.name + SUFFIX)


def recorded(path: Path) -> list[str] | None:
    """The digests accepted for `path` (newest first), or None when none was ever recorded (a file
    written before digests existed, or by another tool)."""
    side = digest_path(path)
    if not side.is_file():
        return None
    return [line.split()[0] for line in side.read_text().splitlines() if line.strip()]


def _write(path: Path, digests: list[str]) -> None:
    side = digest_path(path)
    tmp = side.with_name(f"{side.name}.{os.getpid()}.tmp")
    tmp.write_text("".join(f"{d}  {path.name}\n" for d in digests))
    os.replace(tmp, side)


def replace_with_digest(tmp: Path, path: Path) -> None:
    """Rename the finished temporary `tmp` onto `path` and record its digest, crash-safely."""
    new = sha256_file(tmp)
    old = recorded(path) or []
    _write(path, [new, *old[:1]])  # both generations accepted while the rename is pending
    os.replace(tmp, path)
    _write(path, [new])


def write_digest(path: Path) -> None:
    """Record the digest of a file written in place (e.g. one of an export's files)."""
    _write(path, [sha256_file(path)])


def verify(path: Path) -> bool | None:
    """True when `path` matches a recorded digest, False when it does not (corrupt), None when no
    digest was recorded (callers accept such files: they predate digests)."""
    accepted = recorded(path)
    if accepted is None:
        return None
    return sha256_file(path) in accepted
