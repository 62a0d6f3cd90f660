"""``python -m benchmarks [idir-fast bench options]``: the benchmark table, appended to benchmarks/results/."""
import os
import sys

from idir_fast.apps.cli import main

if __name__ == "__main__":
    args = sys.argv[1:]
    if "--results-dir" not in args:
        args += ["--results-dir", os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")]
    sys.exit(main(["bench", *args]))
