"""Your own text data: CSV/TSV/JSON/JSON Lines files (textfile) and Hugging Face datasets saved with
save_to_disk (hfdataset), read, checked and trained on offline; `import datasets` from the root."""
from __future__ import annotations

import csv
import json
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ssl_kd.cli import main as train_main
from ssl_kd.errors import ConfigError, DataError
from tests.conftest import REPO
from tests.text_fixtures import sentence, text_args, text_env  # noqa: F401 (fixture)

pytest.importorskip("transformers")
textfile = pytest.importorskip("ssl_kd.datasets.textfile")
LABELS = ("neg", "pos")


def examples(n: int, seed: int = 0) -> list[dict[str, str]]:
    rng = random.Random(seed)
    return [{"id": str(i), "review": sentence(rng, i % 2), "stars": LABELS[i % 2]} for i in range(n)]


def write(path: Path, rows: list[dict[str, str]]) -> Path:
    """`rows` in the format of `path`'s suffix."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix in (".csv", ".tsv"):
        with open(path, "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]), delimiter="\t" if path.suffix == ".tsv" else ",")
            writer.writeheader()
            writer.writerows(rows)
    elif path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    else:
        path.write_text(json.dumps(rows))
    return path


def load(root: Path, **options) -> object:
    return textfile.load_textfile(root, False, **{"text_columns": ("review",), "label_column": "stars", **options})


@pytest.mark.parametrize("suffix", [".csv", ".tsv", ".json", ".jsonl"])
def test_every_format_reads_the_same_examples(tmp_path, suffix):
    rows = examples(6)
    rows[0]["review"] = 'a "quoted", comma\tand tab'  # what quoting is for
    write(tmp_path / f"train{suffix}", rows)
    write(tmp_path / f"test{suffix}", rows[:4])
    raw = load(tmp_path)
    assert raw.class_names == ["neg", "pos"] and raw.train_y.tolist() == [0, 1, 0, 1, 0, 1]
    assert raw.train_text[0] == ('a "quoted", comma\tand tab',) and raw.test_y.tolist() == [0, 1, 0, 1]


def test_sentence_pairs_numeric_classes_and_a_held_out_share(tmp_path):
    rows = [{"a": f"first {i}", "b": f"second {i}", "label": str(i % 3 * 5)} for i in range(20)]  # 0, 5, 10
    write(tmp_path / "train.jsonl", rows)
    raw = textfile.load_textfile(tmp_path, False, ("a", "b"), "label", test_fraction=0.25, split_seed=1)
    assert raw.class_names == ["0", "5", "10"]  # numerically, not as strings
    assert len(raw.train_text) == 15 and len(raw.test_text) == 5 and raw.train_text[0][1].startswith("second")
    again = textfile.load_textfile(tmp_path, False, ("a", "b"), "label", test_fraction=0.25, split_seed=1)
    assert again.test_text == raw.test_text


@pytest.mark.parametrize("setup, error, message", [
    (lambda p: write(p / "train.csv", [{k: v for k, v in r.items() if k != "review"} for r in examples(4)]),
     DataError, "lacks column\\(s\\) \\['review'\\].*data.text_columns=COL"),
    (lambda p: (write(p / "train.csv", examples(4)), write(p / "test.csv", [{**examples(1)[0], "stars": "meh"}])),
     DataError, "label\\(s\\) \\['meh'\\] are not among the training labels \\['neg', 'pos'\\]"),
    (lambda p: write(p / "train.csv", examples(4)), DataError, "has no test, validation or dev split.*data.test_fraction"),
    (lambda p: None, DataError, "has no train file.*data.folder=PATH"),
    (lambda p: (p / "train.json").write_text('{"text": "x"}'), DataError, "must hold a list of objects"),
])
def test_clear_errors_name_the_column_label_or_layout(tmp_path, setup, error, message):
    setup(tmp_path)
    with pytest.raises(error, match=message):
        load(tmp_path)
    with pytest.raises(ConfigError, match="one text column, or two"):
        load(tmp_path, text_columns=("a", "b", "c"))


def test_import_datasets_from_the_repository_root_is_hugging_faces():
    pytest.importorskip("datasets")
    code = ("import datasets, ssl_kd.datasets.glue as g; print(datasets.__file__); print(hasattr(datasets, 'load_from_disk'));"
            "print(g.__name__)")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True).stdout.split()
    assert "site-packages" in out[0] and out[1:] == ["True", "ssl_kd.datasets.glue"]


def save_hf_dataset(folder: Path) -> Path:
    """A DatasetDict with a ClassLabel label and GLUE-style hidden test labels (-1), saved offline."""
    datasets = pytest.importorskip("datasets")
    features = datasets.Features({"sentence": datasets.Value("string"),
                                  "label": datasets.ClassLabel(names=["negative", "positive"])})
    rng = random.Random(1)
    split = lambda n, hidden=False: datasets.Dataset.from_dict(  # noqa: E731
        {"sentence": [sentence(rng, i % 2) for i in range(n)], "label": [-1 if hidden else i % 2 for i in range(n)]},
        features=features)
    datasets.DatasetDict({"train": split(32), "validation": split(8), "test": split(8, hidden=True)}).save_to_disk(str(folder))
    return folder


def test_a_save_to_disk_dataset_reads_its_class_names_and_skips_hidden_test_labels(tmp_path):
    from ssl_kd.datasets.hfdataset import load_hfdataset

    raw = load_hfdataset(save_hf_dataset(tmp_path / "hf"), False, text_columns=("sentence",))
    assert raw.class_names == ["negative", "positive"] and raw.train_y.tolist()[:4] == [0, 1, 0, 1]
    assert len(raw.test_text) == 8 and raw.test_y.tolist() == [0, 1] * 4  # validation: the test labels are hidden
    with pytest.raises(DataError, match="is not a dataset saved with save_to_disk"):
        load_hfdataset(tmp_path, False)


def test_a_csv_and_a_save_to_disk_dataset_train_end_to_end(text_env, tmp_path):
    folder = tmp_path / "mine"
    write(folder / "train.csv", examples(24))
    write(folder / "test.csv", examples(8, seed=1))
    out = tmp_path / "csv_run"
    assert train_main(text_args(text_env, out, "fixmatch", 2, "textfile_4", "--set", f"data.folder={folder}",
                                "--set", "data.text_columns=review", "--set", "data.label_column=stars")) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["task_metric"] == "top1" and summary["last_top1"] is not None
    hf = save_hf_dataset(tmp_path / "hf")
    out = tmp_path / "hf_run"
    assert train_main(text_args(text_env, out, "supervised", 2, "hfdataset", "--set", f"data.folder={hf}",
                                "--set", "data.text_columns=sentence")) == 0
    assert (out / "checkpoints" / "best.pt").is_file()


def test_readme_text_dataset_example_trains_and_predicts(text_env, tmp_path, monkeypatch, capsys):
    import io

    from ssl_kd import plugins
    from ssl_kd.registry import DATASETS, discover_all
    from tests.test_plugins import load_tool, readme_example

    discover_all()
    monkeypatch.setattr(DATASETS, "_items", dict(DATASETS._items))
    monkeypatch.setattr(plugins, "_LOADED", {})
    filename, code, readme_args = readme_example("Adding a text dataset")
    (tmp_path / filename).write_text(code)
    monkeypatch.chdir(tmp_path)
    dataset = readme_args[readme_args.index("--dataset") + 1]
    out = tmp_path / "run"
    assert train_main([*text_args(text_env, out, "fixmatch", 2, dataset), *readme_args[:2]]) == 0
    monkeypatch.setattr("sys.stdin", io.StringIO("a superb and lovely film\n"))
    capsys.readouterr()
    assert load_tool("predict").main([str(out)]) == 0
    rows = list(csv.reader(io.StringIO(capsys.readouterr().out)))
    assert rows[0] == ["input", "prediction", "negative", "positive"] and rows[1][0] == "a superb and lovely film"


def test_tokenising_in_chunks_gives_the_one_shot_ids(text_env):
    from ssl_kd.text.tokenise import encode, load_tokenizer

    tokenizer = load_tokenizer(text_env["net"])
    rng = random.Random(0)
    texts = [(sentence(rng, i % 2),) for i in range(20)]  # of varied lengths: chunks pad to different widths
    whole = tokenizer([t[0] for t in texts], truncation=True, max_length=16, padding="longest", return_tensors="pt")
    assert torch.equal(encode(tokenizer, texts, 16, chunk=3), whole["input_ids"])


def test_an_unreachable_hub_dataset_fails_at_once_in_one_line(tmp_path, monkeypatch):
    pytest.importorskip("datasets")
    from huggingface_hub import constants

    from ssl_kd.datasets.hfdataset import load_hfdataset

    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")  # nothing listens there
    with pytest.raises(DataError, match="'nobody/none' is not a folder.*cannot be reached.*save_to_disk") as err:
        load_hfdataset(tmp_path / "nobody" / "none", False, folder="nobody/none")
    assert "\n" not in str(err.value)
