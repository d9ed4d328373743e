"""User plug-ins: the README's worked example runs exactly as written; broken plug-ins fail clearly.

The example is read from README.md at test time, so the test breaks when the README drifts.
"""
from __future__ import annotations

import re
import shlex

import pytest
import yaml

from ssl_kd.cli import main as train_main
from ssl_kd.registry import ALGORITHMS, discover_all
from tests.conftest import REPO, quick_args


def readme_example() -> tuple[str, str, list[str]]:
    """(file name, code, train.py arguments) of the worked plug-in example under "Adding an algorithm"."""
    text = (REPO / "README.md").read_text()
    section = text.split("## Adding an algorithm", 1)[1].split("\n## ", 1)[0]
    code = re.search(r"```python\n(.*?)```", section, re.S)
    command = re.search(r"```bash\n(.*?)```", section, re.S)
    assert code and command, "README's 'Adding an algorithm' section lost its python or bash block"
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
