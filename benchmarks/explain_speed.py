"""Wall time of write_report (tools/explain.py's work after loading the run): an earlier
ssl_kd/influence/explain.py against this tree's, on one run, with the same influence settings.

    git show b60ac19:ssl_kd/influence/explain.py > /tmp/old_explain.py
    python benchmarks/explain_speed.py CKPT LIMIT REPEATS before,after /tmp/old_explain.py
"""
from __future__ import annotations

import csv
import importlib.util
import sys
import time

from ssl_kd.influence import InfluenceConfig, write_report
from ssl_kd.run import load_run


def main(ckpt: str, limit: int, repeats: int, which: list[str], old_file: str) -> None:
    spec = importlib.util.spec_from_file_location("old_explain", old_file)
    old = importlib.util.module_from_spec(spec)
    sys.modules["old_explain"] = old  # dataclasses look their module up
    spec.loader.exec_module(old)
    run = load_run(ckpt, "cpu")
    model = run.ema_model or run.model
    cfg = InfluenceConfig(weight_decay=run.cfg.train.weight_decay)
    reports = {"before": old.write_report, "after": write_report}
    for _ in range(repeats):
        for name in which:
            start = time.perf_counter()
            reports[name](model, run.data, f"/tmp/explain_speed_{name}", cfg=cfg, limit=limit)
            print(f"{name}: {time.perf_counter() - start:.2f} s", flush=True)
    if len(which) == 2:
        scores = [{r["index"]: float(r["score"]) for r in csv.DictReader(open(f"/tmp/explain_speed_{n}/influence_val.csv"))}
                  for n in which]
        diff = max(abs(scores[0][k] - scores[1][k]) / (abs(scores[0][k]) + 1e-12) for k in scores[0])
        print(f"{len(scores[1])} examples; largest relative score difference {diff:.1e}")


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4].split(","), sys.argv[5])
