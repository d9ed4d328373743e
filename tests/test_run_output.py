"""Issue 26 section 4: the EMA's warm-up, runs you can follow (one line per evaluation, evaluations
counted per run, a readable summary, JSON on stdout only with --json), one TensorBoard HParams
session per run holding the settings that apply, and a finished run's resume that writes nothing."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch

from ssl_kd.cli import parser, prepare
from ssl_kd.config import Config, DataConfig, TrainConfig
from ssl_kd.trainer.ema import warmup_decay
from ssl_kd.trainer.logger import run_hparams
from tests.conftest import make_trainer, quick_args, run_steps


def ema_params(trainer) -> list[torch.Tensor]:
    return [p.detach().clone() for p in trainer.ema_model.parameters()]


def model_params(trainer) -> list[torch.Tensor]:
    return [p.detach().clone() for p in trainer.model.parameters()]


def test_warmup_decay_is_the_bias_corrected_moving_average():
    assert warmup_decay(0.999, 0) == pytest.approx(0.1)  # the first update keeps 10% of the initialisation
    assert warmup_decay(0.999, 10) == pytest.approx(11 / 20)
    assert warmup_decay(0.99, 89) == pytest.approx(90 / 99)
    assert warmup_decay(0.99, 891) == 0.99  # (1 + t) / (10 + t) passes 0.99 at t = 891
    assert warmup_decay(0.999, 10**6) == 0.999


def test_trainer_ema_follows_the_warmup_by_hand_and_resumes_exactly(tmp_path):
    first = make_trainer(tmp_path, "fixmatch", 4)  # digits: train.ema = 0.99
    ema = ema_params(first)
    for t in range(2):  # ema_t+1 = d_t * ema_t + (1 - d_t) * model_t+1, d_t = min(0.99, (1 + t) / (10 + t))
        run_steps(first, 1)
        d = min(0.99, (1 + t) / (10 + t))
        ema = [d * e + (1 - d) * m for e, m in zip(ema, model_params(first))]
        for got, want in zip(ema_params(first), ema):
            torch.testing.assert_close(got, want)
    first.save()
    run_steps(first, 2)
    resumed = make_trainer(tmp_path, "fixmatch", 4)
    resumed.load(first.run_dir / "checkpoints" / "last.pt")
    run_steps(resumed, 1)  # the step in the checkpoint gives the third update its own decay, 3/12
    expected = [0.25 * e + 0.75 * m for e, m in zip(ema, model_params(resumed))]
    for got, want in zip(ema_params(resumed), expected):
        torch.testing.assert_close(got, want)
    run_steps(resumed, 1)
    for got, want in zip(ema_params(resumed), ema_params(first)):
        assert torch.equal(got, want)  # bit-identical to the uninterrupted run


def test_no_progress_prints_one_plain_line_per_evaluation(tmp_path, run_cli, capsys):
    assert run_cli(quick_args(tmp_path / "run", "fixmatch", 4, "--eval-every", "2"))[0] == 0
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("step ")]
    assert [line.split()[1] for line in lines] == ["2/4", "4/4"]
    for line in lines:
        for part in ("ema_top1 ", "top1 ", "lr ", "s/step", "ETA 0:"):
            assert part in line, line


def test_evaluations_default_to_twenty_per_run():
    assert TrainConfig(steps=300).eval_interval() == 15  # a 300-step text run evaluates 20 times, not once
    assert TrainConfig(steps=7).eval_interval() == 1
    assert TrainConfig(steps=300, eval_every=100).eval_interval() == 100
    assert TrainConfig(steps=300, evals=3).eval_interval() == 100
    for dataset in ("digits_30", "sst2"):
        cfg, _, _ = prepare(parser().parse_args(["--dataset", dataset, "--steps", "300", "--device", "cpu"]))
        assert cfg.train.eval_interval() == 15, dataset
    cfg, _, _ = prepare(parser().parse_args(["--dataset", "digits_30", "--steps", "300", "--eval-every", "50"]))
    assert cfg.train.eval_interval() == 50


def test_run_evaluates_train_evals_times(tmp_path, run_cli):
    args = quick_args(tmp_path / "run", "supervised", 8)
    del args[args.index("--eval-every"):args.index("--eval-every") + 2]  # the default: train.evals evaluations
    assert run_cli([*args, "--set", "train.evals=4"])[0] == 0
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [2, 4, 6, 8]


def test_summary_is_readable_and_json_only_with_the_flag(tmp_path, run_cli, capsys):
    out = tmp_path / "run"
    code, summary = run_cli(quick_args(out, "supervised", 2))
    printed = capsys.readouterr().out
    assert code == 0 and summary["last_top1"] is not None
    assert not any(line.lstrip().startswith("{") for line in printed.splitlines())  # no JSON without --json
    figure = next(line for line in printed.splitlines() if line.strip().startswith("last_top1"))
    assert float(figure.split()[1]) == summary["last_top1"]
    for part in (f"tensorboard --logdir {out / 'tb'}", str(out / "checkpoints" / "last.pt"), f"tools/eval.py {out}",
                 f"tools/export.py {out}", f"tools/predict.py {out}", f"tools/explain.py {out}"):
        assert part in printed, part
    code, summary = run_cli(quick_args(tmp_path / "json", "supervised", 2, "--json"))
    captured = capsys.readouterr()
    assert code == 0 and json.loads(captured.out) == summary  # stdout: the JSON alone; the text went to stderr
    assert "tools/eval.py" in captured.err


def session_starts(tb: Path) -> int:
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    return sum(1 for f in tb.glob("**/events.out.tfevents.*") for event in EventFileLoader(str(f)).Load()
               for value in event.summary.value if value.tag == "_hparams_/session_start_info")


def test_one_hparams_session_per_run_across_resumes(tmp_path, run_cli):
    out = tmp_path / "run"
    assert run_cli(quick_args(out, "supervised", 2))[0] == 0
    assert session_starts(out / "tb") == 1
    assert run_cli(["--resume", str(out), "--steps", "4", "--extend", "--no-progress"])[0] == 0
    assert run_cli(["--resume", str(out), "--no-progress"])[0] == 0  # finished: a no-op
    assert session_starts(out / "tb") == 1
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(out / "tb"))
    acc.Reload()
    summary = json.loads((out / "summary.json").read_text())
    assert acc.Scalars("hparam/last_top1")[-1].value == pytest.approx(summary["last_top1"])  # the figure, per session


def test_hparams_hold_the_settings_that_apply():
    text = Config(train=TrainConfig(optimizer="adamw", lr_schedule="linear", steps=300), data=DataConfig())
    keys = run_hparams(text, "text", "cpu")
    assert {"train.lr", "train.weight_decay", "train.warmup_steps", "data.split_seed", "data.max_length"} <= set(keys)
    for absent in ("train.momentum", "train.nesterov", "train.cosine_cycles", "train.lr_milestones", "train.channels_last",
                   "train.sync_bn", "data.image_size", "data.pad_mode", "data.placement", "train.evals"):
        assert absent not in keys, absent
    assert keys["train.eval_every"] == 15  # the interval that runs
    image = run_hparams(Config(train=TrainConfig(optimizer="sgd"), data=DataConfig()), "image", "cuda")
    assert {"train.momentum", "train.cosine_cycles", "train.channels_last", "data.pad_mode"} <= set(image)
    assert not {"train.lr_milestones", "train.lr_decay", "data.max_length", "train.cpu_amp"} & set(image)


def folder_digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*"))
            if p.is_file()}


def test_resume_of_a_finished_run_says_so_and_writes_nothing(tmp_path, run_cli, capsys):
    out = tmp_path / "run"
    assert run_cli(quick_args(out, "fixmatch", 2))[0] == 0
    before = folder_digest(out)
    capsys.readouterr()
    assert run_cli(["--resume", str(out), "--no-progress"])[0] == 0
    captured = capsys.readouterr()
    assert "is complete (2 of 2 steps)" in captured.err and len(captured.err.strip().splitlines()) == 1
    assert captured.out == ""
    assert run_cli(["--resume", str(out), "--json"])[0] == 0
    assert json.loads(capsys.readouterr().out) == json.loads((out / "summary.json").read_text())
    assert run_cli(["--resume", str(out / "checkpoints" / "last.pt"), "--out", str(tmp_path / "fork")])[0] == 0
    assert "nothing written" in capsys.readouterr().err and not (tmp_path / "fork").exists()
    assert folder_digest(out) == before  # byte for byte: config.yaml, summary.json, tb/ and checkpoints


def test_compare_with_json_keeps_stdout_to_the_two_summaries(tmp_path, run_cli, capsys):
    assert run_cli(quick_args(tmp_path / "run", "fixmatch", 2, "--compare", "supervised", "--json"))[0] == 0
    captured = capsys.readouterr()
    first, other = (json.loads(line) for line in captured.out.splitlines())
    assert first == json.loads((tmp_path / "run" / "summary.json").read_text())
    assert other == json.loads((tmp_path / "run_supervised" / "summary.json").read_text())
    assert "algorithm" in captured.err and "run_supervised" in captured.err  # the side-by-side table
