"""`ssl-kd <command> [arguments]`, also `python -m ssl_kd <command> ...`: one entry point for the tools.

Each command hands its arguments to the `main` of the tool it names (`ssl-kd train` is
`tools/train.py`, `ssl-kd eval` is `tools/eval.py`, ...; `tools/` installs as `ssl_kd.tools`), so
`ssl-kd <command> --help` shows that tool's options.
"""
from __future__ import annotations

import importlib
import sys

from ssl_kd import __version__

# command -> (module whose main(argv) runs it, what it does)
COMMANDS = {
    "train": ("ssl_kd.cli", "train an algorithm on a dataset (tools/train.py)"),
    "eval": ("ssl_kd.tools.eval", "test metrics of a run's checkpoint (tools/eval.py)"),
    "explain": ("ssl_kd.tools.explain", "which training examples helped or hurt a run, by influence (tools/explain.py)"),
    "export": ("ssl_kd.tools.export", "export a run's model to take away (tools/export.py)"),
    "predict": ("ssl_kd.tools.predict", "predict new images or sentences with a run (tools/predict.py)"),
    "sweep": ("ssl_kd.tools.sweep", "compare algorithms over seeds in one table (tools/sweep.py)"),
    "paired": ("ssl_kd.tools.paired", "paired comparisons of sweeps over seeds (tools/paired.py)"),
}


def usage() -> str:
    rows = "\n".join(f"  {name:<8} {what}" for name, (_, what) in COMMANDS.items())
    return (f"usage: ssl-kd <command> [arguments]   (ssl_kd {__version__})\n\ncommands:\n{rows}\n\n"
            f"`ssl-kd <command> --help` lists the command's options.")


def main(argv: list[str] | None = None) -> int:
    """Run the command named by the first argument with the rest; exit 2 with one line for an unknown one."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage(), file=sys.stdout if argv else sys.stderr)
        return 0 if argv else 2
    if argv[0] in ("-V", "--version"):
        print(f"ssl_kd {__version__}")
        return 0
    command, *rest = argv
    if command not in COMMANDS:
        print(f"error: unknown command {command!r}; choose one of {', '.join(COMMANDS)} (ssl-kd --help)", file=sys.stderr)
        return 2
    sys.argv[0] = f"ssl-kd {command}"  # argparse names the command in its usage lines
    return importlib.import_module(COMMANDS[command][0]).main(rest)


if __name__ == "__main__":
    sys.exit(main())
