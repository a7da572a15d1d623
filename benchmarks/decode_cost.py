"""CPU time per image of the data path against the model's: decode + resize (full or reduced-size
JPEG decoding) beside ResNet-18's forward, in CPU-milliseconds, which a busy machine disturbs far
less than images/s (the figure train_speed.py's sweep uses too).

    python benchmarks/decode_cost.py                 # 48 photos of 1280 x 1024 and 48 CIFAKE files
    python benchmarks/decode_cost.py --n-images 96 --img-size 224

On 2 cores with 0 workers (the default there) extraction runs decode and forward one after the
other, so the ratio it can reach is forward / (forward + decode + resize); the script prints that.
"""
from __future__ import annotations

import argparse
import os
import random
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


from bench_common import CIFAKE_DEV, class_files, photo_from  # noqa: E402


def cpu_ms_per_image(function, items, repeats: int) -> float:
    """The least CPU time per image over `repeats` passes (this process, all threads)."""
    best = float("inf")
    for _ in range(repeats):
        start = time.process_time()
        for item in items:
            function(item)
        best = min(best, (time.process_time() - start) / len(items))
    return 1e3 * best


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-images", type=int, default=48)
    parser.add_argument("--img-size", type=int, default=224)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    from PIL import Image
    from deepfake_detector.data import open_image, uint8_transform
    from deepfake_detector.features import inference_pass
    from deepfake_detector.model import backbone_features, build_model
    size, resize = args.img_size, uint8_transform(args.img_size)
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="decode_cost-") as temporary:
        rng, draw = np.random.default_rng(0), random.Random(0)
        cifake = draw.sample([f for files in class_files(CIFAKE_DEV).values() for f in files],
                             args.n_images)
        photos = []
        for i, path in enumerate(cifake):
            with Image.open(path) as image:
                photos.append(Path(temporary) / f"photo{i}.jpg")
                photo_from(image, rng).save(photos[-1], quality=90)
        rows = {}
        for name, files in (("CIFAKE 32 x 32", cifake), ("photo 1280 x 1024", photos)):
            for decode, target in (("full", None), ("draft", size)):
                rows[(name, decode)] = cpu_ms_per_image(
                    lambda path: resize(open_image(path, target)), files, args.repeats)
        model = build_model("none", seed=0)[0]
        batch = torch.randn(64, 3, size, size).contiguous(memory_format=torch.channels_last)
        with inference_pass(model, torch.device("cpu")):
            backbone_features(model, batch)  # warm-up
            forward = cpu_ms_per_image(lambda _: backbone_features(model, batch), [0],
                                       args.repeats) / 64
    print(f"CPU-ms per image, {size} px, torch threads {torch.get_num_threads()}, "
          f"load {load_before} -> {os.getloadavg()}")
    print(f"{'':34} {'decode+resize':>14} {'forward':>8} {'forward / (both)':>17}")
    for (name, decode), ms in rows.items():
        print(f"{name + ', ' + decode + ' decode':34} {ms:14.2f} {forward:8.1f} "
              f"{forward / (forward + ms):16.2f}x")


if __name__ == "__main__":
    main()
