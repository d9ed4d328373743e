"""tools/export.py round trips (a Hugging Face folder that transformers loads and a pipeline names;
a torch.export program for images) and tools/predict.py on new sentences and images."""
from __future__ import annotations

import csv
import errno
import io
import json
import os
import stat
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


# ----- issue 26/30: model card, permissions, digests, predict on an export, a failed export leaves nothing ----------


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory) -> Path:
    """A tiny digits run with a validation split (so the model card has both splits' figures)."""
    out = tmp_path_factory.mktemp("export_digits") / "run"
    assert train_main(quick_args(out, "supervised", 2, "--set", "data.val_per_class=2")) == 0
    return out


def export(run: Path, out: Path, umask: int = 0o022) -> int:
    old = os.umask(umask)
    try:
        return load_tool("export").main([str(run), "--out", str(out)])
    finally:
        os.umask(old)


def flip_a_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


def test_an_export_has_a_model_card_digests_and_the_usual_permissions(digits_run, tmp_path):
    from ssl_kd.digest import verify
    from ssl_kd.trainer.logger import read_metrics

    assert export(digits_run, tmp_path / "exp") == 0
    files = [p for p in (tmp_path / "exp").iterdir() if not p.name.endswith(".sha256")]
    assert {p.name for p in files} == {"model.pt2", "preprocess.json", "README.md"}
    assert all(verify(p) is True for p in files)
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o644 for p in (tmp_path / "exp").iterdir())
    card = (tmp_path / "exp" / "README.md").read_text()
    row = read_metrics(digits_run / "metrics.jsonl")[-1]  # the exported (last) step; the EMA's figures
    assert f"| validation | top1 | {row['ema_val_top1']:.2f} |" in card and f"| test | top1 | {row['ema_top1']:.2f} |" in card
    assert "algorithm `supervised`" in card and "30 labelled" in card and "ssl_kd version" in card and "0: 0, 1: 1" in card
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exp"]  # no temporary folder left beside it


def test_predict_reads_an_image_export_and_refuses_a_flipped_byte(digits_run, tmp_path, capsys):
    from torchvision.io import write_png

    assert export(digits_run, tmp_path / "exp") == 0
    run = load_run(digits_run, "cpu")
    (tmp_path / "new").mkdir()
    for i in range(3):
        write_png(run.data.test_x[i].expand(3, -1, -1).contiguous(), str(tmp_path / "new" / f"{i}.png"))
    capsys.readouterr()
    predict = load_tool("predict").main
    assert predict([str(digits_run), "--input", str(tmp_path / "new")]) == 0
    from_run = capsys.readouterr().out
    assert predict([str(tmp_path / "exp"), "--input", str(tmp_path / "new")]) == 0
    assert capsys.readouterr().out == from_run
    flip_a_byte(tmp_path / "exp" / "model.pt2")
    assert predict([str(tmp_path / "exp"), "--input", str(tmp_path / "new")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and "model.pt2" in err and "corrupt" in err


def test_an_hf_export_is_readable_digested_and_predicted_from(text_run, tmp_path, monkeypatch, capsys):
    assert export(text_run, tmp_path / "hf") == 0
    weights = tmp_path / "hf" / "model.safetensors"
    assert stat.S_IMODE(weights.stat().st_mode) == 0o644  # safetensors writes 0600 on its own
    assert "| test | top1 |" in (tmp_path / "hf" / "README.md").read_text()
    predict = load_tool("predict").main
    sentences = "the film was good\nawful and dull\n"
    capsys.readouterr()
    monkeypatch.setattr("sys.stdin", io.StringIO(sentences))
    assert predict([str(text_run)]) == 0
    from_run = list(csv.reader(io.StringIO(capsys.readouterr().out)))
    monkeypatch.setattr("sys.stdin", io.StringIO(sentences))
    assert predict([str(tmp_path / "hf")]) == 0
    from_export = list(csv.reader(io.StringIO(capsys.readouterr().out)))
    assert from_export[0] == from_run[0] and [r[:2] for r in from_export] == [r[:2] for r in from_run]
    assert [float(v) for r in from_export[1:] for v in r[2:]] == pytest.approx([float(v) for r in from_run[1:] for v in r[2:]],
                                                                               abs=1e-4)
    flip_a_byte(weights)
    assert predict([str(tmp_path / "hf")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "model.safetensors" in err and "corrupt" in err


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err
    return err


def test_export_refuses_a_file_or_a_foreign_folder_and_replaces_a_previous_export(digits_run, tmp_path, capsys):
    (tmp_path / "file").write_text("mine")
    assert export(digits_run, tmp_path / "file") == 2
    assert "is a file" in one_error_line(capsys) and (tmp_path / "file").read_text() == "mine"
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "todo.txt").write_text("mine")
    assert export(digits_run, tmp_path / "notes") == 2
    assert "other files" in one_error_line(capsys) and [p.name for p in (tmp_path / "notes").iterdir()] == ["todo.txt"]
    assert export(digits_run, tmp_path / "exp") == 0
    (tmp_path / "exp" / "model.pt2").write_bytes(b"stale")
    assert export(digits_run, tmp_path / "exp") == 0  # a previous export is replaced whole
    assert torch.export.load(str(tmp_path / "exp" / "model.pt2")) is not None
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exp", "file", "notes"]


def test_export_into_a_read_only_folder_is_one_line_and_leaves_nothing(digits_run, tmp_path, capsys, monkeypatch):
    def read_only(self, *args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system", str(self))

    monkeypatch.setattr(Path, "mkdir", read_only)  # root ignores chmod, so simulate the file system
    assert export(digits_run, tmp_path / "exp") == 2
    assert "read-only" in one_error_line(capsys) and list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("error", ["enospc", "torch"])
def test_export_on_a_full_disk_is_one_line_and_leaves_nothing(digits_run, tmp_path, capsys, monkeypatch, error):
    import shutil

    def full(self, data):
        if error == "enospc":
            raise OSError(errno.ENOSPC, "No space left on device", str(self))
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 86336 vs 86238")  # torch's report

    monkeypatch.setattr(Path, "write_bytes", full)
    if error == "torch":
        usage = shutil.disk_usage(tmp_path)
        monkeypatch.setattr(shutil, "disk_usage", lambda path: usage._replace(free=0))
    assert export(digits_run, tmp_path / "exp") == 2
    assert "disk is full" in one_error_line(capsys) and list(tmp_path.iterdir()) == []


def test_export_past_a_file_size_limit_is_one_line_not_an_abort(digits_run, tmp_path):
    """A real failed write under torch's writer (a file-size limit stands in for a full disk): it
    aborted the process with a c10::Error (exit 134) and left half a model.pt2 behind."""
    import resource
    import signal
    import subprocess
    import sys

    from tests.conftest import REPO

    def limit() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead of killing
        resource.setrlimit(resource.RLIMIT_FSIZE, (64 << 10, 64 << 10))

    proc = subprocess.run([sys.executable, "tools/export.py", str(digits_run), "--out", str(tmp_path / "exp")], cwd=REPO,
                          capture_output=True, text=True, preexec_fn=limit)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.startswith("error: ") and proc.stderr.count("\n") == 1 and "nothing was left behind" in proc.stderr
    assert list(tmp_path.iterdir()) == []
