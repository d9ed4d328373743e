"""Issue 30.1: runs started at once into one new folder: exactly one runs, and a refused start
never removes anything (before, a loser's clean-up deleted the winner's live run)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ssl_kd.errors import ConfigError
from ssl_kd.trainer.rundir import LOCK_NAME, RunDir, RunLock, identity
from tests.conftest import REPO, quick_args

# N forked processes open one new run folder at once; a winner writes a run into it and keeps it
# until every process has tried. Printed per trial: winners whose run survived, winners whose run was
# deleted under them, refused starts.
RACE = """
import json, os, random, sys, time
from multiprocessing import get_context
from pathlib import Path
from ssl_kd.errors import ConfigError
from ssl_kd.trainer.rundir import RunDir, RunLock

def jitter(call):
    # up to 3 ms before each folder creation and lock attempt: many interleavings per trial
    return lambda *args, **kwargs: (time.sleep(random.random() * 0.003), call(*args, **kwargs))[1]

Path.mkdir, RunLock.acquire = jitter(Path.mkdir), jitter(RunLock.acquire)

def start(run_dir, barrier, results):
    random.seed(os.getpid())
    barrier.wait()
    try:
        folder = RunDir(run_dir, resume=False, overwrite=False)
    except ConfigError:
        barrier.wait()
        results.put("refused")
        os._exit(0)
    try:
        (run_dir / "checkpoints").mkdir()
        (run_dir / "checkpoints" / "last.pt").write_text(str(os.getpid()))
    except OSError:
        pass  # its folder was removed under it: counted as lost below
    barrier.wait()  # every other process tried (and cleaned up) while this run was alive
    mine = run_dir / "checkpoints" / "last.pt"
    results.put("intact" if mine.is_file() and mine.read_text() == str(os.getpid()) else "lost")
    folder.close()
    os._exit(0)

ctx, n, out = get_context("fork"), int(sys.argv[2]), []
for trial in range(int(sys.argv[3])):
    run_dir = Path(sys.argv[1]) / f"t{trial}" / "run"  # its parent is new too
    barrier, results = ctx.Barrier(n), ctx.SimpleQueue()
    procs = [ctx.Process(target=start, args=(run_dir, barrier, results)) for _ in range(n)]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    codes = [results.get() for _ in range(n)]
    out.append({"intact": codes.count("intact"), "lost": codes.count("lost"), "refused": codes.count("refused")})
print(json.dumps(out))
"""


def race(root: Path, n: int, trials: int) -> list[dict]:
    proc = subprocess.run([sys.executable, "-c", RACE, str(root), str(n), str(trials)],
                          capture_output=True, text=True, cwd=REPO, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_fifty_starts_into_one_new_folder_leave_one_intact_run(tmp_path):
    # in a process without torch, so 50 forks take well under a second per trial
    trials = race(tmp_path, 50, 4)
    assert trials == [{"intact": 1, "lost": 0, "refused": 49}] * 4


def test_a_refused_creator_never_removes_the_run_that_took_its_folder(tmp_path, monkeypatch):
    """The exact interleaving: this process creates the folder, then another one takes the lock and
    writes its run before this one tries to; this refused start must leave that run as it is."""
    out = tmp_path / "new" / "run"
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    real_acquire = RunLock.acquire

    def another_run_first(self: RunLock) -> None:
        (out / LOCK_NAME).write_text(identity(other.pid) + "\n")  # a live run took the lock...
        (out / "config.yaml").write_text("train: {}\n")  # ...and started writing
        real_acquire(self)

    monkeypatch.setattr(RunLock, "acquire", another_run_first)
    try:
        with pytest.raises(ConfigError, match=f"in use by process {other.pid}"):
            RunDir(out, resume=False, overwrite=False)
    finally:
        other.kill()
        other.wait()
    assert (out / "config.yaml").is_file() and (out / LOCK_NAME).is_file()


BARRIER_PLUGIN = """
import os, time
from pathlib import Path
# issue 30's race test: every process waits here until all N have imported, so they reach the
# run folder within milliseconds of each other
gate = Path(os.environ["RACE_GATE"])
(gate / str(os.getpid())).touch()
deadline = time.time() + 120
while len(list(gate.iterdir())) < int(os.environ["RACE_N"]) and time.time() < deadline:
    time.sleep(0.002)
"""

# The CLI imported once, then N forked processes run its main() (what tools/train.py runs) at once,
# per trial: repeats cost a run, not N imports of torch. Printed: the exit codes per trial.
FORKED_TRAIN = """
import json, sys
from multiprocessing import get_context
from ssl_kd.cli import main
from ssl_kd.registry import discover_all
from ssl_kd.trainer import trainer  # noqa: F401 (imported here, not once per child)

discover_all()

def start(argv, barrier, results):
    barrier.wait()
    results.put(main(argv))

ctx, n, trials = get_context("fork"), int(sys.argv[1]), json.loads(sys.argv[2])
codes = []
for argv in trials:
    barrier, results = ctx.Barrier(n), ctx.SimpleQueue()
    procs = [ctx.Process(target=start, args=(argv, barrier, results)) for _ in range(n)]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    codes.append(sorted(results.get() for _ in range(n)))
print(json.dumps(codes))
"""


def check_one_winner(out: Path, codes: list[int], stderr: str, n: int) -> None:
    assert codes == [0] + [2] * (n - 1), stderr[-2000:]
    assert "Traceback" not in stderr and stderr.count(f"error: run folder {out} is in use by process") == n - 1
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 2 and summary["interrupted"] is False
    assert (out / "checkpoints" / "last.pt").is_file() and not (out / LOCK_NAME).exists()


def test_eight_train_processes_into_one_new_folder_one_wins_and_finishes(tmp_path):
    n, env = 8, {**os.environ, "OMP_NUM_THREADS": "1"}
    # tools/train.py itself, N processes released together by a plug-in once all have imported
    gate, out, plugin = tmp_path / "gate", tmp_path / "new" / "run", tmp_path / "barrier.py"
    gate.mkdir()
    plugin.write_text(BARRIER_PLUGIN)
    argv = [sys.executable, "tools/train.py", *quick_args(out, "supervised", 2), "--plugin", str(plugin)]
    procs = [subprocess.Popen(argv, cwd=REPO, env={**env, "RACE_GATE": str(gate), "RACE_N": str(n)},
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for _ in range(n)]
    stderr = "".join(p.communicate(timeout=300)[1] for p in procs)
    check_one_winner(out, sorted(p.returncode for p in procs), stderr, n)
    # repeats: the same CLI in N forked processes per trial
    outs = [tmp_path / f"t{trial}" / "run" for trial in range(3)]
    proc = subprocess.run([sys.executable, "-c", FORKED_TRAIN, str(n), json.dumps([quick_args(o, "supervised", 2) for o in outs])],
                          capture_output=True, text=True, cwd=REPO, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    for trial_out, codes in zip(outs, json.loads(proc.stdout.splitlines()[-1])):
        check_one_winner(trial_out, codes, "\n".join(l for l in proc.stderr.splitlines() if str(trial_out) in l or "Traceback" in l), n)
