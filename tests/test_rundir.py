"""Run folders hold one run: refused without --resume/--overwrite, locked while in use, unique and
cleaned temporary files, --steps on resume only with --extend, no half-made folder after a failed start."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from ssl_kd.errors import ConfigError
from ssl_kd.trainer.checkpoint import save_checkpoint
from ssl_kd.trainer.rundir import RunDir, RunLock
from tests.conftest import quick_args


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_existing_run_folder_is_refused_without_resume(tmp_path, run_cli, capsys):
    out = tmp_path / "run"
    assert run_cli(quick_args(out, "supervised", 2))[0] == 0
    before = (out / "metrics.jsonl").read_text(), (out / "checkpoints" / "last.pt").read_bytes()
    code, _ = run_cli(quick_args(out, "supervised", 4, "--seed", "1"))
    err = capsys.readouterr().err
    assert code == 2 and "already holds a run" in err and "--resume" in err and "--overwrite" in err
    assert ((out / "metrics.jsonl").read_text(), (out / "checkpoints" / "last.pt").read_bytes()) == before


def test_overwrite_clears_the_old_run_first(tmp_path, run_cli):
    out = tmp_path / "run"
    assert run_cli(quick_args(out, "supervised", 4, "--eval-every", "2"))[0] == 0
    (out / "notes.txt").write_text("mine")  # not a run file: kept
    code, summary = run_cli([*quick_args(out, "supervised", 2, "--seed", "1"), "--overwrite"])
    assert code == 0 and summary["steps"] == 2
    assert [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()] == [2]
    assert yaml.safe_load((out / "config.yaml").read_text())["train"]["seed"] == 1
    assert (out / "notes.txt").read_text() == "mine"


def test_lock_refuses_a_live_holder_and_takes_over_a_dead_one(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (run_dir / ".lock").write_text(f"{holder.pid}\n")
        with pytest.raises(ConfigError, match=f"in use by process {holder.pid}"):
            RunDir(run_dir, resume=False, overwrite=True)
    finally:
        holder.kill()
        holder.wait()
    (run_dir / ".lock").write_text(f"{dead_pid()}\n")
    folder = RunDir(run_dir, resume=False, overwrite=False)
    assert (run_dir / ".lock").read_text().split()[0] == str(os.getpid())
    folder.close()
    assert not (run_dir / ".lock").exists()


def test_second_run_into_a_locked_folder_is_refused(tmp_path, run_cli, capsys):
    out = tmp_path / "run"
    lock = RunLock(out)
    out.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        lock.path.write_text(f"{holder.pid}\n")
        code, _ = run_cli(quick_args(out, "supervised", 2))
        assert code == 2 and f"process {holder.pid}" in capsys.readouterr().err
        assert not (out / "config.yaml").exists()
    finally:
        holder.kill()
        holder.wait()


def test_temporary_names_are_unique_and_stale_ones_removed(tmp_path, monkeypatch):
    ckpts = tmp_path / "run" / "checkpoints"
    ckpts.mkdir(parents=True)
    (ckpts / "last.pt.tmp").write_bytes(b"stale")  # left by a killed process
    (ckpts / "last.pt.abc123.tmp").write_bytes(b"stale")
    lock_tmp = tmp_path / "run" / f".lock.{dead_pid()}-ab12.tmp"  # a lock taker killed before it linked the lock
    lock_tmp.write_text("1\n")
    RunDir(tmp_path / "run", resume=True, overwrite=False).close()
    assert not list(ckpts.glob("*.tmp")) and not lock_tmp.exists()
    names = []
    real_save = torch.save
    monkeypatch.setattr(torch, "save", lambda obj, f: (names.append(Path(f).name), real_save(obj, f)))
    save_checkpoint({"x": 1}, ckpts / "last.pt")
    save_checkpoint({"x": 2}, ckpts / "last.pt")
    assert len(set(names)) == 2 and all(n.startswith("last.pt.") and n.endswith(".tmp") for n in names)
    assert torch.load(ckpts / "last.pt", weights_only=False)["x"] == 2
    umask = os.umask(0)
    os.umask(umask)
    assert (ckpts / "last.pt").stat().st_mode & 0o777 == 0o666 & ~umask  # readable as before, not mkstemp's 0600


def test_failed_start_leaves_no_run_folder(tmp_path, run_cli, capsys):
    out = tmp_path / "run"
    code, _ = run_cli([*quick_args(out, "fixmatch", 2), "--dataset", "digits"])  # needs unlabelled data
    assert code == 2 and "unlabelled" in capsys.readouterr().err
    assert not out.exists()


def test_resume_with_other_steps_needs_extend(tmp_path, run_cli, capsys):
    out = tmp_path / "run"
    assert run_cli(quick_args(out, "supervised", 4, "--eval-every", "2"))[0] == 0
    code, _ = run_cli(["--resume", str(out), "--steps", "6", "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and "--extend" in err and "4" in err
    code, summary = run_cli(["--resume", str(out), "--steps", "6", "--extend", "--no-progress"])
    assert code == 0 and summary["steps"] == 6
    assert yaml.safe_load((out / "config.yaml").read_text())["train"]["extended"] == ["step 4: total 4 -> 6"]
    assert "extending" in capsys.readouterr().err


def test_extend_without_resume_is_an_error(tmp_path, run_cli, capsys):
    code, _ = run_cli([*quick_args(tmp_path / "run", "supervised", 2), "--extend"])
    assert code == 2 and "--resume" in capsys.readouterr().err


def test_sweep_reruns_an_unfinished_run_instead_of_mixing_or_failing(tmp_path, run_cli):
    from ssl_kd.sweep import Variant, run_one

    common = ["--dataset", "digits_30", "--steps", "2", "--eval-every", "2", "--batch-size", "8", "--device", "cpu",
              "--set", "train.eval_batch_size=512"]
    run_dir = tmp_path / "supervised_s0"
    assert run_cli([*common, "--algo", "supervised", "--out", str(run_dir), "--no-progress"])[0] == 0
    summary = json.loads((run_dir / "summary.json").read_text())
    (run_dir / "summary.json").write_text(json.dumps({**summary, "interrupted": True}))
    result = run_one(Variant("supervised", ["--algo", "supervised"]), 0, common, tmp_path)
    assert result["interrupted"] is False and result["steps"] == 2
    assert len((run_dir / "metrics.jsonl").read_text().splitlines()) == 1  # not two runs' rows
