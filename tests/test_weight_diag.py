"""tools/weight_diag.py on synthetic run folders: medians and ranges per row and setting, by hand."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from tools.weight_diag import main as diag_main


def fake_run(folder: Path, algo: str, seed: int, logged: dict[str, float], finished: bool = True, **data: object) -> None:
    folder.mkdir(parents=True)
    config = {"train": {"algo": algo, "dataset": "digits_30", "seed": seed, "steps": 1000}, "data": {"split_seed": seed, **data}}
    (folder / "config.yaml").write_text(yaml.safe_dump(config))
    if finished:
        (folder / "summary.json").write_text(json.dumps({"last_top1": 90.0}))
    rows = [{"step": 500, "weight/applied_ood_ratio": 9.0}, {"step": 1000, "ema_top1": 90.0, **logged}]
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_median_and_range_of_the_last_evaluation_per_row_and_setting(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    sweep = tmp_path / "mm50"
    for seed, ratio in enumerate((0.5, 0.7, 0.6)):
        fake_run(sweep / f"flexmatch_w_s{seed}", "flexmatch", seed,
                 {"weight/applied_ood_ratio": ratio, "probe/correct_auc_weight": 0.8 + seed / 100},
                 unlabelled_mismatch=0.5)
    fake_run(sweep / "flexmatch_s0", "flexmatch", 0, {}, unlabelled_mismatch=0.5)  # unweighted: no row
    fake_run(sweep / "flexmatch_w_s3", "flexmatch", 3, {"weight/applied_ood_ratio": 0.0},
             finished=False, unlabelled_mismatch=0.5)  # unfinished: left out
    fake_run(tmp_path / "noise" / "flexmatch_w_s0", "flexmatch", 0, {"weight/applied_correct_auc": 0.79}, label_noise=0.2)
    assert diag_main([str(sweep), str(tmp_path / "noise")]) == 0
    out = capsys.readouterr().out
    blocks = {b.splitlines()[0]: b for b in out.split("### ")[1:]}
    mm = next(b for head, b in blocks.items() if "unlabelled_mismatch=0.5" in head)
    row = next(line for line in mm.splitlines() if line.startswith("| flexmatch_w |")).split(" | ")
    assert row[1] == "3"
    assert row[4] == "0.60 (0.50-0.70)"  # applied_ood_ratio: the last evaluation's, never step 500's 9.0
    assert row[5] == "0.81 (0.80-0.82)" and row[2] == "-"
    assert "| flexmatch |" not in mm
    noise = next(b for head, b in blocks.items() if "label_noise=0.2" in head)
    assert "| flexmatch_w | 1 | 0.79 (0.79-0.79) |" in noise


def test_no_weighted_run_is_a_one_line_error(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    fake_run(tmp_path / "s" / "fixmatch_s0", "fixmatch", 0, {})
    assert diag_main([str(tmp_path / "s")]) == 2
    assert "weights.kind=influence" in capsys.readouterr().err
