"""The Python API (ssl_kd.train / load_run / Run), the `python -m ssl_kd` entry point and the quick-start example."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
import yaml

import ssl_kd
from ssl_kd.errors import ConfigError, SSLKDError
from tests.conftest import REPO

TINY = {"device": "cpu", "batch_size": 8, "uratio": 2, "eval_batch_size": 512}


def python(*argv: str, cwd=REPO) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *argv], capture_output=True, text=True, cwd=cwd)


def test_import_is_cheap_and_names_the_api():
    proc = python("-c", "import sys, ssl_kd; print('torch' in sys.modules, sorted(ssl_kd.__all__))")
    assert proc.returncode == 0, proc.stderr
    loaded, names = proc.stdout.split(" ", 1)
    assert loaded == "False"  # the API is imported on first use
    assert {"train", "load_run", "Run", "list_algorithms", "list_datasets", "__version__"} <= set(eval(names))
    assert ssl_kd.train is ssl_kd.api.train
    with pytest.raises(AttributeError):
        ssl_kd.no_such_name


def test_lists_registered_names():
    assert {"fixmatch", "kdaif", "supervised"} <= set(ssl_kd.list_algorithms())
    assert {"digits", "digits_30", "cifar10_4k"} <= set(ssl_kd.list_datasets())


def test_train_evaluate_predict_agree_with_the_run_summary(tmp_path):
    # ema=0: the reported model is the raw one, which learns something in 20 steps
    run = ssl_kd.train(algo="fixmatch", dataset="digits_30", steps=20, out=tmp_path / "run", ema=0, seed=1,
                       **TINY, **{"algo.threshold": 0.5})
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert run.summary == summary and summary["steps"] == 20
    config = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert config["algo"]["threshold"] == 0.5 and config["train"]["seed"] == 1 and config["train"]["ema"] == 0
    metrics = run.evaluate()
    assert metrics["top1"] == pytest.approx(summary["last_top1"], abs=0.01) and metrics["top1"] > 15
    probs = ssl_kd.load_run(tmp_path / "run" / "checkpoints" / "last.pt").predict(run.data.test_x, batch_size=100)
    assert probs.shape == (run.data.test_y.numel(), 10)
    assert probs.sum(1).tolist() == pytest.approx([1.0] * probs.shape[0], abs=1e-5)
    assert 100 * (probs.argmax(1) == run.data.test_y).float().mean().item() == pytest.approx(metrics["top1"], abs=1e-4)


def test_api_mistakes_raise_one_line_errors(tmp_path):
    with pytest.raises(ConfigError, match="unknown algorithm 'nosuch'"):
        ssl_kd.train(algo="nosuch", dataset="digits_30", out=tmp_path / "a")
    with pytest.raises(ConfigError, match="algo.thresold"):
        ssl_kd.train(algo="fixmatch", dataset="digits_30", out=tmp_path / "b", **{"algo.thresold": 0.5})
    with pytest.raises(SSLKDError, match="checkpoint not found"):
        ssl_kd.load_run(tmp_path / "missing")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_module_entry_point_dispatches_to_the_tools(tmp_path):
    proc = python("-m", "ssl_kd", "--help")
    assert proc.returncode == 0 and all(c in proc.stdout for c in ("train", "eval", "export", "predict", "sweep", "paired"))
    bad = python("-m", "ssl_kd", "trian")
    assert bad.returncode == 2 and bad.stderr.startswith("error: unknown command 'trian'") and len(bad.stderr.splitlines()) == 1
    assert "usage: ssl-kd eval" in python("-m", "ssl_kd", "eval", "--help").stdout
    run = tmp_path / "run"
    train = python("-m", "ssl_kd", "train", "--algo", "supervised", "--dataset", "digits_30", "--steps", "2", "--batch-size", "8",
                   "--device", "cpu", "--out", str(run), "--no-progress", cwd=tmp_path)
    assert train.returncode == 0, train.stderr
    evaluated = python("-m", "ssl_kd", "eval", "--ckpt", str(run), "--device", "cpu", cwd=tmp_path)
    assert evaluated.returncode == 0, evaluated.stderr
    assert json.loads(evaluated.stdout)["step"] == 2


def test_quickstart_example_runs(tmp_path):
    proc = python(str(REPO / "examples" / "quickstart.py"), "--steps", "3", "--out", str(tmp_path / "run"), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "test top-1 of the reported model" in proc.stdout and proc.stdout.count("predicted") == 5
