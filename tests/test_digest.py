"""ssl_kd.digest: recorded digests catch flipped bytes, and a crash between the digest and the
rename never makes the surviving file look corrupt."""
from __future__ import annotations

from pathlib import Path

from ssl_kd import digest


def test_a_flipped_byte_fails_verification(tmp_path: Path) -> None:
    f = tmp_path / "model.bin"
    f.write_bytes(bytes(range(256)) * 64)
    assert digest.verify(f) is None  # nothing recorded yet: a file from before digests
    digest.write_digest(f)
    assert digest.verify(f) is True
    data = bytearray(f.read_bytes())
    data[1000] ^= 0xFF
    f.write_bytes(bytes(data))
    assert digest.verify(f) is False


def test_replace_keeps_only_the_new_digest(tmp_path: Path) -> None:
    path, tmp = tmp_path / "last.pt", tmp_path / "last.pt.x.tmp"
    path.write_bytes(b"old")
    digest.write_digest(path)
    tmp.write_bytes(b"new")
    digest.replace_with_digest(tmp, path)
    assert path.read_bytes() == b"new" and not tmp.exists()
    assert digest.recorded(path) == [digest.sha256_file(path)]
    assert digest.verify(path) is True


def test_a_crash_before_the_rename_leaves_the_old_file_verified(tmp_path: Path, monkeypatch) -> None:
    path, tmp = tmp_path / "last.pt", tmp_path / "last.pt.x.tmp"
    path.write_bytes(b"old")
    digest.write_digest(path)
    tmp.write_bytes(b"new")

    real_replace = digest.os.replace

    def crash_on_the_file(src: Path, dst: Path) -> None:
        if Path(dst) == path:  # the sidecar's rename goes through; the file's is cut off
            raise KeyboardInterrupt
        real_replace(src, dst)

    monkeypatch.setattr(digest.os, "replace", crash_on_the_file)
    try:
        digest.replace_with_digest(tmp, path)
    except KeyboardInterrupt:
        pass
    monkeypatch.undo()
    assert path.read_bytes() == b"old"
    assert len(digest.recorded(path) or []) == 2  # the new generation was recorded before the cut
    assert digest.verify(path) is True  # the old generation is still accepted

