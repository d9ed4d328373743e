"""Every mistake a user can make ends with a clear message and exit code 2, never a traceback."""
from __future__ import annotations

import pytest
import torch

from tests.conftest import quick_args, rewrite_checkpoint


def run_error(run_cli, capsys, argv: list[str]) -> str:
    code, _ = run_cli(argv)
    assert code == 2
    return capsys.readouterr().err


@pytest.mark.parametrize("flag,value,needle", [
    ("--algo", "fixmatchh", "fixmatch"),
    ("--dataset", "digitz_30", "digits"),
    ("--net", "resnet9000", "wrn28_2"),
])
def test_unknown_names(tmp_path, run_cli, capsys, flag, value, needle):
    argv = [*quick_args(tmp_path / "r"), flag, value]
    err = run_error(run_cli, capsys, argv)
    assert value.split("_")[0] in err and needle in err


def test_bad_set_value(tmp_path, run_cli, capsys):
    err = run_error(run_cli, capsys, [*quick_args(tmp_path / "r"), "--set", "algo.threshold=high"])
    assert "algo.threshold" in err and "high" in err


def test_missing_cifar_offline_says_where_and_how(tmp_path, run_cli, capsys):
    argv = [*quick_args(tmp_path / "r"), "--dataset", "cifar10_4k", "--data-dir", str(tmp_path / "nodata")]
    err = run_error(run_cli, capsys, argv)
    assert str(tmp_path / "nodata") in err and "--download" in err and "--data-dir" in err


def test_too_many_labels(tmp_path, run_cli, capsys):
    err = run_error(run_cli, capsys, [*quick_args(tmp_path / "r"), "--dataset", "digits_5000"])
    assert "5000" in err


def test_unlabelled_algorithm_on_fully_labelled_dataset(tmp_path, run_cli, capsys):
    err = run_error(run_cli, capsys, [*quick_args(tmp_path / "r"), "--dataset", "digits"])
    assert "unlabelled" in err


def test_resume_missing_checkpoint(tmp_path, run_cli, capsys):
    err = run_error(run_cli, capsys, ["--resume", str(tmp_path / "nope")])
    assert "checkpoint not found" in err and "nope" in err


def test_resume_corrupt_checkpoint(tmp_path, run_cli, capsys):
    ckpt = tmp_path / "run" / "checkpoints" / "last.pt"
    ckpt.parent.mkdir(parents=True)
    ckpt.write_bytes(b"not a checkpoint")
    err = run_error(run_cli, capsys, ["--resume", str(tmp_path / "run")])
    assert "corrupt" in err


def test_resume_incompatible_checkpoint(tmp_path, run_cli, capsys):
    out = tmp_path / "run"
    assert run_cli(quick_args(out, "supervised", 1))[0] == 0
    ckpt = out / "checkpoints" / "last.pt"
    state = torch.load(ckpt, weights_only=False)
    state["model"] = {"head.weight": torch.zeros(3, 3)}
    rewrite_checkpoint(state, ckpt)
    err = run_error(run_cli, capsys, ["--resume", str(out), "--steps", "2", "--extend"])  # finished: train on, so it loads
    assert "does not fit" in err


def test_resume_rejects_config_changes(tmp_path, run_cli, capsys):
    out = tmp_path / "run"
    assert run_cli(quick_args(out, "supervised", 1))[0] == 0
    err = run_error(run_cli, capsys, ["--resume", str(out), "--lr", "0.5"])
    assert "--lr" in err


def test_list(run_cli, capsys):
    from ssl_kd.cli import main

    assert main(["--list"]) == 0
    out = capsys.readouterr().out
    for name in ("fixmatch", "supervised", "cifar10_4k", "digits_100", "wrn28_2", "digits_net"):
        assert name in out


def assert_one_clean_line(err: str) -> None:
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in err, err


@pytest.mark.parametrize("extra,needle", [
    (["--lr", "-0.1"], "train.lr"),
    (["--lr", "0"], "train.lr"),
    (["--lr", "nan"], "train.lr"),
    (["--lr", "inf"], "train.lr"),
    (["--set", "algo.threshold=1.5"], "algo.threshold"),
    (["--set", "data.label_noise=2"], "data.label_noise"),
    (["--set", "train.momentum=-1"], "train.momentum"),
    (["--algo", "uda", "--set", "algo.temperature=0"], "algo.temperature"),
    (["--batch-size", "5000"], "--batch-size <= 300"),
])
def test_out_of_range_values(tmp_path, run_cli, capsys, extra, needle):
    out = tmp_path / "r"
    err = run_error(run_cli, capsys, [*quick_args(out), *extra])
    assert needle in err
    assert_one_clean_line(err)
    assert not out.exists()  # a failed start leaves no run folder


def test_config_file_errors(tmp_path, run_cli, capsys):
    from tests.conftest import REPO

    listing = tmp_path / "list.yaml"
    listing.write_text("- train\n- data\n")
    binary = tmp_path / "model.bin"
    binary.write_bytes(bytes(range(256)) * 4)
    for path, needle in ((listing, "top level must be a mapping"), (binary, "not a text file"), (tmp_path, "is a folder"),
                         (tmp_path / "nope.yaml", "file not found")):
        err = run_error(run_cli, capsys, [*quick_args(tmp_path / "r"), "--config", str(path)])
        assert needle in err, err
        assert_one_clean_line(err)
    example = err.split("such as ")[1].split()[0]
    assert (REPO / example).is_file()  # the missing-file message points to a real example


def test_example_config_trains(tmp_path, run_cli):
    from tests.conftest import REPO

    code, summary = run_cli([*quick_args(tmp_path / "r"), "--config", str(REPO / "configs" / "fixmatch_digits.yaml")])
    assert code == 0 and summary["selected_on"] == "val"


def test_read_only_out_is_a_clean_error(tmp_path, run_cli, capsys, monkeypatch):
    import errno
    from pathlib import Path

    def read_only(self, *args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system", str(self))

    monkeypatch.setattr(Path, "mkdir", read_only)  # root ignores chmod, so simulate the file system
    err = run_error(run_cli, capsys, quick_args(tmp_path / "r"))
    assert "read-only" in err and "--out" in err
    assert_one_clean_line(err)


@pytest.mark.parametrize("torch_style", [False, True])
def test_full_disk_keeps_the_last_good_checkpoint(tmp_path, run_cli, capsys, monkeypatch, torch_style):
    """torch.save reports ENOSPC as a RuntimeError ("unexpected pos ...", seen on a full tmpfs);
    a plain write reports OSError(ENOSPC). Both name the full disk and keep the last checkpoint."""
    import collections
    import errno

    import ssl_kd.trainer.checkpoint as checkpoint

    out = tmp_path / "r"
    calls = []
    real_save = torch.save

    def save(obj, path):
        calls.append(path)
        if len(calls) == 2:  # the second checkpoint finds the disk full half-way
            open(path, "wb").write(b"half")
            if torch_style:
                monkeypatch.setattr(checkpoint.shutil, "disk_usage", lambda p: collections.namedtuple("U", "total used free")(1, 1, 0))
                raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 576 vs 534")
            raise OSError(errno.ENOSPC, "No space left on device")
        real_save(obj, path)

    monkeypatch.setattr(checkpoint.torch, "save", save)
    err = run_error(run_cli, capsys, quick_args(out, "supervised", 4, "--eval-every", "2"))
    assert "disk is full" in err and "untouched" in err
    assert_one_clean_line(err)
    state = torch.load(out / "checkpoints" / "last.pt", weights_only=False)
    assert state["step"] == 2 and not list((out / "checkpoints").glob("*.tmp"))


def test_a_failing_save_that_is_not_a_full_disk_is_not_called_one(tmp_path, monkeypatch):
    import ssl_kd.trainer.checkpoint as checkpoint

    def broken(obj, path):
        raise RuntimeError("some other torch failure")

    monkeypatch.setattr(checkpoint.torch, "save", broken)
    with pytest.raises(RuntimeError, match="some other torch failure"):
        checkpoint.save_checkpoint({}, tmp_path / "last.pt")
    assert list(tmp_path.iterdir()) == []


# ----- issue 30.4: the last tracebacks, each one line -------------------------------------------------

@pytest.mark.parametrize("setting,needle", [
    ("train.lr_milestones=[1,2", "train.lr_milestones: '[1,2' is not a valid list"),  # YAML parse error
    ("train.seed=1180591620717411303424", "train.seed=1180591620717411303424 does not fit in 64 bits"),
    ("data.split_seed=-1180591620717411303424", "does not fit in 64 bits"),
])
def test_malformed_set_values(tmp_path, run_cli, capsys, setting, needle):
    out = tmp_path / "r"
    err = run_error(run_cli, capsys, [*quick_args(out), "--set", setting])
    assert needle in err
    assert_one_clean_line(err)
    assert not out.exists()


@pytest.mark.parametrize("content,needle", [
    ("train: {steps: [1, 2]}", "train.steps: [1, 2] is not a valid int"),
    ("train: {1: 2}", "unknown config key train.1"),
    ("train: {lr: {a: 1}}", "train.lr: {'a': 1} is not a valid float"),
])
def test_ill_typed_yaml_values(tmp_path, run_cli, capsys, content, needle):
    config = tmp_path / "c.yaml"
    config.write_text(content + "\n")
    err = run_error(run_cli, capsys, [*quick_args(tmp_path / "r"), "--config", str(config)])
    assert needle in err
    assert_one_clean_line(err)


def test_a_full_disk_at_the_first_checkpoint_does_not_say_resume(tmp_path, run_cli, capsys, monkeypatch):
    import errno

    import ssl_kd.trainer.checkpoint as checkpoint

    def full(obj, path):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoint.torch, "save", full)
    err = run_error(run_cli, capsys, quick_args(tmp_path / "r", "supervised", 2))
    assert "disk is full" in err and "nothing to resume" in err and "then resume" not in err
    assert_one_clean_line(err)
    monkeypatch.undo()
    assert run_cli(quick_args(tmp_path / "r", "supervised", 2))[0] == 0  # "run the same command again" works


def test_a_plugin_raising_keyboardinterrupt_does_not_offer_a_resume(tmp_path, run_cli, capsys):
    plugin = tmp_path / "stops.py"
    plugin.write_text("raise KeyboardInterrupt\n")
    out = tmp_path / "r"
    assert run_cli([*quick_args(out), "--plugin", str(plugin)])[0] == 130
    err = capsys.readouterr().err
    assert "nothing to resume" in err and "--resume" not in err and "Traceback" not in err
    assert not out.exists()


def test_ctrl_c_while_the_libraries_load_is_one_line_and_130(tmp_path):
    import os
    import subprocess
    import sys

    from tests.conftest import REPO

    # a real SIGINT while `from ssl_kd.cli import main` runs: the first import of yaml sends it
    (tmp_path / "yaml.py").write_text("import os, signal, time\nos.kill(os.getpid(), signal.SIGINT)\ntime.sleep(5)\n")
    import signal

    proc = subprocess.run([sys.executable, "tools/train.py", *quick_args(tmp_path / "r")], capture_output=True, text=True,
                          cwd=REPO, env={**os.environ, "PYTHONPATH": str(tmp_path)}, timeout=120,
                          preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # not ignored as in a background job
    assert proc.returncode == 130 and "Traceback" not in proc.stderr, proc.stderr[-500:]
    assert proc.stderr.strip() == "interrupted while starting; nothing was written"
