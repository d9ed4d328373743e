"""tools/paired.py on synthetic run folders whose answer can be checked by hand."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from ssl_kd.errors import ConfigError
from ssl_kd.paired import bootstrap_interval, paired, read_runs, sign_test, t_interval
from tools.paired import main as paired_main


def fake_run(folder: Path, algo: str, seed: int, top1: float, dataset: str = "digits_30", **data: object) -> None:
    folder.mkdir(parents=True)
    config = {"train": {"algo": algo, "dataset": dataset, "seed": seed, "steps": 1000}, "data": {"split_seed": 0, **data}}
    (folder / "config.yaml").write_text(yaml.safe_dump(config))
    (folder / "summary.json").write_text(json.dumps({"last_top1": top1}))
    (folder / "metrics.jsonl").write_text(json.dumps({"step": 1000, "ema_top1": top1, "ema_val_top1": top1 - 10}) + "\n")


def test_bootstrap_of_two_differences_spans_them() -> None:
    # resampled means of (1, 3) are 1, 2 or 3 with chances 1/4, 1/2, 1/4: the 95% interval is [1, 3]
    assert bootstrap_interval(np.array([1.0, 3.0]), 10_000, 0) == (1.0, 3.0)
    assert bootstrap_interval(np.array([2.0, 2.0, 2.0]), 10_000, 5) == (2.0, 2.0)
    a, b = bootstrap_interval(np.array([1.0, -1.0, 4.0]), 10_000, 0), bootstrap_interval(np.array([1.0, -1.0, 4.0]), 10_000, 0)
    assert a == b  # seeded


def test_paired_difference_uses_common_seeds_only() -> None:
    result = paired({0: 80.0, 1: 82.0, 2: 90.0, 3: 50.0, 4: 70.0, 5: 71.0},
                    {0: 79.0, 1: 83.0, 2: 86.0, 4: 70.0, 5: 69.0}, 1000, 0)
    assert result.pairs == 5 and result.mean == pytest.approx(6 / 5)
    assert (result.wins, result.losses, result.ties) == (3, 1, 1)
    assert -1.0 <= result.low < result.mean < result.high <= 4.0
    assert result.t_low < result.low and result.t_high > result.mean
    assert result.sign_p == pytest.approx(0.625)  # 3 wins, 1 loss: 2 * P(X >= 3 | n=4) = 2 * 5/16
    assert paired({5: 1.0}, {0: 1.0}, 100, 0) is None


def test_t_interval_and_sign_test_by_hand() -> None:
    # diffs 1..5: mean 3, sd sqrt(2.5), t(0.975, 4) = 2.776445
    low, high = t_interval(np.arange(1.0, 6.0))
    half = 2.7764451051977987 * np.sqrt(2.5) / np.sqrt(5)
    assert (low, high) == (pytest.approx(3 - half), pytest.approx(3 + half))
    assert t_interval(np.array([2.0] * 5)) == (2.0, 2.0)
    assert sign_test(5, 0) == pytest.approx(2 / 32) and sign_test(3, 3) == 1.0 and sign_test(0, 0) == 1.0
    assert sign_test(9, 1) == pytest.approx(2 * 11 / 1024)


def test_below_five_pairs_no_interval_only_wlt_and_sign_p() -> None:
    result = paired({0: 80.0, 1: 82.0, 2: 90.0, 3: 81.0}, {0: 79.0, 1: 83.0, 2: 86.0, 3: 80.0}, 1000, 0)
    assert result.pairs == 4 and (result.low, result.high, result.t_low, result.t_high) == (None,) * 4
    assert (result.wins, result.losses, result.ties) == (3, 1, 0) and result.sign_p == pytest.approx(0.625)


def test_table_pairs_runs_across_sweep_folders(tmp_path, capsys) -> None:
    for seed, (ours, ref) in enumerate([(80.0, 79.0), (82.0, 83.0), (90.0, 86.0)]):
        fake_run(tmp_path / "a" / f"ours_s{seed}", "kdaif", seed, ours)
        fake_run(tmp_path / "a" / f"kd_s{seed}", "kd", seed, ref)
        fake_run(tmp_path / "b" / f"kd_plus2_s{seed}", "kd", seed, ref + 2)  # another sweep, same seeds
        fake_run(tmp_path / "c" / f"kd_s{seed}", "kd", seed, 10.0, unlabelled_mismatch=0.5)  # another setting
    (tmp_path / "a" / "ours_s3").mkdir()
    (tmp_path / "a" / "ours_s3" / "config.yaml").write_text("{}")  # unfinished: no summary.json
    out = tmp_path / "table.md"
    assert paired_main([str(tmp_path / d) for d in "abc"] + ["--ref", "kd", "--out", str(out)]) == 0
    text = out.read_text()
    assert "### digits_30, 1000 steps\n" in text and "### digits_30, 1000 steps, data.unlabelled_mismatch=0.5" in text
    assert "| ours | 0,1,2 | 82.0 (80.0-90.0) | +1.33 (n=3) | - | - | 2/1/0 | 1.000 |" in text  # 3 pairs: no interval
    assert "| kd_plus2 | 0,1,2 | 85.0 (81.0-88.0) | +2.00 (n=3) | - | - | 3/0/0 | 0.250 |" in text
    assert "| kd | 0,1,2 | 10.0 (10.0-10.0) |  |  |  |  |  |" in text
    assert "ours_s3" in capsys.readouterr().err


def test_a_run_given_twice_is_refused(tmp_path) -> None:
    fake_run(tmp_path / "a" / "kd_s0", "kd", 0, 1.0)
    fake_run(tmp_path / "b" / "kd_s0", "kd", 0, 2.0)
    with pytest.raises(ConfigError, match="both kd seed 0"):
        read_runs([tmp_path / "a", tmp_path / "b"], "last_top1")


def test_final_metrics_and_unknown_metric(tmp_path) -> None:
    fake_run(tmp_path / "kd_s0", "kd", 0, 70.0)
    (run,), _ = read_runs([tmp_path], "final_ema_val_top1")
    assert run.value == 60.0 and run.label == "kd"
    with pytest.raises(ConfigError, match="no metric 'nope'"):
        read_runs([tmp_path], "nope")
    with pytest.raises(ConfigError, match="neither a run folder"):
        read_runs([tmp_path / "kd_s0" / "missing"], "last_top1")


def test_vary_split_runs_pair_by_seed_and_split_seed(tmp_path) -> None:
    # --vary-split: run k has data.split_seed=k; same setting, paired seed by seed
    for seed in range(5):
        fake_run(tmp_path / "v" / f"flexmatch_s{seed}", "flexmatch", seed, 80.0 + seed, split_seed=seed)
        fake_run(tmp_path / "v" / f"flexmatch_w_s{seed}", "flexmatch", seed, 81.0 + seed + (seed % 2), split_seed=seed)
    out = tmp_path / "table.md"
    assert paired_main([str(tmp_path / "v"), "--ref", "flexmatch", "--out", str(out)]) == 0
    text = out.read_text()
    assert text.count("### ") == 1 and "### digits_30, 1000 steps, data.split_seed=seed (--vary-split)\n" in text
    row = next(line for line in text.splitlines() if line.startswith("| flexmatch_w |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[1] == "0,1,2,3,4" and cells[3] == "+1.40 (n=5)" and cells[6] == "5/0/0" and cells[7] == "0.062"
    assert cells[4] != "-" and cells[5].startswith("[+0.")  # both intervals from 5 pairs on


def test_runs_with_another_split_seed_do_not_pair(tmp_path) -> None:
    fake_run(tmp_path / "kd_s1", "kd", 1, 50.0, split_seed=1)
    fake_run(tmp_path / "ours_s1", "kdaif", 1, 60.0, split_seed=0)
    runs, _ = read_runs([tmp_path], "last_top1")
    assert {r.setting for r in runs} == {"digits_30, 1000 steps"}
    out = tmp_path / "t.md"
    assert paired_main([str(tmp_path), "--ref", "kd", "--out", str(out)]) == 0
    text = out.read_text()
    assert "split seeds vary" in text and "| ours | 1/0 | 60.0 (60.0-60.0) |  |" in text  # no common pair


def test_mismatch_figure_plots_every_share_and_label(tmp_path: Path) -> None:
    from tools.plot_mismatch import main as plot_main

    for share in (0.0, 0.5):
        for seed in range(5):
            fake_run(tmp_path / f"mm{share}" / f"supervised_s{seed}", "supervised", seed, 70.0 + seed,
                     unlabelled_mismatch=share)
            fake_run(tmp_path / f"mm{share}" / f"flexmatch_s{seed}", "flexmatch", seed, 80.0 + seed - 10 * share,
                     unlabelled_mismatch=share)
    out = tmp_path / "fig.png"
    assert plot_main([str(tmp_path / "mm0.0"), str(tmp_path / "mm0.5"), "--out", str(out)]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 10_000
    assert plot_main([str(tmp_path / "nothing"), "--out", str(out)]) == 2


def test_last_is_each_runs_own_metric(tmp_path) -> None:
    from ssl_kd.sweep import read_run

    fake_run(tmp_path / "img", "kd", 0, 70.0)
    fake_run(tmp_path / "cola", "kd", 0, 70.0, dataset="cola")
    (tmp_path / "cola" / "summary.json").write_text(json.dumps({"task_metric": "matthews", "last_top1": 70.0,
                                                                "last_matthews": 12.5, "median_matthews": 11.0}))
    assert read_run(tmp_path / "img")["last"] == 70.0
    assert read_run(tmp_path / "cola")["last"] == 12.5 and read_run(tmp_path / "cola")["median"] == 11.0
    runs, _ = read_runs([tmp_path / "cola"], "last")
    assert runs[0].value == 12.5


def test_a_default_tuple_option_written_as_a_yaml_list_is_no_setting(tmp_path) -> None:
    fake_run(tmp_path / "kd_s0", "kd", 0, 70.0, text_columns=[])  # config.yaml writes the default tuple (empty: detected) as a list
    runs, _ = read_runs([tmp_path], "last_top1")
    assert runs[0].setting == "digits_30, 1000 steps"
