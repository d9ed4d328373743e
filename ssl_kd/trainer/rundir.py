"""Run folders that hold one run: refused when taken, locked while in use, never left half made.

A run folder holds another run when it has any of RUN_FILES. A new run into such a folder is
refused unless `--overwrite` (which removes those files first), except a run that never wrote a
checkpoint nor a summary (it died or diverged before its first evaluation): its leftovers are
replaced. `--resume` continues a run. While a run is alive, `<run>/.lock` holds its identity (pid,
process start time, boot id): a second process is refused with that pid, and the lock of a process
that no longer exists (or whose pid now belongs to another process) is taken over, atomically, under
an flock of `<run>/.lock.takeover`. Stale temporary checkpoint files (left by a killed process) are
removed when the lock is taken. A run's `config.yaml` records its `run_id`, also saved in its
checkpoints, so a checkpoint resumes only into the folder it belongs to.
"""
from __future__ import annotations

import errno
import fcntl
import os
import secrets
import shutil
import time
from pathlib import Path

import yaml

from ssl_kd.errors import ConfigError

RUN_FILES = ("config.yaml", "metrics.jsonl", "summary.json", "checkpoints", "tb", "explain")
LOCK_NAME = ".lock"
TAKEOVER_NAME = ".lock.takeover"  # flock'ed while a stale lock is replaced; never removed (its inode is the mutex)
TMP_SUFFIX = ".tmp"


def holds_run(run_dir: Path) -> bool:
    return any((run_dir / name).exists() for name in RUN_FILES)


def never_saved(run_dir: Path) -> bool:
    """A run that started (config.yaml) but left neither a checkpoint nor a summary: nothing in it
    can be resumed or reported."""
    return ((run_dir / "config.yaml").is_file() and not (run_dir / "summary.json").exists()
            and not any((run_dir / "checkpoints").glob("*.pt")))


def new_run_id() -> str:
    return secrets.token_hex(8)


def recorded_run_id(run_dir: Path) -> str | None:
    """The run id in `run_dir`'s config.yaml (None: no config, or a run from before run ids)."""
    try:
        content = yaml.safe_load((run_dir / "config.yaml").read_text())
    except (OSError, yaml.YAMLError):
        return None
    return content.get("run_id") if isinstance(content, dict) else None


def belongs(ckpt: Path, ckpt_run_id: str | None, run_dir: Path) -> bool:
    """Whether checkpoint `ckpt` is `run_dir`'s run: the same run id, or, for a checkpoint from before
    run ids (its folder may have gained one since, at a resume), a `checkpoints/` file of a run folder."""
    if ckpt_run_id:
        return recorded_run_id(run_dir) == ckpt_run_id
    return ckpt.parent.name == "checkpoints" and (run_dir / "config.yaml").is_file()


def check_belongs(ckpt: Path, ckpt_run_id: str | None, run_dir: Path) -> None:
    """Refuse to resume checkpoint `ckpt` into `run_dir` unless it is that folder's run."""
    if belongs(ckpt, ckpt_run_id, run_dir):
        return
    why = ("it is not a run folder" if not (run_dir / "config.yaml").is_file() else "it holds another run" if ckpt_run_id
           else "the checkpoint records no run id and is not in the folder's checkpoints/")
    raise ConfigError(f"--resume {ckpt}: the checkpoint does not belong to {run_dir} ({why}), which resuming would write "
                      f"into; resume its own run folder, or continue it in a new folder with --resume {ckpt} --out NEW_FOLDER")


def clear_run(run_dir: Path) -> None:
    """Remove the files of the run in `run_dir` (only those: a user's other files stay)."""
    for name in RUN_FILES:
        path = run_dir / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()


def boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def start_time(pid: int) -> str:
    """The process's start time in clock ticks since boot ("" where /proc cannot say): with the boot
    id it tells a process from a later one that reuses its pid."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    return stat.rsplit(")", 1)[1].split()[19]  # field 22; the command name before ")" may hold spaces


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


def os_error_message(err: OSError, path: Path, action: str, then: str = "run the same command again") -> str:
    """One line for the OS errors a user can fix (read-only folder, full disk); `then`: what to do
    once there is space (resume only where a checkpoint exists)."""
    if err.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return f"cannot {action} {path}: permission denied or read-only file system; choose a writable --out"
    if err.errno == errno.ENOSPC:
        return f"cannot {action} {path}: the disk is full; free space, then {then}"
    return f"cannot {action} {path}: {err.strerror or err}; check the path"


def identity(pid: int) -> str:
    """A lock's content: `pid start-time boot-id`."""
    return f"{pid} {start_time(pid)} {boot_id()}".rstrip()


def holder_alive(record: str) -> bool:
    """Whether the process a lock names still runs: its pid exists and, when the lock recorded them,
    with the same start time on the same boot (else the pid was reused by another process)."""
    fields = record.split()
    if not fields or not fields[0].isdigit() or not pid_alive(int(fields[0])):
        return False
    pid, recorded = int(fields[0]), fields[1:]
    if len(recorded) == 2:
        now = [start_time(pid), boot_id()]
        return all(not a or not b or a == b for a, b in zip(recorded, now))
    return True  # a lock of an older version: the pid is all it says


class RunLock:
    """`<run>/.lock` holding this process's identity, from `acquire()` to `release()`.

    The lock file appears whole (hard-linked from a finished temporary file), and a stale one is
    replaced (os.replace, never removed) while holding an flock of `.lock.takeover`, after reading it
    again: of several processes taking over one stale lock at once, exactly one wins."""

    def __init__(self, run_dir: Path) -> None:
        self.path = run_dir / LOCK_NAME
        self.held = False
        self.record = ""

    def acquire(self) -> None:
        self.record = identity(os.getpid())
        tmp = self.path.with_name(f"{LOCK_NAME}.{os.getpid()}-{secrets.token_hex(4)}{TMP_SUFFIX}")
        try:
            tmp.write_text(self.record + "\n")
            for _ in range(100):
                try:
                    self._create(tmp)
                    self.held = True
                    return
                except FileExistsError:
                    if self._take_over(tmp):
                        self.held = True
                        return
        except OSError as err:
            raise ConfigError(os_error_message(err, self.path.parent, "write into")) from err
        finally:
            tmp.unlink(missing_ok=True)
        raise ConfigError(f"could not take the lock {self.path}; another process keeps recreating it")

    def _create(self, tmp: Path) -> None:
        """The lock file, whole from its first moment (a hard link of `tmp`); FileExistsError if taken."""
        try:
            os.link(tmp, self.path)
        except FileExistsError:
            raise
        except OSError as err:  # a file system without hard links: create exclusively, then write
            if err.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK, errno.ENOSYS):
                raise
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            with os.fdopen(fd, "w") as f:
                f.write(self.record + "\n")

    def _take_over(self, tmp: Path) -> bool:
        """Replace a stale lock by `tmp` (True), refuse a live one, or False when the lock vanished
        meanwhile (then try to create it again)."""
        fd = os.open(self.path.with_name(TAKEOVER_NAME), os.O_CREAT | os.O_RDWR, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            holder = self._holder()
            if holder is None or (not holder and self._age() < 1.0):
                time.sleep(0.01)  # gone, or just created and not yet written (no hard links): try again
                return False
            fields = holder.split()
            if holder_alive(holder) and not (fields and fields[0] == str(os.getpid())):
                raise ConfigError(f"run folder {self.path.parent} is in use by process {fields[0]} "
                                  f"(lock file {self.path}); wait for it to finish, stop it, or choose another --out")
            os.replace(tmp, self.path)  # never absent in between: no creator can slip in
            return True
        finally:
            os.close(fd)  # releases the flock

    def _age(self) -> float:
        try:
            return time.time() - self.path.stat().st_mtime
        except FileNotFoundError:
            return 0.0

    def _holder(self) -> str | None:
        """The lock's content, or None when there is no lock file."""
        try:
            return self.path.read_text().strip()
        except FileNotFoundError:
            return None

    def holds(self) -> bool:
        """Whether this process holds the lock now: it took it, and the file still names it."""
        return self.held and self._holder() == self.record

    def release(self) -> None:
        if self.holds():
            self.path.unlink(missing_ok=True)
        self.held = False


def remove_stale_temps(run_dir: Path) -> list[Path]:
    """Delete temporary checkpoint and lock files left by a killed process (call with the lock held)."""
    stale = sorted((run_dir / "checkpoints").glob(f"*{TMP_SUFFIX}")) if (run_dir / "checkpoints").is_dir() else []
    for lock_tmp in run_dir.glob(f"{LOCK_NAME}.*-*{TMP_SUFFIX}"):  # .lock.<pid>-<token>.tmp of a taker that died
        pid = lock_tmp.name[len(LOCK_NAME) + 1:].split("-", 1)[0]
        if pid.isdigit() and not pid_alive(int(pid)):
            stale.append(lock_tmp)
    for path in stale:
        path.unlink(missing_ok=True)
    return stale


def make_folders(path: Path, created: list[Path]) -> None:
    """Create `path` and its missing parents, appending to `created` those this process created,
    top first (filled as it goes: a failure halfway leaves the record of what was made). `mkdir`
    without exist_ok decides who created a folder: of several processes creating one at once,
    exactly one did (the others find it made and go on)."""
    for folder in reversed([path, *path.parents]):
        if folder.is_dir():
            continue
        try:
            folder.mkdir()
            created.append(folder)
        except FileExistsError:
            if not folder.is_dir():
                raise ConfigError(f"--out {path}: {folder} is a file, not a folder; choose a folder path") from None


def remove_empty(folders: list[Path]) -> None:
    """Remove `folders` (bottom first) while they are empty: a folder another process has put
    anything into since (its lock, its run) stays, and so do those above it."""
    for folder in reversed(folders):
        try:
            folder.rmdir()
        except OSError:
            return


class RunDir:
    """Opens a run folder for a new run or a resumed one, holding its lock until `close()`.

    `discard()` undoes a failed start: it removes what this run wrote (the folder itself when this
    process created it), and only while it still holds the lock: a start refused by another
    process's lock never removes anything, so of several runs started at once into one new folder
    exactly one runs and nothing of it is lost.
    """

    def __init__(self, path: Path, resume: bool, overwrite: bool) -> None:
        self.path = path
        self.fresh = False
        self.lock = RunLock(path)
        if path.exists() and not path.is_dir():
            raise ConfigError(f"--out {path} is a file, not a folder; choose a folder path")
        self.created: list[Path] = []  # the folders this process made (a deep --out makes its parents)
        try:
            make_folders(path, self.created)
        except OSError as err:
            self.discard()
            raise ConfigError(os_error_message(err, path, "create the run folder")) from err
        except BaseException:
            self.discard()
            raise
        try:
            self.lock.acquire()
            if not resume and holds_run(path):
                if not overwrite and not never_saved(path):
                    raise ConfigError(f"run folder {path} already holds a run; resume it with --resume {path}, "
                                      "clear it with --overwrite, or choose another --out")
                clear_run(path)  # --overwrite, or the leftovers of a start that never saved
            self.fresh = not resume
            remove_stale_temps(path)
            probe = path / f".write_test{os.getpid()}"
            probe.write_text("")
            probe.unlink()
        except OSError as err:
            self.discard()
            raise ConfigError(os_error_message(err, path, "write into")) from err
        except BaseException:
            self.discard()
            raise

    def discard(self) -> None:
        """Remove what a failed start left behind, then release the lock: the folder's content when
        this process created it, else the files of the new run it began (never a resumed run's), and
        nothing at all without the lock; then the folders it created, while empty."""
        if self.lock.holds():
            if self.path in self.created:
                for entry in self.path.iterdir():
                    if entry.name == LOCK_NAME:
                        continue
                    if entry.is_dir() and not entry.is_symlink():
                        shutil.rmtree(entry, ignore_errors=True)
                    else:
                        entry.unlink(missing_ok=True)
            elif self.fresh:
                clear_run(self.path)
        self.close()
        remove_empty(self.created)

    def close(self) -> None:
        self.lock.release()
