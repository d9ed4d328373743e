"""Atomic checkpoints (`last.pt`, `best.pt`): writing them with their SHA-256 digest beside them
(ssl_kd.digest), and reading them back verified, whole, finite and with sane counters (rebuilding a
run from one is ssl_kd.run.load_run)."""
from __future__ import annotations

import errno
import math
import os
import pickle
import secrets
import shutil
import zipfile
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from ssl_kd import digest
from ssl_kd.errors import CheckpointError
from ssl_kd.trainer.guard import nonfinite_parts
from ssl_kd.trainer.rundir import TMP_SUFFIX, os_error_message

FORMAT_VERSION = 1
MIN_FREE_BYTES = 1 << 20  # less free space than this after a failed write: the disk is full


def _atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """`write` a uniquely named temporary file in the same folder, then rename it onto `path` with
    its digest recorded: a crash never leaves half a file nor a file without its digest, two writers
    never share a temporary name, and a failed write (a full disk) leaves the previous `path` as it was."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}-{secrets.token_hex(4)}{TMP_SUFFIX}")  # created with the umask's mode
    try:
        write(tmp)
        digest.replace_with_digest(tmp, path)
    except (OSError, RuntimeError) as err:
        # torch.save reports a full disk as a RuntimeError ("unexpected pos ..."): look at the disk
        full = shutil.disk_usage(path.parent).free < MIN_FREE_BYTES
        tmp.unlink(missing_ok=True)
        if not isinstance(err, OSError) and not full:
            raise
        os_err = err if isinstance(err, OSError) and not full else OSError(errno.ENOSPC, "No space left on device")
        then = (f"resume with --resume {path.parent.parent}" if path.with_name("last.pt").is_file()
                else "run the same command again (no checkpoint was written yet, so there is nothing to resume)")
        kept = f"; the previous {path.name} is untouched" if path.is_file() else ""
        raise CheckpointError(os_error_message(os_err, path, "write the checkpoint", then) + kept) from err
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def save_checkpoint(state: dict[str, Any], path: Path) -> None:
    _atomic_write(path, lambda tmp: torch.save({"format_version": FORMAT_VERSION, **state}, tmp))


def copy_checkpoint(source: Path, path: Path) -> None:
    """`best.pt` as an atomic copy of the `last.pt` just written (never newer than `last.pt`), with its own digest."""
    _atomic_write(path, lambda tmp: shutil.copyfile(source, tmp))


# every tensor a checkpoint holds, by the name a message gives it (rng states are bytes, never checked)
CHECKED_PARTS = {"model": "model", "ema": "EMA model", "optimizer": "optimiser state", "scheduler": "scheduler state",
                 "algorithm": "algorithm state (its teacher included)", "samplers": "sampler state"}
REQUIRED_KEYS = ("config", "step", "model")  # what evaluating, explaining or teaching needs
RESUME_KEYS = (*REQUIRED_KEYS, "ema", "optimizer", "scheduler", "algorithm", "samplers", "rng")  # what resuming needs


def check_finite_state(state: dict[str, Any], path: Path | str) -> None:
    """Refuse a checkpoint holding NaN or inf anywhere: model, EMA, optimiser, the algorithm's state
    (a teacher trained by its own optimiser diverges on its own), scheduler and samplers."""
    bad = nonfinite_parts({name: state.get(key) for key, name in CHECKED_PARTS.items()})
    if bad:
        parts = ", ".join(f"{n} in the {name}" for name, n in bad.items())
        raise CheckpointError(f"checkpoint {path} holds non-finite values ({parts}): the run diverged before it was "
                              "written; use an earlier checkpoint or retrain with a lower learning rate")


def check_keys(state: dict[str, Any], path: Path | str, required: tuple[str, ...]) -> None:
    """A checkpoint of the right format version that lacks a part (truncated by hand, another tool's)."""
    missing = [k for k in required if k not in state]
    if missing:
        raise CheckpointError(f"checkpoint {path} lacks {', '.join(missing)} (it has {', '.join(sorted(state)) or 'nothing'}); "
                              f"it was not written whole by ssl_kd: use another checkpoint, e.g. best.pt")
    train = state["config"].get("train") if isinstance(state["config"], dict) else None
    if not isinstance(train, dict) or not all(k in train for k in ("algo", "dataset", "net")):
        raise CheckpointError(f"checkpoint {path} has no valid config (train.algo/dataset/net); use another checkpoint, e.g. best.pt")


def resolve_checkpoint(path: str | Path) -> Path:
    """Accept a checkpoint file or a run folder (then its checkpoints/last.pt)."""
    p = Path(path)
    if p.is_dir():
        p = p / "checkpoints" / "last.pt"
    if not p.is_file():
        raise CheckpointError(
            f"checkpoint not found: {p}. Give a run folder (runs/<name>) or its checkpoints/last.pt; "
            "a run writes its first checkpoint at its first evaluation."
        )
    return p


def last_good(path: Path) -> str:
    """Where to go when `path` fails its digest: the run's other checkpoint that verifies."""
    good = [p for p in (path.with_name("last.pt"), path.with_name("best.pt")) if p != path and p.is_file() and digest.verify(p)]
    return (f"use the last good checkpoint {good[0]}" if good
            else "no other checkpoint beside it verifies: restore it from a copy, or retrain")


def check_counters(state: dict[str, Any], path: Path) -> None:
    """A checkpoint's step within its run's total, and its times finite: an edited or damaged
    counter would resume a run that never was (a step of 10^12 in a 50-step run)."""
    total = state["config"]["train"].get("steps")
    step = state["step"]
    if not isinstance(step, int) or isinstance(step, bool) or step < 0 or (isinstance(total, int) and step > total):
        raise CheckpointError(f"checkpoint {path} records step {step!r}, outside its run's 0..{total} steps (train.steps): "
                              "it was edited or damaged; use another checkpoint, e.g. best.pt")
    for key in ("wall_s", "train_s"):
        value = state.get(key, 0.0)
        if not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
            raise CheckpointError(f"checkpoint {path} records {key}={value!r}, not a time in seconds: it was edited or "
                                  "damaged; use another checkpoint, e.g. best.pt")


def load_checkpoint(path: str | Path, device: torch.device | str = "cpu",
                    required: tuple[str, ...] = REQUIRED_KEYS) -> dict[str, Any]:
    """A checkpoint's state, refused (CheckpointError, one line) unless its bytes match the digest
    recorded when it was written (none recorded: a checkpoint from before digests, accepted), it is
    readable, its classes can be imported, and it is whole (`required` keys), finite and sane."""
    p = resolve_checkpoint(path)
    try:
        if digest.verify(p) is False:
            raise CheckpointError(f"checkpoint {p} is corrupt: its bytes do not match the SHA-256 recorded when it was "
                                  f"written ({digest.digest_path(p).name}); {last_good(p)}")
        state = torch.load(p, map_location=device, weights_only=False)
    except PermissionError:
        raise CheckpointError(f"cannot read checkpoint {p}: permission denied; make it readable (chmod u+r) or run as its owner")
    except (ImportError, AttributeError) as err:  # the pickle names a module or class that is gone
        raise CheckpointError(f"checkpoint {p} holds an object whose code cannot be imported now ({type(err).__name__}: {err}): "
                              "it was written with a plug-in or an ssl_kd version whose code has moved or gone; make that "
                              "module importable again (e.g. put its folder on PYTHONPATH), or use a checkpoint written by the current code")
    except (RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile, OSError) as err:
        raise CheckpointError(f"checkpoint {p} is corrupt or not a ssl_kd checkpoint ({err}); use another checkpoint, e.g. best.pt")
    if not isinstance(state, dict) or state.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"checkpoint {p} is not a ssl_kd checkpoint of format {FORMAT_VERSION}; it cannot be resumed or evaluated")
    check_keys(state, p, required)
    check_counters(state, p)
    check_finite_state(state, p)
    return state


def load_module_state(module: nn.Module, state: dict[str, torch.Tensor], what: str, path: Path | str) -> None:
    """load_state_dict with an error that names the checkpoint and the likely cause."""
    try:
        module.load_state_dict(state)
    except RuntimeError as err:
        first = str(err).splitlines()[0]
        raise CheckpointError(
            f"{what} in {path} does not fit the configured network ({first}); "
            "use the same --net and dataset as the run that wrote it"
        )
