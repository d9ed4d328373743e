"""Loading user plug-ins: a Python file or an importable module that registers algorithms,
datasets or networks with the registry decorators.

A run records each plug-in it loaded (`spec`, absolute file `path`, `sha256` of the file, and the
step it was first used at, `from_step`) in its `config.yaml` and checkpoints; `--resume`,
`tools/eval.py` and `tools/explain.py` load the recorded plug-ins again (`load_recorded`), saying
when a file is missing or has changed. Plug-ins given with `--plugin` replace the recorded ones
(e.g. a plug-in that moved). A version replaced at a resume stays in the record with `to_step`
(`with_history`), so a run trained with two versions says so whenever it is loaded.
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
from ssl_kd.trainer.distributed import env_is_main


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
    if spec.endswith(".py") and not path.is_file():
        raise ConfigError(f"--plugin {spec}: file not found; give the path of a Python file or an importable module name")
    try:
        if spec.endswith(".py"):
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
    except SystemExit as err:  # sys.exit() in a plug-in must not end the run without a word
        raise ConfigError(f"--plugin {spec} called sys.exit({err.code!r}) while being imported; "
                          f"remove the exit from the plug-in's top level and run again") from err
    except Exception as err:  # noqa: BLE001 - any import failure is reported with its cause
        raise ConfigError(f"--plugin {spec} failed to import: {type(err).__name__}: {err}{where(err)}; "
                          f"fix the plug-in and run again") from err

    source = Path(getattr(module, "__file__", "") or spec).resolve()
    record = {"spec": spec, "path": str(source), "sha256": file_sha256(source) if source.is_file() else ""}
    if spec.endswith(".py"):
        _LOADED[str(source)] = record
    return record


def where(err: BaseException) -> str:
    """` (at FILE:LINE)` of the innermost frame in the plug-in's own code, not in importlib's machinery
    nor in this loader ("" when the import failed before any of its code ran, e.g. no such module)."""
    machinery = (str(Path(importlib.__file__).parent), __file__)
    frames = [f for f in traceback.extract_tb(err.__traceback__)
              if not f.filename.startswith("<frozen") and not f.filename.startswith(machinery)]
    return f" (at {frames[-1].filename}:{frames[-1].lineno})" if frames else ""


def load_plugins(specs: list[str]) -> list[dict[str, str]]:
    return [load_plugin(spec) for spec in specs]


def load_recorded(records: list[dict[str, Any]] | None, given: list[str], what: str) -> list[dict[str, str]]:
    """Load the plug-ins a run recorded (or, if any are `given`, those instead); `what` names the
    run for the messages. A missing file is an error, a changed one a warning."""
    warn_versions(records, what)
    if given:
        return load_plugins(given)
    loaded = []
    for record in current(records):
        path, spec = Path(record["path"]), record["spec"]
        if spec.endswith(".py") and not path.is_file():
            raise ConfigError(f"{what} was trained with the plug-in {path}, which is missing; restore it, "
                              f"or pass its new location with --plugin FILE")
        if path.is_file() and record.get("sha256") and file_sha256(path) != record["sha256"] and env_is_main():
            print(f"warning: the plug-in {path} changed since {what} was trained (sha256 "
                  f"{record['sha256'][:12]} -> {file_sha256(path)[:12]}); loading the current file", file=sys.stderr)
        loaded.append({**load_plugin(str(path) if spec.endswith(".py") else spec), "spec": spec})
    return loaded


def current(records: list[dict[str, Any]] | None) -> list[dict[str, Any]]:
    """The plug-in records in use now (not replaced at a resume)."""
    return [r for r in records or [] if r.get("to_step") is None]


def warn_versions(records: list[dict[str, Any]] | None, what: str) -> None:
    """Say when a run was trained with more than one version of its plug-ins, with their step ranges."""
    records = records or []
    if len(current(records)) == len(records) or not env_is_main():
        return
    versions = "; ".join(f"{r['path']} sha256 {(r.get('sha256') or '?')[:12]} steps {r.get('from_step', 0)}-"
                         f"{r.get('to_step', '')}" for r in records)
    print(f"warning: {what} was trained with more than one plug-in version: {versions}", file=sys.stderr)


def with_history(recorded: list[dict[str, Any]] | None, loaded: list[dict[str, str]], step: int) -> list[dict[str, Any]]:
    """The run's plug-in records after resuming at `step` with `loaded`: a recorded version still in
    use keeps its record; one no longer used (changed, moved, replaced) stays with `to_step`; a new
    one starts at `from_step`."""
    def same(a: dict[str, Any], b: dict[str, Any]) -> bool:
        return a["path"] == b["path"] and a.get("sha256") == b.get("sha256")

    now = current(recorded)
    kept = [r for r in recorded or [] if r.get("to_step") is not None]
    kept += [r if any(same(r, n) for n in loaded) else {**r, "to_step": step} for r in now]
    return kept + [{**n, "from_step": step} for n in loaded if not any(same(r, n) for r in now)]
