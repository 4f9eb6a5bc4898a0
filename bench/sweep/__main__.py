"""`python -m bench.sweep`: the command line (bench/sweep/cli.py)."""
from bench.sweep.cli import main

if __name__ == "__main__":
    main()
