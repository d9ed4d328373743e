"""Fault probe (issue 30): use tools/train.py and the checkpoint readers as the most demanding user
would, on tiny digits_30 runs, and count what holds. Groups:

  kill     kill -9 at a stage (after a step, inside an evaluation, inside a checkpoint write, between
           the digest and the rename, between last.pt and best.pt), then resume (or rerun when nothing
           was saved): the final state must equal an uninterrupted run's, best.pt the best evaluation's
  signals  SIGINT while the libraries load, SIGTERM mid-run then resume, a second SIGTERM, a SIGTERM
           during the final save: exit codes, one line, and the run's state
  race     N tools/train.py started at once into one new folder (exactly one runs, and finishes), and
           50 forked run-folder openings with jitter (one winner, its files intact)
  bad      bad flags, values and config files: exit 2 with one `error:` line, no folder left behind
  corrupt  damaged checkpoints (flipped bytes, truncated, edited counters, a class that is gone) fed
           to all six readers: each refuses in one line, and the run folder is byte-identical after
  refuse   commands that must be refused on a finished or locked run: the folder byte-identical after

Usage: python scripts/fault_probe.py [--quick] [--groups kill,race] [--work DIR]
Prints tries/passed/failed per group (and each failure); exits 1 when anything failed.
"""
from __future__ import annotations

import argparse
import contextlib
import hashlib
import importlib.util
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def default_sigint() -> None:
    """In the probed process: SIGINT as on a terminal (a shell's background job inherits it ignored)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)

TINY = ["--dataset", "digits_30", "--batch-size", "8", "--uratio", "2", "--device", "cpu", "--no-progress",
        "--set", "train.eval_batch_size=512"]
STEPS, EVAL_EVERY = 6, 2

# Loaded with --plugin by every probed run (and again at its resume, where PROBE_FAULT is unset): at
# the stage PROBE_FAULT names ("<stage>:<n>", the n-th time it is reached) it kills or signals its process.
HOOKS = '''
import os, signal
from ssl_kd import digest
from ssl_kd.trainer import checkpoint, trainer

stage, _, nth = os.environ.pop("PROBE_FAULT", "none:0").partition(":")
KILL, TERM = (signal.SIGKILL,), (signal.SIGTERM,)
# stage: (owner, attribute, act after the call (else before), signals sent)
STAGES = {
    "step": (trainer.Trainer, "train_one_step", True, KILL),
    "eval": (trainer.Trainer, "evaluate", True, KILL),  # evaluated, not yet saved
    "save": (checkpoint.torch, "save", True, KILL),  # the temporary file written, not yet renamed
    "digest": (digest, "_write", True, KILL),  # odd calls: both digests recorded, the rename pending
    "copy": (trainer, "copy_checkpoint", False, KILL),  # last.pt written, best.pt not yet
    "sigterm": (trainer.Trainer, "train_one_step", True, TERM),
    "sigterm2": (trainer.Trainer, "train_one_step", True, TERM + TERM),
    "final_save": (trainer.Trainer, "save", False, TERM),
}
if stage in STAGES:
    owner, attr, after, signals = STAGES[stage]
    real, calls = getattr(owner, attr), [0]

    def wrapped(*args, **kwargs):
        calls[0] += 1
        fire = calls[0] == int(nth)
        if fire and not after:
            for sig in signals:
                os.kill(os.getpid(), sig)
        out = real(*args, **kwargs)
        if fire and after:
            for sig in signals:
                os.kill(os.getpid(), sig)
        return out

    setattr(owner, attr, wrapped)
'''


class Probe:
    def __init__(self, work: Path) -> None:
        self.work = work
        self.hooks = work / "probe_hooks.py"
        self.hooks.write_text(HOOKS)
        self.results: dict[str, list[tuple[str, str]]] = {}  # group -> [(case, "" or why it failed)]

    def record(self, group: str, case: str, why: str) -> None:
        self.results.setdefault(group, []).append((case, why))
        print(f"  [{group}] {case}: {'ok' if not why else 'FAILED: ' + why}", file=sys.stderr, flush=True)

    def train(self, out: Path, *extra: str, fault: str = "", env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        argv = [sys.executable, "tools/train.py", "--algo", "supervised", "--steps", str(STEPS), "--eval-every",
                str(EVAL_EVERY), "--out", str(out), *TINY, "--plugin", str(self.hooks), *extra]
        return subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=600, preexec_fn=default_sigint,
                              env={**ENV, **(env or {}), **({"PROBE_FAULT": fault} if fault else {})})

    def resume(self, out: Path) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "tools/train.py", "--resume", str(out), "--no-progress"], cwd=REPO,
                              capture_output=True, text=True, timeout=600, env=ENV)

    # ----- kill -9 and signals ---------------------------------------------------------------------
    def reference(self) -> Path:
        ref = self.work / "reference"
        if not (ref / "summary.json").is_file():
            assert self.train(ref).returncode == 0, "the uninterrupted reference run failed"
        return ref

    def finished_like_reference(self, out: Path) -> str:
        import torch

        ref = self.reference()
        a = torch.load(out / "checkpoints" / "last.pt", weights_only=False)
        b = torch.load(ref / "checkpoints" / "last.pt", weights_only=False)
        diff = [k for k in ("step", "model", "ema", "optimizer", "scheduler", "algorithm", "samplers", "rng")
                if not same(a.get(k), b.get(k))]
        if diff:
            return f"final last.pt differs from the uninterrupted run in {', '.join(diff)}"
        rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        if [r["step"] for r in rows] != list(range(EVAL_EVERY, STEPS + 1, EVAL_EVERY)):
            return f"metrics.jsonl steps {[r['step'] for r in rows]}"
        best = torch.load(out / "checkpoints" / "best.pt", weights_only=False)["step"]
        if best != max(rows, key=lambda r: r["ema_top1"])["step"]:
            return f"best.pt holds step {best}, metrics.jsonl's best is another"
        summary = json.loads((out / "summary.json").read_text())
        return "" if summary["interrupted"] is False else "summary says interrupted"

    def kill(self, cases: list[str]) -> None:
        for fault in cases:
            out = self.work / f"kill_{fault.replace(':', '_')}"
            killed = self.train(out, fault=fault)
            if killed.returncode != -signal.SIGKILL:
                self.record("kill", fault, f"the fault did not fire (exit {killed.returncode})")
                continue
            again = self.resume(out) if (out / "checkpoints" / "last.pt").is_file() else self.train(out)
            why = f"resume exit {again.returncode}: {again.stderr.strip()[-300:]}" if again.returncode else ""
            self.record("kill", fault, why or self.finished_like_reference(out))

    def signals(self) -> None:
        shim = self.work / "shim"
        shim.mkdir(exist_ok=True)
        (shim / "yaml.py").write_text("import os, signal, time\nos.kill(os.getpid(), signal.SIGINT)\ntime.sleep(5)\n")
        p = self.train(self.work / "sig_import", env={"PYTHONPATH": str(shim)})
        self.record("signals", "SIGINT while loading", "" if p.returncode == 130 and len(p.stderr.strip().splitlines()) == 1
                    else f"exit {p.returncode}, {len(p.stderr.splitlines())} lines")
        out = self.work / "sig_term"
        p = self.train(out, fault="sigterm:3")
        again = self.resume(out) if p.returncode == 143 else p
        self.record("signals", "SIGTERM at step 3, resume", f"exit {p.returncode}" if p.returncode != 143 else
                    f"resume exit {again.returncode}" if again.returncode else self.finished_like_reference(out))
        p = self.train(self.work / "sig_term2", fault="sigterm2:3")
        last = p.stderr.strip().splitlines()[-1] if p.stderr.strip() else ""
        self.record("signals", "two SIGTERMs", "" if p.returncode == 143 and "interrupted again (SIGTERM)" in last
                    else f"exit {p.returncode}, last line {last!r}")
        out = self.work / "sig_final"
        p = self.train(out, fault=f"final_save:{STEPS // EVAL_EVERY}")
        self.record("signals", "SIGTERM during the final save", f"exit {p.returncode}" if p.returncode
                    else self.finished_like_reference(out))

    # ----- races ------------------------------------------------------------------------------------
    def race(self, n: int, trials: int, fork_trials: int) -> None:
        from tests.test_race import BARRIER_PLUGIN, RACE

        plugin = self.work / "barrier.py"
        plugin.write_text(BARRIER_PLUGIN)
        for trial in range(trials):
            gate, out = self.work / f"gate{trial}", self.work / f"race{trial}" / "run"
            gate.mkdir()
            argv = [sys.executable, "tools/train.py", "--algo", "supervised", "--steps", "2", "--eval-every", "2",
                    "--out", str(out), *TINY, "--plugin", str(plugin)]
            env = {**ENV, "RACE_GATE": str(gate), "RACE_N": str(n)}
            procs = [subprocess.Popen(argv, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
                     for _ in range(n)]
            errs = [p.communicate(timeout=900)[1] for p in procs]
            codes = sorted(p.returncode for p in procs)
            summary = out / "summary.json"
            ok = (codes == [0] + [2] * (n - 1) and not any("Traceback" in e for e in errs) and summary.is_file()
                  and json.loads(summary.read_text())["steps"] == 2)
            self.record("race", f"{n} x tools/train.py, trial {trial}", "" if ok else f"exit codes {codes}")
        proc = subprocess.run([sys.executable, "-c", RACE, str(self.work / "forks"), "50", str(fork_trials)],
                              cwd=REPO, capture_output=True, text=True, timeout=600)
        outcomes = json.loads(proc.stdout) if proc.returncode == 0 else []
        for trial, outcome in enumerate(outcomes):
            self.record("race", f"50 x RunDir, trial {trial}",
                        "" if outcome == {"intact": 1, "lost": 0, "refused": 49} else str(outcome))
        if proc.returncode:
            self.record("race", "50 x RunDir", proc.stderr.strip()[-300:])

    # ----- in-process refusals ------------------------------------------------------------------------
    def one_line(self, call: Callable[[], int], code: int = 2) -> str:
        """'' when `call` exits `code` with exactly one `error:` line and no traceback."""
        err = io.StringIO()
        try:
            with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
                got = call()
        except SystemExit as stop:
            got = stop.code
        except BaseException as exc:  # noqa: BLE001 - what the probe looks for
            return f"raised {type(exc).__name__}: {exc}"
        lines = [line for line in err.getvalue().splitlines() if line.startswith("error:")]
        if got != code or len(lines) != 1 or "Traceback" in err.getvalue():
            return f"exit {got}, {len(lines)} error lines: {err.getvalue().strip()[-200:]!r}"
        return ""

    def bad(self) -> None:
        from ssl_kd.cli import main

        files = {"list.yaml": "- train\n", "steps_list.yaml": "train: {steps: [1, 2]}\n", "int_key.yaml": "train: {1: 2}\n",
                 "lr_map.yaml": "train: {lr: {a: 1}}\n", "broken.yaml": "train: {steps: 2\n", "empty.yaml": "",
                 "section.yaml": "nosuch: {a: 1}\n", "not_a_ckpt.pt": "not a checkpoint"}
        for name, text in files.items():
            (self.work / name).write_text(text)
        (self.work / "a_file").write_text("")
        cases = [["--algo", "nosuch"], ["--dataset", "nosuch_30"], ["--net", "nosuch"], ["--steps", "0"],
                 ["--steps", "-1"], ["--set", "train.steps=1e30"], ["--set", "train.steps=x"], ["--lr", "-1"],
                 ["--lr", "nan"], ["--batch-size", "0"], ["--batch-size", "5000"], ["--eval-every", "-1"],
                 ["--set", "nosuch=1"], ["--set", "data.nosuch=1"], ["--set", "noequals"], ["--set", "nosuch.lr=1"],
                 ["--set", "train.lr_milestones=[1,2"], ["--set", "train.seed=1180591620717411303424"],
                 ["--set", "data.split_seed=-1180591620717411303424"], ["--set", "train.ema=1.5"],
                 ["--set", "weights.kind=nosuch"], ["--algo", "fixmatch", "--set", "algo.threshold=2"],
                 ["--algo", "fixmatch", "--dataset", "digits"], ["--algo", "kd", "--teacher-ckpt", str(self.work / "nope")],
                 ["--extend"], ["--out", str(self.work / "a_file")], ["--plugin", str(self.work / "nope.py")],
                 *[["--config", str(self.work / name)] for name in files if name.endswith(".yaml")],
                 ["--config", str(self.work / "nope.yaml")]]
        for i, extra in enumerate(cases):
            out = self.work / f"bad{i}"
            argv = ["--algo", "supervised", "--steps", "2", "--eval-every", "2", "--out", str(out), *TINY, *extra]
            why = self.one_line(lambda: main(argv))
            if not why and out.exists() and "--out" not in extra:
                why = "left a run folder behind"
            self.record("bad", " ".join(extra)[:70], why)
        for target in ("nope", "not_a_ckpt.pt"):
            self.record("bad", f"--resume {target}", self.one_line(lambda: main(["--resume", str(self.work / target)])))

    def readers(self, run: Path) -> dict[str, Callable[[], int]]:
        from ssl_kd.cli import main

        tool = {name: load_tool(name) for name in ("eval", "explain", "export", "predict")}
        return {"--resume": lambda: main(["--resume", str(run), "--steps", str(STEPS + 2), "--extend", "--no-progress"]),
                "eval": lambda: tool["eval"].main(["--ckpt", str(run), "--device", "cpu"]),
                "explain": lambda: tool["explain"].main(["--ckpt", str(run), "--device", "cpu", "--limit", "10",
                                                         "--no-tensorboard", "--out", str(self.work / "explained")]),
                "export": lambda: tool["export"].main([str(run), "--out", str(self.work / "exported")]),
                "predict": lambda: tool["predict"].main([str(run), "--input", str(self.work), "--device", "cpu"]),
                "--teacher-ckpt": lambda: main(["--algo", "kd", "--steps", "2", "--out", str(self.work / "student"),
                                                *TINY, "--teacher-ckpt", str(run)])}

    def corrupt(self) -> None:
        import torch

        from ssl_kd import digest

        run = self.work / "corrupt_run"
        shutil.copytree(self.reference(), run, ignore=shutil.ignore_patterns(".lock*"))
        last = run / "checkpoints" / "last.pt"
        good = last.read_bytes()
        state = torch.load(last, weights_only=False)
        mods = self.work / "mods"
        mods.mkdir(exist_ok=True)
        (mods / "probe_gone.py").write_text("class Gone:\n    pass\n")

        def flip() -> None:
            data = bytearray(good)
            data[len(data) // 2:len(data) // 2 + 64] = bytes(b ^ 0xFF for b in data[len(data) // 2:len(data) // 2 + 64])
            last.write_bytes(bytes(data))

        def edited(**changes: Any) -> Callable[[], None]:
            return lambda: (torch.save({**state, **changes}, last), digest.write_digest(last))

        def gone() -> None:
            sys.path.insert(0, str(mods))
            import probe_gone

            edited(algorithm={**(state["algorithm"] or {}), "x": probe_gone.Gone()})()
            sys.path.remove(str(mods))
            del sys.modules["probe_gone"]

        damages = {"64 flipped bytes": flip, "truncated": lambda: last.write_bytes(good[:len(good) // 3]),
                   "empty": lambda: last.write_bytes(b""), "step 10^12": edited(step=10**12),
                   "negative wall_s": edited(wall_s=-1.0), "a class that is gone": gone}
        for damage, apply in damages.items():
            apply()
            before = tree_hash(run)
            for reader, call in self.readers(run).items():
                why = self.one_line(call)
                if not why and tree_hash(run) != before:
                    why = "the run folder changed"
                if not why and any((self.work / d).exists() for d in ("explained", "exported", "student")):
                    why = "left an output behind"
                self.record("corrupt", f"{damage} -> {reader}", why)
            last.write_bytes(good)
            digest.write_digest(last)

    def refuse(self) -> None:
        from ssl_kd.cli import main

        run = self.work / "refuse_run"
        shutil.copytree(self.reference(), run, ignore=shutil.ignore_patterns(".lock*"))
        other = self.work / "refuse_other"  # another finished run
        shutil.copytree(self.reference(), other, ignore=shutil.ignore_patterns(".lock*"))
        base = ["--algo", "supervised", "--steps", "2", *TINY]
        cases = {"new run into it": ([*base, "--out", str(run)], run),
                 "--resume --set": (["--resume", str(run), "--set", "train.lr=1"], run),
                 "--resume --config": (["--resume", str(run), "--config", str(run / "config.yaml")], run),
                 "--resume --steps (no --extend)": (["--resume", str(run), "--steps", str(STEPS + 2)], run),
                 "--resume --steps below the step": (["--resume", str(run), "--steps", "1", "--extend"], run),
                 "--resume CKPT --out another run": (["--resume", str(run), "--out", str(other)], other)}
        sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
        try:
            from ssl_kd.trainer.rundir import identity

            for name, (argv, folder) in cases.items():
                before = tree_hash(folder)
                why = self.one_line(lambda: main(argv))
                self.record("refuse", name, why or ("" if tree_hash(folder) == before else "the run folder changed"))
            (run / ".lock").write_text(identity(sleeper.pid) + "\n")  # a live run holds it
            for name, argv in {"locked: new run --overwrite": [*base, "--out", str(run), "--overwrite"],
                               "locked: --resume": ["--resume", str(run), "--steps", str(STEPS + 2), "--extend"]}.items():
                before = tree_hash(run)
                why = self.one_line(lambda: main(argv))
                self.record("refuse", name, why or ("" if tree_hash(run) == before else "the run folder changed"))
        finally:
            sleeper.kill()
            sleeper.wait()

    def report(self) -> bool:
        print(f"{'group':<10} {'tries':>6} {'passed':>7} {'failed':>7}")
        for group, cases in self.results.items():
            failed = [c for c in cases if c[1]]
            print(f"{group:<10} {len(cases):>6} {len(cases) - len(failed):>7} {len(failed):>7}")
        failures = [(g, c, w) for g, cases in self.results.items() for c, w in cases if w]
        for group, case, why in failures:
            print(f"FAILED [{group}] {case}: {why}")
        return not failures


def same(a: Any, b: Any) -> bool:
    """Exact equality of nested checkpoint state (tensors bit for bit)."""
    import torch

    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.shape == b.shape and torch.equal(a, b)
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    return bool(a == b) if not hasattr(a, "shape") else bool((a == b).all())


def tree_hash(folder: Path) -> str:
    """SHA-256 over every file's path and bytes under `folder` (the lock aside)."""
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        if p.is_file() and not p.name.startswith(".lock"):
            h.update(str(p.relative_to(folder)).encode() + b"\0" + p.read_bytes())
    return h.hexdigest()


def load_tool(name: str) -> Any:
    spec = importlib.util.spec_from_file_location(f"probe_{name}", REPO / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


KILLS = {"quick": ["step:3", "save:2", "copy:1"],
         # 6 steps, evaluated and saved at 2, 4, 6: 3 torch.save calls, 2 digest writes per file written, 1+ best copies
         "full": ["step:1", "step:3", "step:5", "eval:1", "eval:3", "save:1", "save:2", "save:3", "digest:1", "digest:3",
                  "digest:5", "copy:1"]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="fewer kills and race trials (a few minutes of CPU)")
    p.add_argument("--groups", default="kill,signals,race,bad,corrupt,refuse", help="comma-separated groups to run")
    p.add_argument("--race-n", type=int, default=0, help="processes per tools/train.py race (default: 4 quick, 12 full)")
    p.add_argument("--work", type=Path, default=None, help="scratch folder (default: a temporary one, removed after)")
    args = p.parse_args(argv)
    size = "quick" if args.quick else "full"
    work = args.work or Path(tempfile.mkdtemp(prefix="fault_probe_"))
    work.mkdir(parents=True, exist_ok=True)
    probe = Probe(work)
    groups = args.groups.split(",")
    try:
        for group in groups:
            if group == "kill":
                probe.kill(KILLS[size])
            elif group == "race":
                probe.race(args.race_n or (4 if args.quick else 12), 1 if args.quick else 3, 3 if args.quick else 20)
            elif group in ("signals", "bad", "corrupt", "refuse"):
                getattr(probe, group)()
            else:
                p.error(f"unknown group {group!r}")
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    return 0 if probe.report() else 1


if __name__ == "__main__":
    sys.exit(main())
