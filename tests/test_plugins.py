"""User plug-ins: the README's worked example runs exactly as written; broken plug-ins fail clearly.

The example is read from README.md at test time, so the test breaks when the README drifts.
"""
from __future__ import annotations

import re
import shlex

import pytest
import yaml

from ssl_kd.cli import main as train_main
from ssl_kd import plugins
from ssl_kd.registry import ALGORITHMS, DATASETS, discover_all
from tests.conftest import REPO, quick_args


def readme_example(title: str = "Adding an algorithm") -> tuple[str, str, list[str]]:
    """(file name, code, train.py arguments) of the worked plug-in example under `title`."""
    text = (REPO / "README.md").read_text()
    section = text.split(f"## {title}", 1)[1].split("\n## ", 1)[0]
    code = re.search(r"```python\n(.*?)```", section, re.S)
    command = re.search(r"```bash\n(.*?)```", section, re.S)
    assert code and command, f"README's {title!r} section lost its python or bash block"
    filename = re.match(r"# (\S+\.py)", code.group(1))
    assert filename, "the example's first line must name its file: '# name.py: ...'"
    line = next(ln for ln in command.group(1).splitlines() if "--plugin" in ln)
    args = shlex.split(line.split("#", 1)[0])
    return filename.group(1), code.group(1), args[args.index("tools/train.py") + 1:]


@pytest.fixture
def scratch_registry(monkeypatch):
    """Plug-ins loaded in-process register into a copy of the algorithm registry, dropped afterwards."""
    discover_all()  # the built-ins first: they register once per process
    monkeypatch.setattr(ALGORITHMS, "_items", dict(ALGORITHMS._items))
    monkeypatch.setattr(DATASETS, "_items", dict(DATASETS._items))
    monkeypatch.setattr(plugins, "_LOADED", {})


def test_readme_example_trains_from_a_temporary_folder(tmp_path, monkeypatch, run_cli, scratch_registry):
    filename, code, readme_args = readme_example()
    (tmp_path / filename).write_text(code)
    assert readme_args[readme_args.index("--plugin") + 1] == filename  # a path relative to the working folder
    monkeypatch.chdir(tmp_path)
    algo = readme_args[readme_args.index("--algo") + 1]
    out = tmp_path / "run"
    exit_code, summary = run_cli([*readme_args, *quick_args(out, algo, 2), "--set", "algo.entropy_weight=0.35",
                                  "--set", "train.log_every=1"])
    assert exit_code == 0 and summary["steps"] == 2
    config = yaml.safe_load((out / "config.yaml").read_text())
    assert config["train"]["algo"] == algo and config["algo"]["entropy_weight"] == 0.35
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(out / "tb"))
    events.Reload()
    assert "loss/entropy" in events.Tags()["scalars"]  # the plug-in's own scalar reaches TensorBoard


def test_plugin_that_fails_to_import_names_the_file_and_the_error(tmp_path, capsys, scratch_registry):
    plugin = tmp_path / "broken_plugin.py"
    plugin.write_text("import torch\n\nraise RuntimeError('deliberately broken plug-in')\n")
    assert train_main(["--plugin", str(plugin), "--list"]) == 2
    err = capsys.readouterr().err
    assert str(plugin) in err and "RuntimeError" in err and "deliberately broken plug-in" in err
    assert "Traceback" not in err


def test_plugin_registering_an_existing_name_is_refused(tmp_path, capsys, scratch_registry):
    plugin = tmp_path / "clash.py"
    plugin.write_text(
        "from ssl_kd.algorithms.supervised import Supervised\n"
        "from ssl_kd.registry import register_algorithm\n\n\n"
        "@register_algorithm('fixmatch')\nclass MyFixMatch(Supervised):\n    pass\n"
    )
    assert train_main(["--plugin", str(plugin), "--list"]) == 2
    err = capsys.readouterr().err
    assert str(plugin) in err and "'fixmatch' is already registered" in err and "choose another name" in err


def test_missing_plugin_file_is_a_clear_error(tmp_path, capsys):
    assert train_main(["--plugin", str(tmp_path / "nope.py"), "--list"]) == 2
    assert "file not found" in capsys.readouterr().err


def test_plugin_given_as_an_importable_module_name(tmp_path, monkeypatch, run_cli, scratch_registry):
    package = tmp_path / "my_ssl_plugins"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "halfsup.py").write_text(
        "from dataclasses import dataclass\n\n"
        "from ssl_kd.algorithms.supervised import Supervised\n"
        "from ssl_kd.registry import register_algorithm\n\n\n"
        "@dataclass\nclass HalfConfig:\n    scale: float = 0.5\n\n\n"
        "@register_algorithm('halfsup_plugin_test')\nclass HalfSupervised(Supervised):\n"
        "    Config = HalfConfig\n\n"
        "    def train_step(self, batch):\n"
        "        out = super().train_step(batch)\n"
        "        out.loss = self.cfg.scale * out.loss\n"
        "        return out\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    out = tmp_path / "run"
    code, summary = run_cli([*quick_args(out, "halfsup_plugin_test", 2), "--plugin", "my_ssl_plugins.halfsup",
                             "--set", "algo.scale=0.25"])
    assert code == 0 and summary["steps"] == 2
    assert yaml.safe_load((out / "config.yaml").read_text())["algo"] == {"scale": 0.25}


def load_tool(name: str):
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"{name}_tool", REPO / "tools" / f"{name}.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    return tool


@pytest.fixture
def stripes_run(tmp_path, monkeypatch, run_cli, scratch_registry):
    """The README's dataset plug-in trained for 4 steps from a temporary folder: (folder, plug-in file)."""
    filename, code, readme_args = readme_example("Adding a dataset")
    (tmp_path / filename).write_text(code)
    monkeypatch.chdir(tmp_path)
    dataset = readme_args[readme_args.index("--dataset") + 1]
    out = tmp_path / "run"
    exit_code, summary = run_cli([*quick_args(out, "fixmatch", 4), *readme_args[:2], "--dataset", dataset,
                                  "--eval-every", "2"])
    assert exit_code == 0 and summary["steps"] == 4
    return out, tmp_path / filename


def test_readme_dataset_example_records_its_plugin(stripes_run):
    out, plugin = stripes_run
    import hashlib

    import torch

    recorded = yaml.safe_load((out / "config.yaml").read_text())["plugins"]
    expected = {"spec": plugin.name, "path": str(plugin.resolve()), "sha256": hashlib.sha256(plugin.read_bytes()).hexdigest(),
                "from_step": 0}
    assert recorded == [expected]
    assert torch.load(out / "checkpoints" / "last.pt", weights_only=False)["plugins"] == [expected]


def test_resume_eval_and_explain_load_the_recorded_plugin(stripes_run, run_cli, monkeypatch, capsys):
    out, _ = stripes_run
    import json

    monkeypatch.setattr(DATASETS, "_items", {k: v for k, v in DATASETS._items.items() if k != "stripes"})
    monkeypatch.setattr(plugins, "_LOADED", {})  # as in a fresh process: only the run's record knows the plug-in
    code, summary = run_cli(["--resume", str(out), "--steps", "6", "--extend", "--no-progress"])
    assert code == 0 and summary["steps"] == 6
    capsys.readouterr()
    assert load_tool("eval").main(["--ckpt", str(out), "--device", "cpu"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert set(result["ema"]["per_class"]) == {"horizontal", "vertical"}  # class names from the plug-in
    assert load_tool("explain").main(["--ckpt", str(out), "--device", "cpu", "--top", "2", "--limit", "20",
                                      "--no-tensorboard"]) == 0
    monkeypatch.setattr(DATASETS, "_items", {k: v for k, v in DATASETS._items.items() if k != "stripes"})
    monkeypatch.setattr(plugins, "_LOADED", {})
    again = out.with_name("again")  # a new run from the old run's config.yaml brings its plug-in along
    code, summary = run_cli(["--config", str(out / "config.yaml"), "--out", str(again), "--steps", "2", "--no-progress"])
    assert code == 0 and summary["steps"] == 2
    assert yaml.safe_load((again / "config.yaml").read_text())["plugins"][0]["spec"] == "my_stripes.py"


def test_missing_or_changed_recorded_plugin_is_said_clearly(stripes_run, run_cli, monkeypatch, capsys):
    out, plugin = stripes_run
    monkeypatch.setattr(DATASETS, "_items", {k: v for k, v in DATASETS._items.items() if k != "stripes"})
    monkeypatch.setattr(plugins, "_LOADED", {})
    moved = plugin.with_name("moved.py")
    plugin.rename(moved)
    capsys.readouterr()
    assert load_tool("eval").main(["--ckpt", str(out), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert str(plugin.resolve()) in err and "missing" in err and "--plugin" in err
    assert load_tool("eval").main(["--ckpt", str(out), "--device", "cpu", "--plugin", str(moved)]) == 0
    monkeypatch.setattr(DATASETS, "_items", {k: v for k, v in DATASETS._items.items() if k != "stripes"})
    monkeypatch.setattr(plugins, "_LOADED", {})
    plugin.write_text(moved.read_text() + "\n# edited\n")
    capsys.readouterr()
    assert load_tool("eval").main(["--ckpt", str(out), "--device", "cpu"]) == 0
    assert "changed since" in capsys.readouterr().err


def test_a_resume_with_a_changed_plugin_keeps_both_versions(stripes_run, run_cli, monkeypatch, capsys):
    """Issue 18.5: the run records every plug-in version it was trained with, with its step range,
    and says so whenever it is loaded again."""
    out, plugin = stripes_run
    import hashlib

    import torch

    first = hashlib.sha256(plugin.read_bytes()).hexdigest()
    plugin.write_text(plugin.read_text() + "\n# edited\n")
    second = hashlib.sha256(plugin.read_bytes()).hexdigest()
    monkeypatch.setattr(DATASETS, "_items", {k: v for k, v in DATASETS._items.items() if k != "stripes"})
    monkeypatch.setattr(plugins, "_LOADED", {})
    code, _ = run_cli(["--resume", str(out), "--steps", "6", "--extend", "--no-progress"])
    assert code == 0
    recorded = torch.load(out / "checkpoints" / "last.pt", weights_only=False)["plugins"]
    assert [(r["sha256"], r["from_step"], r.get("to_step")) for r in recorded] == [(first, 0, 4), (second, 4, None)]
    assert yaml.safe_load((out / "config.yaml").read_text())["plugins"] == recorded
    capsys.readouterr()
    assert load_tool("eval").main(["--ckpt", str(out), "--device", "cpu"]) == 0
    err = capsys.readouterr().err
    assert "more than one plug-in version" in err and first[:12] in err and second[:12] in err
