"""``make bench``: run every benchmark in turn; each prints its table and writes
``benchmarks/results/<name>.json``.

    python -m benchmarks.run_all [--quick] [--only extraction_speed sae_throughput ...]

``benchmarks.steering_overhead`` runs when its file exists (it is skipped with a note
otherwise). ``real_model_throughput`` skips, with a note, each built-in real model whose wheel is
not installed, and all of them where the local benchmark files (``../shared/data``) are absent.
``--quick`` passes ``--quick`` to each benchmark (tiny sizes, a smoke test whose
figures mean nothing); ``organism_matched`` (the LiReF on the organism's matched set beside its
controls, a finding rather than a timing) has no quick mode and always runs in full.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

HERE = Path(__file__).resolve().parent
BENCHMARKS = ["extraction_speed", "extraction_memory", "sae_throughput", "steering_overhead",
              "real_model_throughput", "organism_matched"]


def available(names: Sequence[str] = BENCHMARKS) -> tuple[list[str], list[str]]:
    """``(present, missing)`` benchmark module names (``benchmarks/<name>.py``)."""
    present = [n for n in names if (HERE / f"{n}.py").is_file()]
    return present, [n for n in names if n not in present]


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="tiny sizes: a smoke test")
    ap.add_argument("--only", nargs="*", choices=BENCHMARKS, default=None)
    args = ap.parse_args(argv)
    present, missing = available(args.only or BENCHMARKS)
    for name in missing:
        print(f"== benchmarks.{name}: skipped (benchmarks/{name}.py does not exist)", flush=True)
    failed = []
    for name in present:
        print(f"== benchmarks.{name}", flush=True)
        cmd = [sys.executable, "-m", f"benchmarks.{name}"] + (["--quick"] if args.quick else [])
        if subprocess.run(cmd, cwd=HERE.parent).returncode != 0:
            failed.append(name)
    if failed:
        print(f"failed: {', '.join(failed)}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
