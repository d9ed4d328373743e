"""Loading user plug-ins: a Python file or an importable module that registers algorithms,
datasets or networks with the registry decorators.

A run records each plug-in it loaded (`spec`, absolute file `path`, `sha256` of the file) in its
`config.yaml` and checkpoints; `--resume`, `tools/eval.py` and `tools/explain.py` load the
recorded plug-ins again (`load_recorded`), saying when a file is missing or has changed. Plug-ins
given with `--plugin` replace the recorded ones (e.g. a plug-in that moved).
"""
from __future__ import annotations

import hashlib
import importlib
import importlib.util
import sys
import traceback
from pathlib import Path
from typing import Any

from ssl_kd.errors import ConfigError
from ssl_kd.registry import discover_all


_LOADED: dict[str, dict[str, str]] = {}  # absolute path -> record, for plug-in files loaded in this process


def file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def load_plugin(spec: str) -> dict[str, str]:
    """Import `spec` (a .py path or a module name) and return its record; any failure is a
    ConfigError naming it. A file already loaded in this process is not imported twice."""
    discover_all()  # built-ins first, so a plug-in that reuses a built-in name is caught
    path = Path(spec)
    if spec.endswith(".py") and str(path.resolve()) in _LOADED:
        return _LOADED[str(path.resolve())]
    try:
        if spec.endswith(".py"):
            if not path.is_file():
                raise ConfigError(f"--plugin {spec}: file not found; give the path of a Python file or an importable module name")
            name = f"ssl_kd_plugin_{path.stem}"
            module_spec = importlib.util.spec_from_file_location(name, path)
            assert module_spec is not None and module_spec.loader is not None
            module = importlib.util.module_from_spec(module_spec)
            sys.modules[name] = module
            try:
                module_spec.loader.exec_module(module)
            except BaseException:
                del sys.modules[name]  # no half-imported plug-in left behind
                raise
        else:
            module = importlib.import_module(spec)
    except ConfigError as err:
        raise ConfigError(f"--plugin {spec}: {err}") from err
    except Exception as err:  # noqa: BLE001 - any import failure is reported with its cause
        where = traceback.extract_tb(err.__traceback__)[-1]
        raise ConfigError(f"--plugin {spec} failed to import: {type(err).__name__}: {err} "
                          f"(at {where.filename}:{where.lineno}); fix the plug-in and run again") from err


    source = Path(getattr(module, "__file__", "") or spec).resolve()
    record = {"spec": spec, "path": str(source), "sha256": file_sha256(source) if source.is_file() else ""}
    if spec.endswith(".py"):
        _LOADED[str(source)] = record
    return record


def load_plugins(specs: list[str]) -> list[dict[str, str]]:
    return [load_plugin(spec) for spec in specs]


def load_recorded(records: list[dict[str, Any]] | None, given: list[str], what: str) -> list[dict[str, str]]:
    """Load the plug-ins a run recorded (or, if any are `given`, those instead); `what` names the
    run for the messages. A missing file is an error, a changed one a warning."""
    if given:
        return load_plugins(given)
    loaded = []
    for record in records or []:
        path, spec = Path(record["path"]), record["spec"]
        if spec.endswith(".py") and not path.is_file():
            raise ConfigError(f"{what} was trained with the plug-in {path}, which is missing; restore it, "
                              f"or pass its new location with --plugin FILE")
        if path.is_file() and record.get("sha256") and file_sha256(path) != record["sha256"]:
            print(f"warning: the plug-in {path} changed since {what} was trained (sha256 "
                  f"{record['sha256'][:12]} -> {file_sha256(path)[:12]}); loading the current file", file=sys.stderr)
        loaded.append({**load_plugin(str(path) if spec.endswith(".py") else spec), "spec": spec})
    return loaded
