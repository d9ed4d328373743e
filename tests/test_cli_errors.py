"""Every mistake a user can make ends with a clear message and exit code 2, never a traceback."""
from __future__ import annotations

import pytest
import torch

from tests.conftest import quick_args


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
    torch.save(state, ckpt)
    err = run_error(run_cli, capsys, ["--resume", str(out)])
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
