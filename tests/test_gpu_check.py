"""tools/gpu_check.sh on the CPU with tiny sizes (GPU_CHECK_TINY=1), and its CIFAR-10 rebuild from JPEGs."""
from __future__ import annotations

import io
import json
import os
import pickle
import shutil
import subprocess
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import REPO, SHARED_DATA
from tests.text_fixtures import write_sst2, write_tiny_bert

# the rebuild script of ../shared/data (from a git worktree in a sub-folder, two levels further up)
REBUILD = next((d / "cifar10" / "jpeg_to_batches.py" for d in (SHARED_DATA, REPO.parents[1] / "shared" / "data")
                if (d / "cifar10" / "jpeg_to_batches.py").is_file()), None)
CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def run_check(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    environ = {**os.environ, "GPU_CHECK_OUT": str(tmp_path / "out"), "OMP_NUM_THREADS": "1", **env}
    return subprocess.run(["bash", "tools/gpu_check.sh", *args], cwd=REPO, env=environ, capture_output=True, text=True)


def test_tiny_gpu_check_writes_one_table_and_one_json(tmp_path: Path) -> None:
    pytest.importorskip("transformers")
    bert = write_tiny_bert(tmp_path / "bert")
    nets = f"hf:{bert}:layers=1 hf:{bert}"
    proc = run_check(tmp_path, GPU_CHECK_TINY="1", GPU_CHECK_DATA=str(write_sst2(tmp_path / "data")),
                     GPU_CHECK_TEXT_NETS=nets, SSL_KD_CACHE=str(tmp_path / "cache"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads((tmp_path / "out" / "gpu_check.json").read_text())
    assert [(r["config"], r["algo"]) for r in result["rows"]] == [
        (c, a) for c in ("eager_fp32", "eager_bf16") for a in ("fixmatch", "flexmatch", "kdaif")]
    fastest = min((r for r in result["rows"] if r["algo"] == "fixmatch"), key=lambda r: r["s_per_step"])
    assert result["training_run"]["config"] == fastest["config"]
    fixmatch = fastest
    assert fixmatch["hours_for_2^20_steps"] == fixmatch["s_per_step"] * 2**20 / 3600
    assert fixmatch["vs_pil_pipeline"] == fixmatch["images_per_s"] / result["pil_pipeline"]["images_per_s"]
    # the training run got as many steps as FixMatch's measured speed fits in the (tiny) budget of 2 s
    assert result["training_run"]["steps"] == max(1, int(2 / fixmatch["s_per_step"]))
    assert result["training_run"]["last_top1"] is not None
    assert "| eager_fp32 | kdaif |" in proc.stdout and "| PIL pipeline |" in proc.stdout
    # text rows (issue 21): each student, supervised and FixMatch, against its text floor
    text = result["text_rows"]
    assert [(r["config"], r["net"], r["algo"]) for r in text] == [
        (c, n, a) for n in nets.split() for c in ("eager_fp32",) for a in ("supervised", "fixmatch")]
    assert all(r["ratio_to_floor"] == r["s_per_step"] / r["floor_s_per_step"] for r in text)
    assert f"| eager_fp32 | hf:{bert}:layers=1 | fixmatch |" in proc.stdout


def test_gpu_check_without_sst2_names_the_text_switch(tmp_path: Path) -> None:
    proc = run_check(tmp_path, GPU_CHECK_TINY="1", GPU_CHECK_DATA=str(tmp_path / "empty"))
    assert proc.returncode == 2 and "GPU_CHECK_TEXT=0" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def _tiny_jpeg_archive(path: Path) -> None:
    with tarfile.open(path, "w:gz") as tar:
        for part, per_class in (("train", 2), ("test", 1)):
            for c, name in enumerate(CLASSES):
                for i in range(per_class):
                    buf = io.BytesIO()
                    Image.fromarray(np.full((32, 32, 3), 20 * c + i, dtype=np.uint8)).save(buf, format="JPEG")
                    info = tarfile.TarInfo(f"cifar10/{part}/{name}/{i:04d}.jpg")
                    info.size = buf.tell()
                    buf.seek(0)
                    tar.addfile(info, buf)


@pytest.mark.skipif(REBUILD is None, reason="no ../shared/data/cifar10/jpeg_to_batches.py")
def test_missing_cifar_batches_are_rebuilt_from_the_jpeg_archive(tmp_path: Path) -> None:
    folder = tmp_path / "data" / "cifar10"
    folder.mkdir(parents=True)
    _tiny_jpeg_archive(folder / "cifar10-jpeg.tar.gz")
    shutil.copy(REBUILD, folder)
    proc = run_check(tmp_path, "--data-only", GPU_CHECK_DATA=str(tmp_path / "data"))
    assert proc.returncode == 0, proc.stderr
    with open(folder / "cifar-10-batches-py" / "data_batch_1", "rb") as fh:
        batch = pickle.load(fh, encoding="bytes")
    assert sorted(batch[b"labels"]) == sorted(list(range(10)) * 2)
    assert "rebuilding" in proc.stderr
    (folder / "cifar10-jpeg.tar.gz").unlink()
    assert run_check(tmp_path, "--data-only", GPU_CHECK_DATA=str(tmp_path / "data")).returncode == 0  # present: no rebuild
    shutil.rmtree(folder / "cifar-10-batches-py")
    failed = run_check(tmp_path, "--data-only", GPU_CHECK_DATA=str(tmp_path / "data"))
    assert failed.returncode == 2 and "GPU_CHECK_DATA" in failed.stderr
