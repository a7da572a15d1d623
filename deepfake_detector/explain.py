"""Grad-CAM for many images, to files: the one call of the CLI (`gradcam`) and the notebook.

The loop is here: decode a batch, compute its maps (gradcam.py), hand each map to the files of
the call (gradcam_files.py: overlays, index, contact sheet, summary, localisation).
"""
from __future__ import annotations

import hashlib
import json
import numbers
import warnings
from pathlib import Path
from typing import Iterable, Sequence

import cv2
import torch
from torch import nn

from . import CLASS_TO_IDX
from .data import IMAGENET_MEAN, IMAGENET_STD, decode_size, eval_transform, run_decode
from .determinism import deterministic
from .features import check_precision
from .gradcam import OVERLAY_MAX_SIDE, grad_cam_with_logits
from .gradcam_files import CamFiles, display_image, label_name
from .images import ImageLoadError, decode_image
from .manifest import recording


def explain_images(model: nn.Module, image_paths: Sequence, out_dir, img_size: int,
                   mean=IMAGENET_MEAN, std=IMAGENET_STD, labels: Sequence | None = None,
                   target="predicted", batch_size: int = 16, device=None,
                   max_images: int | None = None, mask_paths: Sequence | None = None,
                   colormap: int = cv2.COLORMAP_JET, image_weight: float = 0.5,
                   per_outcome: int = 3, sheet_paths: Sequence | None = None,
                   layer: nn.Module | None = None, max_side: int = OVERLAY_MAX_SIDE,
                   decode: str = "full", precision: str = "fp32",
                   deterministic_kernels: bool = False) -> dict:
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
    decode: how the model's input is decoded, as the run was trained ("draft": a large JPEG at
    reduced size, data.DECODE_MODES); the overlay is drawn on a full decode all the same.
    precision: "fp32", or opt-in autocast "bf16"/"fp16"/"amp" (raw_grad_cam); part of the
    resume fingerprint, so maps of two precisions never mix in one folder.
    deterministic_kernels: torch's and cuDNN's deterministic kernels (determinism.py).
    """
    out_dir = Path(out_dir)
    check_precision(precision)
    if device is not None:
        model.to(device)
    paths, labels, mask_paths = checked_inputs(image_paths, labels, mask_paths, max_images,
                                               batch_size, max_side)
    transform = eval_transform(img_size, mean, std)
    target_name = target if isinstance(target, str) else "per image"
    fingerprint = hashlib.sha256(json.dumps(
        [[str(p) for p in paths], [label_name(y) for y in labels], target_name, img_size,
         list(mean), list(std), max_side] + ([decode] if decode != "full" else [])
        + ([] if precision == "fp32" else [precision]),
        default=str).encode()).hexdigest()  # fp32 keeps the fingerprint older folders have
    files = CamFiles(out_dir, fingerprint, img_size, target_name, sheet_paths, per_outcome,
                     precision)
    target_size = decode_size(decode, img_size)
    with recording(out_dir), deterministic(deterministic_kernels):
        several_frames = []
        try:
            while files.n_done < len(paths):
                files.commit()
                batch, displays, tensors = next_batch(paths, files, batch_size, transform,
                                                      max_side, several_frames, target_size)
                if not batch:
                    continue
                result = grad_cam_with_logits(model, torch.stack(tensors), target, layer,
                                              precision)
                for k, (i, shown) in enumerate(zip(batch, displays)):
                    files.add(paths[i], labels[i], float(result.probabilities[k]),
                              float(result.logits[k]), result.targets[k], result.raw_cams[k],
                              shown, colormap, image_weight)
        except BaseException:
            files.roll_back()  # whole batches only: a re-run carries on after the last one
            files.save(complete=False)
            raise
        warn_about(several_frames, files.skipped, len(paths))
        if not files.rows:
            files.save(complete=False)
            raise ValueError(f"None of the {len(paths)} images could be read; see the list above.")
        extra = {"contact_sheet": files.contact_sheet(colormap, image_weight)}
        localisation = files.localisation(paths, mask_paths)
        if localisation is not None:
            extra["localisation"] = localisation
        return files.save(complete=True, extra=extra)


def checked_inputs(image_paths, labels, mask_paths, max_images, batch_size, max_side):
    """(paths, labels, mask paths) as lists of one length, cut at max_images; bad numbers and
    empty or mismatched lists are refused before anything is written."""
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
    return paths, labels, mask_paths


def next_batch(paths, files: CamFiles, batch_size: int, transform, max_side: int,
               several_frames: list, target_size=None) -> tuple[list, list, list]:
    """Up to batch_size readable images from files.n_done on: (indices, pictures to draw on,
    model inputs). Unreadable files go to files.skipped; multi-frame ones are noted.
    target_size: images.decode_image's (a reduced JPEG decode for the model's input)."""
    batch, displays, tensors = [], [], []
    while files.n_done < len(paths) and len(batch) < batch_size:
        i, files.n_done = files.n_done, files.n_done + 1
        try:
            image, facts = decode_image(paths[i], target_size=target_size)
            if facts["frames"] > 1:
                several_frames.append(f"{paths[i]}: {facts['frames']} frames")
            # The model's input came from a reduced decode: the overlay is drawn on the
            # picture itself.
            shown = image if facts["draft_scale"] == 1 else decode_image(paths[i])[0]
        except ImageLoadError as error:
            files.skipped.append((str(paths[i]), str(error)))
            continue
        tensors.append(transform(image))  # the model sees what predict sees
        displays.append(display_image(shown, max_side))
        del shown
        batch.append(i)
        del image  # a huge original is dropped as soon as its copies exist
    return batch, displays, tensors


def warn_about(several_frames: list, skipped: list, n_images: int) -> None:
    if several_frames:
        warnings.warn(f"{len(several_frames)} file(s) hold several frames (animation or "
                      "pages); only the first frame of each was explained:\n"
                      + "\n".join(f"  {note}" for note in several_frames), stacklevel=3)
    if skipped:
        warnings.warn(f"{len(skipped)} of {n_images} image(s) could not be read and were "
                      "skipped:\n" + "\n".join(f"  {p}: {why}" for p, why in skipped),
                      stacklevel=3)


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
                max_images: int | None = None, batch_size: int = 16, device: str = "auto",
                precision: str = "fp32", deterministic_kernels: bool = False) -> dict:
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
                          max_images=max_images, mask_paths=mask_paths,
                          decode=run_decode(checkpoint), precision=precision,
                          deterministic_kernels=deterministic_kernels)
