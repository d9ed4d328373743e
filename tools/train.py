"""Train an algorithm: `python tools/train.py --algo fixmatch --dataset cifar10_4k` (see --help)."""
import sys

from ssl_kd.cli import main

if __name__ == "__main__":
    sys.exit(main())
