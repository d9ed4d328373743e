"""A tiny randomly initialised BERT with its own WordPiece tokenizer, and a generated two-class
GLUE task in the release format: text runs in tests with no download and in seconds."""
from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch

from ssl_kd.cli import parser, prepare
from ssl_kd.run import build_data
from ssl_kd.trainer.trainer import Trainer

POSITIVE = ["good", "great", "fine", "nice", "superb", "lovely"]
NEGATIVE = ["bad", "awful", "poor", "dull", "weak", "ugly"]
FILLER = ["the", "film", "was", "a", "plot", "and", "very", "it", "story", "acting"]
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def sentence(rng: random.Random, label: int) -> str:
    words = rng.sample(FILLER, rng.randint(2, 6)) + rng.sample(POSITIVE if label else NEGATIVE, 2)
    rng.shuffle(words)
    return " ".join(words)


def write_sst2(root: Path, train: int = 64, dev: int = 16, seed: int = 0) -> Path:
    """<root>/glue/SST-2/{train,dev}.tsv in the release layout (header, sentence<TAB>label)."""
    rng = random.Random(seed)
    folder = root / "glue" / "SST-2"
    folder.mkdir(parents=True, exist_ok=True)
    for name, n in (("train.tsv", train), ("dev.tsv", dev)):
        rows = [(sentence(rng, i % 2), i % 2) for i in range(n)]
        (folder / name).write_text("sentence\tlabel\n" + "".join(f"{s} \t{y}\n" for s, y in rows))
    return root


def write_mrpc(root: Path, train: int = 32, dev: int = 16, seed: int = 0) -> Path:
    """<root>/glue/MRPC/{train,dev}.tsv as released: a byte-order mark before the header, and
    sentence pairs (equivalent when both sentences have the same polarity)."""
    rng = random.Random(seed)
    folder = root / "glue" / "MRPC"
    folder.mkdir(parents=True, exist_ok=True)
    for name, n in (("train.tsv", train), ("dev.tsv", dev)):
        lines = ["\ufeffQuality\t#1 ID\t#2 ID\t#1 String\t#2 String"]
        for i in range(n):
            a, b = i % 2, (i // 2) % 2
            lines.append(f"{int(a == b)}\t{i}\t{i + n}\t{sentence(rng, a)}\t{sentence(rng, b)}")
        (folder / name).write_text("\n".join(lines) + "\n", encoding="utf-8")
    return root


STSB_HEADER = "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore"
STSB_OFFSETS = (-0.5, -0.2, 0.0, 0.3)  # k - 0.5 bins to k only when halves round up (2.5 -> 3, round() gives 2)


def stsb_score(i: int) -> float:
    """Every bin 0..5 in turn, off the integer by STSB_OFFSETS, clipped to the release's 0..5."""
    return min(5.0, max(0.0, i % 6 + STSB_OFFSETS[(i // 6) % len(STSB_OFFSETS)]))


def write_stsb(root: Path, train: int = 48, dev: int = 24, seed: int = 0) -> Path:
    """<root>/glue/STS-B/{train,dev}.tsv in the release layout (ten columns, the float score last):
    pairs of the same polarity score 3 and up, so the score is learnable."""
    rng = random.Random(seed)
    folder = root / "glue" / "STS-B"
    folder.mkdir(parents=True, exist_ok=True)
    for name, n in (("train.tsv", train), ("dev.tsv", dev)):
        lines = [STSB_HEADER]
        for i in range(n):
            score, a = stsb_score(i), rng.randint(0, 1)
            b = a if score >= 3 else 1 - a
            lines.append(f"{i}\tmain-captions\tMSRvid\t2012test\t{i:04d}\tnone\tnone\t{sentence(rng, a)}\t"
                         f"{sentence(rng, b)}\t{score:.3f}")
        (folder / name).write_text("\n".join(lines) + "\n", encoding="utf-8")
    return root


def write_tiny_bert(folder: Path, extra_words: tuple[str, ...] = ()) -> Path:
    """A 2-layer, 32-wide BERT for sequence classification and its fast tokenizer, saved in HF format
    (`extra_words` give another vocabulary, hence another tokenizer)."""
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast

    folder.mkdir(parents=True, exist_ok=True)
    words = SPECIALS + sorted(set(POSITIVE + NEGATIVE + FILLER + list(extra_words)))
    # transformers 5 takes the vocabulary as `vocab` (a `vocab_file` keyword is ignored: every word would be [UNK])
    tokenizer = BertTokenizerFast(vocab={w: i for i, w in enumerate(words)}, do_lower_case=True)
    assert tokenizer.convert_tokens_to_ids(POSITIVE[0]) == words.index(POSITIVE[0])
    tokenizer.save_pretrained(folder)
    config = BertConfig(vocab_size=len(words), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=64, pad_token_id=0)
    torch.manual_seed(0)
    BertForSequenceClassification(config).save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def text_env(tmp_path_factory) -> dict[str, str]:
    """{"net": hf:<tiny BERT folder>, "data": <data dir with SST-2, MRPC and STS-B>} with the token cache in a temp folder."""
    pytest.importorskip("transformers")
    root = tmp_path_factory.mktemp("text")
    mp = pytest.MonkeyPatch()
    mp.setenv("SSL_KD_CACHE", str(root / "cache"))
    data = write_stsb(write_mrpc(write_sst2(root / "data")))
    yield {"net": f"hf:{write_tiny_bert(root / 'bert')}", "data": str(data)}
    mp.undo()


def text_args(env: dict[str, str], out: Path, algo: str, steps: int, dataset: str = "sst2_8", *extra: str) -> list[str]:
    return ["--algo", algo, "--dataset", dataset, "--net", env["net"], "--data-dir", env["data"], "--steps", str(steps),
            "--eval-every", str(max(1, steps)), "--batch-size", "4", "--uratio", "2", "--device", "cpu", "--out", str(out),
            "--no-progress", "--set", "train.lr=1e-3", *extra]


def make_text_trainer(env: dict[str, str], out: Path, algo: str, steps: int = 4, dataset: str = "sst2_8", *extra: str) -> Trainer:
    cfg, run_dir, _ = prepare(parser().parse_args(text_args(env, out, algo, steps, dataset, *extra)))
    return Trainer(cfg, build_data(cfg), torch.device("cpu"), run_dir)
