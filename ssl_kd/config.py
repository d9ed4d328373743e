"""Typed run configuration.

Precedence, lowest first: dataclass defaults < the dataset preset's protocol defaults <
`--config file.yaml` < flags given on the command line < `--set section.key=value`.
Unknown keys and ill-typed values raise ConfigError naming the key and the fix.
"""
from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from typing import Any

import yaml

from ssl_kd.errors import ConfigError
from ssl_kd.weighting.config import WeightsConfig, moved_key_error


@dataclass
class TrainConfig:
    """The trainer's settings (FixMatch protocol defaults)."""

    algo: str = "fixmatch"
    dataset: str = "digits_100"
    net: str = ""  # empty: the dataset preset's network
    seed: int = 0
    steps: int = 2**20
    eval_every: int = 0  # evaluate and checkpoint every N steps; 0: `evals` evaluations spread over the run
    evals: int = 20  # evaluations per run when eval_every is 0 (the last step always evaluates)
    log_every: int = 10  # TensorBoard scalars every N steps
    batch_size: int = 64  # labelled batch B
    uratio: int = 7  # mu: the unlabelled batch is mu * B
    eval_batch_size: int = 1024
    lr: float = 0.03
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4
    lr_schedule: str = "cosine"  # cosine | multistep (see ssl_kd/trainer/schedule.py)
    cosine_cycles: float = 7 / 16  # FixMatch: lr * cos(7*pi*k / (16*K))
    lr_milestones: tuple[float, ...] = (0.625, 0.75, 0.875)  # multistep: fractions of steps (150/180/210 of 240 epochs)
    lr_decay: float = 0.1  # multistep: factor at each milestone
    warmup_steps: int = 0
    ema: float = 0.999  # EMA decay of the evaluated model; 0 disables the EMA
    device: str = "auto"  # auto | cpu | cuda
    amp: bool = True  # bf16 autocast on CUDA (ignored on the CPU)
    cpu_amp: bool = False  # bf16 autocast on the CPU too (ssl_kd.trainer.amp; BENCHMARKS.md issue 21 measures it)
    channels_last: bool = True  # on CUDA only
    compile: bool = False  # torch.compile the network
    sync_bn: bool = False  # torchrun: SyncBatchNorm across ranks (CUDA) instead of per-rank statistics
    dist_timeout_s: float = 600.0  # torchrun: a collective waiting this long for another rank raises (no hang)
    optimizer: str = "auto"  # auto (the network's own: AdamW for hf: nets, else SGD) | sgd | adamw
    data_dir: str = ""  # empty: $SSL_KD_DATA, else ./data
    download: bool = False
    out: str = ""  # empty: runs/<algo>_<dataset>_s<seed>_<time>
    save_every: int = 0  # checkpoint every N steps (0: at every evaluation)
    check_finite_every: int = 50  # check losses and weights for NaN/inf every N steps (and before every save); 0: only before saves
    median_last: int = 20  # summary.json median over the last N evaluations
    # what best.pt is chosen on: val (the validation split) | last (the last evaluation) | test (an
    # oracle, named so in summary.json); empty: val when there is a validation split, else last
    select_on: str = ""
    progress: bool = True
    extended: list[str] = field(default_factory=list)  # a record of every `--resume --extend` (step, old and new total)

    def eval_interval(self) -> int:
        """Steps between evaluations: `eval_every`, else `steps / evals` rounded up (300 steps: every 15)."""
        return self.eval_every or -(-self.steps // self.evals)


@dataclass
class DataConfig:
    """How the dataset's splits are made (independent of the training seed)."""

    split_seed: int = 0
    # validation examples per class carved out of the training set; none (the default): 0 for a
    # benchmark preset, and for your own data (ssl_kd.data.own) a tenth of the smallest labelled class
    # unless you give a validation split (its own file, split or folder); 0: no validation split
    val_per_class: int | None = None
    # your own data: the unlabelled pool also holds the labelled examples (the FixMatch protocol;
    # a benchmark preset's pool always does); false: only your unlabelled examples
    pool_with_labelled: bool = False
    label_noise: float = 0.0  # fraction of labelled labels flipped (noise probe)
    noise_mode: str = "symmetric"  # symmetric | pairwise (to the next class)
    # class mismatch: None = all classes; S in [0, 1] = seen classes only, a share S of the
    # unlabelled pool from the unseen ones (ssl_kd.data.mismatch)
    unlabelled_mismatch: float | None = None
    max_length: int = 128  # text: tokens per example, special tokens included (longer ones are truncated)
    # where the training and test tensors live (ssl_kd.data.placement): auto = on the training device
    # when they fit in `device_budget` of its free memory, else in host memory with per-step copies
    placement: str = "auto"  # auto | device | host
    device_budget: float = 0.5  # auto: the share of the free device memory the data may take
    folder: str = ""  # the family's folder; empty: <data-dir>/<family>; relative paths are under the data dir
    image_size: int = 64  # imagefolder: side of the stored square uint8 images (shorter side resized, centre crop)
    decode_cache: bool = True  # imagefolder: keep the decoded tensors in $SSL_KD_CACHE/images for the next run
    pad_mode: str = ""  # the random crop's padding: "" = the dataset's (reflect, FixMatch's) | reflect | zeros
    # textfile/hfdataset: the text column, or two for sentence pairs; empty: detected from the obvious
    # names (text, sentence, sentence1+sentence2, question, ...) when exactly one fits (ssl_kd.text.table)
    text_columns: tuple[str, ...] = ()
    label_column: str = "label"  # textfile/hfdataset: the label column
    test_fraction: float = 0.0  # textfile/hfdataset without an evaluation split: the training share held out


# data options that decide where the data lives or whether decoded images are cached, never a result
# (runs differing only in them are comparable: ssl_kd.paired pairs them)
LOCATION_ONLY = ("placement", "device_budget", "decode_cache")
# data options only one modality reads (TensorBoard's HParams tab leaves out the other's)
MODALITY_ONLY = {"image": ("pad_mode", "image_size"), "text": ("max_length", "text_columns", "label_column", "test_fraction")}


@dataclass
class Config:
    train: TrainConfig = field(default_factory=TrainConfig)
    data: DataConfig = field(default_factory=DataConfig)
    algo: Any = None  # the algorithm's own config dataclass instance
    weights: WeightsConfig = field(default_factory=WeightsConfig)  # per-example loss weights (ssl_kd.weighting)

    def to_dict(self) -> dict[str, Any]:
        return {
            "train": dataclasses.asdict(self.train),
            "data": dataclasses.asdict(self.data),
            "algo": dataclasses.asdict(self.algo) if self.algo is not None else {},
            "weights": dataclasses.asdict(self.weights),
        }


SECTIONS = ("train", "data", "algo", "weights")


def coerce(value: Any, typ: Any, key: str) -> Any:
    """Convert `value` (a YAML value or a `--set` string) to the field type `typ`, or raise."""
    origin = typing.get_origin(typ)
    if origin is typing.Union or str(origin) == "<class 'types.UnionType'>":
        args = [a for a in typing.get_args(typ) if a is not type(None)]
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            return None
        return coerce(value, args[0], key)
    if origin in (tuple, list):
        if isinstance(value, str):
            try:
                value = yaml.safe_load(value) if value.strip().startswith("[") else value.split(",")
            except yaml.YAMLError as err:
                problem = getattr(err, "problem", None) or str(err).splitlines()[0]
                raise ConfigError(f"{key}: {value!r} is not a valid list ({problem}); write e.g. {key}=[1,2]") from None
        (inner, *_) = typing.get_args(typ) or (str,)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}; write e.g. {key}=[1,2]")
        return origin(coerce(v, inner, key) for v in value)
    try:
        if typ is bool:
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.lower() in ("true", "1", "yes", "on"):
                return True
            if isinstance(value, str) and value.lower() in ("false", "0", "no", "off"):
                return False
            raise ValueError
        if typ is int:
            if isinstance(value, bool):
                raise ValueError
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            if isinstance(value, str):
                number = float(value)  # accepts 1e3 and 2**... is not allowed
                if not number.is_integer():
                    raise ValueError
                return int(number)
            return int(value)
        if typ is float:
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        if typ is str:
            if not isinstance(value, (str, int, float)):
                raise ValueError
            return str(value)
    except (ValueError, TypeError):  # TypeError: a list or mapping where a number belongs (YAML's `lr: {a: 1}`)
        name = getattr(typ, "__name__", str(typ))
        raise ConfigError(f"{key}: {value!r} is not a valid {name}; give {'an' if name[0] in 'aeiou' else 'a'} {name} value, "
                          f"e.g. --set {key}=...")
    return value


def field_types(obj: Any) -> dict[str, Any]:
    hints = typing.get_type_hints(type(obj))
    return {f.name: hints[f.name] for f in dataclasses.fields(obj)}


def set_field(obj: Any, section: str, key: str, value: Any) -> None:
    """Set `obj.key` from an untyped value, checking the key exists and the type fits."""
    types = field_types(obj)
    if key not in types:
        import difflib

        moved = moved_key_error(key) if section == "algo" else None
        if moved is not None:
            raise moved

        close = difflib.get_close_matches(key, list(types), n=1)
        hint = f" Did you mean {section}.{close[0]}?" if close else ""
        raise ConfigError(
            f"unknown config key {section}.{key}.{hint} Valid keys in {section}: {', '.join(sorted(types))}."
        )
    setattr(obj, key, coerce(value, types[key], f"{section}.{key}"))


def apply_mapping(cfg: Config, mapping: dict[str, Any], origin: str) -> None:
    """Apply a nested {section: {key: value}} mapping (a YAML file's content)."""
    if not isinstance(mapping, dict):
        raise ConfigError(f"{origin}: expected a mapping of sections (train, data, algo, weights), got {type(mapping).__name__}")
    for section, values in mapping.items():
        if section not in SECTIONS:
            raise ConfigError(f"{origin}: unknown section {section!r}; use train, data, algo or weights")
        if not isinstance(values, dict):
            raise ConfigError(f"{origin}: section {section!r} must be a mapping of key: value")
        for key, value in values.items():
            set_field(getattr(cfg, section), section, str(key), value)  # `train: {1: 2}`: an unknown key named "1"


def apply_set(cfg: Config, assignment: str) -> None:
    """Apply one `--set section.key=value` (a bare key means train.key)."""
    if "=" not in assignment:
        raise ConfigError(f"--set {assignment!r}: expected key=value, e.g. --set train.lr=0.05")
    dotted, value = assignment.split("=", 1)
    section, _, key = dotted.strip().rpartition(".")
    section = section or "train"
    if section not in SECTIONS:
        raise ConfigError(f"--set {assignment!r}: unknown section {section!r}; use train., data., algo. or weights.")
    set_field(getattr(cfg, section), section, key, value.strip())


EXAMPLE_CONFIG = "configs/fixmatch_digits.yaml"


def load_yaml(path: str) -> dict[str, Any]:
    """The mapping in a YAML config file; anything else is a ConfigError naming the file and the fix."""
    try:
        with open(path, encoding="utf-8") as f:
            content = yaml.safe_load(f)
    except FileNotFoundError:
        raise ConfigError(f"--config {path}: file not found; give the path of a YAML file such as {EXAMPLE_CONFIG}")
    except IsADirectoryError:
        raise ConfigError(f"--config {path}: is a folder; give a YAML file such as {path.rstrip('/')}/config.yaml")
    except UnicodeDecodeError:
        raise ConfigError(f"--config {path}: not a text file; give a YAML file such as {EXAMPLE_CONFIG}")
    except PermissionError:
        raise ConfigError(f"--config {path}: permission denied; make the file readable")
    except yaml.YAMLError as err:
        first = " ".join(str(err).split())
        raise ConfigError(f"--config {path}: not valid YAML ({first}); fix the file")
    if content is None:
        return {}
    if not isinstance(content, dict):
        raise ConfigError(f"--config {path}: the top level must be a mapping of sections (train:, data:, algo:), "
                          f"got a {type(content).__name__}; see {EXAMPLE_CONFIG}")
    return content
