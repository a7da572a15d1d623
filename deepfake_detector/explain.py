"""Grad-CAM for many images, to files: the one call of the CLI (`gradcam`) and the notebook.

The loop is here: decode a batch, compute its maps (gradcam.py), hand each map to the files of
the call (gradcam_files.py: overlays, index, contact sheet, summary, localisation).
"""
from __future__ import annotations

import hashlib
import json
import numbers
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import cv2
import torch
from torch import nn

from . import CLASS_TO_IDX
from .data import eval_transform
from .determinism import deterministic
from .discovery import NOT_UTF8
from .files import is_utf8, printable
from .folder_lock import locks_folders
from .gradcam import OVERLAY_MAX_SIDE, grad_cam_with_logits
from .gradcam_files import CamFiles, display_image, label_name
from .images import ImageLoadError, decode_image
from .inference import Numerics
from .manifest import recording
from .predictions import skipped_message
from .preprocessing import Preprocessing


@dataclass(frozen=True)
class ExplainOptions:
    """How explain_images computes and draws its maps, beyond the images and the model's input.

    layer          the layer explained (default model.layer4[-1])
    device         moves the model there (default: where it is)
    colormap, image_weight   the heat map's colours, and how much of the image an overlay shows
    max_side       overlays at the file's own resolution, or downscaled to this long side (px)
    per_outcome    the contact sheet's examples per outcome, the most confident ones, or
    sheet_paths    the images it shows instead
    deterministic_kernels    torch's and cuDNN's deterministic kernels (determinism.py)
    flags          the run's flags (RANDOM INIT, SYNTHETIC DATA) in the contact sheet's footer
                   (default: those of the run out_dir lies in, run_flags.flags_of_path)
    """
    layer: nn.Module | None = None
    device: torch.device | str | None = None
    colormap: int = cv2.COLORMAP_JET
    image_weight: float = 0.5
    max_side: int = OVERLAY_MAX_SIDE
    per_outcome: int = 3
    sheet_paths: Sequence | None = None
    deterministic_kernels: bool = False
    flags: Sequence[str] | None = None


@locks_folders(lambda a: (a["out_dir"],))  # one writer per folder (folder_lock.py)
def explain_images(model: nn.Module, image_paths: Sequence, out_dir, prep: Preprocessing,
                   labels: Sequence | None = None, target="predicted", batch_size: int = 16,
                   max_images: int | None = None, mask_paths: Sequence | None = None,
                   options: ExplainOptions = ExplainOptions()) -> dict:
    """Grad-CAM for many images, one batch in memory at a time; writes under out_dir:

        overlays/{tp,tn,fp,fn}/NAME__p0.973.png   (pred_fake/ pred_real/ for unlabelled images):
                                                  the overlay at the file's own resolution, or
                                                  downscaled to options.max_side px on the long side
        raw_cams.npy    float32 (N, h, w): row i is image i of index.csv, before any scaling;
                        scale_cams(raw_cams[i:i+1], (H, W)) gives its [0, 1] map at any size
        index.csv       index, path, label, probability (P(fake)), logit, target, outcome, overlay
        contact_sheet.png/.pdf   per outcome the most confident examples: image, heatmap, overlay
        summary.json    what is returned: counts per outcome, paths, localisation scores,
                        the files skipped as unreadable
        faithfulness.json   the localisation scores alone, when there are masks

    prep: the model's input, as the run was trained (Preprocessing.from_checkpoint): decoded as
    prep.decode says (the overlay is drawn on a full decode all the same), resized with PIL and
    normalised; the maps computed in prep.precision, "fp32" or opt-in autocast "bf16"/"fp16"/"amp"
    (raw_grad_cam), part of the resume fingerprint, so maps of two precisions never mix in one
    folder. labels: per image 0/1, "real"/"fake", or None/-1 when unknown. mask_paths: per image a
    mask file (255 = manipulated) or None; where given, localisation_scores of the maps that
    explain "fake" are computed (at the model's input size) and returned. options: the layer,
    the device, the drawing and the contact sheet (ExplainOptions).
    Files that cannot be read are skipped and listed in one warning (and in summary.json); the
    call fails only when none is left. index.csv, raw_cams.npy and summary.json are written
    atomically; if the call is interrupted they describe the overlays written so far (summary
    "complete": false), and the same call again carries on from there. Other files in out_dir
    stay.
    """
    out_dir = Path(out_dir)
    if options.device is not None:
        model.to(options.device)
    paths, labels, mask_paths = checked_inputs(image_paths, labels, mask_paths, max_images,
                                               batch_size, options.max_side)
    target_name = target if isinstance(target, str) else "per image"
    files = CamFiles(out_dir, fingerprint(paths, labels, target_name, prep, options.max_side),
                     prep.img_size, target_name, options.sheet_paths, options.per_outcome,
                     prep.precision)
    with recording(out_dir), deterministic(options.deterministic_kernels):
        several_frames = []
        try:
            explain_batches(model, paths, labels, files, prep, target, batch_size, options,
                            several_frames)
        except BaseException:
            files.roll_back()  # whole batches only: a re-run carries on after the last one
            files.save(complete=False)
            raise
        warn_about(several_frames, files.skipped, len(paths), out_dir / "summary.json")
        if not files.rows:
            files.save(complete=False)
            raise ValueError(f"None of the {len(paths)} images could be read; see the list above.")
        extra = {"contact_sheet": files.contact_sheet(  # masks (synthetic fakes) outlined
            options.colormap, options.image_weight, dict(zip(paths, mask_paths)), options.flags)}
        localisation = files.localisation(paths, mask_paths)
        if localisation is not None:
            extra["localisation"] = localisation
        return files.save(complete=True, extra=extra)


def fingerprint(paths, labels, target_name: str, prep: Preprocessing, max_side: int) -> str:
    """What an interrupted call must share with this one to be carried on: the images, their
    labels, the target and how the maps were made. "full" decode and fp32 leave it as it was
    before they were settings, so older folders still resume."""
    return hashlib.sha256(json.dumps(
        [[str(p) for p in paths], [label_name(y) for y in labels], target_name, prep.img_size,
         list(prep.mean), list(prep.std), max_side]
        + ([prep.decode] if prep.decode != "full" else [])
        + ([] if prep.precision == "fp32" else [prep.precision]),
        default=str).encode()).hexdigest()


def explain_batches(model, paths, labels, files: CamFiles, prep: Preprocessing, target,
                    batch_size: int, options: ExplainOptions, several_frames: list) -> None:
    """The loop: from files.n_done on, a batch of images at a time, their maps into `files`."""
    transform = eval_transform(prep.img_size, prep.mean, prep.std)
    while files.n_done < len(paths):
        files.commit()
        batch, displays, tensors = next_batch(paths, files, batch_size, transform,
                                              options.max_side, several_frames, prep.decode_size)
        if not batch:
            continue
        result = grad_cam_with_logits(model, torch.stack(tensors), target, options.layer,
                                      prep.precision)
        for k, (i, shown) in enumerate(zip(batch, displays)):
            files.add(paths[i], labels[i], float(result.probabilities[k]),
                      float(result.logits[k]), result.targets[k], result.raw_cams[k],
                      shown, options.colormap, options.image_weight)


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
        if not is_utf8(Path(paths[i]).name):  # no index, table or caption could hold its name
            files.skipped.append((printable(paths[i]), NOT_UTF8))
            continue
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


def warn_about(several_frames: list, skipped: list, n_images: int, list_file=None) -> None:
    """One warning per kind of note; the skipped files as predict lists them (a count per
    reason, the first ten, and where the full list is: summary.json's "skipped")."""
    if several_frames:
        warnings.warn(f"{len(several_frames)} file(s) hold several frames (animation or "
                      "pages); only the first frame of each was explained:\n"
                      + "\n".join(f"  {note}" for note in several_frames), stacklevel=3)
    if skipped:
        warnings.warn(skipped_message(f"{len(skipped)} of {n_images} image(s) could not be read "
                                      "and were skipped", skipped,
                                      f"{list_file} (\"skipped\")" if list_file else None),
                      stacklevel=3)


def labelled_images(paths: Iterable) -> tuple[list[Path], list]:
    """Files and folders -> (image files, labels). A folder holding real/ and fake/ (a split folder,
    spelt as split.py accepts) gives labels 1/0, so its overlays sort into tp/tn/fp/fn; a file
    inside a real/ or fake/ folder gets that label; every other image gets None."""
    from .discovery import class_of_folder, find_images
    from .split_errors import SplitError
    from .split_read import list_labelled_folder
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


@locks_folders(lambda a: (a["out_dir"],))  # (refused before the run is loaded)
def explain_run(run_dir, images: Sequence, out_dir, target: str = "predicted", masks_dir=None,
                max_images: int | None = None, batch_size: int = 16, device: str = "auto",
                numerics: Numerics = Numerics(precision="fp32")) -> dict:
    """`python -m deepfake_detector gradcam`: explain_images with a trained run's model and
    preprocessing. `images`: files and/or folders (real/ and fake/ inside give labels).
    Masks, for localisation scores: masks_dir/<image file name> where that file exists.
    `numerics`: the maps' precision (fp32 by default, whatever the run trained in: within 1e-5 of
    pytorch-grad-cam; None: the run's) and whether kernels are deterministic."""
    from .inference import load_run
    from .run_flags import flags_of_run
    model, checkpoint = load_run(run_dir, device)
    files, labels = labelled_images(images)
    if not files:
        raise ValueError(f"No images in {', '.join(map(str, images))}.")
    mask_paths = None
    if masks_dir is not None:
        mask_paths = [Path(masks_dir) / f.name if (Path(masks_dir) / f.name).is_file() else None
                      for f in files]
    return explain_images(model, files, out_dir, numerics.preprocessing(checkpoint), labels=labels,
                          target=target, batch_size=batch_size, max_images=max_images,
                          mask_paths=mask_paths, options=ExplainOptions(
                              deterministic_kernels=numerics.deterministic_kernels,
                              flags=flags_of_run(run_dir)))  # the footer, wherever out_dir is
