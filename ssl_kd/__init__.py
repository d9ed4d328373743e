"""ssl_kd: semi-supervised learning and influence-weighted knowledge distillation in PyTorch.

The Python API, in three lines (see `ssl_kd.api` and examples/quickstart.py):

    import ssl_kd
    run = ssl_kd.train(algo="fixmatch", dataset="digits_30", steps=50, out="runs/quick")
    print(run.evaluate()["top1"])

`algorithms/` and `datasets/` install inside this namespace (`ssl_kd.algorithms`, `ssl_kd.datasets`),
and `tools/` as `ssl_kd.tools` (the `ssl-kd` command). The API names are imported on first use, so
`import ssl_kd` stays cheap (no torch until a name needs it).
"""
from __future__ import annotations

from typing import Any

__version__ = "0.2.0"  # the one place the version lives (pyproject.toml reads it)

_API = ("train", "load_run", "Run", "list_algorithms", "list_datasets")
__all__ = ["__version__", *_API]


def __getattr__(name: str) -> Any:
    """The API names, imported from `ssl_kd.api` when first asked for (PEP 562)."""
    if name in _API:
        from ssl_kd import api

        return getattr(api, name)
    raise AttributeError(f"module 'ssl_kd' has no attribute {name!r}")


def __dir__() -> list[str]:
    """The module's names with the API's, which exist before their first use."""
    return sorted({*globals(), *_API})
