"""An export folder (ssl_kd.export) loaded back to predict with (`tools/predict.py EXPORT`), after
every file's SHA-256 digest is checked: a corrupt export is refused, never run with wrong numbers."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from ssl_kd.digest import SUFFIX, digest_path, verify
from ssl_kd.errors import DataError
from ssl_kd.export import batched, image_inputs, read_sentences

MARKERS = ("model.pt2", "config.json")  # an image export's program, a Hugging Face folder's config


def is_export_folder(path: Path) -> bool:
    return path.is_dir() and any((path / name).is_file() for name in MARKERS)


def verify_export(folder: Path) -> None:
    """Refuse an export with a file that does not match its recorded digest (files without one predate digests)."""
    for path in sorted(folder.iterdir()):
        if path.is_file() and not path.name.endswith(SUFFIX) and verify(path) is False:
            raise DataError(f"{path} does not match the SHA-256 recorded in {digest_path(path).name}: the file is "
                            "corrupt; export the run again (tools/export.py RUN --out FOLDER)")


@dataclass
class Predictions:
    names: list[str]  # each input as read (a sentence, an image file)
    outputs: torch.Tensor  # logits (N, classes), or scores (N, 1) of a regression model
    class_names: list[str]
    regression: bool


def predict_export(folder: Path, text_lines: Callable[[], list[str]], image_folder: Path, batch_size: int,
                   device: torch.device) -> Predictions:
    """An export's predictions on sentences (`text_lines()`) or on the images under `image_folder`."""
    verify_export(folder)
    if (folder / "model.pt2").is_file():
        return predict_image_export(folder, image_folder, batch_size)
    return predict_hf_export(folder, read_sentences(text_lines()), batch_size, device)


def predict_image_export(folder: Path, image_folder: Path, batch_size: int) -> Predictions:
    meta = json.loads((folder / "preprocess.json").read_text())
    program = torch.export.load(str(folder / "model.pt2")).module()  # a program traced on the CPU runs there
    names, x = image_inputs(image_folder, int(meta["size"][0]), int(meta.get("channels", 3)))
    outputs = batched(lambda rows: program(x[rows]), x.shape[0], batch_size)
    return Predictions(names, outputs, list(meta["class_names"]), False)


def predict_hf_export(folder: Path, examples: list[tuple[str, ...]], batch_size: int, device: torch.device) -> Predictions:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from ssl_kd.errors import ConfigError

    if not examples:
        raise ConfigError("no sentences to predict: give one per line (a tab between the two of a pair)")
    model = AutoModelForSequenceClassification.from_pretrained(folder).to(device).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)

    def forward(rows: slice) -> torch.Tensor:
        part = examples[rows]
        second = [e[1] for e in part] if len(part[0]) > 1 else None
        enc = tokenizer([e[0] for e in part], second, truncation=True, padding=True, return_tensors="pt").to(device)
        return model(**enc).logits.cpu()

    outputs = batched(forward, len(examples), batch_size)
    regression = model.config.problem_type == "regression"
    names = [model.config.id2label[i] for i in range(model.config.num_labels)]
    return Predictions(["\t".join(e) for e in examples], outputs, [] if regression else names, regression)
