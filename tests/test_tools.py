"""The benchmark and sweep tools run end to end on tiny sizes."""
from __future__ import annotations

import csv
import json
import subprocess
import sys

import pytest
import yaml

from tests.conftest import REPO


def run_tool(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *argv], capture_output=True, text=True, cwd=REPO)


def test_bench_prints_table_for_two_algorithms_and_their_floors(tmp_path):
    out = tmp_path / "bench.json"
    proc = run_tool("tools/bench.py", "--algos", "fixmatch,supervised", "--dataset", "digits_30", "--batch-size", "4",
                    "--uratio", "2", "--steps", "2", "--warmup", "1", "--device", "cpu", "--floor", "--json", str(out))
    assert proc.returncode == 0, proc.stderr
    assert "| fixmatch |" in proc.stdout and "| supervised |" in proc.stdout and "1.00x" in proc.stdout
    rows = {r["algo"]: r for r in json.loads(out.read_text())["rows"]}
    for row in rows.values():
        assert row["ratio_to_floor"] == pytest.approx(row["s_per_step"] / row["floor_s_per_step"])
    # FixMatch's floor forwards 4 + 2 * 8 images, supervised's 4: two distinct floors
    assert rows["fixmatch"]["floor_s_per_step"] != rows["supervised"]["floor_s_per_step"]


def test_bench_pil_pipeline_reports_images_per_second(tmp_path):
    out = tmp_path / "pil.json"
    proc = run_tool("tools/bench.py", "--pil-pipeline", "--dataset", "digits_30", "--batch-size", "4", "--uratio", "2",
                    "--steps", "3", "--warmup", "1", "--workers", "1", "--json", str(out))
    assert proc.returncode == 0, proc.stderr
    result = json.loads(out.read_text())
    assert result["batches"] == 3 and result["workers_per_loader"] == 1
    assert result["images_per_s"] == pytest.approx(4 * 3 * 3 / (3 * result["s_per_batch"]))


def test_sweep_writes_table_and_reuses_finished_runs(tmp_path):
    args = ("tools/sweep.py", "--algos", "supervised,fixmatch", "--dataset", "digits_30", "--seeds", "2", "--jobs", "2",
            "--out", str(tmp_path), "--", "--steps", "2", "--batch-size", "4", "--uratio", "1", "--device", "cpu")
    proc = run_tool(*args)
    assert proc.returncode == 0, proc.stderr
    rows = list(csv.DictReader((tmp_path / "results.csv").open()))
    assert [r["variant"] for r in rows] == ["supervised", "fixmatch"] and all(r["seeds"] == "2" for r in rows)
    assert "| fixmatch |" in (tmp_path / "table.md").read_text()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.endswith("_s1")) == ["fixmatch_s1", "supervised_s1"]
    mtime = (tmp_path / "fixmatch_s1" / "summary.json").stat().st_mtime
    assert run_tool(*args).returncode == 0
    assert (tmp_path / "fixmatch_s1" / "summary.json").stat().st_mtime == mtime


def test_sweep_reports_a_failing_run(tmp_path):
    proc = run_tool("tools/sweep.py", "--algos", "nosuchalgo", "--dataset", "digits_30", "--seeds", "1", "--out", str(tmp_path))
    assert proc.returncode == 2 and "nosuchalgo" in proc.stderr


def test_sweep_variants_and_vary_split_give_each_seed_its_own_split(tmp_path):
    proc = run_tool("tools/sweep.py", "--variant", "sup=--algo supervised", "--variant", "sup_lr=--algo supervised --lr 0.01",
                    "--vary-split", "--dataset", "digits_30", "--seeds", "2", "--out", str(tmp_path), "--",
                    "--steps", "1", "--batch-size", "4", "--device", "cpu")
    assert proc.returncode == 0, proc.stderr
    for label in ("sup", "sup_lr"):
        for seed in (0, 1):
            config = yaml.safe_load((tmp_path / f"{label}_s{seed}" / "config.yaml").read_text())
            assert config["data"]["split_seed"] == seed and config["train"]["seed"] == seed
    assert "| sup_lr |" in proc.stdout and "`--algo supervised --lr 0.01`" in proc.stdout


def test_sweep_refuses_a_split_seed_clash_and_bad_variants(tmp_path):
    clash = run_tool("tools/sweep.py", "--algos", "supervised", "--vary-split", "--dataset", "digits_30", "--out", str(tmp_path),
                     "--", "--set", "data.split_seed=3")
    assert clash.returncode == 2 and "--vary-split" in clash.stderr and "Traceback" not in clash.stderr
    bad = run_tool("tools/sweep.py", "--variant", "--algo kd", "--dataset", "digits_30", "--out", str(tmp_path))
    assert bad.returncode == 2 and "LABEL=" in bad.stderr
    twice = run_tool("tools/sweep.py", "--algos", "kd", "--variant", "kd=--algo kd", "--dataset", "digits_30", "--out", str(tmp_path))
    assert twice.returncode == 2 and "repeat (kd)" in twice.stderr


def test_every_tool_takes_a_run_folder_or_a_checkpoint_the_same_way(tmp_path, capsys):
    """eval, explain, export and predict: RUN (a folder or a checkpoint file) positionally, or --ckpt as before."""
    from ssl_kd.cli import main as train_main
    from tests.conftest import quick_args
    from tests.test_plugins import load_tool

    run = tmp_path / "run"
    assert train_main(quick_args(run, "supervised", 1)) == 0
    ckpt = run / "checkpoints" / "last.pt"
    capsys.readouterr()
    assert load_tool("eval").main([str(run), "--device", "cpu"]) == 0
    assert json.loads(capsys.readouterr().out)["step"] == 1
    assert load_tool("eval").main([str(ckpt), "--device", "cpu"]) == 0
    assert load_tool("explain").main([str(ckpt), "--top", "2", "--limit", "40", "--no-tensorboard", "--no-progress",
                                      "--out", str(tmp_path / "explain")]) == 0
    assert load_tool("export").main(["--ckpt", str(ckpt), "--out", str(tmp_path / "export")]) == 0
    assert load_tool("predict").main([str(run), "--unlabelled", "--out", str(tmp_path / "labels.csv")]) == 0
    capsys.readouterr()
    for tool in ("eval", "explain", "export", "predict"):
        extra = ["--out", str(tmp_path / "x")] if tool == "export" else []
        assert load_tool(tool).main([str(run), "--ckpt", str(tmp_path / "other.pt"), *extra]) == 2
        assert load_tool(tool).main(extra) == 2
        err = capsys.readouterr().err.splitlines()
        assert len(err) == 2 and "two checkpoints" in err[0] and "no run given" in err[1]
