"""The `weights` config section: per-example loss weights that any algorithm takes.

`kind=none` (the default) leaves every algorithm exactly as it is; `kind=influence` multiplies each
weighted example's loss term by a weight derived from its head-restricted influence on a
validation loss (ssl_kd.influence). `kdaif` is `kd` with `kind=influence` as its default.
"""
from __future__ import annotations

from dataclasses import dataclass

from ssl_kd.errors import ConfigError

KINDS = ("none", "influence")
COMBINES = ("multiply", "gate")
MAPS = ("sigmoid", "exp_minmax", "quantile", "labelled_threshold")
HARD_MAPS = ("quantile", "labelled_threshold")  # maps whose weights are 0 or 1 (never renormalised)
REFERENCES = ("auto", "labelled", "val", "crossfit")
SCORE_VIEWS = ("clean", "strong")
RELATIVE = ("none", "cosine", "relatif")


@dataclass
class WeightsConfig:
    kind: str = "none"  # none | influence
    # how the weight meets the algorithm's own mask m: multiply (w * m: weights on what the mask admits) |
    # gate (m where m > 0, else min(w, 1): influence admits what the mask would drop)
    combine: str = "multiply"
    schedule: str = "periodic"  # static (once, at the end of the warm-up) | periodic | online (every step)
    refresh_every: int = 50  # periodic: steps between influence solves
    warmup: float = 0.2  # fraction of train.steps during which every weight is 1
    map: str = "sigmoid"  # sigmoid | exp_minmax (the paper's example code) | quantile | labelled_threshold
    temperature: float = 3.0  # sigmoid: temperature in units of the scores' robust standard deviation
    renormalise: bool = True  # soft maps: rescale the weights to mean 1 over each batch
    max_weight: float = 5.0  # clip the weights to [0, max_weight]
    drop: float = 0.2  # quantile: share of each batch (or pseudo-class) dropped; labelled_threshold: share of the labelled reference's own scores above the threshold
    per_class: bool = False  # quantile: drop the share within each target class instead of the whole batch
    ema: float = 0.0  # per-example smoothing of weights across visits (0: none)
    reference: str = "auto"  # labelled | val | crossfit | auto (val for weighted labelled data when there is one, else labelled)
    folds: int = 3  # crossfit: folds of the labelled set; one is left out of the student's loss per period
    reference_size: int = 1024  # at most this many reference examples per solve (a fresh random subset each time)
    reference_view: str = "none"  # view of the reference images: none (clean) | weak | strong
    score_view: str = "clean"  # clean (the example's clean image, eval mode, like the reference) | strong (the loss's forward)
    damping_fraction: float = 0.1  # damping = this fraction of the head Hessian's mean eigenvalue + weight decay
    reference_tau: float = 4.0  # temperature of the reference loss (> 1: a memorised labelled set still has a gradient)
    relative: str = "cosine"  # none | cosine (score / |example gradient|) | relatif (score / sqrt(g^T H^-1 g), dense solves)
    accumulate: bool = True  # weight from each example's running mean score over its visits (restarts on a new target)
    accumulate_prior: float = 1.0  # pseudo-count of a zero score in that mean
    probe_size: int = 1024  # unlabelled examples scored at each evaluation for the weight diagnostics

    @property
    def active(self) -> bool:
        return self.kind != "none"

    def check(self) -> None:
        """One line naming the bad key and the fix, for every value out of its set or range."""
        for key, choices in (("kind", KINDS), ("combine", COMBINES), ("map", MAPS), ("reference", REFERENCES),
                             ("score_view", SCORE_VIEWS), ("relative", RELATIVE)):
            if getattr(self, key) not in choices:
                raise ConfigError(f"weights.{key}={getattr(self, key)!r}: use one of {', '.join(choices)}")
        if not 0 <= self.warmup < 1:
            raise ConfigError(f"weights.warmup={self.warmup}: give a fraction of train.steps in [0, 1)")
        if not 0 < self.drop < 1:
            raise ConfigError(f"weights.drop={self.drop}: give a share in (0, 1)")
        if self.folds < 2:
            raise ConfigError(f"weights.folds={self.folds}: give at least 2 folds")
        if self.reference_size < 1 or self.probe_size < 1:
            raise ConfigError("weights.reference_size and weights.probe_size must be >= 1")


# influence options that lived in `algo.*` (kdaif, dkdaif) before the weights section; an old key
# stops the run at start naming its new home
MOVED_ALGO_KEYS = {
    "schedule": "schedule", "refresh_every": "refresh_every", "weight_warmup": "warmup", "weight_map": "map",
    "weight_temperature": "temperature", "renormalise": "renormalise", "max_weight": "max_weight",
    "weight_ema": "ema", "reference": "reference", "folds": "folds", "reference_size": "reference_size",
    "reference_view": "reference_view", "score_view": "score_view", "damping_fraction": "damping_fraction",
    "reference_tau": "reference_tau", "relative": "relative", "accumulate": "accumulate",
    "accumulate_prior": "accumulate_prior", "probe_size": "probe_size",
}


def moved_key_error(key: str) -> ConfigError | None:
    """The error for an influence option given under `algo.` (None if `key` never moved)."""
    if key == "gate":
        return ConfigError("algo.gate moved: gate pseudo-labels with the algorithm's own mask and let influence admit "
                           "the rest, e.g. --set algo.threshold=0.95 --set weights.combine=gate")
    if key in MOVED_ALGO_KEYS:
        new = MOVED_ALGO_KEYS[key]
        return ConfigError(f"algo.{key} moved to weights.{new}: use --set weights.{new}=... (YAML: a `weights:` section)")
    return None
