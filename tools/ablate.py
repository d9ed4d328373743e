"""KD-AIF ablation in one command: every teacher update x weight schedule, plus the references
(supervised, FixMatch in SSL mode, unweighted KD), over several seeds, as one markdown/CSV table.

`python tools/ablate.py --dataset digits_30 --seeds 3 --out runs/ablate -- --steps 1000`

Arguments after `--` go to every run (e.g. `--steps`, `--set data.val_per_class=20`); in KD
mode (a fully labelled dataset) give the teacher with `--teacher-ckpt`. `--variant LABEL="ARGS"`
adds rows of your own. Runs are `python -m ssl_kd train` subprocesses, `--jobs` at a time; finished runs are reused when the command is
run again, so a second `--metric` (e.g. `final_ema_val_top1`, `final_noise_auc`) costs nothing.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ssl_kd.data.build import parse_dataset_name
from ssl_kd.errors import ConfigError, SSLKDError
from ssl_kd.sweep import Variant, parse_variant, sweep
from ssl_kd.teacher import TEACHER_UPDATES

SCHEDULES = ("static", "periodic", "online")


def variants(ssl: bool, updates: list[str], schedules: list[str], references: bool, extra: list[str],
             teacher: list[str]) -> list[Variant]:
    """The table's rows; `teacher` (e.g. --teacher-ckpt PATH) goes to the teacher-student rows only."""
    rows = []
    if references:
        rows.append(Variant("supervised", ["--algo", "supervised"]))
        if ssl:
            rows.append(Variant("fixmatch", ["--algo", "fixmatch"]))
        rows.append(Variant("kd", ["--algo", "kd", *teacher]))
    for update in updates:
        for schedule in schedules:
            rows.append(Variant(f"kdaif_{update}_{schedule}", ["--algo", "kdaif", *teacher, "--set", f"algo.teacher_update={update}",
                                                               "--set", f"weights.schedule={schedule}"]))
    rows.extend(parse_variant(spec) for spec in extra)
    return rows


def main() -> int:
    argv = sys.argv[1:]
    common = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[:argv.index("--")] if "--" in argv else argv
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", required=True)
    p.add_argument("--updates", default="", help="teacher updates to cross (default: all that apply to the mode)")
    p.add_argument("--schedules", default=",".join(SCHEDULES), help="weight schedules to cross")
    p.add_argument("--no-references", action="store_true", help="leave out supervised, FixMatch and KD")
    p.add_argument("--variant", action="append", default=[], metavar='LABEL="ARGS"', help="an extra row")
    p.add_argument("--teacher-ckpt", help="the teacher of the kd/kdaif rows (required in KD mode)")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--jobs", type=int, default=2, help="runs in parallel (one CPU thread each)")
    p.add_argument("--metric", default="last_top1",
                   help="summary.json key, or final_<key> of the last evaluation (e.g. final_ema_val_top1)")
    p.add_argument("--out", required=True)
    p.add_argument("--overwrite", action="store_true",
                   help="run again the finished runs in --out whose settings differ from these (else they stop the sweep)")
    args = p.parse_args(argv)
    try:
        ssl = parse_dataset_name(args.dataset)[1] is not None
        allowed = [u for u in TEACHER_UPDATES if ssl or u not in ("mpl", "ema")]  # KD mode keeps its checkpoint teacher
        updates = args.updates.split(",") if args.updates else allowed
        schedules = args.schedules.split(",") if args.schedules else []
        for name, given, valid in (("update", updates, allowed), ("schedule", schedules, SCHEDULES)):
            unknown = [g for g in given if g not in valid]
            if unknown:
                raise ConfigError(f"--{name}s: {', '.join(unknown)} not valid here; choose from {', '.join(valid)}")
        teacher = ["--teacher-ckpt", args.teacher_ckpt] if args.teacher_ckpt else []
        rows = variants(ssl, updates, schedules, not args.no_references, args.variant, teacher)
        sweep(rows, list(range(args.seeds)), ["--dataset", args.dataset, *common], Path(args.out), args.jobs, args.metric,
              overwrite=args.overwrite)
    except SSLKDError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    out = Path(args.out)
    for name in ("table.md", "results.csv"):  # keep one table per metric
        (out / name).with_stem(f"{Path(name).stem}_{args.metric}").write_text((out / name).read_text())
    print((out / "table.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
