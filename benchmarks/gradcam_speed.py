"""Grad-CAM speed: this package's grad_cam against pytorch-grad-cam's GradCAM, on one batch.

    python benchmarks/gradcam_speed.py --device cpu --batch 32 --size 224

Both run in this one process on the same images, same targets (each image's predicted side) and
the same weights; the repeats alternate between the two so that a busy machine slows both alike.
pytorch-grad-cam needs a gradient path through the frozen backbone, so it gets a copy with
requires_grad=True everywhere: it pays for a full backward pass, we pay for the head's only.
Prints images/s of each, the speed-up and the largest difference between their maps.

Issue 12's yardsticks are printed beside them: the raw forward pass at the same batch size in
fp32 and under bf16 autocast (channels-last, as predict runs it), and this package's Grad-CAM in
fp32 and in its opt-in autocast mode (--autocast-precision, default bf16), with the largest
difference of the autocast maps from the fp32 ones. (On a CPU, bf16 autocast is often slower than
fp32: the figures are reported, not a target there.)
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
    parser.add_argument("--autocast-precision", default="bf16", choices=["bf16", "fp16", "amp"])
    args = parser.parse_args(argv)
    from deepfake_detector.features import autocast_for, channels_last

    device = torch.device(args.device)
    model = build_model(args.weights, seed=args.seed)[0].to(device)
    reference_model = copy.deepcopy(model).requires_grad_(True)
    images = torch.randn(args.batch, 3, args.size, args.size,
                         generator=torch.Generator().manual_seed(args.seed)).to(device)

    first = grad_cam_with_logits(model, images)  # also the warm-up
    minus_logit = lambda output: -output[0]  # noqa: E731  "real": minus the single logit
    targets = [ClassifierOutputTarget(0) if t == "fake" else minus_logit for t in first.targets]

    def forward_only(precision="fp32"):  # the yardstick: what predicting alone costs
        with channels_last(model), torch.inference_mode(), autocast_for(device, precision):
            return model(images.contiguous(memory_format=torch.channels_last)).float().cpu().numpy()

    mixed = args.autocast_precision
    grad_cam_with_logits(model, images, precision=mixed)  # its warm-up
    forward_only(mixed)
    ours_seconds, theirs_seconds, forward_seconds = [], [], []
    mixed_seconds, mixed_forward_seconds = [], []
    with GradCAM(model=reference_model, target_layers=[reference_model.layer4[-1]]) as reference:
        reference(input_tensor=images, targets=targets)  # warm-up
        for _ in range(args.repeats):
            seconds, ours = timed(lambda: grad_cam_with_logits(model, images).cams, device)
            ours_seconds.append(seconds)
            seconds, theirs = timed(lambda: reference(input_tensor=images, targets=targets), device)
            theirs_seconds.append(seconds)
            forward_seconds.append(timed(forward_only, device)[0])
            seconds, ours_mixed = timed(
                lambda: grad_cam_with_logits(model, images, precision=mixed).cams, device)
            mixed_seconds.append(seconds)
            mixed_forward_seconds.append(timed(lambda: forward_only(mixed), device)[0])

    ours_rate = args.batch / statistics.median(ours_seconds)
    theirs_rate = args.batch / statistics.median(theirs_seconds)
    difference = float(np.abs(ours - theirs).max())
    threads = f", {torch.get_num_threads()} CPU threads" if device.type == "cpu" else ""
    print(f"Grad-CAM on ResNet-18 (frozen backbone, weights={args.weights}): batch {args.batch} "
          f"at {args.size} px, device {device}{threads}, median of {args.repeats}")
    print(f"{'method':<34}{'s/batch':>10}{'images/s':>11}")
    forward_rate = args.batch / statistics.median(forward_seconds)
    mixed_forward_rate = args.batch / statistics.median(mixed_forward_seconds)
    mixed_rate = args.batch / statistics.median(mixed_seconds)
    mixed_difference = float(np.abs(ours_mixed - ours).max())
    for name, seconds in (("deepfake_detector.grad_cam, fp32", ours_seconds),
                          ("pytorch-grad-cam GradCAM", theirs_seconds),
                          ("(forward pass only, fp32)", forward_seconds),
                          (f"deepfake_detector.grad_cam, {mixed}", mixed_seconds),
                          (f"(forward pass only, {mixed})", mixed_forward_seconds)):
        median = statistics.median(seconds)
        print(f"{name:<38}{median:>10.3f}{args.batch / median:>11.1f}")
    print(f"speed-up: {ours_rate / theirs_rate:.2f}x    "
          f"max |difference| of the maps: {difference:.2e}")
    print(f"Grad-CAM fp32 / forward fp32: {ours_rate / forward_rate:.2f}x (issue 12: >= 0.8x on a "
          f"GPU);  Grad-CAM {mixed} / forward {mixed}: {mixed_rate / mixed_forward_rate:.2f}x "
          f"(>= 0.5x)")
    print(f"{mixed} maps vs fp32 maps: max |difference| {mixed_difference:.3f} "
          f"(of maps in [0, 1])")
    return {"device": str(device), "batch": args.batch, "size": args.size,
            "ours_images_per_s": ours_rate, "reference_images_per_s": theirs_rate,
            "forward_images_per_s": forward_rate,
            "mixed_precision": mixed, "mixed_images_per_s": mixed_rate,
            "mixed_forward_images_per_s": mixed_forward_rate,
            "mixed_max_abs_difference": mixed_difference,
            "speedup": ours_rate / theirs_rate, "max_abs_difference": difference}


if __name__ == "__main__":
    main()
