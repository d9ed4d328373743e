"""Train an algorithm: `python tools/train.py --algo fixmatch --dataset cifar10_4k` (see --help)."""
import sys

if __name__ == "__main__":
    try:
        from ssl_kd.cli import main
    except KeyboardInterrupt:  # Ctrl-C while the libraries load: nothing has been written yet
        print("\ninterrupted while starting; nothing was written", file=sys.stderr)
        sys.exit(130)
    sys.exit(main())
