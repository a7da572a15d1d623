"""Use a trained run: load it, predict P(fake) for any number of images, evaluate it on a folder.

A run directory is all that is needed: the checkpoint carries the weights, the image size, the
decode mode it was trained with, the normalisation and the decision threshold. Images stream
through in batches, so memory stays flat whether the folder holds a hundred images or a million.
"""
from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import warnings
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from .progress import tqdm

from . import distributed
from .data import decoded_ahead, make_loader, normalize_batch, pixel_transform, resolve_resize
from .determinism import deterministic
from .features import head_in_fp32, inference_pass, lagged
from .images import warn_multi_frame
from .ood import CapturedFeatures, assess
from .manifest import recording
from .preprocessing import Preprocessing, check_precision
from .discovery import find_images
from .folder_lock import locks_folders
from .run_dir import METRICS_TEST_JSON, load_run, read_run_config
from .split_read import list_labelled_folder, list_split


def decision_threshold(checkpoint: dict) -> float:
    """The threshold a verdict ("fake" when P(fake) >= it) uses: the one the run chose on its
    validation split (`val_threshold`), or 0.5 for a checkpoint that has none. Predict's
    predicted_label and the app's verdict both come from here."""
    value = checkpoint.get("val_threshold")
    return float(checkpoint.get("threshold", 0.5) if value is None else value)


@dataclass(frozen=True)
class Numerics:
    """How a trained run computes when it is applied (predict, evaluate, Grad-CAM): in
    `precision` (None: the one it trained in, from its checkpoint; a head trained on bf16
    features is evaluated on bf16 features), with torch's and cuDNN's deterministic kernels or
    not (determinism.py)."""
    precision: str | None = None
    deterministic_kernels: bool = False

    def __post_init__(self):
        if self.precision is not None:
            check_precision(self.precision)

    def preprocessing(self, checkpoint: dict) -> Preprocessing:
        """The run's Preprocessing (from its checkpoint), in `precision` when one is asked for."""
        prep = Preprocessing.from_checkpoint(checkpoint)
        return replace(prep, precision=self.precision) if self.precision else prep


def iter_probabilities(model, items, prep: Preprocessing, batch_size: int = 64,
                       num_workers: int | None = None, desc: str = "predict",
                       failures: list | None = None, with_features: bool = False):
    """Yield (indices, P(fake)) a batch at a time, in the order of `items`; `with_features`:
    (indices, P(fake), the OOD score's features of the same pass (ood.CapturedFeatures' dict of
    arrays), the images' native (width, height) (N, 2) as the decode read them).

    Only a batch of images is ever in memory (plus what the loader's workers prefetch). Unreadable
    files raise; given a `failures` list, they are skipped and (index, reason) appended to it.
    `prep`: how each image becomes the model's input, and what the model computes in
    (preprocessing.py; a run's: Preprocessing.from_checkpoint).
    Under torchrun each rank runs its share and rank 0 yields every rank's batches, in order (at
    the end); the other ranks yield nothing.
    """
    device = next(model.parameters()).device
    skip_unreadable = failures is not None
    resize = resolve_resize(prep.resize, device)
    on_device = prep.img_size if resize == "device" else None
    # Under torchrun, this rank's whole batches only (distributed.py); rank 0 gathers them all.
    loader = make_loader(items, pixel_transform(prep.img_size, resize), batch_size,
                         sampler=distributed.my_share(len(items), batch_size),
                         num_workers=num_workers, device=device, skip_unreadable=skip_unreadable,
                         decode_size=prep.decode_size, with_size=with_features)

    def batches():
        for batch in tqdm(decoded_ahead(loader), total=len(loader), desc=desc, unit="batch",
                          leave=False):
            images, _, indices = batch[:3]
            if skip_unreadable:
                failures.extend(batch[3])
            sizes = batch[-1] if with_features else None  # the native sizes come last
            if len(indices):
                x = normalize_batch(images, prep.mean, prep.std, device, on_device)
                # fp32: the model's own forward (a notebook's model may define its own); mixed
                # precision: the head in fp32, as in training (features.head_in_fp32)
                logits = model(x).float() if prep.precision == "fp32" else head_in_fp32(model, x)
                yield (indices, torch.sigmoid(logits).squeeze(1),
                       *([captured.pop(), sizes] if with_features else []))

    with inference_pass(model, device, prep.precision), \
            CapturedFeatures(model, with_features) as captured:
        on_cpu = ((indices.numpy(), *map(to_numpy, outputs))
                  for indices, *outputs in lagged(batches(), device))
        yield from distributed.in_input_order(on_cpu, failures)


def to_numpy(output):
    """A tensor (or a dict of them) as NumPy arrays on the CPU."""
    if isinstance(output, dict):
        return {name: to_numpy(value) for name, value in output.items()}
    return output.cpu().numpy()


def stream_probabilities(model, items, prep: Preprocessing, batch_size: int = 64,
                         num_workers: int | None = None, desc: str = "predict",
                         skip_unreadable: bool = False) -> tuple[np.ndarray, list[tuple[int, str]]]:
    """(P(fake) per item, in order; [(index, reason)] of the files that could not be read).

    What grows with the number of images is one float per image. Unreadable files raise, or with
    skip_unreadable are listed and get NaN.
    """
    probabilities = np.full(len(items), np.nan)
    failures = [] if skip_unreadable else None
    for indices, batch in iter_probabilities(model, items, prep, batch_size, num_workers, desc,
                                             failures):
        probabilities[indices] = batch
    return probabilities, sorted(failures or [])


def predict_probabilities(model, items, prep: Preprocessing, batch_size: int = 64,
                          num_workers: int | None = None, desc: str = "predict") -> np.ndarray:
    """P(fake) for each (path, label) in `items`, in order, as `prep` makes the model's input
    (a run's: Preprocessing.from_checkpoint); one batch in memory at a time."""
    return stream_probabilities(model, items, prep, batch_size, num_workers, desc)[0]


def list_images(paths) -> list[Path]:
    """Expand folders to their images (sorted); files stay as given. A special file named
    here (a FIFO, a device) stays too: it is skipped, with its reason, without being read."""
    files = []
    for path in map(Path, paths):
        if path.is_dir():
            files += find_images(path)
        elif path.exists() or path.is_symlink():
            files.append(path)
        else:
            raise FileNotFoundError(f"{path} does not exist.")
    return files


def warn_skipped(skipped: list[tuple[Path, str]], stacklevel: int = 3, list_file=None,
                 write_list: bool = True) -> None:
    """One warning for the files that could not be read, however many: a count per reason, the
    first SKIPPED_SHOWN names (predictions.skipped_message) and, when there are more, the full
    list (path, reason) in `list_file`, written here unless the caller writes it (`write_list`);
    default outputs/predict-skipped-<time>-<pid>.csv."""
    from .predictions import (SKIPPED_SHOWN, default_skipped_list, skipped_message,
                              write_skipped_list)
    if not skipped:
        return
    if len(skipped) > SKIPPED_SHOWN:
        list_file = list_file or default_skipped_list()
        if write_list:
            write_skipped_list(skipped, list_file)
    warnings.warn(skipped_message(f"{len(skipped)} file(s) could not be read and were skipped",
                                  skipped, list_file), stacklevel=stacklevel)


def image_ids(paths: list[Path], roots: list[Path]) -> list[str]:
    """The name users exchange predictions under: the file name, or the path inside the folder
    given when two files share a name."""
    names = [p.name for p in paths]
    if len(set(names)) == len(names):
        return names
    ids = []
    for path in paths:
        root = next((r for r in roots if r.is_dir() and r in path.parents), None)
        ids.append(str(path.relative_to(root)) if root else str(path))
    return ids


def iter_predictions(run_dir, paths, batch_size: int = 64, device: str = "auto",
                     num_workers: int | None = None, numerics: Numerics = Numerics(),
                     skipped_list=None, ood_columns: bool = True):
    """Yield {"image_id", "prediction" (P(fake)), "predicted_label", "path"} for every readable
    image in `paths` (files or folders), in order, a batch at a time. predicted_label is the
    verdict at the run's `decision_threshold` (the one chosen on val). With `ood_columns`, also
    how far each image is from the training data (ood.py), from the features of the same pass:
    "ood_score", "ood_percentile" (among the run's validation images), "ood_flag" (beyond their
    99th percentile), "size_flag" (native size far from the training images', as the decode read
    it) and "unlike_training" (either flag); all empty (None) for a run without OOD statistics.

    Each file is decoded once: checked and predicted in the same read. The unreadable are skipped
    and listed in one warning at the end (more than ten: the full list in `skipped_list`, by
    default outputs/predict-skipped-<time>-<pid>.csv). Nothing but the list of file names grows
    with the number of images, so a folder of any size streams through in bounded memory.
    `numerics`: the precision (default the run's) and whether kernels are deterministic.
    """
    model, checkpoint = load_run(run_dir, device)
    prep = numerics.preprocessing(checkpoint)
    # Listed once, by rank 0 under torchrun: every rank predicts the same files (distributed.py)
    files = distributed.listed_by_main(lambda: list_images(paths))
    ids = image_ids(files, [Path(p) for p in paths])
    threshold = decision_threshold(checkpoint)
    failures, n_predicted = [], 0
    with deterministic(numerics.deterministic_kernels):
        for indices, probabilities, *features in iter_probabilities(
                model, files.relabelled(lambda f: (f, -1)), prep, batch_size, num_workers,
                failures=failures,
                with_features=ood_columns):
            trust = assess(checkpoint["ood"], *features) if ood_columns else None
            for k, (i, p) in enumerate(zip(indices.tolist(), probabilities.tolist())):
                n_predicted += 1
                yield {"image_id": ids[i], "prediction": p,
                       "predicted_label": "fake" if p >= threshold else "real",
                       "path": str(files[i]), **(trust[k].row() if trust else {})}
    if not distributed.is_main():
        return  # under torchrun, this rank's share went to rank 0, which reports for everyone
    warn_skipped([(files[i], why) for i, why in sorted(failures)], list_file=skipped_list)
    warn_multi_frame(files)
    if not n_predicted:
        raise ValueError(f"No readable images in {', '.join(map(str, paths))}.")


def predict_paths(run_dir, paths, out_file=None, batch_size: int = 64, device: str = "auto",
                  num_workers: int | None = None, numerics: Numerics = Numerics(),
                  ood_columns: bool | None = None) -> list[dict]:
    """P(fake) for every image in `paths` (files or folders), as a list of rows; also written
    as CSV or JSON when asked. For folders too large to hold the rows, use `predict_to_file`.
    `ood_columns`: as iter_predictions; by default in the rows and a CSV, not in a JSON file
    (ood_columns_by_default)."""
    from .predictions import skipped_list_beside
    rows = list(iter_predictions(run_dir, paths, batch_size, device, num_workers, numerics,
                                 skipped_list_beside(out_file) if out_file else None,
                                 ood_columns_by_default(out_file, ood_columns)))
    if out_file and distributed.is_main():  # under torchrun, rank 0 alone has the rows
        from .predictions import write_predictions
        with recording(Path(out_file).parent):  # into a run's manifest, if it is in one
            write_predictions(rows, out_file)
    return rows


def ood_columns_by_default(out_file, ood_columns: bool | None = None) -> bool:
    """Whether predict's rows carry the OOD columns: as asked, else yes but in a .json file,
    whose {image_id, prediction, ...} rows keep the keys they always had (--json-details adds
    them)."""
    if ood_columns is not None:
        return bool(ood_columns)
    return out_file is None or Path(out_file).suffix != ".json"


def predict_to_file(run_dir, paths, out_file, batch_size: int = 64, device: str = "auto",
                    num_workers: int | None = None, numerics: Numerics = Numerics(),
                    ood_columns: bool | None = None) -> int:
    """Stream P(fake) for every image in `paths` into `out_file` (.csv or .json) as the batches
    come; memory stays flat however many images there are. Returns the number of rows written.
    `ood_columns`: as predict_paths."""
    ood_columns = ood_columns_by_default(out_file, ood_columns)
    from .predictions import atomic_text_file, skipped_list_beside, write_prediction_rows
    if not distributed.is_main():  # under torchrun: run this rank's share; rank 0 writes the file
        return sum(1 for _ in iter_predictions(run_dir, paths, batch_size, device, num_workers,
                                               numerics, ood_columns=ood_columns))
    out_file = Path(out_file)
    with recording(out_file.parent), atomic_text_file(out_file) as f:  # recorded if in a run
        return write_prediction_rows(iter_predictions(run_dir, paths, batch_size, device,
                                                      num_workers, numerics,
                                                      skipped_list_beside(out_file), ood_columns),
                                     f, out_file.suffix)


@locks_folders(lambda a: (a["run_dir"], a["out_dir"]))  # one writer (folder_lock.py)
def evaluate_run(run_dir, data_dir, split: str = "val", out_dir=None, batch_size: int = 64,
                 device: str = "auto", num_workers=None, n_bootstrap: int = 1000,
                 log=print, numerics: Numerics = Numerics(deterministic_kernels=True)) -> dict:
    """Metrics, figures and predictions of a run on data_dir/split (or on a plain folder holding
    real/ and fake/, for a cross-dataset test). Written to run_dir/eval/<name>/ unless out_dir.

    Deterministic kernels by default (determinism.py): evaluating a run twice gives the same
    metrics on a GPU too. `numerics`: the precision (default the one the run trained in) and
    whether kernels are deterministic.
    Under torchrun, rank 0 does this with every rank's predictions; the other ranks return None."""
    from .metrics import compute_metrics
    from .figures import plt
    from .predictions import SKIPPED_SHOWN, write_skipped_list
    from .split_read import split_groups
    model, checkpoint = load_run(run_dir, device)
    read_run_config(run_dir, required=False)  # a bad config.json named before the work, not after
    prep = numerics.preprocessing(checkpoint)
    data_dir = Path(data_dir)
    # A split folder (data/val) or any folder holding real/ and fake/ (another data set).
    # Decided and listed by rank 0 alone under torchrun: every rank reads the same files.
    is_split = distributed.computed_by_main(
        lambda: (data_dir / "split.csv").is_file() or (data_dir / split).is_dir())
    items = distributed.listed_by_main(
        lambda: list_split(data_dir, split) if is_split else list_labelled_folder(data_dir))
    split = split if is_split else "all"
    with deterministic(numerics.deterministic_kernels):
        probabilities, failures = stream_probabilities(
            model, items, prep, batch_size, num_workers, desc=f"evaluate {split}",
            skip_unreadable=True)
    if not distributed.is_main():
        return None  # under torchrun, this rank's share went to rank 0, which writes the results
    run_dir = Path(run_dir)
    out = Path(out_dir) if out_dir else run_dir / "eval" / f"{data_dir.name}-{split}"
    skipped = [(items[i][0], why) for i, why in failures]
    if failures:  # listed in one warning, left out of the metrics; fail only when none is left
        # more than ten: the full list goes into the evaluation's folder, with the rest
        warn_skipped(skipped, list_file=out / SKIPPED_CSV, write_list=False)
        readable = np.isfinite(probabilities)
        items = [item for item, ok in zip(items, readable) if ok]
        probabilities = probabilities[readable]
        if not items:
            raise ValueError(f"No readable images in {data_dir} ({split}).")
    warn_multi_frame([path for path, _ in items])
    labels = np.array([y for _, y in items])
    metrics = compute_metrics(labels, probabilities, threshold=checkpoint.get("threshold", 0.5),
                              val_threshold=checkpoint.get("val_threshold"),
                              groups=split_groups(data_dir, items), n_bootstrap=n_bootstrap)
    from .video_metrics import video_threshold, with_video_level  # videos' numbers first
    metrics = with_video_level(metrics, data_dir, items, labels, probabilities,
                               video_threshold(checkpoint), n_bootstrap=n_bootstrap)
    metrics.update({"data": str(data_dir), "split": split, "run": str(run_dir),
                    "weights": checkpoint["weights"], "precision": prep.precision,
                    "deterministic": bool(numerics.deterministic_kernels)})
    from .run_flags import flag_record, flags_of_run  # RANDOM INIT / SYNTHETIC DATA, as the run's
    metrics.update(flag_record(flags_of_run(run_dir)))
    # Into the run's manifest (and that of another run, if out is in one): what this wrote.
    # Written into a folder beside `out`, moved into place only once all of it is written.
    with recording(run_dir), recording(out), staged_folder(out) as staging:
        if len(skipped) > SKIPPED_SHOWN:
            write_skipped_list(skipped, staging / SKIPPED_CSV)
        write_evaluation(run_dir, data_dir, staging, out_dir, split, items, labels,
                         probabilities, metrics)
    plt.close("all")
    log(f"metrics, predictions and figures written to {out}")
    return metrics


SKIPPED_CSV = "skipped.csv"  # evaluate's full list of unreadable files, when over ten


@contextlib.contextmanager
def staged_folder(out: Path):
    """A new hidden folder beside `out` to write into. When the block succeeds its files move
    into `out` (made if missing; other files already in `out` stay); when it fails or is
    interrupted, nothing reaches `out`. The staging folder is removed either way."""
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"{out} is a file, not a folder: choose another --out.")
    out.parent.mkdir(parents=True, exist_ok=True)
    # mkdir, not mkdtemp: the folder gets the usual permissions, as `out` would
    staging = out.parent / f".{out.name[:100]}.{os.getpid()}-{secrets.token_hex(4)}.partial"
    staging.mkdir()
    try:
        yield staging
        if not out.exists():
            staging.rename(out)
            return
        for path in sorted(staging.rglob("*")):
            if path.is_file():
                target = out / path.relative_to(staging)
                target.parent.mkdir(parents=True, exist_ok=True)
                os.replace(path, target)
    finally:
        if staging.exists():
            shutil.rmtree(staging)


def write_evaluation(run_dir: Path, data_dir: Path, out: Path, out_dir, split: str, items,
                     labels, probabilities, metrics: dict) -> None:
    from .plots import save_evaluation_figures
    from .predictions import write_predictions
    from .report import write_report
    from .tables import metrics_table_rows, write_table
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    write_predictions(({"image_id": p.name, "prediction": float(q), "label": int(y), "path": str(p)}
                       for (p, y), q in zip(items, probabilities)), out / "predictions.csv")
    save_evaluation_figures(labels, probabilities, metrics, out, title_prefix=split.capitalize())
    from .video_metrics import VIDEO_PREDICTIONS_CSV, write_video_predictions  # videos: a row each
    write_video_predictions(out / VIDEO_PREDICTIONS_CSV, data_dir, items, labels, probabilities,
                            metrics)
    trained_on = (read_run_config(run_dir, required=False) or {}).get("data_dir")
    own_test_split = split == "test" and trained_on and Path(trained_on).resolve() == data_dir.resolve()
    if own_test_split and out_dir is None:  # the held-out result belongs in the run's report
        (run_dir / METRICS_TEST_JSON).write_text(json.dumps(metrics, indent=2) + "\n")
        save_evaluation_figures(labels, probabilities, metrics, run_dir / "figures",
                                title_prefix="Test", name_prefix="test_")
        write_table(metrics_table_rows(metrics), run_dir / "tables" / "metrics_test",
                    caption="Test metrics with 95% bootstrap confidence intervals")
        write_report(run_dir)
