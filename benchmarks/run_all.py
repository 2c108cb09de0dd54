"""``make bench``: run every benchmark in turn (each prints its table and writes results/)."""

from __future__ import annotations

import subprocess
import sys

BENCHMARKS = ["benchmarks.extraction_speed", "benchmarks.sae_throughput",
              "benchmarks.steering_overhead"]


def main() -> None:
    for module in BENCHMARKS:
        print(f"== {module}", flush=True)
        subprocess.run([sys.executable, "-m", module], check=True)


if __name__ == "__main__":
    main()
