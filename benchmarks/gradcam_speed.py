"""Grad-CAM speed: this package's grad_cam against pytorch-grad-cam's GradCAM, on one batch.

    python benchmarks/gradcam_speed.py --device cpu --batch 32 --size 224

Both run in this one process on the same images, same targets (each image's predicted side) and
the same weights; the repeats alternate between the two so that a busy machine slows both alike.
pytorch-grad-cam needs a gradient path through the frozen backbone, so it gets a copy with
requires_grad=True everywhere: it pays for a full backward pass, we pay for the head's only.
Prints images/s of each, the speed-up and the largest difference between their maps.
"""
from __future__ import annotations

import argparse
import copy
import statistics
import time

import numpy as np
import torch


def timed(function, device: torch.device) -> tuple[float, np.ndarray]:
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    result = function()  # both return NumPy arrays: the GPU work is finished when they return
    return time.perf_counter() - start, result


def main(argv=None) -> dict:
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    from deepfake_detector.gradcam import grad_cam_with_logits
    from deepfake_detector.model import build_model

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, mps")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--repeats", type=int, default=3, help="timed calls of each (median)")
    parser.add_argument("--weights", default="none", help='"none" (random init) or "imagenet"')
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    device = torch.device(args.device)
    model = build_model(args.weights, seed=args.seed)[0].to(device)
    reference_model = copy.deepcopy(model).requires_grad_(True)
    images = torch.randn(args.batch, 3, args.size, args.size,
                         generator=torch.Generator().manual_seed(args.seed)).to(device)

    first = grad_cam_with_logits(model, images)  # also the warm-up
    minus_logit = lambda output: -output[0]  # noqa: E731  "real": minus the single logit
    targets = [ClassifierOutputTarget(0) if t == "fake" else minus_logit for t in first.targets]

    def forward_only():  # the yardstick: what predicting alone costs
        with torch.inference_mode():
            return model(images).cpu().numpy()

    ours_seconds, theirs_seconds, forward_seconds = [], [], []
    with GradCAM(model=reference_model, target_layers=[reference_model.layer4[-1]]) as reference:
        reference(input_tensor=images, targets=targets)  # warm-up
        for _ in range(args.repeats):
            seconds, ours = timed(lambda: grad_cam_with_logits(model, images).cams, device)
            ours_seconds.append(seconds)
            seconds, theirs = timed(lambda: reference(input_tensor=images, targets=targets), device)
            theirs_seconds.append(seconds)
            forward_seconds.append(timed(forward_only, device)[0])

    ours_rate = args.batch / statistics.median(ours_seconds)
    theirs_rate = args.batch / statistics.median(theirs_seconds)
    difference = float(np.abs(ours - theirs).max())
    threads = f", {torch.get_num_threads()} CPU threads" if device.type == "cpu" else ""
    print(f"Grad-CAM on ResNet-18 (frozen backbone, weights={args.weights}): batch {args.batch} "
          f"at {args.size} px, device {device}{threads}, median of {args.repeats}")
    print(f"{'method':<34}{'s/batch':>10}{'images/s':>11}")
    for name, seconds in (("deepfake_detector.grad_cam", ours_seconds),
                          ("pytorch-grad-cam GradCAM", theirs_seconds),
                          ("(forward pass only, for scale)", forward_seconds)):
        median = statistics.median(seconds)
        print(f"{name:<34}{median:>10.3f}{args.batch / median:>11.1f}")
    print(f"speed-up: {ours_rate / theirs_rate:.2f}x    "
          f"max |difference| of the maps: {difference:.2e}")
    return {"device": str(device), "batch": args.batch, "size": args.size,
            "ours_images_per_s": ours_rate, "reference_images_per_s": theirs_rate,
            "forward_images_per_s": args.batch / statistics.median(forward_seconds),
            "speedup": ours_rate / theirs_rate, "max_abs_difference": difference}


if __name__ == "__main__":
    main()
