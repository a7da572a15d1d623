"""Grad-CAM for the single-logit ResNet-18: where in the image the model saw "fake" (or "real").

One job: turn images into heatmaps, pictures of them, and numbers that say how far to trust them.

Grad-CAM (Selvaraju et al., 2017) in three lines, with A the output of the last residual block,
`model.layer4[-1]`, shape (N, 512, h, w), and score the logit ("fake") or minus it ("real"):

    alpha_k = mean over positions of d score / d A_k     how much channel k matters
    cam     = ReLU(sum_k alpha_k A_k)                     where the evidence for the score is
    cam     -> scaled to [0, 1], resized to the input     (exactly as pytorch-grad-cam does it)

Two details matter here:

* The backbone is frozen: no parameter before the head requires grad, so layer4's output has no
  gradient path, and a naive Grad-CAM (or pytorch-grad-cam) fails on it. The forward hook makes
  the path on purpose: it hands the rest of the network a detached copy of layer4's output that
  requires grad. Backward then runs through avgpool and fc only (the cost of about one forward
  pass), `torch.autograd.grad` leaves no .grad on any parameter, and the model is never changed.
* With global average pooling and one linear layer, Grad-CAM is CAM (Zhou et al., 2016):
  alpha_k = w_k / (h * w), so cam = ReLU(sum_k w_k A_k) / (h * w). The tests check both routes.

Below: the maps (`grad_cam`, `grad_cam_with_logits`), the picture of one map (`heatmap`,
`overlay`), and faithfulness (`localisation_scores`, `randomisation_check`). Explaining many
images to files is explain.py (the loop) and gradcam_files.py (what it writes).
"""
from __future__ import annotations

import copy
import numbers
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import cv2
import numpy as np
import torch
from torch import nn

from . import CLASS_NAMES, CLASS_TO_IDX
from .data import open_image
from .features import autocast_for
from .figures import paper_style
from .preprocessing import check_precision

TARGETS = ("predicted", "fake", "real")
OUTCOMES = ("tp", "tn", "fp", "fn")                # with labels; fake is the positive class
UNLABELLED_OUTCOMES = ("pred_fake", "pred_real")   # without labels: sorted by the prediction
# pytorch-grad-cam's scale_cam_image divides by (EPSILON + max); copied so the maps match it.
EPSILON = 1e-7
# Localisation: a pixel counts as "highlighted" where the [0, 1] CAM reaches this value.
IOU_THRESHOLD = 0.5
# Overlays are saved at the image's own resolution up to this long side (px), downscaled above.
OVERLAY_MAX_SIDE = 4096


# ----------------------------------------------------------------------------------------------
# The maps

class CutAtLayer:
    """A forward hook as a context manager that removes itself (fastbook's `Hook`), with a twist.

    The twist: the hook replaces the layer's output with a detached copy that requires grad. For
    autograd that copy is a leaf: everything after the layer builds a graph from it, nothing
    before it does. The frozen backbone gets a gradient path at exactly this one place.
    The copy is channels-last: the backward of adaptive_avg_pool2d (the one op between layer4
    and the head) has a deterministic CUDA kernel only in that layout, so Grad-CAM needs no
    exemption from determinism.deterministic (the values are the same in either layout).
    """

    def __init__(self, layer: nn.Module):
        self.activations = None
        self.handle = layer.register_forward_hook(self.hook)

    def hook(self, module, inputs, output):
        output = output.detach()
        if output.dim() == 4:
            output = output.contiguous(memory_format=torch.channels_last)
        self.activations = output.requires_grad_()
        return self.activations  # a forward hook's return value replaces the layer's output

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.handle.remove()  # also when an exception is on its way out


def resolve_targets(target, logits: torch.Tensor) -> list[str]:
    """Per image, the side its map explains: "fake" or "real".

    `target` is "predicted" (each image's own predicted side: logit > 0 is fake), "fake", "real",
    or a sequence with one of those (or a class index, 0 real / 1 fake) per image.
    """
    n = logits.shape[0]
    per_image = [target] * n if isinstance(target, (str, numbers.Integral)) else list(target)
    if len(per_image) != n:
        raise ValueError(f"{len(per_image)} targets for {n} images.")
    predicted_fake = (logits > 0).tolist()
    resolved = []
    for t, is_fake in zip(per_image, predicted_fake):
        if isinstance(t, numbers.Integral) and not isinstance(t, bool) and t in (0, 1):
            t = CLASS_NAMES[t]
        if t == "predicted":
            t = "fake" if is_fake else "real"
        if t not in CLASS_TO_IDX:
            raise ValueError(f"Unknown Grad-CAM target {t!r}: use one of {TARGETS} or 0/1.")
        resolved.append(t)
    return resolved


def raw_grad_cam(model: nn.Module, images: torch.Tensor, target="predicted",
                 layer: nn.Module | None = None, precision: str = "fp32"
                 ) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Grad-CAM before any scaling: (maps (N, h, w) float32 on the model's device, logits (N,),
    targets).

    Works under a caller's torch.no_grad() or torch.inference_mode(): the few lines that need
    autograd switch it back on for themselves. `layer` defaults to model.layer4[-1]; whatever
    layer is chosen, what follows it must not modify its output in place.
    `precision`: "fp32" (default; within 1e-5 of pytorch-grad-cam, tested) or opt-in autocast
    ("bf16", "fp16", "amp": features.autocast_for) for the forward and the backward; the map is
    then formed in float32 from the low-precision activations and gradients. Measured on CPU
    bf16: the [0, 1] maps differ from fp32's by up to ~0.1 (tests/test_gradcam.py states the bound).
    """
    if model.training:
        raise ValueError("Grad-CAM needs the model in eval mode (train mode would move the "
                         "BatchNorm statistics and mix the images of a batch): call model.eval().")
    layer = model.layer4[-1] if layer is None else layer
    device = next(model.parameters()).device
    images = images.to(device)
    images = images.unsqueeze(0) if images.dim() == 3 else images
    if check_precision(precision) != "fp32":
        # Mixed precision: channels-last input, so every convolution runs in NHWC as predict's do
        # (tensor cores; bf16 on a CPU was 4x slower in NCHW). Not in fp32: NHWC kernels round
        # differently, 3e-5 off pytorch-grad-cam's maps, and fp32 stays within 1e-5 of them.
        images = images.contiguous(memory_format=torch.channels_last)
    with torch.inference_mode(False), torch.enable_grad(), CutAtLayer(layer) as cut, \
            autocast_for(device, check_precision(precision)):
        if images.is_inference():
            images = images.clone()  # a tensor made under inference_mode cannot enter autograd
        logits = model(images).reshape(-1).float()
        targets = resolve_targets(target, logits)
        signs = torch.tensor([1.0 if t == "fake" else -1.0 for t in targets], device=device)
        # Images do not interact in eval mode, so one backward of the summed scores gives every
        # image its own gradient; autograd.grad (not .backward) leaves no .grad on parameters.
        (gradients,) = torch.autograd.grad((signs * logits).sum(), cut.activations)
    activations = cut.activations.detach().float()
    channel_weights = gradients.float().mean(dim=(2, 3), keepdim=True)
    maps = torch.relu((channel_weights * activations).sum(dim=1))
    return maps, logits.detach(), targets


def raw_grad_cam_both(model: nn.Module, images: torch.Tensor, layer: nn.Module | None = None
                      ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """The raw maps for both targets from one forward and one backward pass:
    ({"fake": (N, h, w), "real": (N, h, w)}, logits (N,)), each map equal to raw_grad_cam's.

    With one logit, "real"'s score is minus "fake"'s, so are its gradients and its channel
    weights: with S = sum_k alpha_k A_k (alpha from the logit), cam_fake = ReLU(S) and
    cam_real = ReLU(-S). The app uses this: a switch of target costs no second pass.
    """
    if model.training:
        raise ValueError("Grad-CAM needs the model in eval mode: call model.eval().")
    layer = model.layer4[-1] if layer is None else layer
    images = images.to(next(model.parameters()).device)
    images = images.unsqueeze(0) if images.dim() == 3 else images
    with torch.inference_mode(False), torch.enable_grad(), CutAtLayer(layer) as cut:
        if images.is_inference():
            images = images.clone()
        logits = model(images).reshape(-1)
        (gradients,) = torch.autograd.grad(logits.sum(), cut.activations)
    evidence = (gradients.mean(dim=(2, 3), keepdim=True) * cut.activations.detach()).sum(dim=1)
    return {"fake": torch.relu(evidence), "real": torch.relu(-evidence)}, logits.detach()


def min_max(cam: np.ndarray) -> np.ndarray:
    """One map to [0, 1], as pytorch-grad-cam's scale_cam_image does it (all-zero stays 0)."""
    cam = cam - np.min(cam)
    return cam / (EPSILON + np.max(cam))


def scale_cams(raw_cams: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Raw maps (N, h, w) -> float32 (N, H, W) in [0, 1] at size = (H, W).

    pytorch-grad-cam's order of operations, step for step: ReLU, min-max, bilinear cv2.resize,
    then (its multi-layer aggregation, a no-op for one layer but for the values) ReLU and min-max
    again: the resized map's minimum is not always exactly 0.
    """
    height, width = size
    scaled = []
    for cam in np.maximum(np.asarray(raw_cams, dtype=np.float32), 0):
        cam = cv2.resize(min_max(cam), (width, height), interpolation=cv2.INTER_LINEAR)
        scaled.append(min_max(np.maximum(cam, 0)))
    return np.float32(scaled)


@dataclass
class GradCAMResult:
    """Everything one pass gives: the maps and what the model said, so no second forward."""
    cams: np.ndarray           # (N, H, W) float32 in [0, 1], at the input's resolution
    raw_cams: np.ndarray       # (N, h, w) float32, before scaling (layer4's grid)
    logits: np.ndarray         # (N,) float32
    probabilities: np.ndarray  # (N,) float32, P(fake) = sigmoid(logit)
    targets: list[str]         # (N,) the side each map explains: "fake" or "real"


def grad_cam_with_logits(model: nn.Module, images: torch.Tensor, target="predicted",
                         layer: nn.Module | None = None, precision: str = "fp32") -> GradCAMResult:
    """Grad-CAM maps of a batch (N, 3, H, W) plus logits, P(fake) and the targets explained.
    `precision`: see raw_grad_cam."""
    maps, logits, targets = raw_grad_cam(model, images, target, layer, precision)
    raw_cams = maps.float().cpu().numpy()
    return GradCAMResult(cams=scale_cams(raw_cams, tuple(images.shape[-2:])), raw_cams=raw_cams,
                         logits=logits.float().cpu().numpy(),
                         probabilities=torch.sigmoid(logits.float()).cpu().numpy(),
                         targets=targets)


def grad_cam(model: nn.Module, images: torch.Tensor, target="predicted",
             layer: nn.Module | None = None, precision: str = "fp32") -> np.ndarray:
    """Grad-CAM maps, float32 (N, H, W) in [0, 1] at the input's resolution (`precision`: see
    raw_grad_cam)."""
    return grad_cam_with_logits(model, images, target, layer, precision).cams


# ----------------------------------------------------------------------------------------------
# Pictures

def heatmap(cam: np.ndarray, colormap: int = cv2.COLORMAP_JET) -> np.ndarray:
    """A [0, 1] map as uint8 RGB colours. OpenCV's colour maps come out BGR: converted here."""
    bgr = cv2.applyColorMap(np.uint8(255 * np.clip(cam, 0, 1)), colormap)
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def overlay(image_rgb, cam: np.ndarray, colormap: int = cv2.COLORMAP_JET,
            image_weight: float = 0.5) -> np.ndarray:
    """The heatmap blended over an RGB image (uint8 array or PIL image), at the image's own size.

    The map is resized to the image, never the image to the map, so the picture keeps every pixel
    of the file. Result: uint8 RGB = image_weight * image + (1 - image_weight) * heatmap.
    """
    image_rgb = np.asarray(image_rgb)
    height, width = image_rgb.shape[:2]
    if cam.shape != (height, width):
        cam = cv2.resize(np.float32(cam), (width, height), interpolation=cv2.INTER_LINEAR)
    colours = heatmap(cam, colormap)
    # float32 and in place: at 4,096 px a float64 expression would hold ~1.5 GB of temporaries.
    blended = image_rgb.astype(np.float32)
    blended *= np.float32(image_weight)
    blended += np.float32(1 - image_weight) * colours.astype(np.float32)
    np.rint(blended, out=blended)
    np.clip(blended, 0, 255, out=blended)
    return blended.astype(np.uint8)


def outcome_of(label, predicted_fake: bool) -> str:
    """tp / tn / fp / fn (fake is the positive class); pred_fake / pred_real when the label is
    unknown (None or -1)."""
    if label is None or label == -1:
        return "pred_fake" if predicted_fake else "pred_real"
    is_fake = CLASS_TO_IDX[label] == 1 if isinstance(label, str) else int(label) == 1
    return {(True, True): "tp", (False, False): "tn",
            (False, True): "fp", (True, False): "fn"}[(is_fake, predicted_fake)]


# ----------------------------------------------------------------------------------------------
# Faithfulness: does the map point at the evidence, and does it depend on the model at all?

def load_mask(mask, size: tuple[int, int]) -> np.ndarray:
    """A mask file or array (nonzero = manipulated) as bool (H, W); nearest-neighbour resize so
    that resizing invents no partial pixels."""
    if isinstance(mask, (str, Path)):
        mask = open_image(mask).convert("L")
    mask = np.asarray(mask)
    mask = mask.max(axis=-1) if mask.ndim == 3 else mask
    height, width = size
    if mask.shape != (height, width):
        mask = cv2.resize(np.uint8(mask > 0), (width, height), interpolation=cv2.INTER_NEAREST)
    return mask > 0


def localisation_scores(cams: Iterable[np.ndarray], masks: Iterable,
                        threshold: float = IOU_THRESHOLD, seed: int = 0) -> dict:
    """How well [0, 1] maps find the manipulated region, against a uniform-random map.

    pointing_game: fraction of images whose map peaks inside the mask (the first maximum, in
    row-major order). mean_iou: IoU of (map >= threshold) with the mask. The random baseline draws
    a uniform map per image (seeded): its peak is a uniformly random pixel, so its expected
    pointing game is the mean mask area fraction (`pointing_game_expected`); the empirical value
    is reported beside it (noisy for few images: compare with the expected value then).
    Masks may be files or arrays; empty masks are skipped and counted.
    """
    rng = np.random.default_rng(seed)
    hits, ious, random_hits, random_ious, areas, skipped = [], [], [], [], [], 0
    for cam, mask in zip(cams, masks):
        cam = np.asarray(cam, dtype=np.float32)
        mask = load_mask(mask, cam.shape)
        if not mask.any():
            skipped += 1
            continue
        uniform = rng.random(cam.shape, dtype=np.float32)
        for scores, hit_list, iou_list in ((cam, hits, ious), (uniform, random_hits, random_ious)):
            hit_list.append(bool(mask.flat[np.argmax(scores)]))
            iou_list.append(iou(scores >= threshold, mask))
        areas.append(float(mask.mean()))
    return {"n": len(hits), "n_skipped_empty_masks": skipped, "threshold": threshold, "seed": seed,
            "pointing_game": mean(hits), "pointing_game_random": mean(random_hits),
            "pointing_game_expected": mean(areas), "mean_iou": mean(ious),
            "mean_iou_random": mean(random_ious), "mean_mask_area": mean(areas)}


def mean(values: list) -> float:
    return float(np.mean(values)) if values else float("nan")


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 0.0


# Adebayo et al. (2018): randomise from the top of the network down; if the maps stay the same,
# they show the image, not what the model learned. Each step re-initialises these modules too.
CASCADE = ("fc", "layer4", "layer3", "layer2", "layer1", "conv1")
RANDOMISED_WITH = {"conv1": ("conv1", "bn1")}


def randomisation_check(model: nn.Module, images: torch.Tensor, target="predicted",
                        cascade: Sequence[str] = CASCADE, seed: int = 0) -> list[tuple[str, float]]:
    """[(step, mean Spearman correlation with the original maps), ...], cumulative cascade.

    Works on a deep copy (the model is untouched), re-initialising each step's modules with their
    own reset_parameters (BatchNorm: weight 1, bias 0, running stats reset). Each image keeps the
    target it had under the original model, so only the model changes between maps.
    Correlation over the pixels of the [0, 1] maps; images whose original map is constant are left
    out, and a randomised map that became constant counts as 0 (it ranks nothing).
    """
    from scipy.stats import spearmanr
    original = grad_cam_with_logits(model, images, target)
    keep = [i for i, cam in enumerate(original.cams) if np.ptp(cam) > 0]
    randomised = copy.deepcopy(model)
    device = next(model.parameters()).device
    results = []
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        for step in cascade:
            for name in RANDOMISED_WITH.get(step, (step,)):
                for module in getattr(randomised, name).modules():
                    if hasattr(module, "reset_parameters"):
                        module.reset_parameters()
            cams = grad_cam(randomised, images, original.targets)
            rhos = [spearmanr(original.cams[i].ravel(), cams[i].ravel())[0] if np.ptp(cams[i]) > 0
                    else 0.0 for i in keep]
            results.append((step, mean(rhos)))
    return results


@paper_style
def plot_randomisation(results: Sequence[tuple[str, float]], path_stem=None):
    """The cascade as a line: 1.0 for the trained model, then each randomisation step."""
    from .figures import plt, save_figure
    steps = ["none"] + [step for step, _ in results]
    values = [1.0] + [value for _, value in results]
    fig, ax = plt.subplots(figsize=(4.5, 2.8))
    ax.plot(range(len(steps)), values, marker="o")
    ax.axhline(0, color="grey", lw=0.8, ls="--")
    ax.set_xticks(range(len(steps)), [f"+{s}" if i > 1 else s for i, s in enumerate(steps)],
                  rotation=30, ha="right")
    ax.set_ylim(min(-0.2, min(values) - 0.05), 1.05)
    ax.set_xlabel("randomised (cascading, from the top)")
    ax.set_ylabel("Spearman rank correlation\nwith the original map")
    ax.set_title("Model-randomisation sanity check")
    fig.tight_layout()
    if path_stem is not None:
        save_figure(fig, path_stem)
    return fig
