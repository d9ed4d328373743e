"""The user's own data with unlabelled examples (ssl_kd.data.own): a CSV with empty labels, a
save_to_disk dataset with -1 labels and an `unlabelled` split, images in train/<class> + unlabelled/;
best.pt chosen on validation (ssl_kd.trainer.selection), and the errors of each."""
from __future__ import annotations

import csv
import json
import random
from pathlib import Path

import pytest
import torch

from ssl_kd.cli import main as train_main
from ssl_kd.config import DataConfig
from ssl_kd.data.build import build_dataset
from ssl_kd.data.types import NO_LABEL
from ssl_kd.errors import ConfigError, DataError
from ssl_kd.trainer.monitor import defined
from tests.conftest import make_trainer, quick_args
from tests.test_imagefolder import write_image
from tests.text_fixtures import sentence, text_args, text_env  # noqa: F401 (fixture)

LABELS = ("neg", "pos")


def write_csv(path: Path, rows: list[dict[str, str]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def rows(n: int, seed: int, labelled: bool = True) -> list[dict[str, str]]:
    rng = random.Random(seed)
    return [{"sentence": sentence(rng, i % 2), "label": LABELS[i % 2] if labelled else ""} for i in range(n)]


def csv_folder(root: Path, labelled: int = 300, unlabelled: int = 200) -> Path:
    """train.csv: `labelled` rows, then `unlabelled` rows with an empty label; test.csv only."""
    write_csv(root / "train.csv", rows(labelled, 0) + rows(unlabelled, 1, labelled=False))
    write_csv(root / "test.csv", rows(20, 2))
    return root


def test_a_csv_with_empty_labels_trains_fixmatch_on_exactly_its_labels_and_selects_on_validation(text_env, tmp_path, capsys):
    folder = csv_folder(tmp_path / "mine")
    data = build_dataset("textfile", DataConfig(folder=str(folder)), tmp_path, False, text_env["net"])
    assert data.labelled_idx.numel() + data.val_idx.numel() == 300 and data.val_idx.numel() == 30  # 15 per class carved
    assert data.train_y[data.val_idx].bincount().tolist() == [15, 15]
    assert int(data.labelled_idx.max()) < 300 and data.unlabelled_idx.tolist() == list(range(300, 500))
    assert (data.train_y[data.unlabelled_idx] == NO_LABEL).all() and not data.pool_truth
    assert data.train_ids[300] == "train.csv:301" and data.train_text[300] == rows(1, 1, labelled=False)[0]["sentence"]
    with_labelled = build_dataset("textfile", DataConfig(folder=str(folder), pool_with_labelled=True), tmp_path, False,
                                  text_env["net"])
    assert with_labelled.unlabelled_idx.numel() == 200 + 270
    out = tmp_path / "run"
    assert train_main(text_args(text_env, out, "fixmatch", 2, "textfile", "--set", f"data.folder={folder}")) == 0
    err = capsys.readouterr().err
    assert "text column(s): sentence (detected" in err and "your labels: the 270 examples you labelled" in err
    assert "labelled 270 (neg 135, pos 135); unlabelled pool 200 (40% of your training examples are unlabelled)" in err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["selected_on"] == "val" and "test_top1_at_best_val" in summary


def save_hf(folder: Path, names: tuple[str, ...] = LABELS, train_labels: list[int] | None = None) -> Path:
    """train: 40 labelled + 30 with -1 (ClassLabel's no label); validation and test labelled; an
    `unlabelled` split without a label column."""
    datasets = pytest.importorskip("datasets")
    features = datasets.Features({"sentence": datasets.Value("string"), "label": datasets.ClassLabel(names=list(names))})
    rng = random.Random(3)

    def split(labels: list[int]) -> object:
        return datasets.Dataset.from_dict({"sentence": [sentence(rng, max(y, 0) % 2) for y in labels], "label": labels},
                                          features=features)

    labels = train_labels if train_labels is not None else [i % 2 for i in range(40)] + [-1] * 30
    extra = datasets.Dataset.from_dict({"sentence": [sentence(rng, i % 2) for i in range(10)]})
    datasets.DatasetDict({"train": split(labels), "validation": split([0, 1] * 4), "test": split([0, 1] * 5),
                          "unlabelled": extra}).save_to_disk(str(folder))
    return folder


def test_a_save_to_disk_dataset_with_minus_one_labels_trains_and_selects_on_its_validation_split(text_env, tmp_path, capsys):
    folder = save_hf(tmp_path / "hf")
    data = build_dataset("hfdataset", DataConfig(folder=str(folder)), tmp_path, False, text_env["net"])
    assert data.labelled_idx.tolist() == list(range(40)) and data.unlabelled_idx.tolist() == list(range(40, 80))
    assert data.val_idx.tolist() == list(range(80, 88)) and data.test_y.numel() == 10  # the user's own validation split
    assert data.train_ids[79] == "unlabelled:10" and data.train_ids[80] == "validation:1"
    out = tmp_path / "run"
    assert train_main(text_args(text_env, out, "fixmatch", 2, "hfdataset", "--set", f"data.folder={folder}")) == 0
    assert "validation: your 8 validation examples" in capsys.readouterr().err
    assert json.loads((out / "summary.json").read_text())["selected_on"] == "val"


def write_images(root: Path) -> Path:
    """train/<class> (6 each), unlabelled/ at two depths (5), val/<class> and test/<class> (2 each)."""
    g = torch.Generator().manual_seed(0)
    image = lambda c: (torch.randint(0, 40, (3, 20, 20), generator=g, dtype=torch.uint8) + 200 * torch.eye(3, dtype=torch.uint8)[c][:, None, None])  # noqa: E731
    for split, count in (("train", 6), ("val", 2), ("test", 2)):
        for c, name in enumerate(("ant", "bee", "cat")):
            for i in range(count):
                write_image(root / split / name / f"{i}.png", image(c))
    for i, rel in enumerate(("a.png", "b.jpg", "deep/c.png", "deep/er/d.png", "e.png")):
        write_image(root / "unlabelled" / rel, image(i % 3))
    return root


def image_args(tmp_path: Path, root: Path, *extra: str) -> list[str]:
    argv = quick_args(tmp_path / "run", "fixmatch", 2, "--net", "cnn_small", "--batch-size", "3", *extra)
    argv[argv.index("digits_30")] = "imagefolder"
    return [*argv, "--set", f"data.folder={root}", "--set", "data.image_size=16", "--set", "data.decode_cache=false"]


def test_images_in_train_and_unlabelled_folders_train_fixmatch_and_select_on_val(tmp_path, run_cli):
    root = write_images(tmp_path / "set")
    data = build_dataset("imagefolder", DataConfig(folder=str(root), image_size=16, decode_cache=False), tmp_path, False)
    assert data.labelled_idx.tolist() == list(range(18)) and data.unlabelled_idx.tolist() == list(range(18, 23))
    assert data.val_idx.tolist() == list(range(23, 29)) and data.train_x.shape == (29, 3, 16, 16)
    assert [Path(p).relative_to(root / "unlabelled").as_posix() for p in data.train_ids[18:23]] == \
        ["a.png", "b.jpg", "deep/c.png", "deep/er/d.png", "e.png"]
    assert (data.train_y[18:23] == NO_LABEL).all() and not data.pool_truth
    code, summary = run_cli(image_args(tmp_path, root))
    assert code == 0 and summary["selected_on"] == "val"


def test_a_pool_without_ground_truth_logs_no_pseudo_label_accuracy(tmp_path):
    from ssl_kd.cli import parser, prepare
    from ssl_kd.run import build_data
    from ssl_kd.trainer.trainer import Trainer

    cfg, run_dir, _ = prepare(parser().parse_args(image_args(tmp_path, write_images(tmp_path / "set"))))
    trainer = Trainer(cfg, build_data(cfg), torch.device("cpu"), run_dir)
    logs, out = trainer.train_one_step()
    assert out.pseudo_labels is not None and "train/mask_ratio" in logs
    assert not any("pseudo_label_acc" in k for k in logs)


def test_masked_pseudo_label_accuracy_is_absent_when_the_mask_admits_nothing(tmp_path):
    trainer = make_trainer(tmp_path / "run", "fixmatch", 2, "--set", "algo.threshold=1.0")
    logs, out = trainer.train_one_step()
    assert out.mask.sum() == 0
    scalars = defined({k: float(v) for k, v in logs.items()})
    assert "train/masked_pseudo_label_acc" not in scalars and "train/pseudo_label_acc" in scalars


def test_benchmark_presets_keep_the_last_checkpoint_and_test_selection_is_an_oracle(tmp_path, run_cli):
    code, summary = run_cli(quick_args(tmp_path / "a"))
    assert code == 0 and summary["selected_on"] == "last" and summary["median_over_last"] == 1
    checkpoints = tmp_path / "a" / "checkpoints"
    assert (checkpoints / "best.pt").read_bytes() == (checkpoints / "last.pt").read_bytes()
    code, summary = run_cli([*quick_args(tmp_path / "b"), "--select-on", "test"])
    assert code == 0 and summary["selected_on"] == "test" and "best_test_top1_oracle" in summary


def test_each_mistake_is_one_line_and_exit_2(text_env, tmp_path, capsys):
    labelled_only = tmp_path / "labelled"
    write_csv(labelled_only / "train.csv", rows(40, 0))
    write_csv(labelled_only / "test.csv", rows(8, 2))
    outside = csv_folder(tmp_path / "outside", 20, 10)
    write_csv(outside / "validation.csv", [{"sentence": "a film", "label": "meh"}])
    cases = [
        (text_args(text_env, tmp_path / "r1", "fixmatch", 1, "textfile", "--set", f"data.folder={labelled_only}"),
         "needs unlabelled examples but 'textfile' has none; leave the label of the unlabelled rows empty"),
        (text_args(text_env, tmp_path / "r2", "fixmatch", 1, "textfile_20", "--set", f"data.folder={csv_folder(tmp_path / 'c')}"),
         "has 200 unlabelled examples; use --dataset textfile"),
        (text_args(text_env, tmp_path / "r3", "fixmatch", 1, "textfile", "--set", f"data.folder={outside}"),
         "validation.csv: label(s) ['meh'] are not among the training labels ['neg', 'pos']"),
        (text_args(text_env, tmp_path / "r4", "fixmatch", 1, "hfdataset", "--set",
                   f"data.folder={save_hf(tmp_path / 'h4', ('neg', 'pos', 'meh'), [0, 1, 0, 1, -1])}"),
         "class 'meh' has no labelled example"),
        (text_args(text_env, tmp_path / "r5", "fixmatch", 1, "textfile", "--set", f"data.folder={tmp_path / 'c'}",
                   "--set", "data.val_per_class=0", "--select-on", "val"),
         "train.select_on=val needs a validation split"),
    ]
    for argv, message in cases:
        assert train_main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()[-1]
        assert err.startswith("error: ") and message in err, err


def test_text_column_detection_and_the_unlabelled_txt_file(text_env, tmp_path):
    folder = tmp_path / "pairs"
    write_csv(folder / "train.csv", [{"text": "a", "sentence": "b", "label": "x"}])
    with pytest.raises(DataError, match="cannot tell the text column, several fit \\(text, sentence\\)"):
        build_dataset("textfile", DataConfig(folder=str(folder)), tmp_path, False, text_env["net"])
    folder = tmp_path / "txt"
    write_csv(folder / "train.csv", [{"review": r["sentence"], "label": r["label"]} for r in rows(20, 0)])
    (folder / "unlabelled.txt").write_text("a fine film\n\nthe plot was dull\n")
    write_csv(folder / "validation.csv", [{"review": r["sentence"], "label": r["label"]} for r in rows(4, 1)])
    write_csv(folder / "test.csv", [{"review": r["sentence"], "label": r["label"]} for r in rows(4, 2)])
    data = build_dataset("textfile", DataConfig(folder=str(folder)), tmp_path, False, text_env["net"])
    assert data.unlabelled_idx.tolist() == [20, 21] and data.train_text[21] == "the plot was dull"
    assert data.val_idx.tolist() == [22, 23, 24, 25] and data.labelled_idx.numel() == 20  # validation.csv, no carving
    with pytest.raises(ConfigError, match="one text column, or two"):
        build_dataset("textfile", DataConfig(folder=str(folder), text_columns=("a", "b", "c")), tmp_path, False)


def test_the_pseudo_labels_of_an_image_pool_name_each_file(tmp_path, run_cli):
    """The user's unlabelled/ folder comes back from predict --unlabelled with each image's path (issue 26)."""
    import csv

    from tests.test_plugins import load_tool

    root = write_images(tmp_path / "set")
    code, _ = run_cli(image_args(tmp_path, root))
    assert code == 0
    out = tmp_path / "pool.csv"
    assert load_tool("predict").main([str(tmp_path / "run"), "--unlabelled", "--out", str(out)]) == 0
    rows = list(csv.DictReader(out.open()))
    assert [Path(r["id"]).relative_to(root / "unlabelled").as_posix() for r in rows] == \
        ["a.png", "b.jpg", "deep/c.png", "deep/er/d.png", "e.png"]
    assert {r["prediction"] for r in rows} <= {"ant", "bee", "cat"}
