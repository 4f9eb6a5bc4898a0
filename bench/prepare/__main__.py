"""`python -m bench.prepare`: the command line (bench/prepare/cli.py)."""
import sys

from bench.prepare.cli import main

if __name__ == "__main__":
    sys.exit(main())
