"""How fast does the command line answer --help? Target: under 0.5 s (the parser imports no torch,
scikit-learn or matplotlib; each command imports what it runs).

    python benchmarks/cli_help_speed.py              # this checkout, 7 runs per command
    python benchmarks/cli_help_speed.py --compare /path/to/other/checkout

Figures, side by side from one run (the two checkouts interleaved, so both see the same load):
  wall s     median and max of a fresh `python -m deepfake_detector ... --help` process
  heavy      the heavy libraries the process had imported when it answered
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COMMANDS = (["--help"], ["split", "--help"], ["train", "--help"], ["gradcam", "--help"])
HEAVY = ("torch", "sklearn", "matplotlib")
PROBE = ("import runpy, sys\nsys.argv = ['deepfake_detector'] + sys.argv[1:]\n"
         "try:\n    runpy.run_module('deepfake_detector', run_name='__main__')\n"
         "except SystemExit:\n    pass\n"
         f"print('HEAVY', sorted(m for m in {HEAVY!r} if m in sys.modules), file=sys.stderr)")


def one_run(checkout: Path, argv: list[str]) -> tuple[float, str]:
    env = {**os.environ, "PYTHONPATH": str(checkout)}
    start = time.perf_counter()
    result = subprocess.run([sys.executable, "-c", PROBE, *argv], capture_output=True, text=True,
                            env=env, cwd=checkout.parent)  # not cwd=checkout: -c puts cwd first
    seconds = time.perf_counter() - start
    heavy = next((line[6:] for line in result.stderr.splitlines() if line.startswith("HEAVY ")),
                 "?")
    return seconds, heavy


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--compare", type=Path, default=None, help="another checkout to time")
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()
    checkouts = [ROOT] + ([args.compare.resolve()] if args.compare else [])
    print(f"load average {os.getloadavg()[0]:.2f}; {args.runs} runs each, interleaved")
    print(f"{'checkout':40} {'command':16} {'median s':>9} {'max s':>7}  heavy")
    for argv in COMMANDS:
        times = {c: [] for c in checkouts}
        heavy = {}
        for _ in range(args.runs):
            for checkout in checkouts:
                seconds, heavy[checkout] = one_run(checkout, argv)
                times[checkout].append(seconds)
        for checkout in checkouts:
            print(f"{str(checkout)[-40:]:40} {' '.join(argv):16} "
                  f"{statistics.median(times[checkout]):9.3f} {max(times[checkout]):7.3f}  "
                  f"{heavy[checkout]}")
    print(f"load average {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
