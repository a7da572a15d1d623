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

Below: the maps (`grad_cam`, `grad_cam_with_logits`), pictures (`overlay`, `plot_contact_sheet`),
the one call the CLI and notebook make (`explain_images`, `explain_run`), and faithfulness
(`localisation_scores`, `randomisation_check`).
"""
from __future__ import annotations

import copy
import csv
import hashlib
import heapq
import json
import numbers
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import cv2
import numpy as np
import torch
from PIL import Image
from torch import nn

from . import CLASS_NAMES, CLASS_TO_IDX
from .data import IMAGENET_MEAN, IMAGENET_STD, eval_transform, open_image
from .figures import paper_style
from .files import atomic_write, write_json
from .images import ImageLoadError, decode_image
from .manifest import recording

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
    """

    def __init__(self, layer: nn.Module):
        self.activations = None
        self.handle = layer.register_forward_hook(self.hook)

    def hook(self, module, inputs, output):
        self.activations = output.detach().requires_grad_()
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
                 layer: nn.Module | None = None) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Grad-CAM before any scaling: (maps (N, h, w) on the model's device, logits (N,), targets).

    Works under a caller's torch.no_grad() or torch.inference_mode(): the few lines that need
    autograd switch it back on for themselves. `layer` defaults to model.layer4[-1]; whatever
    layer is chosen, what follows it must not modify its output in place.
    """
    if model.training:
        raise ValueError("Grad-CAM needs the model in eval mode (train mode would move the "
                         "BatchNorm statistics and mix the images of a batch): call model.eval().")
    layer = model.layer4[-1] if layer is None else layer
    device = next(model.parameters()).device
    images = images.to(device)
    images = images.unsqueeze(0) if images.dim() == 3 else images
    with torch.inference_mode(False), torch.enable_grad(), CutAtLayer(layer) as cut:
        if images.is_inference():
            images = images.clone()  # a tensor made under inference_mode cannot enter autograd
        logits = model(images).reshape(-1)
        targets = resolve_targets(target, logits)
        signs = torch.tensor([1.0 if t == "fake" else -1.0 for t in targets], device=device)
        # Images do not interact in eval mode, so one backward of the summed scores gives every
        # image its own gradient; autograd.grad (not .backward) leaves no .grad on parameters.
        (gradients,) = torch.autograd.grad((signs * logits).sum(), cut.activations)
    activations = cut.activations.detach()
    channel_weights = gradients.mean(dim=(2, 3), keepdim=True)
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
                         layer: nn.Module | None = None) -> GradCAMResult:
    """Grad-CAM maps of a batch (N, 3, H, W) plus logits, P(fake) and the targets explained."""
    maps, logits, targets = raw_grad_cam(model, images, target, layer)
    raw_cams = maps.float().cpu().numpy()
    return GradCAMResult(cams=scale_cams(raw_cams, tuple(images.shape[-2:])), raw_cams=raw_cams,
                         logits=logits.float().cpu().numpy(),
                         probabilities=torch.sigmoid(logits.float()).cpu().numpy(),
                         targets=targets)


def grad_cam(model: nn.Module, images: torch.Tensor, target="predicted",
             layer: nn.Module | None = None) -> np.ndarray:
    """Grad-CAM maps, float32 (N, H, W) in [0, 1] at the input's resolution."""
    return grad_cam_with_logits(model, images, target, layer).cams


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


def confidence(probability: float) -> float:
    """How sure the model is of the side it chose: P(fake) for "fake", 1 - P(fake) for "real"."""
    return max(probability, 1.0 - probability)


def label_name(label) -> str:
    if label is None or label == -1:
        return "unlabelled"
    return label if isinstance(label, str) else CLASS_NAMES[int(label)]


@paper_style
def plot_contact_sheet(examples: Sequence[dict], colormap: int = cv2.COLORMAP_JET,
                       image_weight: float = 0.5, title: str | None = None):
    """A grid for a paper: one row per outcome, and for each example image | heatmap | overlay.

    `examples`: dicts with path, label, probability, outcome, target (the side the map explains)
    and either cam (any size) or raw_cam.
    Rows follow OUTCOMES order; within a row, examples as given (pass them most confident first).
    """
    from .figures import plt
    rows = [o for o in OUTCOMES + UNLABELLED_OUTCOMES if any(e["outcome"] == o for e in examples)]
    per_row = max((sum(e["outcome"] == o for e in examples) for o in rows), default=1)
    fig, axes = plt.subplots(max(len(rows), 1), 3 * per_row, squeeze=False,
                             figsize=(3 * per_row * 1.45, max(len(rows), 1) * 1.75))
    for ax in axes.flat:
        ax.axis("off")
    for r, outcome in enumerate(rows):
        for c, example in enumerate(e for e in examples if e["outcome"] == outcome):
            image = thumbnail(open_image(example["path"]))
            cam = example["cam"] if "cam" in example else scale_cams(example["raw_cam"][None],
                                                                     image.shape[:2])[0]
            cam = cv2.resize(np.float32(cam), image.shape[1::-1], interpolation=cv2.INTER_LINEAR)
            panels = (image, heatmap(cam, colormap), overlay(image, cam, colormap, image_weight))
            captions = (f"{outcome.upper()}: {label_name(example['label'])}\n"
                        f"P(fake) = {example['probability']:.3f}",
                        f"Grad-CAM ({example.get('target', '?')})", Path(example["path"]).name[:22])
            for k, (panel, caption) in enumerate(zip(panels, captions)):
                ax = axes[r, 3 * c + k]
                ax.imshow(panel)
                ax.set_title(caption, fontsize=7)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def thumbnail(image, longest_side: int = 320) -> np.ndarray:
    """A paper figure does not need 4000-pixel panels (and its PDF should stay small)."""
    image = image.copy()
    image.thumbnail((longest_side, longest_side))
    return np.asarray(image)


# ----------------------------------------------------------------------------------------------
# The one call of the CLI and the notebook

def display_image(image: Image.Image, max_side: int = OVERLAY_MAX_SIDE) -> Image.Image:
    """The picture an overlay is drawn on: the image itself, or, when its long side is above
    `max_side`, a copy downscaled to that (on uint8 pixels, before any float work: a 12000 px
    square would otherwise need gigabytes of float overlays)."""
    longest = max(image.size)
    if longest <= max_side:
        return image
    scale = max_side / longest
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    return image.resize(size, Image.BILINEAR, reducing_gap=3.0)


def explain_images(model: nn.Module, image_paths: Sequence, out_dir, img_size: int,
                   mean=IMAGENET_MEAN, std=IMAGENET_STD, labels: Sequence | None = None,
                   target="predicted", batch_size: int = 16, device=None,
                   max_images: int | None = None, mask_paths: Sequence | None = None,
                   colormap: int = cv2.COLORMAP_JET, image_weight: float = 0.5,
                   per_outcome: int = 3, sheet_paths: Sequence | None = None,
                   layer: nn.Module | None = None, max_side: int = OVERLAY_MAX_SIDE) -> dict:
    """Grad-CAM for many images, one batch in memory at a time; writes under out_dir:

        overlays/{tp,tn,fp,fn}/NAME__p0.973.png   (pred_fake/ pred_real/ for unlabelled images):
                                                  the overlay at the file's own resolution, or
                                                  downscaled to `max_side` px on the long side
        raw_cams.npy    float32 (N, h, w): row i is image i of index.csv, before any scaling;
                        scale_cams(raw_cams[i:i+1], (H, W)) gives its [0, 1] map at any size
        index.csv       index, path, label, probability (P(fake)), logit, target, outcome, overlay
        contact_sheet.png/.pdf   per outcome the `per_outcome` most confident examples (or the
                        images in `sheet_paths`): image, heatmap, overlay
        summary.json    what is returned: counts per outcome, paths, localisation scores,
                        the files skipped as unreadable
        faithfulness.json   the localisation scores alone, when there are masks

    labels: per image 0/1, "real"/"fake", or None/-1 when unknown. mask_paths: per image a mask
    file (255 = manipulated) or None; where given, localisation_scores of the maps that explain
    "fake" are computed (at the model's input size) and returned.
    Files that cannot be read are skipped and listed in one warning (and in summary.json); the
    call fails only when none is left. index.csv, raw_cams.npy and summary.json are written
    atomically; if the call is interrupted they describe the overlays written so far (summary
    "complete": false), and the same call again carries on from there.
    device: moves the model there (default: where it is). Other files in out_dir stay.
    layer: the layer explained (default model.layer4[-1]).
    """
    out_dir = Path(out_dir)
    if device is not None:
        model.to(device)
    for name, value in (("max_images", max_images), ("batch_size", batch_size),
                        ("max_side", max_side)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, numbers.Integral)
                                  or value < 1):
            raise ValueError(f"{name} must be a whole number >= 1; got {value!r}.")
    paths = [Path(p) for p in image_paths][:max_images]
    labels = [None] * len(paths) if labels is None else list(labels)[:len(paths)]
    mask_paths = [None] * len(paths) if mask_paths is None else list(mask_paths)[:len(paths)]
    if not len(labels) == len(mask_paths) == len(paths):
        raise ValueError("image_paths, labels and mask_paths must have the same length.")
    if not paths:
        raise ValueError("No images to explain.")

    transform = eval_transform(img_size, mean, std)
    sheet_paths = {Path(p) for p in sheet_paths} if sheet_paths else None
    target_name = target if isinstance(target, str) else "per image"
    fingerprint = hashlib.sha256(json.dumps(
        [[str(p) for p in paths], [label_name(y) for y in labels], target_name, img_size,
         list(mean), list(std), max_side], default=str).encode()).hexdigest()
    rows, raw_cams, skipped, n_done = resume(out_dir, fingerprint)
    used_names = {(r["outcome"], Path(r["overlay"]).stem) for r in rows}
    best = {}  # outcome -> heap of the most confident examples (min-heap on confidence)
    for row, raw_cam in zip(rows, raw_cams):
        add_to_sheet(best, row, raw_cam, sheet_paths, per_outcome)
    out_dir.mkdir(parents=True, exist_ok=True)

    def save_state(complete: bool, extra: dict | None = None) -> dict:
        summary = {"n_images": len(rows), "img_size": img_size, "target": target_name,
                   "counts": {o: n for o in OUTCOMES + UNLABELLED_OUTCOMES
                              if (n := sum(r["outcome"] == o for r in rows))},
                   "out_dir": str(out_dir), "overlays": str(out_dir / "overlays"),
                   "raw_cams": str(out_dir / "raw_cams.npy"), "index": str(out_dir / "index.csv"),
                   "skipped": [{"path": p, "reason": why} for p, why in skipped],
                   "complete": complete, "n_done": n_done, "fingerprint": fingerprint,
                   "localisation": None, **(extra or {})}
        if rows:
            atomic_write(out_dir / "raw_cams.npy",
                         lambda f: np.save(f, np.stack(raw_cams).astype(np.float32)), binary=True)
            atomic_write(out_dir / "index.csv", lambda f: write_csv_rows(f, rows))
        atomic_write(out_dir / "summary.json",
                     lambda f: f.write(json.dumps(summary, indent=2) + "\n"))
        return summary

    with recording(out_dir):
        committed = (n_done, len(skipped), len(rows))  # what a re-run may take as done
        several_frames = []
        try:
            while n_done < len(paths):
                committed = (n_done, len(skipped), len(rows))
                batch, displays, tensors = [], [], []
                while n_done < len(paths) and len(batch) < batch_size:
                    i, n_done = n_done, n_done + 1
                    try:
                        image, facts = decode_image(paths[i])
                        if facts["frames"] > 1:
                            several_frames.append(f"{paths[i]}: {facts['frames']} frames")
                    except ImageLoadError as error:
                        skipped.append((str(paths[i]), str(error)))
                        continue
                    tensors.append(transform(image))  # the model sees what predict sees
                    displays.append(display_image(image, max_side))
                    batch.append(i)
                    del image  # a huge original is dropped as soon as its copies exist
                if not batch:
                    continue
                result = grad_cam_with_logits(model, torch.stack(tensors), target, layer)
                for k, (i, shown) in enumerate(zip(batch, displays)):
                    path, probability = paths[i], float(result.probabilities[k])
                    outcome = outcome_of(labels[i], predicted_fake=bool(result.logits[k] > 0))
                    # The map straight from layer4's grid to the picture's size: one resize.
                    cam = scale_cams(result.raw_cams[k:k + 1], (shown.height, shown.width))[0]
                    name = unique_name(f"{path.stem}__p{probability:.3f}", used_names, outcome)
                    overlay_path = out_dir / "overlays" / outcome / f"{name}.png"
                    overlay_path.parent.mkdir(parents=True, exist_ok=True)
                    # PIL, not cv2.imwrite: the array is RGB, and PIL writes RGB as it is.
                    atomic_write(overlay_path, lambda f: Image.fromarray(
                        overlay(shown, cam, colormap, image_weight)).save(f, format="PNG"),
                        binary=True)
                    row = {"index": len(rows), "path": str(path), "label": label_name(labels[i]),
                           "probability": probability, "logit": float(result.logits[k]),
                           "target": result.targets[k], "outcome": outcome,
                           "overlay": str(overlay_path)}
                    rows.append(row)
                    raw_cams.append(result.raw_cams[k])
                    add_to_sheet(best, row, result.raw_cams[k], sheet_paths, per_outcome)
        except BaseException:
            # Whole batches only: a re-run of the same call carries on after the last one.
            n_done, skipped, rows[:], raw_cams[:] = (committed[0], skipped[:committed[1]],
                                                     rows[:committed[2]], raw_cams[:committed[2]])
            save_state(complete=False)
            raise
        if several_frames:
            warnings.warn(f"{len(several_frames)} file(s) hold several frames (animation or "
                          "pages); only the first frame of each was explained:\n"
                          + "\n".join(f"  {note}" for note in several_frames), stacklevel=2)
        if skipped:
            warnings.warn(f"{len(skipped)} of {len(paths)} image(s) could not be read and were "
                          "skipped:\n" + "\n".join(f"  {p}: {why}" for p, why in skipped),
                          stacklevel=2)
        if not rows:
            save_state(complete=False)
            raise ValueError(f"None of the {len(paths)} images could be read; see the list above.")

        examples = [e for o in OUTCOMES + UNLABELLED_OUTCOMES
                    for _, _, e in sorted(best.get(o, []), reverse=True)]
        from .figures import plt, save_figure
        fig = plot_contact_sheet(examples, colormap, image_weight,
                                 title=f"Grad-CAM (target: {target_name})")
        sheet = save_figure(fig, out_dir / "contact_sheet")
        plt.close(fig)
        extra = {"contact_sheet": [str(p) for p in sheet]}
        # Localisation asks where the evidence for "fake" lies, so only maps that explain "fake"
        # are scored (with target="predicted": the fakes the model caught).
        mask_of = {str(p): m for p, m in zip(paths, mask_paths)}
        with_mask = [r for r in rows if mask_of.get(r["path"]) is not None]
        scored = [r for r in with_mask if r["target"] == "fake"]
        if with_mask:
            cams = (scale_cams(raw_cams[r["index"]][None], (img_size, img_size))[0] for r in scored)
            masks = (load_mask(mask_of[r["path"]], (img_size, img_size)) for r in scored)
            extra["localisation"] = {**localisation_scores(cams, masks),
                                     "images_with_mask": len(with_mask)}
            write_json(out_dir / "faithfulness.json", extra["localisation"])  # for the run report
        return save_state(complete=True, extra=extra)


def resume(out_dir: Path, fingerprint: str) -> tuple[list, list, list, int]:
    """(rows, raw cams, skipped files, number of images done) of an interrupted call with the same
    images and settings into out_dir; nothing to resume: empty lists and 0."""
    try:
        summary = json.loads((out_dir / "summary.json").read_text(encoding="utf-8"))
        if summary.get("complete") is not False or summary.get("fingerprint") != fingerprint:
            return [], [], [], 0
        rows = []
        if summary["n_images"]:
            with open(out_dir / "index.csv", newline="", encoding="utf-8") as f:
                rows = list(csv.DictReader(f))
            raw_cams = list(np.load(out_dir / "raw_cams.npy"))
        else:
            raw_cams = []
        for row in rows:
            row.update(index=int(row["index"]), probability=float(row["probability"]),
                       logit=float(row["logit"]))
        if len(rows) != len(raw_cams) or len(rows) != summary["n_images"] \
                or not all(Path(r["overlay"]).is_file() for r in rows):
            return [], [], [], 0
        skipped = [(s["path"], s["reason"]) for s in summary.get("skipped", [])]
        return rows, raw_cams, skipped, int(summary["n_done"])
    except (OSError, ValueError, KeyError, TypeError):
        return [], [], [], 0


def add_to_sheet(best: dict, row: dict, raw_cam: np.ndarray, sheet_paths, per_outcome: int) -> None:
    path = Path(row["path"])
    if sheet_paths is None or path in sheet_paths:
        example = {"path": path, "label": None if row["label"] == "unlabelled" else row["label"],
                   "probability": row["probability"], "outcome": row["outcome"],
                   "target": row["target"], "raw_cam": raw_cam}
        keep_most_confident(best.setdefault(row["outcome"], []), example, row["index"],
                            per_outcome if sheet_paths is None else len(sheet_paths))


def unique_name(name: str, used: set, folder: str) -> str:
    """Two files called 'img.png' in different folders must not overwrite each other's overlay."""
    candidate, n = name, 1
    while (folder, candidate) in used:
        n += 1
        candidate = f"{name}__{n}"
    used.add((folder, candidate))
    return candidate


def keep_most_confident(heap: list, example: dict, index: int, k: int) -> None:
    """Keep the k most confident examples seen so far (bounded memory, whatever N is)."""
    item = (confidence(example["probability"]), -index, example)  # earlier image wins a tie
    if len(heap) < k:
        heapq.heappush(heap, item)
    elif item[:2] > heap[0][:2]:
        heapq.heapreplace(heap, item)


def write_csv(path: Path, rows: list[dict]) -> None:
    atomic_write(path, lambda f: write_csv_rows(f, rows))


def write_csv_rows(f, rows: list[dict]) -> None:
    writer = csv.DictWriter(f, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)


def labelled_images(paths: Iterable) -> tuple[list[Path], list]:
    """Files and folders -> (image files, labels). A folder holding real/ and fake/ (a split folder,
    spelt as split.py accepts) gives labels 1/0, so its overlays sort into tp/tn/fp/fn; a file
    inside a real/ or fake/ folder gets that label; every other image gets None."""
    from .split import SplitError, class_of_folder, find_images, list_labelled_folder
    files, labels = [], []
    for path in map(Path, paths):
        if path.is_dir():
            try:
                items = list_labelled_folder(path)
            except SplitError:  # not a real/ + fake/ folder: images without labels
                items = [(f, None) for f in find_images(path)  # not the synthetic set's masks
                         if "masks" not in f.relative_to(path).parts[:-1]]
        elif path.exists() or path.is_symlink():  # special files are skipped, with a reason
            label = class_of_folder(path.parent.name)
            items = [(path, None if label is None else CLASS_TO_IDX[label])]
        else:
            raise FileNotFoundError(f"{path} does not exist.")
        files += [f for f, _ in items]
        labels += [y for _, y in items]
    return files, labels


def explain_run(run_dir, images: Sequence, out_dir, target: str = "predicted", masks_dir=None,
                max_images: int | None = None, batch_size: int = 16, device: str = "auto") -> dict:
    """`python -m deepfake_detector gradcam`: explain_images with a trained run's model, image
    size and normalisation. `images`: files and/or folders (real/ and fake/ inside give labels).
    Masks, for localisation scores: masks_dir/<image file name> where that file exists."""
    from .inference import load_run
    model, checkpoint = load_run(run_dir, device)
    files, labels = labelled_images(images)
    if not files:
        raise ValueError(f"No images in {', '.join(map(str, images))}.")
    mask_paths = None
    if masks_dir is not None:
        mask_paths = [Path(masks_dir) / f.name if (Path(masks_dir) / f.name).is_file() else None
                      for f in files]
    return explain_images(model, files, out_dir, checkpoint["img_size"], checkpoint["mean"],
                          checkpoint["std"], labels=labels, target=target, batch_size=batch_size,
                          max_images=max_images, mask_paths=mask_paths)


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
