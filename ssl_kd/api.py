"""The Python API: train a run, load one, evaluate it and predict with it, list what is registered.

    import ssl_kd
    run = ssl_kd.train(algo="fixmatch", dataset="digits_30", steps=50, out="runs/quick")
    run.evaluate()["top1"]              # test metrics of the model the run reports
    run.predict(run.data.test_x[:8])    # class probabilities, one row per input

`train` resolves its settings and trains exactly as `ssl-kd train` (tools/train.py) does with the
same values, writing the same run folder; a user mistake raises an `ssl_kd.errors.SSLKDError`
subclass with a one-line message (the command line prints it as `error: ...`).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

if TYPE_CHECKING:  # torch is imported when a run is trained or loaded, not with `import ssl_kd`
    import torch
    from torch import nn

    from ssl_kd.data.types import SSLData
    from ssl_kd.run import LoadedRun


def setting(key: str, value: Any) -> str:
    """One override as the `--set KEY=VALUE` text the config parser reads back to the same value."""
    if isinstance(value, (list, tuple)):
        text = json.dumps(list(value))  # `[...]` is read as a YAML list
    elif value is None:
        text = "none"
    else:
        text = str(value)
    return f"{key}={text}"


def train(algo: str | None = None, dataset: str | None = None, steps: int | None = None, out: str | Path | None = None,
          *, config: str | Path | None = None, plugins: Sequence[str] = (), overwrite: bool = False,
          progress: bool = False, **overrides: Any) -> Run:
    """Train one run and return it.

    Args:
        algo: algorithm name (see `list_algorithms()`); default: the config's, else `fixmatch`.
        dataset: dataset name `<family>[_<labels>]`, e.g. `digits_30` (see `list_datasets()`).
        steps: total training steps (default: the dataset preset's).
        out: run folder (default: `runs/<algo>_<dataset>_s<seed>_<time>`).
        config: a YAML file with train:/data:/algo:/weights: sections, e.g. a run's config.yaml.
        plugins: Python files or importable modules registering extra algorithms, datasets or networks.
        overwrite: clear `out` first if it already holds a run.
        progress: show a progress bar on stderr.
        **overrides: any other config value: a bare name is a `train.` key (`lr=0.01`, `seed=1`,
            `device="cpu"`, `eval_every=25`); a dotted key names its section, passed as
            `**{"algo.threshold": 0.9, "data.split_seed": 1}`. They win over `config`, as `--set` does.

    Returns:
        The finished `Run` (its `summary` holds the figures `ssl-kd train` prints).
    """
    from ssl_kd import cli

    args = cli.parser().parse_args([])
    args.algo, args.dataset, args.steps = algo, dataset, steps
    args.out = str(out) if out is not None else None
    args.config = str(config) if config is not None else None
    args.plugin, args.overwrite, args.no_progress = list(plugins), overwrite, not progress
    args.set = [setting(key, value) for key, value in overrides.items()]
    plan = cli.make_plan(args)
    cli.train(plan.cfg, plan.run_dir, plan.ckpt, plan.plugins, plan.overwrite, plan.run_id, plan.fork)
    return Run(plan.run_dir, device=plan.cfg.train.device)


def load_run(path: str | Path, device: str = "auto", data_dir: str = "") -> Run:
    """A trained run, from its run folder (its `checkpoints/last.pt`) or one of its checkpoint files.

    Args:
        path: run folder or checkpoint file, e.g. `runs/x` or `runs/x/checkpoints/best.pt`.
        device: `auto`, `cpu` or `cuda`: where the model and data are placed.
        data_dir: the data folder, if it moved since training.

    The checkpoint, the run's plug-ins, its data and networks are loaded at once, so a wrong path
    or a moved data folder fails here.
    """
    run = Run(Path(path), device=device, data_dir=data_dir)
    run.loaded()
    return run


@dataclass
class Run:
    """A run folder, with its trained model loaded on first use.

    Attributes:
        path: the run folder, or the checkpoint file it was loaded from.
        device: where `evaluate` and `predict` run: `auto`, `cpu` or `cuda`.
        data_dir: the data folder, if it moved since training (empty: as the run recorded it).
    """

    path: Path
    device: str = "auto"
    data_dir: str = ""
    _loaded: LoadedRun | None = field(default=None, init=False, repr=False)

    @property
    def folder(self) -> Path:
        """The run folder (`path` itself, or the folder above the checkpoint's `checkpoints/`)."""
        return self.path.parent.parent if self.path.is_file() else self.path

    @property
    def summary(self) -> dict[str, Any] | None:
        """The run's summary.json (last, median and best test figures, steps, wall time); None before it ends."""
        path = self.folder / "summary.json"
        return json.loads(path.read_text()) if path.exists() else None

    @property
    def config(self) -> dict[str, Any]:
        """The resolved configuration the run trained with, by section (its config.yaml)."""
        import yaml

        return yaml.safe_load((self.folder / "config.yaml").read_text())

    def loaded(self) -> LoadedRun:
        """The checkpoint rebuilt: config, data, model and EMA model (`ssl_kd.run.LoadedRun`), loaded once."""
        if self._loaded is None:
            from ssl_kd.run import load_run as load

            self._loaded = load(self.path, self.device, self.data_dir)
        return self._loaded

    @property
    def data(self) -> SSLData:
        """The run's dataset with its splits (e.g. `data.test_x`, `data.test_y`, `data.class_names`)."""
        return self.loaded().data

    @property
    def model(self) -> nn.Module:
        """The model the run reports, in eval mode: its EMA when it keeps one, else the raw model."""
        from ssl_kd.export import chosen_model

        return chosen_model(self.loaded())

    def evaluate(self) -> dict[str, Any]:
        """Test metrics of `model`: top-1, balanced accuracy, macro-F1, per-class accuracy (percent) and
        loss; a text task's official metric beside them; MSE and correlations for a regression task."""
        from ssl_kd.trainer.evaluate import evaluate_data

        return evaluate_data(self.model, self.data)

    def predict(self, inputs: torch.Tensor | Sequence[str] | str | Path, batch_size: int = 64) -> torch.Tensor:
        """Class probabilities of `model`, one row per input (N, classes); a regression run's scores (N,).

        Args:
            inputs: image runs: uint8 images (N, C, H, W) of the training size, or a folder of
                .jpg/.png files (decoded to that size); text runs: sentences, a tab between the
                two of a pair.
            batch_size: inputs per forward pass.
        """
        import torch

        from ssl_kd.errors import ConfigError
        from ssl_kd.export import image_inputs, predict_outputs, text_inputs

        run = self.loaded()
        if isinstance(inputs, torch.Tensor):
            x = inputs
        elif run.data.modality == "text":
            x = text_inputs(run, [inputs] if isinstance(inputs, str) else [str(line) for line in inputs])[1]
        elif isinstance(inputs, (str, Path)):
            x = image_inputs(run, Path(inputs))[1]
        else:
            raise ConfigError(f"an image run predicts uint8 images (N,C,H,W) or a folder of images, not a "
                              f"{type(inputs).__name__}; give a tensor or a folder path")
        device = next(run.model.parameters()).device
        outputs = predict_outputs(self.model, x.to(device), run.data.policy, max(1, batch_size)).cpu()
        return outputs[:, 0] if run.data.is_regression else outputs.softmax(-1)


def list_algorithms() -> list[str]:
    """The registered algorithm names (plug-ins loaded so far included), e.g. `fixmatch`, `kdaif`."""
    from ssl_kd.registry import ALGORITHMS, discover_all

    discover_all()
    return ALGORITHMS.names()


def list_datasets() -> list[str]:
    """The registered dataset families and their listed presets, e.g. `digits`, `digits_30`, `cifar10_4k`
    (any `<family>_<labels>` is accepted, not only the listed presets)."""
    from ssl_kd.data.build import preset_name
    from ssl_kd.registry import DATASETS, discover_all

    discover_all()
    return [name for family in DATASETS.names()
            for name in (family, *(preset_name(family, n) for n in DATASETS.get(family).presets))]
