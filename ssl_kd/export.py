"""A trained model you can take away: a Hugging Face folder for `hf:` runs, a `torch.export` program
for image runs (tools/export.py), and predictions on new inputs (tools/predict.py).

- `hf:` run: `save_pretrained` of the model and its tokenizer, with `id2label`/`label2id` from the
  class names, so `AutoModelForSequenceClassification.from_pretrained(DIR)` and
  `pipeline("text-classification", model=DIR)` give the run's classes by name. A regression run
  (STS-B) exports `num_labels=1`, `problem_type="regression"` and its label named `score` (a
  pipeline then needs `function_to_apply="none"`: it applies a sigmoid to one output). A `:pool=mean`
  run cannot be exported this way (transformers' heads read their own pooling) and says so.
- image run: `model.pt2` (`torch.export.save`) taking uint8 images (N,C,H,W) of the training size
  and returning logits, with the [0,1] scaling and normalisation built in; `preprocess.json`
  records the size, mean, std and class names.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ssl_kd.augment.views import make_view
from ssl_kd.data.types import AugPolicy, SSLData
from ssl_kd.errors import ConfigError
from ssl_kd.text.hub import is_hf_name


class ImagePipeline(nn.Module):
    """uint8 images -> logits: the evaluation view (scale to [0,1], normalise) and the network."""

    def __init__(self, model: nn.Module, policy: AugPolicy) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("mean", torch.tensor(policy.mean).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(policy.std).view(1, -1, 1, 1))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model((images.float() / 255.0 - self.mean) / self.std)[0]


def chosen_model(run: Any) -> nn.Module:
    """The model the run reports: its EMA when it keeps one, else the raw model (in eval mode)."""
    return (run.ema_model if run.ema_model is not None else run.model).eval()


def export_hf(model: nn.Module, net: str, data: SSLData, max_length: int, out: Path) -> None:
    from ssl_kd.text.tokenise import load_tokenizer

    if getattr(model, "pool", "cls") != "cls":
        raise ConfigError(f"network {net!r} pools by mean, which a transformers classification head does not do; "
                          "export runs of hf: networks with the default pool=cls")
    hf = model.hf
    # a regression head (problem_type "regression", set when built) has one output: the score
    names = ["score"] if data.is_regression else list(data.class_names) or [str(i) for i in range(data.num_classes)]
    hf.config.id2label = dict(enumerate(names))
    hf.config.label2id = {name: i for i, name in enumerate(names)}
    hf.save_pretrained(out)
    tokenizer = load_tokenizer(net)
    tokenizer.model_max_length = max_length  # as the run tokenised (pipelines truncate to it when asked)
    tokenizer.save_pretrained(out)


def export_image(model: nn.Module, data: SSLData, out: Path) -> None:
    policy = data.policy
    assert isinstance(policy, AugPolicy)
    pipeline = ImagePipeline(model, policy).eval().cpu()
    example = data.test_x[:2].cpu()
    program = torch.export.export(pipeline, (example,), dynamic_shapes=({0: torch.export.Dim("batch", min=1)},))
    torch.export.save(program, out / "model.pt2")
    (out / "preprocess.json").write_text(json.dumps({
        "input": f"uint8 images (N,{example.shape[1]},{example.shape[2]},{example.shape[3]}), RGB, 0..255",
        "size": list(example.shape[2:]), "mean": list(policy.mean), "std": list(policy.std),
        "class_names": list(data.class_names), "output": "logits (N, classes)",
        "load": "torch.export.load('model.pt2').module()(images)",
    }, indent=2) + "\n")


def export_run(run: Any, out: Path) -> Path:
    """Write the run's reported model to `out` in the format its kind of network travels in."""
    out.mkdir(parents=True, exist_ok=True)
    model, net = chosen_model(run), run.cfg.train.net
    if is_hf_name(net):
        export_hf(model, net, run.data, run.cfg.data.max_length, out)
    else:
        export_image(model, run.data, out)
    return out


def eval_logits(model: nn.Module, x: torch.Tensor, policy: Any) -> torch.Tensor:
    """The model's logits on inputs as stored (uint8 images or token ids), as evaluation sees them."""
    with torch.no_grad():
        return model.eval()(make_view("none", x, policy))[0]


def read_sentences(lines: list[str]) -> list[tuple[str, ...]]:
    """One example per non-empty line; a tab separates the two sentences of a pair."""
    return [tuple(line.rstrip("\n").split("\t", 1)) for line in lines if line.strip()]


def text_inputs(run: Any, lines: list[str]) -> tuple[list[str], torch.Tensor]:
    """(the inputs as read, their token ids) with the run's tokenizer and maximum length."""
    from ssl_kd.text.tokenise import encode, load_tokenizer

    examples = read_sentences(lines)
    if not examples:
        raise ConfigError("no sentences to predict: give one per line (a tab between the two of a pair)")
    return ["\t".join(e) for e in examples], encode(load_tokenizer(run.cfg.train.net), examples, run.cfg.data.max_length)


def image_inputs(run: Any, folder: Path) -> tuple[list[str], torch.Tensor]:
    """(the image files under `folder`, decoded to the run's image size as uint8)."""
    from ssl_kd.data.decode import decode_files

    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    if not files:
        raise ConfigError(f"{folder} holds no .jpg/.jpeg/.png images to predict")
    size = int(run.data.train_x.shape[-1])
    images = decode_files(files, size, torch.device("cpu"), f"decoding {folder.name}")  # RGB
    if run.data.train_x.shape[1] == 1:  # a grey-scale dataset (digits): the channels' mean
        images = images.float().mean(1, keepdim=True).round().to(torch.uint8)
    return [str(p) for p in files], images


def predict_outputs(model: nn.Module, x: torch.Tensor, policy: Any, batch_size: int) -> torch.Tensor:
    """The model's outputs (logits, or a regression head's scores), batch by batch, with a progress bar on stderr."""
    from tqdm import tqdm

    out = []
    with torch.no_grad():
        for start in tqdm(range(0, x.shape[0], batch_size), desc="predicting", unit="batch", disable=None, leave=False):
            out.append(eval_logits(model, x[start:start + batch_size], policy).float())
    return torch.cat(out)
