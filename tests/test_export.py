"""tools/export.py round trips (a Hugging Face folder that transformers loads and a pipeline names;
a torch.export program for images) and tools/predict.py on new sentences and images."""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest
import torch

from ssl_kd.cli import main as train_main
from ssl_kd.export import eval_logits
from ssl_kd.run import load_run
from tests.conftest import quick_args
from tests.test_plugins import load_tool
from tests.text_fixtures import text_args, text_env  # noqa: F401 (fixture)

pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def text_run(text_env, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("export") / "sst2"
    assert train_main(text_args(text_env, out, "supervised", 3, "sst2")) == 0
    return out


def test_an_hf_run_exports_a_folder_transformers_loads_with_the_same_logits(text_run, tmp_path):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, pipeline

    assert load_tool("export").main([str(text_run), "--out", str(tmp_path / "hf")]) == 0
    run = load_run(text_run, "cpu")
    hf = AutoModelForSequenceClassification.from_pretrained(tmp_path / "hf").eval()
    assert hf.config.id2label == {0: "negative", 1: "positive"} and hf.config.label2id["positive"] == 1
    sentences = ["the film was good and nice", "awful plot , very dull", "it was fine"]
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "hf")
    with torch.no_grad():
        exported = hf(**tokenizer(sentences, padding=True, return_tensors="pt")).logits
    ids = tokenizer(sentences, padding=True, return_tensors="pt")["input_ids"]
    assert torch.allclose(exported, eval_logits(run.model, ids, run.data.policy), atol=1e-5)
    classify = pipeline("text-classification", model=str(tmp_path / "hf"), device="cpu")
    assert {r["label"] for r in classify(sentences)} <= {"negative", "positive"}


def test_predict_prints_class_names_and_probabilities(text_run, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr("sys.stdin", io.StringIO("the film was good\n\nawful and dull\n"))
    assert load_tool("predict").main([str(text_run), "--batch-size", "1"]) == 0
    rows = list(csv.reader(io.StringIO(capsys.readouterr().out)))
    assert rows[0] == ["input", "prediction", "negative", "positive"] and [r[0] for r in rows[1:]] == ["the film was good",
                                                                                                       "awful and dull"]
    assert all(r[1] in ("negative", "positive") and abs(float(r[2]) + float(r[3]) - 1) < 1e-5 for r in rows[1:])
    (tmp_path / "in.txt").write_text("nice story\n")
    assert load_tool("predict").main([str(text_run), "--input", str(tmp_path / "in.txt"), "--format", "json"]) == 0
    row = json.loads(capsys.readouterr().out)
    assert row["input"] == "nice story" and set(row["probabilities"]) == {"negative", "positive"}


def test_an_image_run_exports_a_program_with_its_preprocessing(tmp_path):
    out = tmp_path / "digits"
    assert train_main(quick_args(out, "supervised", 2)) == 0
    assert load_tool("export").main([str(out), "--out", str(tmp_path / "exp")]) == 0
    run = load_run(out, "cpu")
    program = torch.export.load(str(tmp_path / "exp" / "model.pt2")).module()
    x = run.data.test_x[:5]
    model = run.ema_model if run.ema_model is not None else run.model
    assert torch.allclose(program(x), eval_logits(model, x, run.data.policy), atol=1e-5)
    meta = json.loads((tmp_path / "exp" / "preprocess.json").read_text())
    assert meta["size"] == list(x.shape[2:]) and len(meta["class_names"]) == 10


def test_predict_on_an_image_folder(tmp_path, capsys):
    from torchvision.io import write_png

    out = tmp_path / "digits"
    assert train_main(quick_args(out, "supervised", 2)) == 0
    run = load_run(out, "cpu")
    folder = tmp_path / "new"
    folder.mkdir()
    for i in range(3):
        write_png(run.data.test_x[i].expand(3, -1, -1).contiguous(), str(folder / f"{i}.png"))
    capsys.readouterr()
    assert load_tool("predict").main([str(out), "--input", str(folder), "--device", "cpu"]) == 0
    rows = list(csv.reader(io.StringIO(capsys.readouterr().out)))
    assert len(rows) == 4 and rows[1][0].endswith("0.png") and rows[1][1] in run.data.class_names
    model = run.ema_model if run.ema_model is not None else run.model
    want = eval_logits(model, run.data.test_x[:1], run.data.policy).softmax(-1)[0]
    assert [float(v) for v in rows[1][2:]] == pytest.approx(want.tolist(), abs=1e-5)
