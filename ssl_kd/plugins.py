"""Loading user plug-ins: a Python file or an importable module that registers algorithms,
datasets or networks with the registry decorators."""
from __future__ import annotations

import importlib
import importlib.util
import sys
import traceback
from pathlib import Path

from ssl_kd.errors import ConfigError
from ssl_kd.registry import discover_all


def load_plugin(spec: str) -> None:
    """Import `spec` (a .py path or a module name); any failure is a ConfigError naming it."""
    discover_all()  # built-ins first, so a plug-in that reuses a built-in name is caught
    path = Path(spec)
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
            importlib.import_module(spec)
    except ConfigError as err:
        raise ConfigError(f"--plugin {spec}: {err}") from err
    except Exception as err:  # noqa: BLE001 - any import failure is reported with its cause
        where = traceback.extract_tb(err.__traceback__)[-1]
        raise ConfigError(f"--plugin {spec} failed to import: {type(err).__name__}: {err} "
                          f"(at {where.filename}:{where.lineno}); fix the plug-in and run again") from err


def load_plugins(specs: list[str]) -> None:
    for spec in specs:
        load_plugin(spec)
