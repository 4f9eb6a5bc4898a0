"""`python -m bench.perf`: runs the benchmarks (`bench.perf.command`)."""
from bench.perf.command import main

if __name__ == "__main__":
    main()
