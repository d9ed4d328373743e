"""Issue 18: nothing overwritten, nothing reused by mistake, one line and never a traceback."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from ssl_kd import cli
from ssl_kd.errors import CheckpointError, ConfigError
from ssl_kd.plugins import load_plugin
from ssl_kd.sweep import Variant, check_reuse, train_args
from ssl_kd.trainer.checkpoint import load_checkpoint
from ssl_kd.trainer.rundir import RunDir, RunLock, boot_id, identity
from tests.conftest import REPO, quick_args, rewrite_checkpoint


def files(folder: Path) -> dict[str, bytes]:
    """Every file under `folder` with its bytes (the lock aside)."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and not p.name.startswith(".lock")}


def tool(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *argv], capture_output=True, text=True, cwd=REPO)


@pytest.fixture
def two_runs(tmp_path, run_cli):
    """Two finished 2-step runs: (a, b)."""
    a, b = tmp_path / "a_run", tmp_path / "b_run"
    assert run_cli(quick_args(a, "supervised", 2))[0] == 0
    assert run_cli(quick_args(b, "supervised", 2, "--seed", "1"))[0] == 0
    return a, b


# ----- 1. --resume FILE resumes only into its own run folder ----------------------------------------

def test_a_copied_checkpoint_never_resumes_into_another_folder(two_runs, run_cli, capsys, tmp_path):
    a, b = two_runs
    copy = b / "backup" / "copy.pt"
    copy.parent.mkdir()
    shutil.copy(a / "checkpoints" / "last.pt", copy)
    before = files(b)
    code, _ = run_cli(["--resume", str(copy), "--steps", "4", "--extend", "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and "does not belong" in err and "--out" in err
    assert files(b) == before  # b's last.pt, config.yaml and metrics.jsonl untouched
    from tests.test_plugins import load_tool

    assert load_tool("explain").main(["--ckpt", str(copy), "--device", "cpu", "--limit", "10"]) == 2  # nor explain
    assert "--out" in capsys.readouterr().err and files(b) == before
    loose = tmp_path / "mine" / "x" / "copy.pt"  # a user's folder: not filled with run files
    loose.parent.mkdir(parents=True)
    shutil.copy(a / "checkpoints" / "last.pt", loose)
    assert run_cli(["--resume", str(loose), "--no-progress"])[0] == 2
    assert sorted(p.name for p in (tmp_path / "mine").iterdir()) == ["x"]
    fork = tmp_path / "fork"  # continued in a new folder instead, with a run id of its own
    code, summary = run_cli(["--resume", str(copy), "--steps", "4", "--extend", "--out", str(fork), "--no-progress"])
    assert code == 0 and summary["steps"] == 4 and files(b) == before
    assert yaml.safe_load((fork / "config.yaml").read_text())["run_id"] != torch.load(copy, weights_only=False)["run_id"]
    # its own folder, by checkpoint file too (best.pt), resumes as before
    assert run_cli(["--resume", str(a / "checkpoints" / "best.pt"), "--steps", "4", "--extend", "--no-progress"])[0] == 0


# ----- 2. a stale lock is taken over by exactly one of many concurrent takers ------------------------

RACE = """
import os, sys
from multiprocessing import get_context
from pathlib import Path
from ssl_kd.errors import ConfigError
from ssl_kd.trainer.rundir import RunLock

def take(run_dir, barrier, results):
    barrier.wait()
    try:
        RunLock(Path(run_dir)).acquire()
        results.put(1)
    except ConfigError:
        results.put(0)
    barrier.wait()  # every taker alive until all have tried: a winner's lock is live, not stale
    os._exit(0)  # keep the lock: a dead holder, stale for the next trial

ctx, takers, wins = get_context("fork"), int(sys.argv[2]), []
for _ in range(int(sys.argv[3])):
    barrier, results = ctx.Barrier(takers), ctx.SimpleQueue()
    procs = [ctx.Process(target=take, args=(sys.argv[1], barrier, results)) for _ in range(takers)]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    wins.append(sum(results.get() for _ in range(takers)))
print(wins)
"""


def test_concurrent_takeovers_of_a_stale_lock_leave_one_holder(tmp_path):
    # in a process without torch, so that 6 x 40 forks take a few seconds (before the fix: ~1 trial in 6 had 2 holders)
    proc = subprocess.run([sys.executable, "-c", RACE, str(tmp_path), "6", "40"], capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == [1] * 40  # exactly one holder in every trial


# ----- 3. a refused resume changes nothing ----------------------------------------------------------

def test_a_refused_resume_leaves_config_yaml_as_it_was(tmp_path, run_cli, capsys):
    out = tmp_path / "run"
    assert run_cli(quick_args(out, "supervised", 4, "--eval-every", "2"))[0] == 0
    metrics = out / "metrics.jsonl"
    good = metrics.read_text()
    metrics.write_text("not json\n" + good)
    before = files(out)
    assert run_cli(["--resume", str(out), "--steps", "6", "--extend", "--no-progress"])[0] == 2
    assert "not JSON" in capsys.readouterr().err and files(out) == before
    metrics.write_text(good)
    state = torch.load(out / "checkpoints" / "last.pt", weights_only=False)
    next(iter(state["model"].values())).fill_(float("nan"))
    rewrite_checkpoint(state, out / "checkpoints" / "last.pt")
    before = files(out)
    assert run_cli(["--resume", str(out), "--steps", "6", "--extend", "--no-progress"])[0] == 2
    assert "non-finite" in capsys.readouterr().err and files(out) == before


# ----- 4. a sweep reuses a finished run only when its settings match --------------------------------

def test_sweep_reuses_a_run_only_with_the_same_settings(tmp_path, run_cli):
    common = ["--dataset", "digits_30", "--steps", "2", "--batch-size", "8", "--device", "cpu"]
    variant = Variant("supervised", ["--algo", "supervised"])
    assert run_cli(train_args(variant, 0, common, tmp_path, False))[0] == 0
    assert check_reuse([(variant, 0)], common, tmp_path, False, False) == set()  # same settings: reused
    changed = [*common[:-4], "--steps", "3", "--device", "cpu", "--set", "train.lr=0.5"]
    with pytest.raises(ConfigError, match=r"train\.lr: 0\.03 -> 0\.5.*train\.steps: 2 -> 3.*--overwrite"):
        check_reuse([(variant, 0)], changed, tmp_path, False, False)
    assert check_reuse([(variant, 0)], changed, tmp_path, False, True) == {("supervised", 0)}  # --overwrite: rerun
    assert check_reuse([(variant, 0)], common, tmp_path, True, False) == set()  # --vary-split: seed 0 keeps split 0
    with pytest.raises(ConfigError, match=r"data\.split_seed: 0 -> 3"):
        check_reuse([(variant, 0)], [*common, "--set", "data.split_seed=3"], tmp_path, False, False)


def test_sweep_checks_every_row_and_the_seed_count_before_running(tmp_path):
    unknown = tool("tools/sweep.py", "--algos", "supervised,nosuchalgo", "--dataset", "digits_30", "--seeds", "1",
                   "--out", str(tmp_path / "s"), "--", "--steps", "1")
    assert unknown.returncode == 2 and "nosuchalgo" in unknown.stderr and "Traceback" not in unknown.stderr
    assert not (tmp_path / "s" / "supervised_s0").exists()  # refused before any run started
    zero = tool("tools/sweep.py", "--algos", "supervised", "--dataset", "digits_30", "--seeds", "0", "--out", str(tmp_path / "z"))
    assert zero.returncode == 2 and "--seeds 1" in zero.stderr and "Traceback" not in zero.stderr


# ----- 6. non-finite anywhere in a checkpoint, teacher included, is refused at load -------------------

def test_a_non_finite_teacher_is_refused_by_eval_resume_and_teacher_ckpt(two_runs, run_cli, capsys, tmp_path):
    a, _ = two_runs
    path = a / "checkpoints" / "last.pt"
    state = torch.load(path, weights_only=False)
    state["algorithm"] = {**(state["algorithm"] or {}), "teacher": {"w": torch.tensor([1.0, float("nan")])}}
    rewrite_checkpoint(state, path)
    with pytest.raises(CheckpointError, match="non-finite.*algorithm state"):
        load_checkpoint(path)
    assert run_cli(["--resume", str(a), "--steps", "4", "--extend", "--no-progress"])[0] == 2
    state = torch.load(path, weights_only=False)
    del state["algorithm"]["teacher"]
    next(iter(state["ema"].values())).fill_(float("inf"))
    rewrite_checkpoint(state, path)
    capsys.readouterr()
    student = tmp_path / "student"
    assert run_cli(quick_args(student, "kd", 2, "--teacher-ckpt", str(a)))[0] == 2
    err = capsys.readouterr().err
    assert "non-finite" in err and "EMA model" in err and "diverged ... lower" not in err and not student.exists()


# ----- 7. incomplete checkpoints, empty configs, absurd values --------------------------------------

def test_incomplete_checkpoint_empty_config_and_absurd_values_are_one_line_errors(two_runs, run_cli, capsys, tmp_path):
    a, _ = two_runs
    path = a / "checkpoints" / "last.pt"
    state = torch.load(path, weights_only=False)
    del state["config"]
    rewrite_checkpoint(state, path)
    with pytest.raises(CheckpointError, match="lacks config"):
        load_checkpoint(path)
    assert run_cli(["--resume", str(a), "--no-progress"])[0] == 2
    assert "lacks config" in capsys.readouterr().err
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    assert run_cli([*quick_args(tmp_path / "e", "supervised", 2), "--config", str(empty)])[0] == 2
    assert "is empty" in capsys.readouterr().err
    assert run_cli([*quick_args(tmp_path / "big", "supervised", 2), "--set", "train.steps=1e30"])[0] == 2
    assert "more than" in capsys.readouterr().err and not (tmp_path / "big").exists()
    assert run_cli([*quick_args(tmp_path / "w", "supervised", 2), "--set", "train.steps=x"])[0] == 2
    assert "give an int value" in capsys.readouterr().err
    from tests.test_plugins import load_tool

    assert load_tool("explain").main(["--ckpt", str(a), "--limit", "-5"]) == 2
    assert "--limit -5" in capsys.readouterr().err


# ----- 8. leftovers of a start that never saved ------------------------------------------------------

def test_a_run_that_never_saved_restarts_without_overwrite(tmp_path, run_cli, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "config.yaml").write_text("train: {}\n")  # what a run that diverged before its first checkpoint leaves
    (out / "tb").mkdir()
    assert run_cli(["--resume", str(out), "--no-progress"])[0] == 2
    err = capsys.readouterr().err
    assert "no checkpoint" in err and "without --resume" in err
    code, summary = run_cli(quick_args(out, "supervised", 2))
    assert code == 0 and summary["steps"] == 2


def test_a_failed_start_with_a_deep_out_leaves_no_parent_folders(tmp_path, run_cli):
    deep = tmp_path / "new" / "deeper" / "run"
    assert run_cli([*quick_args(deep, "fixmatch", 2), "--dataset", "digits"])[0] == 2  # needs unlabelled data
    assert not (tmp_path / "new").exists()


# ----- 9. a lock whose pid was reused by another process is stale -------------------------------------

def test_a_lock_whose_pid_now_names_another_process_is_stale(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    mine = RunLock(run_dir)
    mine.acquire()
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        fields = mine.path.read_text().split()
        fields[0] = str(other.pid)  # the holder died and its pid went to an unrelated process
        mine.path.write_text(" ".join(fields) + "\n")
        mine.held = False
        RunDir(run_dir, resume=False, overwrite=False).close()  # taken over
        mine.path.write_text(identity(other.pid) + "\n")  # the same live process: refused
        with pytest.raises(ConfigError, match=f"in use by process {other.pid}"):
            RunDir(run_dir, resume=False, overwrite=False)
    finally:
        other.kill()
        other.wait()
    assert boot_id()  # Linux: the boot id is part of the identity


# ----- 10. one line, never a traceback ---------------------------------------------------------------

def test_ctrl_c_during_shutdown_is_one_line(tmp_path, run_cli, capsys, monkeypatch):
    from ssl_kd.trainer.logger import RunLogger

    def interrupted_flush(self) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(RunLogger, "close", interrupted_flush)
    assert run_cli(quick_args(tmp_path / "run", "supervised", 2))[0] == 130
    assert "interrupted" in capsys.readouterr().err


def test_explain_into_an_unwritable_out_is_one_line(two_runs, capsys, tmp_path):
    from tests.test_plugins import load_tool

    a, _ = two_runs
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    assert load_tool("explain").main(["--ckpt", str(a), "--device", "cpu", "--limit", "10", "--top", "2",
                                      "--no-tensorboard", "--out", str(blocker / "sub")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: cannot write the explanation into") and len(err.strip().splitlines()) == 1


def test_plugin_messages(tmp_path):
    with pytest.raises(ConfigError) as missing:
        load_plugin(str(tmp_path / "nope.py"))
    assert str(missing.value).count("--plugin") == 1
    exits = tmp_path / "exits.py"
    exits.write_text("import sys\nsys.exit(3)\n")
    with pytest.raises(ConfigError, match=r"called sys\.exit\(3\)"):
        load_plugin(str(exits))
    with pytest.raises(ConfigError) as unknown:
        load_plugin("no_such_module_for_ssl_kd")
    assert "ModuleNotFoundError" in str(unknown.value) and "(at " not in str(unknown.value)


def test_a_dead_peer_is_one_line_naming_the_rank_and_the_resume(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")

    def peer_died(*args, **kwargs):
        raise RuntimeError("[../third_party/gloo/gloo/transport/tcp/pair.cc:534] Connection closed by peer [127.0.0.1]:1234")

    monkeypatch.setattr(cli, "train", peer_died)
    assert cli.main(quick_args(tmp_path / "run", "supervised", 2)) == 2
    err = capsys.readouterr().err
    assert "rank 0 of 2" in err and "rank 1 stopped" in err and "--resume" in err and len(err.strip().splitlines()) == 1


# ----- 11. under torchrun only rank 0 prints ---------------------------------------------------------

def test_only_rank_0_prints_the_summary(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setattr(cli, "train", lambda *args, **kwargs: {})
    monkeypatch.setenv("RANK", "1")
    assert cli.main(quick_args(tmp_path / "run", "supervised", 2, "--json")) == 0
    assert capsys.readouterr().out == ""
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setattr(cli, "train", lambda *args, **kwargs: {"steps": 2})
    assert cli.main(quick_args(tmp_path / "run", "supervised", 2, "--json")) == 0
    assert json.loads(capsys.readouterr().out) == {"steps": 2}


# ----- issue 17.4: checkpoint.py only reads and writes state -----------------------------------------

def test_checkpoint_module_does_not_build_runs():
    import ast

    source = (REPO / "ssl_kd" / "trainer" / "checkpoint.py").read_text()
    imported = {node.module for node in ast.walk(ast.parse(source)) if isinstance(node, ast.ImportFrom)}
    assert not imported & {"ssl_kd.run", "ssl_kd.trainer.trainer", "ssl_kd.plugins"}
    from ssl_kd.run import load_run  # rebuilding a run lives with the code that builds runs

    assert callable(load_run)
