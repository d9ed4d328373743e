"""Issue 30.2: a corrupt checkpoint is refused by every reader, in one line naming the file and the
last good checkpoint; edited counters, vanished classes and unreadable files likewise, each called
what it is."""
from __future__ import annotations

import errno
import sys
from pathlib import Path
from typing import Callable

import pytest
import torch

from ssl_kd import cli, digest
from ssl_kd.errors import CheckpointError
from ssl_kd.trainer import checkpoint
from ssl_kd.trainer.checkpoint import load_checkpoint
from tests.conftest import quick_args, rewrite_checkpoint
from tests.test_plugins import load_tool
from tests.test_reliability import files


@pytest.fixture
def run(tmp_path, run_cli) -> Path:
    out = tmp_path / "run"
    assert run_cli(quick_args(out, "supervised", 2))[0] == 0
    return out


def readers(run: Path, tmp: Path) -> dict[str, Callable[[], int]]:
    """The six programs that read a checkpoint, each reading `run`'s last.pt."""
    return {
        "--resume": lambda: cli.main(["--resume", str(run), "--steps", "4", "--extend", "--no-progress"]),
        "eval": lambda: load_tool("eval").main(["--ckpt", str(run), "--device", "cpu"]),
        "explain": lambda: load_tool("explain").main(["--ckpt", str(run), "--device", "cpu", "--limit", "10",
                                                      "--no-tensorboard", "--out", str(tmp / "explained")]),
        "export": lambda: load_tool("export").main([str(run), "--out", str(tmp / "exported")]),
        "predict": lambda: load_tool("predict").main([str(run), "--input", str(tmp), "--device", "cpu"]),
        "--teacher-ckpt": lambda: cli.main(quick_args(tmp / "student", "kd", 2, "--teacher-ckpt", str(run))),
    }


def refused_by_all(run: Path, tmp: Path, capsys, *needles: str) -> None:
    """Every reader exits 2 with one `error:` line holding `needles`, and nothing is written."""
    before = files(run)
    for name, read in readers(run, tmp).items():
        assert read() == 2, name
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and len(err.splitlines()) == 1, (name, err)
        assert all(n in err for n in needles), (name, err)
    assert files(run) == before
    assert not any((tmp / name).exists() for name in ("explained", "exported", "student"))


def test_every_checkpoint_has_a_digest_and_flipped_bytes_are_refused_everywhere(run, tmp_path, capsys):
    last, best = run / "checkpoints" / "last.pt", run / "checkpoints" / "best.pt"
    assert digest.verify(last) is True and digest.verify(best) is True  # best.pt (a copy) has its own
    data = bytearray(last.read_bytes())
    middle = len(data) // 2  # inside the tensors' bytes, as the fault probe's 64 flipped bytes were
    data[middle:middle + 64] = bytes(b ^ 0xFF for b in data[middle:middle + 64])
    last.write_bytes(bytes(data))
    refused_by_all(run, tmp_path, capsys, f"checkpoint {last} is corrupt", f"last good checkpoint {best}")
    best.write_bytes(best.read_bytes()[:-10])  # both damaged: no good one to point to
    with pytest.raises(CheckpointError, match="no other checkpoint beside it verifies"):
        load_checkpoint(last)


def test_a_checkpoint_from_before_digests_is_accepted(run, capsys):
    digest.digest_path(run / "checkpoints" / "last.pt").unlink()
    assert load_tool("eval").main(["--ckpt", str(run), "--device", "cpu"]) == 0


def test_counters_beyond_the_run_are_refused(run, capsys, tmp_path):
    last = run / "checkpoints" / "last.pt"
    state = torch.load(last, weights_only=False)
    rewrite_checkpoint({**state, "step": 10**12}, last)  # the probe's edit, its digest recorded too
    with pytest.raises(CheckpointError, match=r"records step 1000000000000, outside its run's 0\.\.2 steps"):
        load_checkpoint(last)
    assert cli.main(["--resume", str(run), "--steps", "4", "--extend", "--no-progress"]) == 2
    assert "records step" in capsys.readouterr().err
    rewrite_checkpoint({**state, "wall_s": float("nan")}, last)
    with pytest.raises(CheckpointError, match="records wall_s=nan"):
        load_checkpoint(last)


def test_a_class_that_is_gone_is_one_line_in_all_six_readers(run, tmp_path, capsys):
    last = run / "checkpoints" / "last.pt"
    plugin_dir = tmp_path / "old_code"
    plugin_dir.mkdir()
    (plugin_dir / "moved_plugin.py").write_text("class Thresholds:\n    pass\n")
    sys.path.insert(0, str(plugin_dir))
    try:
        import moved_plugin

        state = torch.load(last, weights_only=False)
        state["algorithm"] = {**(state["algorithm"] or {}), "thresholds": moved_plugin.Thresholds()}
        rewrite_checkpoint(state, last)
    finally:
        sys.path.remove(str(plugin_dir))
        sys.modules.pop("moved_plugin", None)
    (plugin_dir / "moved_plugin.py").unlink()  # the plug-in moved
    refused_by_all(run, tmp_path, capsys, f"checkpoint {last} holds an object whose code cannot be imported",
                   "No module named 'moved_plugin'")


def test_an_unreadable_checkpoint_is_called_that_not_corrupt(run, monkeypatch):
    last = run / "checkpoints" / "last.pt"

    def denied(*args, **kwargs):  # what open() raises on a file without read permission (tests may run as root)
        raise PermissionError(errno.EACCES, "Permission denied", str(last))

    monkeypatch.setattr(checkpoint.digest, "sha256_file", denied)
    with pytest.raises(CheckpointError, match="cannot read checkpoint .*permission denied") as refused:
        load_checkpoint(last)
    assert "corrupt" not in str(refused.value)
    digest.digest_path(last).unlink()  # no digest: the read itself is refused
    monkeypatch.setattr(checkpoint.torch, "load", denied)
    with pytest.raises(CheckpointError, match="cannot read checkpoint"):
        load_checkpoint(last)
