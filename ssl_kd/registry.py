"""Name -> class registries for algorithms, datasets and networks, with automatic discovery.

Discovery imports every module of a package; an import error propagates (never silently drops
an algorithm, the failure mode of hand-kept import lists).
"""
from __future__ import annotations

import difflib
import importlib
import pkgutil
from typing import Callable, Generic, Iterator, TypeVar

from ssl_kd.errors import ConfigError

T = TypeVar("T")


class Registry(Generic[T]):
    """A named collection of classes or factories filled by a decorator."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator registering `obj` under `name`; a duplicate name is an error."""

        def deco(obj: T) -> T:
            if name in self._items and self._items[name] is not obj:
                old = self._items[name]
                raise ConfigError(
                    f"{self.kind} name {name!r} is already registered by "
                    f"{getattr(old, '__module__', '?')}.{getattr(old, '__qualname__', old)}; "
                    f"choose another name for {getattr(obj, '__module__', '?')}."
                    f"{getattr(obj, '__qualname__', obj)}."
                )
            self._items[name] = obj
            return obj

        return deco

    def get(self, name: str) -> T:
        """The entry for `name`, or a ConfigError listing the known names and the closest match."""
        if name in self._items:
            return self._items[name]
        raise ConfigError(unknown_name_message(self.kind, name, self.names()))

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: str) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())


def unknown_name_message(kind: str, name: str, known: list[str]) -> str:
    close = difflib.get_close_matches(name, known, n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    return f"unknown {kind} {name!r}.{hint} Known {kind}s: {', '.join(known)}."


def discover(package: str) -> None:
    """Import every module of `package` so their register decorators run."""
    pkg = importlib.import_module(package)
    for info in pkgutil.iter_modules(pkg.__path__, prefix=f"{package}."):
        if not info.name.rsplit(".", 1)[-1].startswith("_"):
            importlib.import_module(info.name)


ALGORITHMS: Registry = Registry("algorithm")
DATASETS: Registry = Registry("dataset")
NETWORKS: Registry = Registry("network")

register_algorithm = ALGORITHMS.register
register_network = NETWORKS.register


def discover_all() -> None:
    """Load the built-in algorithms, datasets and networks."""
    for package in ("ssl_kd.nets", "ssl_kd.datasets", "ssl_kd.algorithms"):
        discover(package)
