"""The benchmark and sweep tools run end to end on tiny sizes."""
from __future__ import annotations

import csv
import subprocess
import sys

from tests.conftest import REPO


def run_tool(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *argv], capture_output=True, text=True, cwd=REPO)


def test_bench_prints_table_for_two_algorithms(tmp_path):
    out = tmp_path / "bench.json"
    proc = run_tool("tools/bench.py", "--algos", "fixmatch,supervised", "--dataset", "digits_30", "--batch-size", "4",
                    "--uratio", "2", "--steps", "2", "--warmup", "1", "--device", "cpu", "--json", str(out))
    assert proc.returncode == 0, proc.stderr
    assert "| fixmatch |" in proc.stdout and "| supervised |" in proc.stdout and "1.00x" in proc.stdout
    assert out.exists()


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
