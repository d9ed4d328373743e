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
  records the size, channels, mean, std and class names.

Every export also holds a model card (`README.md`, ssl_kd.modelcard) and a SHA-256 digest beside
each file (ssl_kd.digest), which `tools/predict.py` checks before it loads one (ssl_kd.exported).
It is written into a temporary sibling folder and renamed into place when whole, so a failed export
(a full disk, a read-only folder) leaves nothing behind; its files get the usual permissions (umask).
"""
from __future__ import annotations

import errno
import io
import json
import os
import secrets
import shutil
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from ssl_kd.augment.views import make_view
from ssl_kd.data.types import AugPolicy, SSLData
from ssl_kd.digest import SUFFIX, digest_path, write_digest
from ssl_kd.errors import ConfigError, SSLKDError
from ssl_kd.modelcard import model_card
from ssl_kd.text.hub import is_hf_name
from ssl_kd.trainer.checkpoint import MIN_FREE_BYTES
from ssl_kd.trainer.rundir import os_error_message


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
    buffer = io.BytesIO()  # torch's file writer aborts the process on a full disk (c10::Error): Python writes the bytes
    torch.export.save(program, buffer)
    (out / "model.pt2").write_bytes(buffer.getbuffer())
    (out / "preprocess.json").write_text(json.dumps({
        "input": f"uint8 images (N,{example.shape[1]},{example.shape[2]},{example.shape[3]}), RGB, 0..255",
        "size": list(example.shape[2:]), "channels": int(example.shape[1]), "mean": list(policy.mean), "std": list(policy.std),
        "class_names": list(data.class_names), "output": "logits (N, classes)",
        "load": "torch.export.load('model.pt2').module()(images)",
    }, indent=2) + "\n")


def export_run(run: Any, out: Path) -> Path:
    """Write the run's reported model to `out` in the format its kind of network travels in, with
    its model card and digests: whole or not at all (see the module's notes)."""
    check_destination(out)
    tmp = out.parent / f".{out.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp"
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp.mkdir()  # the umask's mode, as the folder a user makes
        model, net = chosen_model(run), run.cfg.train.net
        if is_hf_name(net):
            export_hf(model, net, run.data, run.cfg.data.max_length, tmp)
        else:
            export_image(model, run.data, tmp)
        (tmp / "README.md").write_text(model_card(run, out))
        seal(tmp)
        put_in_place(tmp, out)
    except BaseException as err:
        shutil.rmtree(tmp, ignore_errors=True)
        message = write_error(err, out) if isinstance(err, Exception) else None
        if message is None:
            raise
        raise ConfigError(message) from err
    return out


def check_destination(out: Path) -> None:
    """--out must be a new folder, an empty one, or a previous export (which is replaced)."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file; give a folder to export into (a new one, or a previous export to replace)")
    if out.is_dir() and not os.access(out, os.W_OK | os.X_OK):  # it would be replaced by a writable folder
        raise ConfigError(os_error_message(PermissionError(errno.EACCES, "read-only"), out, "write the export into"))
    if out.is_dir() and any(out.iterdir()) and not is_export(out):
        raise ConfigError(f"--out {out} is a folder holding other files; give a new or empty folder "
                          "(a previous export there would be replaced)")


def is_export(folder: Path) -> bool:
    """A folder written by export_run: plain files only, each with its digest beside it."""
    files = list(folder.iterdir())
    return all(f.is_file() and (f.name.endswith(SUFFIX) or digest_path(f).is_file()) for f in files)


def seal(folder: Path) -> None:
    """Every file readable as the umask allows (writers such as safetensors create theirs 0600)
    and its SHA-256 recorded beside it."""
    mask = os.umask(0)
    os.umask(mask)
    for path in sorted(p for p in folder.iterdir() if p.is_file()):
        path.chmod(0o666 & ~mask)
        write_digest(path)


def put_in_place(tmp: Path, out: Path) -> None:
    """Rename the finished export onto `out` (a previous export is moved aside first, then removed)."""
    old = None
    if out.is_dir() and any(out.iterdir()):
        old = tmp.with_name(tmp.name + ".old")
        os.rename(out, old)
    try:
        os.replace(tmp, out)  # onto a missing or empty folder
    except OSError:
        if old is not None:
            os.rename(old, out)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def write_error(err: Exception, out: Path) -> str | None:
    """The line for a failed write, None for anything else (a bug keeps its traceback). Writers
    report a full disk as a RuntimeError (torch) or an error of their own (safetensors): the disk
    is looked at, as the checkpoint writer does."""
    if isinstance(err, SSLKDError):
        return None
    where = out.parent if out.parent.exists() else Path(".")
    if getattr(err, "errno", None) == errno.ENOSPC or shutil.disk_usage(where).free < MIN_FREE_BYTES:
        return f"cannot write the export {out}: the disk is full; free space or choose another --out (nothing was left behind)"
    if isinstance(err, OSError):
        return f"{os_error_message(err, out, 'write the export')} (nothing was left behind)"  # not the temporary's name
    return None


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


def image_inputs(folder: Path, size: int, channels: int) -> tuple[list[str], torch.Tensor]:
    """(the image files under `folder`, decoded to `size` as uint8 with `channels` channels)."""
    from ssl_kd.data.decode import decode_files

    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    if not files:
        raise ConfigError(f"{folder} holds no .jpg/.jpeg/.png images to predict")
    images = decode_files(files, size, torch.device("cpu"), f"decoding {folder.name}")  # RGB
    if channels == 1:  # a grey-scale dataset (digits): the channels' mean
        images = images.float().mean(1, keepdim=True).round().to(torch.uint8)
    return [str(p) for p in files], images


def predict_outputs(model: nn.Module, x: torch.Tensor, policy: Any, batch_size: int) -> torch.Tensor:
    """The model's outputs (logits, or a regression head's scores), batch by batch, with a progress bar on stderr."""
    return batched(lambda rows: eval_logits(model, x[rows], policy), x.shape[0], batch_size)


def batched(forward: Callable[[slice], torch.Tensor], n: int, batch_size: int) -> torch.Tensor:
    """`forward` of rows 0..n in batches (no gradients), concatenated as float, with a progress bar on stderr."""
    from tqdm import tqdm

    out = []
    with torch.no_grad():
        for start in tqdm(range(0, n, batch_size), desc="predicting", unit="batch", disable=None, leave=False):
            out.append(forward(slice(start, start + batch_size)).float())
    return torch.cat(out)
