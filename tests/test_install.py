"""`pip install .` into a fresh virtual environment outside the repository: the installed `ssl-kd`
trains, evaluates and exports a digits run and sweeps, working in a folder outside the repository.

The new environment reuses the dependencies of the one running the tests (a .pth file naming its
site-packages folders, so torch is not installed again) and installs ssl_kd itself with
`--no-deps`; .pth files in those folders are not processed, so their editable ssl_kd stays out,
and the test checks that what runs is the copy installed into the new environment.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.install

# what a build needs: the metadata, the namespace's source folders (setup.py maps the last three into it)
SOURCES = ("pyproject.toml", "setup.py", "README.md", "LICENSE", "ssl_kd", "algorithms", "datasets", "tools")


def run(cmd: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc


def test_installed_console_script_trains_evaluates_and_exports(tmp_path):
    src, venv, work = tmp_path / "src", tmp_path / "venv", tmp_path / "work"
    src.mkdir()
    for name in SOURCES:  # a copy: the build writes build/ and *.egg-info beside the sources
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(REPO / name, src / name)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    env.update(OMP_NUM_THREADS="1", PIP_DISABLE_PIP_VERSION_CHECK="1", PIP_NO_INPUT="1")
    run([sys.executable, "-m", "venv", "--without-pip", str(venv)], tmp_path, env)
    python = venv / "bin" / "python"
    purelib = Path(run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], tmp_path, env).stdout.strip())
    deps = [p for p in sys.path if p.endswith("site-packages") and Path(p).is_dir()]
    (purelib / "_ssl_kd_test_deps.pth").write_text("\n".join(deps) + "\n")
    run([str(python), "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--ignore-installed", "--no-index",
         str(src)], tmp_path, env)

    work.mkdir()
    where = run([str(python), "-c", "import importlib.metadata as m, ssl_kd, ssl_kd.algorithms, ssl_kd.datasets, ssl_kd.tools; "
                 "print(ssl_kd.__version__, m.version('ssl_kd')); "
                 "print(*(p.__file__ for p in (ssl_kd, ssl_kd.algorithms, ssl_kd.datasets, ssl_kd.tools)), sep='\\n')"], work, env)
    versions, *files = where.stdout.splitlines()
    version, installed = versions.split()
    assert version == installed  # the version lives in one place and reaches the installed metadata
    assert len(files) == 4 and all(Path(f).is_relative_to(purelib) for f in files), files

    ssl_kd = str(venv / "bin" / "ssl-kd")
    trained = run([ssl_kd, "train", "--algo", "fixmatch", "--dataset", "digits_30", "--steps", "50", "--out", "run",
                   "--device", "cpu", "--no-progress", "--json"], work, env)
    assert json.loads(trained.stdout.splitlines()[-1])["steps"] == 50
    evaluated = json.loads(run([ssl_kd, "eval", "--ckpt", "run", "--device", "cpu"], work, env).stdout)
    assert evaluated["step"] == 50 and evaluated["algo"] == "fixmatch" and "top1" in evaluated["ema"]
    run([ssl_kd, "export", "run", "--out", "exported"], work, env)
    assert (work / "exported" / "model.pt2").is_file() and (work / "exported" / "preprocess.json").is_file()
    # a sweep starts its runs through the installed package, not through a tools/train.py beside it
    run([ssl_kd, "sweep", "--algos", "supervised", "--dataset", "digits_30", "--seeds", "1", "--jobs", "1", "--out", "sweep",
         "--", "--steps", "2", "--batch-size", "4", "--uratio", "1", "--device", "cpu"], work, env)
    assert json.loads((work / "sweep" / "supervised_s0" / "summary.json").read_text())["steps"] == 2
