"""Huge pages for large CPU tensors: ResNet-18's forward with PyTorch's THP_MEM_ALLOC_ENABLE off and
on (the package's default since issue 12), side by side, in alternating child processes.

    python benchmarks/huge_pages.py                 # 224 px, batch 64, 256 images a pass, 5 rounds
    python benchmarks/huge_pages.py --quick         # 112 px, 2 rounds

Each pass allocates its activations afresh (~600 MB at batch 64, 224 px), and glibc hands blocks
that large back to the kernel when they are freed, so every pass faults them in again: 4 kB
pages, 150,000 faults a pass, each zeroing its page. On 2 MB transparent huge pages that is 512x
fewer faults. The third column also keeps freed memory in the process (glibc's
MALLOC_MMAP_THRESHOLD_ / MALLOC_TRIM_THRESHOLD_, set for a whole process before it starts: a tip
for long command-line runs, not a default, since the process then never gives memory back).

Printed: images/s and the CPU seconds per pass spent in the program (user) and in the kernel
(system), medians over the rounds; each round runs every configuration once, in turn, in a fresh
interpreter. PyTorch reads THP_MEM_ALLOC_ENABLE at its first large allocation, hence a process
per configuration.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys


CONFIGURATIONS = {
    "4 kB pages": {"THP_MEM_ALLOC_ENABLE": "0"},
    "huge pages (default)": {"THP_MEM_ALLOC_ENABLE": "1"},
    "huge pages + memory kept": {"THP_MEM_ALLOC_ENABLE": "1",
                                 "MALLOC_MMAP_THRESHOLD_": str(2**31 - 1),
                                 "MALLOC_TRIM_THRESHOLD_": str(2**31 - 1)},
}


def child(images: int, batch_size: int, img_size: int) -> None:
    """One configuration: bench_common's raw forward over `images` images, after a pass that warms
    the process up; CPU time per batch over the timed pass (its own warm-up batch included)."""
    from bench_common import raw_forward  # first: it puts the checkout's package on the path
    import torch
    from deepfake_detector.model import build_model

    model, cpu = build_model("none", seed=0)[0], torch.device("cpu")
    raw_forward(model, batch_size, batch_size, img_size, cpu)
    before = os.times()
    rate = raw_forward(model, images, batch_size, img_size, cpu)
    after, n_batches = os.times(), max(1, images // batch_size) + 1
    print(json.dumps({"images_per_s": rate, "user_s": (after.user - before.user) / n_batches,
                      "system_s": (after.system - before.system) / n_batches}))


def run(configuration: dict, args) -> dict:
    env = {**os.environ, **configuration}
    done = subprocess.run([sys.executable, __file__, "--child", "--images", str(args.images),
                           "--batch-size", str(args.batch_size), "--img-size", str(args.img_size)],
                          env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"child failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--images", type=int, default=256, help="images a pass (after one warm-up)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--img-size", type=int, default=224)
    parser.add_argument("--quick", action="store_true", help="112 px, 2 rounds")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return child(args.images, args.batch_size, args.img_size)
    if args.quick:
        args.rounds, args.img_size = 2, 112
    from bench_common import kernel_huge_pages
    print(f"transparent huge pages (kernel): {kernel_huge_pages()}; {os.cpu_count()} cores; "
          f"{args.images} images a pass, batch {args.batch_size}, {args.img_size} px, "
          f"{args.rounds} alternating rounds", flush=True)
    figures = {name: [] for name in CONFIGURATIONS}
    for round_ in range(args.rounds):
        for name, configuration in CONFIGURATIONS.items():
            figures[name].append(run(configuration, args))
        print(f"round {round_ + 1}: " + ", ".join(
            f"{name} {runs[-1]['images_per_s']:.1f}" for name, runs in figures.items())
            + " images/s", flush=True)
    median = lambda runs, key: statistics.median(r[key] for r in runs)  # noqa: E731
    base = median(figures["4 kB pages"], "images_per_s")
    print(f"\n{'':28} {'images/s':>9} {'vs 4 kB':>8} {'user s/batch':>13} {'system s/batch':>15}")
    for name, runs in figures.items():
        print(f"{name:28} {median(runs, 'images_per_s'):9.1f} "
              f"{median(runs, 'images_per_s') / base:7.2f}x {median(runs, 'user_s'):13.2f} "
              f"{median(runs, 'system_s'):15.2f}")
    return figures


if __name__ == "__main__":
    main()
