"""Quick start with the Python API: train FixMatch on the embedded digits set, evaluate it, predict.

    python examples/quickstart.py [--steps 200] [--out runs/quickstart]

About a CPU minute at the default 200 steps; tests/test_api.py runs it at a few steps.
"""
from __future__ import annotations

import argparse

import ssl_kd


def main(steps: int, out: str) -> None:
    print("algorithms:", ", ".join(ssl_kd.list_algorithms()))
    run = ssl_kd.train(algo="fixmatch", dataset="digits_30", steps=steps, out=out, overwrite=True, device="cpu")
    print(f"test top-1 of the reported model: {run.evaluate()['top1']:.1f}%")

    loaded = ssl_kd.load_run(out)  # a run folder, e.g. one trained yesterday
    images, labels = loaded.data.test_x[:5], loaded.data.test_y[:5]  # uint8 (N, C, H, W), as a camera gives them
    probabilities = loaded.predict(images)
    for p, label in zip(probabilities, labels.tolist()):
        print(f"true {label}  predicted {int(p.argmax())} with probability {float(p.max()):.2f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--out", default="runs/quickstart")
    args = parser.parse_args()
    main(args.steps, args.out)
