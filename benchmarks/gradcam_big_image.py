"""Grad-CAM of one huge image: time and peak memory, with the overlay cap and without it.

    python benchmarks/gradcam_big_image.py --size 10000 [--capped-only]

Writes a SIZE x SIZE PNG (smooth colours, a few hundred KB, like a large scan or render), then
explains it in fresh processes, so that each peak is its own: with the overlay capped at 4,096 px
on the long side (the default, `gradcam.OVERLAY_MAX_SIDE`); uncapped (the overlay at full
resolution); and, with --before, an older checkout of the package (what it did before issue 13:
full-resolution float overlays):

    git archive 74f32fd | tar -x -C /tmp/before      # the commit before issue 13
    python benchmarks/gradcam_big_image.py --size 10000 --before /tmp/before

Prints seconds and peak resident memory (VmHWM of that process: Python, torch and the model
included) side by side.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def make_image(path: Path, size: int) -> None:
    import numpy as np
    from PIL import Image
    ramp = np.linspace(0, 255, size, dtype=np.float32)
    rows = []
    for start in range(0, size, 1000):  # a band at a time: the writer's own memory stays small
        y = ramp[start:start + 1000, None]
        rows.append(np.dstack([np.broadcast_to(ramp[None, :], (len(y), size)),
                               np.broadcast_to(y, (len(y), size)),
                               np.full((len(y), size), 128, np.float32)]).astype(np.uint8))
    Image.fromarray(np.concatenate(rows)).save(path, optimize=False, compress_level=9)


def child(image: Path, out: Path, max_side: int) -> None:
    import torch
    from deepfake_detector.explain import explain_images
    from deepfake_detector.model import build_model
    torch.set_num_threads(2)
    model = build_model("none", seed=0)[0]
    start = time.perf_counter()
    if max_side:
        from deepfake_detector.explain import ExplainOptions
        from deepfake_detector.preprocessing import Preprocessing
        explain_images(model, [image], out, Preprocessing(224, decode="full"),
                       options=ExplainOptions(max_side=max_side))
    else:  # a checkout from before the cap (--before): its own signature
        explain_images(model, [image], out, img_size=224)
    seconds = time.perf_counter() - start
    print(json.dumps({"seconds": seconds, "peak_rss_mib": peak_rss_mib()}))


def peak_rss_mib() -> float:
    """VmHWM, this process's own peak resident memory. Not ru_maxrss: Linux carries that over from
    the parent across fork and exec, and the parent held the generated image."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    scale = 1024 * 1024 if sys.platform == "darwin" else 1024  # bytes on macOS, KiB on Linux
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / scale


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=10000)
    parser.add_argument("--capped-only", action="store_true",
                        help="skip the uncapped run (it needs ~9 GB for a 10000 px square)")
    parser.add_argument("--before", default=None, metavar="CHECKOUT",
                        help="also run an older checkout of the package (e.g. a `git archive` of "
                             "the commit before issue 13), in its own process")
    parser.add_argument("--child", nargs=3, metavar=("IMAGE", "OUT", "MAX_SIDE"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(Path(args.child[0]), Path(args.child[1]), int(args.child[2]))
        return {}
    results = {}
    with tempfile.TemporaryDirectory() as folder:
        image = Path(folder) / "huge.png"
        make_image(image, args.size)
        print(f"{args.size} x {args.size} PNG, {image.stat().st_size / 1e3:,.0f} kB")
        here = str(Path(__file__).resolve().parents[1])
        runs = [("capped at 4096 px", 4096, here)]
        if not args.capped_only:
            runs.append(("uncapped", 10**9, here))
        if args.before:
            runs.append(("before issue 13", 0, str(Path(args.before).resolve())))
        for k, (name, max_side, package) in enumerate(runs):
            environment = {**os.environ, "PYTHONPATH": package}
            done = subprocess.run([sys.executable, __file__, "--child", str(image),
                                   str(Path(folder) / f"out{k}"), str(max_side)],
                                  capture_output=True, text=True, check=True, env=environment)
            results[name] = json.loads(done.stdout.strip().splitlines()[-1])
    print(f"{'overlay':<20}{'seconds':>10}{'peak RSS (MiB)':>17}")
    for name, figures in results.items():
        print(f"{name:<20}{figures['seconds']:>10.1f}{figures['peak_rss_mib']:>17,.0f}")
    return results


if __name__ == "__main__":
    main()
