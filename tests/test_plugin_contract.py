"""The plug-in contract as documented (README "Adding an algorithm" and the `Algorithm` docstring):
every name it tells a plug-in author to read exists on a real algorithm, batch and step output,
so the documentation cannot drift from the code."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from benchmarks.toy import TinyMLP, digits_ssl_data
from ssl_kd.algorithm import Algorithm, Batch, Context, StepOutput
from ssl_kd.algorithms.fixmatch import FixMatch, FixMatchConfig
from ssl_kd.config import TrainConfig

ROOT = Path(__file__).resolve().parents[1]
NAME = re.compile(r"`((?:self|batch|out)\.[A-Za-z_][\w.]*)")  # up to a call's "(" or an index's "["
KEY = {"self.step", "self.ctx.total_steps", "self.ctx.ema_model", "self.thresholder", "self.weigh", "self.ctx.data",
       "batch.x_l", "batch.y_l", "batch.idx_u", "out.loss", "out.pseudo_labels", "out.mask"}


def readme_section() -> str:
    text = (ROOT / "README.md").read_text()
    start = text.index("## Adding an algorithm")
    return text[start:text.index("\n## ", start + 1)]


def roots() -> dict[str, object]:
    data = digits_ssl_data(num_labelled=20, num_val=10)
    model = TinyMLP(hidden=8)
    ctx = Context(num_classes=10, total_steps=100, device=torch.device("cpu"), data=data, train_cfg=TrainConfig(),
                  ema_model=TinyMLP(hidden=8), make_net=lambda name: TinyMLP(hidden=8), autocast=torch.autocast)
    batch = Batch(x_l={"weak": data.train_x[:2]}, y_l=data.train_y[:2], idx_l=torch.arange(2),
                  x_u={"weak": data.train_x[2:4]}, idx_u=torch.arange(2, 4))
    return {"self": FixMatch(model, FixMatchConfig(), ctx), "batch": batch, "out": StepOutput(loss=torch.zeros(()))}


@pytest.mark.parametrize("source", ["README", "docstring"])
def test_every_documented_name_exists(source):
    text = readme_section() if source == "README" else Algorithm.__doc__ or ""
    names = set(NAME.findall(text))
    assert KEY <= names, f"the {source} no longer documents {sorted(KEY - names)}"
    objects = roots()
    for name in sorted(names):
        root, *path = name.rstrip(".").split(".")
        value = objects[root]
        for attribute in path:
            assert hasattr(value, attribute), f"{source} documents {name}, but {type(value).__name__} has no {attribute!r}"
            value = getattr(value, attribute)
