"""Run folders that hold one run: refused when taken, locked while in use, never left half made.

A run folder holds another run when it has any of RUN_FILES. A new run into such a folder is
refused unless `--overwrite` (which removes those files first); `--resume` continues it. While a
run is alive, `<run>/.lock` holds its pid: a second process is refused with that pid, and the lock
of a process that no longer exists is taken over. Stale temporary checkpoint files (left by a
killed process) are removed when the lock is taken.
"""
from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path

from ssl_kd.errors import ConfigError

RUN_FILES = ("config.yaml", "metrics.jsonl", "summary.json", "checkpoints", "tb", "explain")
LOCK_NAME = ".lock"
TMP_SUFFIX = ".tmp"


def holds_run(run_dir: Path) -> bool:
    return any((run_dir / name).exists() for name in RUN_FILES)


def clear_run(run_dir: Path) -> None:
    """Remove the files of the run in `run_dir` (only those: a user's other files stay)."""
    for name in RUN_FILES:
        path = run_dir / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()


def pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    return True


def os_error_message(err: OSError, path: Path, action: str) -> str:
    """One line for the OS errors a user can fix (read-only folder, full disk)."""
    if err.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return f"cannot {action} {path}: permission denied or read-only file system; choose a writable --out"
    if err.errno == errno.ENOSPC:
        return f"cannot {action} {path}: the disk is full; free space, then resume"
    return f"cannot {action} {path}: {err.strerror or err}; check the path"


class RunLock:
    """`<run>/.lock` holding this process's pid, from `acquire()` to `release()`."""

    def __init__(self, run_dir: Path) -> None:
        self.path = run_dir / LOCK_NAME
        self.held = False

    def acquire(self) -> None:
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = self._holder()
                if holder is not None and holder != os.getpid() and pid_alive(holder):
                    raise ConfigError(f"run folder {self.path.parent} is in use by process {holder} "
                                      f"(lock file {self.path}); wait for it to finish, stop it, or choose another --out")
                self.path.unlink(missing_ok=True)  # a dead process's lock: take it over
                continue
            except OSError as err:
                raise ConfigError(os_error_message(err, self.path.parent, "write into")) from err
            with os.fdopen(fd, "w") as f:
                f.write(f"{os.getpid()}\n")
            self.held = True
            return
        raise ConfigError(f"could not take the lock {self.path}; another process keeps recreating it")

    def _holder(self) -> int | None:
        try:
            return int(self.path.read_text().strip() or "0")
        except (OSError, ValueError):
            return None

    def release(self) -> None:
        if self.held and self._holder() == os.getpid():
            self.path.unlink(missing_ok=True)
        self.held = False


def remove_stale_temps(run_dir: Path) -> list[Path]:
    """Delete temporary checkpoint files left by a killed process (call with the lock held)."""
    stale = sorted((run_dir / "checkpoints").glob(f"*{TMP_SUFFIX}")) if (run_dir / "checkpoints").is_dir() else []
    for path in stale:
        path.unlink(missing_ok=True)
    return stale


class RunDir:
    """Opens a run folder for a new run or a resumed one, holding its lock until `close()`.

    `discard()` undoes a failed start: it removes the folder when this run created it, or the
    files this run wrote into a folder it found empty of runs.
    """

    def __init__(self, path: Path, resume: bool, overwrite: bool) -> None:
        self.path = path
        self.created = not path.exists()
        if path.exists() and not path.is_dir():
            raise ConfigError(f"--out {path} is a file, not a folder; choose a folder path")
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise ConfigError(os_error_message(err, path, "create the run folder")) from err
        self.lock = RunLock(path)
        try:
            self.lock.acquire()
            if not resume and holds_run(path):
                if not overwrite:
                    raise ConfigError(f"run folder {path} already holds a run; resume it with --resume {path}, "
                                      "clear it with --overwrite, or choose another --out")
                clear_run(path)
            self.fresh = not resume
            remove_stale_temps(path)
            probe = path / f".write_test{os.getpid()}"
            probe.write_text("")
            probe.unlink()
        except OSError as err:
            self.close()
            self.discard()
            raise ConfigError(os_error_message(err, path, "write into")) from err
        except BaseException:
            self.close()
            self.discard()
            raise

    def discard(self) -> None:
        """Remove what a failed start left behind (never a resumed run's files)."""
        if self.created:
            shutil.rmtree(self.path, ignore_errors=True)
        elif getattr(self, "fresh", False):
            clear_run(self.path)

    def close(self) -> None:
        self.lock.release()
