"""The run directory, as one module: the names of its files, making a new one, its log, and
what a run records there: config.json (run_record) and the checkpoint, written (save_run) and read
back (read_checkpoint, load_run) side by side; config.json read back through one checking reader
(read_run_config).

Every module that reads or writes a run's files names them with the constants below. Importing
this module loads no torch (the app's launcher and the command line's parser read the names):
what needs torch imports it where it is used.
"""
from __future__ import annotations

import json
import math
import numbers
import pickle
import platform
import time
import zipfile
from dataclasses import asdict, fields
from datetime import datetime, timezone
from pathlib import Path

from . import CLASS_TO_IDX, __version__
from .config import TrainConfig
from .files import write_json
from .folder_lock import holds_anything
from .manifest import (NotOursError, read_run_manifest, record_written, remove_run_dir,
                       start_run_dir)
from .preprocessing import (Preprocessing, check_decode, check_img_size, check_precision,
                            check_resize)

# The files of a run directory (manifest.RUN_MANIFEST lists the ones the project wrote).
CONFIG_JSON = "config.json"              # the TrainConfig and what the run recorded (run_record)
CHECKPOINT = "checkpoint.pt"             # weights and how to use them (checkpoint_record)
HISTORY_JSON = "history.json"            # one dict per epoch
DATA_COUNTS_JSON = "data_counts.json"    # images per split and class
TRAIN_LOG = "train.log"                  # every line the run printed (RunLog)
METRICS_VAL_JSON = "metrics_val.json"    # validation metrics, with the threshold chosen on them
METRICS_TEST_JSON = "metrics_test.json"  # `evaluate` on the run's own test split
PREDICTIONS_VAL_CSV = "predictions_val.csv"
PROBE_JSON = "probe.json"                # the linear probe on the same features (probe.py)
LR_FIND_JSON = "lr_find.json"            # the lr finder's sweep (--lr find, `lr-find`)
ROBUSTNESS_JSON = "robustness.json"
CROSS_DATASET_JSON = "cross_dataset.json"
REPORT_MD = "report.md"                  # report.write_report, from the files above
OOD_STATS = "ood.npz"                    # how far an image is from the training data (ood.py)
FIGURES_DIR, TABLES_DIR, AUDIT_DIR = "figures", "tables", "audit"


class RunExistsError(FileExistsError):
    pass


def run_dir_path(out_dir) -> Path:
    """The run directory --out names; without one, a new outputs/runs/<date-time>."""
    return Path(out_dir or f"outputs/runs/{time.strftime('%Y%m%d-%H%M%S')}")


def prepare_run_dir(out_dir: str, overwrite: bool) -> Path:
    """A new, empty run directory with its manifest (manifest.py). An existing run is replaced
    only when asked (`overwrite`), or when it is an unfinished run (a failed or interrupted
    attempt), and only if every file in it is one the project wrote: otherwise nothing is
    deleted and the error names the files that would have been lost."""
    run_dir = run_dir_path(out_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise RunExistsError(f"{run_dir} is a file, not a folder. Choose another --out.")
    if run_dir.exists() and holds_anything(run_dir):  # (the lock of this command aside)
        manifest = read_run_manifest(run_dir)
        unfinished = manifest is not None and manifest.get("complete") is False
        if not overwrite and not unfinished:
            raise RunExistsError(f"Run directory {run_dir} already exists and is not empty. "
                                 "Choose another --out, or pass --overwrite to replace that run "
                                 "(only files the project wrote there are deleted).")
        try:
            remove_run_dir(run_dir)
        except NotOursError as error:
            raise RunExistsError(str(error)) from None
    return start_run_dir(run_dir)


class RunLog:
    """print(), and the same line appended to the run's train.log."""

    def __init__(self, run_dir: Path, echo: bool = True):
        self.path, self.echo = run_dir / TRAIN_LOG, echo

    def __call__(self, message: str = "") -> None:
        if self.echo:
            print(message, flush=True)
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(message + "\n")
        # Recorded line by line: a run killed outright (SIGKILL, power loss) can still be replaced.
        record_written(self.path.parent, [self.path])


def library_versions() -> dict:
    import numpy as np
    import sklearn
    import torch
    import torchvision
    versions = {"deepfake_detector": __version__, "torch": torch.__version__,
                "torchvision": torchvision.__version__, "numpy": np.__version__,
                "scikit-learn": sklearn.__version__, "python": platform.python_version()}
    return {name: str(v) for name, v in versions.items()}  # plain str: weights_only-loadable


# ----------------------------------------------------------------------------- writing a run

def checkpoint_record(model, config: TrainConfig, weights_record: dict, fitted,
                      val_threshold: float, metrics: dict) -> dict:
    """What checkpoint.pt holds (loadable with weights_only=True): the weights, how to feed
    them, and the validation metrics with the threshold chosen on them."""
    return {
        "format_version": 1,
        "model_state": model.state_dict(),
        "class_to_idx": dict(CLASS_TO_IDX),
        # How an image becomes the input tensor (img_size, decode, mean, std, precision), under
        # flat keys: predict, evaluate, Grad-CAM and the app read it back with
        # Preprocessing.from_checkpoint, so they decode, normalise and compute as training did.
        **Preprocessing.from_config(config).record(),
        "threshold": 0.5,
        "weights": weights_record,
        # load_run rebuilds the standard head, Linear(512, 1); another head (a notebook
        # experiment) is recorded here so that loading it fails with a clear message.
        "head": repr(model.fc),
        "best_epoch": fitted.best_epoch,
        "best_val": fitted.history[fitted.best_epoch - 1],
        "versions": library_versions(),
        # The metrics and threshold, with the weights they belong to.
        "val_threshold": float(val_threshold),
        # Videos' verdicts (mean P(fake) over the frames): chosen on the validation videos, None
        # for a run whose split was not made of videos (video_metrics.py)
        "video_threshold": (metrics.get("video") or {}).get("val_threshold"),
        "metrics": {k: metrics[k] for k in ("accuracy", "roc_auc", "average_precision",
                                            "balanced_accuracy", "n_images") if k in metrics},
    }


def run_record(config: TrainConfig, weights_record: dict, fitted) -> dict:
    """What config.json records: the config (epochs resolved), the backbone's weights, the data's
    synthetic-set record, when, with which libraries, and how training went. `fitted` is
    loop.Fitted: history, best epoch, training time."""
    from .demo_data import synthetic_origin
    from .video_metrics import split_frames_record
    from .loop import convergence, resolved_epochs
    converged = convergence(fitted.history, fitted.best_epoch, config.patience)
    # synthetic_data: the demo set's record when the run was trained on it (None otherwise), so
    # every later view of the run (report, app) can say SYNTHETIC DATA without the data at hand.
    return {**asdict(config), "epochs": resolved_epochs(config),
            "weights_record": weights_record,
            "synthetic_data": synthetic_origin(config.data_dir),
            # how the frames were made from videos (the frames command's record), so that predict
            # samples a clip as the run's data were sampled; None for other data
            "video_frames": split_frames_record(config.data_dir),
            "trained_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "versions": library_versions(),
            "train_seconds": fitted.train_seconds, "best_epoch": fitted.best_epoch,
            "converged": converged["converged"],
            "epochs_run": converged["epochs_run"]}


def save_run(run_dir: Path, model, config: TrainConfig, weights_record: dict, counts: dict,
             fitted, val_threshold: float, metrics: dict) -> None:
    """Checkpoint (with the validation metrics and the threshold chosen on them), config,
    history, counts."""
    import torch
    torch.save(checkpoint_record(model, config, weights_record, fitted, val_threshold, metrics),
               run_dir / CHECKPOINT)
    write_json(run_dir / CONFIG_JSON, run_record(config, weights_record, fitted))
    write_json(run_dir / HISTORY_JSON, fitted.history)
    write_json(run_dir / DATA_COUNTS_JSON, counts)


# ----------------------------------------------------------------------------- reading it back

class CheckpointError(ValueError):
    """A checkpoint that is damaged, foreign or unsafe; the message says what to do."""


class RunFileError(ValueError):
    """A run file (config.json) that is not what the run wrote; the message names the file and
    the field."""


FIX_THE_FILE = "Train the run again or fix the file."


def _whole(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _number(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


# What a value of each declared type must be in a run file: (test, in words).
VALUE_KINDS = {
    "int": (_whole, "a whole number"),
    "int | None": (lambda v: v is None or _whole(v), "a whole number or null"),
    "float": (_number, "a finite number"),
    "float | None": (lambda v: v is None or _number(v), "a finite number or null"),
    "float | str": (lambda v: _number(v) or isinstance(v, str), "a finite number or a string"),
    "bool": (lambda v: isinstance(v, bool), "true or false"),
    "bool | None": (lambda v: v is None or isinstance(v, bool), "true, false or null"),
    "str": (lambda v: isinstance(v, str), "a string"),
    "str | None": (lambda v: v is None or isinstance(v, str), "a string or null"),
    "dict": (lambda v: isinstance(v, dict), "an object"),
    "dict | None": (lambda v: v is None or isinstance(v, dict), "an object or null"),
    "str | dict": (lambda v: isinstance(v, (str, dict)), "a string or an object"),
}
# The type of each field config.json may hold: TrainConfig's, and what run_record adds. weights:
# runs of an older format recorded the weights' record there; augmentation may be null.
CONFIG_FIELD_TYPES = {
    **{f.name: str(f.type) for f in fields(TrainConfig)},
    "weights": "str | dict", "augmentation": "dict | None",
    "weights_record": "dict", "synthetic_data": "dict | None", "trained_at": "str | None",
    "video_frames": "dict | None",
    "versions": "dict", "train_seconds": "float | None", "best_epoch": "int | None",
    "converged": "bool | None", "epochs_run": "int | None", "trainable_parameters": "int | None",
}
# The type of each field a checkpoint may hold besides its weights and Preprocessing's record.
CHECKPOINT_FIELD_TYPES = {"weights": "dict", "threshold": "float | None",
                          "best_epoch": "int | None", "head": "str", "best_val": "dict | None",
                          "versions": "dict", "metrics": "dict", "format_version": "int",
                          "video_threshold": "float | None"}
# Fields whose values are also checked as Preprocessing checks them (choices, bounds).
FIELD_CHECKS = {"img_size": check_img_size, "decode": check_decode, "resize": check_resize,
                "precision": check_precision}


def check_run_fields(record: dict, types: dict, where, checks: dict = FIELD_CHECKS) -> dict:
    """`record` when each field it holds that `types` names is of its type (VALUE_KINDS) and
    passes its check in `checks`; else a RunFileError naming `where` and the field."""
    for name, value in record.items():
        test, words = VALUE_KINDS.get(types.get(name), (lambda v: True, ""))
        if not test(value):
            raise RunFileError(f"{where}: {name} must be {words}, got {value!r}. {FIX_THE_FILE}")
        if name in checks:
            try:
                checks[name](value)
            except ValueError as error:
                raise RunFileError(f"{where}: {error} {FIX_THE_FILE}") from None
    return record


def read_run_config(run_dir: str | Path, required: bool = True) -> dict | None:
    """RUN/config.json, checked: a JSON object whose every known field is of its type
    (CONFIG_FIELD_TYPES), else a RunFileError in one line naming the file and the field
    ("RUN/config.json: img_size must be a whole number, got 'abc'. ..."). Absent: a
    FileNotFoundError when `required`, None otherwise. Every reader of config.json reads it here."""
    path = Path(run_dir) / CONFIG_JSON
    if not path.is_file():
        if required:
            raise FileNotFoundError(f"No {CONFIG_JSON} in {run_dir}: is it a run directory made "
                                    "by `python -m deepfake_detector train`?")
        return None
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as error:  # JSONDecodeError, UnicodeDecodeError
        raise RunFileError(f"{path} is not valid JSON ({error}). {FIX_THE_FILE}") from None
    if not isinstance(config, dict):
        raise RunFileError(f"{path} must hold a JSON object (the run's settings), got a "
                           f"{type(config).__name__}: {json.dumps(config)[:60]}. {FIX_THE_FILE}")
    return check_run_fields(config, CONFIG_FIELD_TYPES, path)


def read_checkpoint(path: str | Path) -> dict:
    """The checkpoint dict of this project's checkpoint.pt, loaded with weights_only=True (tensors
    and plain values only: a pickle that would run code is refused, never executed), or a
    CheckpointError in one line."""
    import torch
    path = Path(path)
    what_to_do = (f"Train the run again, or pass the run directory that holds a {CHECKPOINT} "
                  "written by `python -m deepfake_detector train`.")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise CheckpointError(f"{path} holds Python objects other than tensors and plain values, "
                              f"so it is not loaded (loading could run code). {what_to_do}") from None
    except (RuntimeError, EOFError, OSError, ValueError) as error:
        raise CheckpointError(f"{path} is damaged or not a PyTorch checkpoint (truncated or "
                              f"overwritten: {type(error).__name__}). {what_to_do}") from None
    needed = ("model_state", "img_size", "mean", "std")
    if not isinstance(checkpoint, dict) or any(key not in checkpoint for key in needed):
        keys = sorted(map(str, checkpoint))[:6] if isinstance(checkpoint, dict) else type(checkpoint).__name__
        raise CheckpointError(f"{path} is not a checkpoint of this project (it lacks "
                              f"{', '.join(k for k in needed if not isinstance(checkpoint, dict) or k not in checkpoint)}; "
                              f"found {keys}). {what_to_do}")
    try:  # its fields: how to feed the weights (img_size at most 4096, ...), what it recorded
        Preprocessing.from_checkpoint(checkpoint)
        check_thresholds(checkpoint)  # a NaN val_threshold would call every image real
        check_run_fields(checkpoint, CHECKPOINT_FIELD_TYPES, path, checks={})
    except (ValueError, TypeError) as error:
        message = str(error).replace(f" {FIX_THE_FILE}", "")
        message = message if message.startswith(str(path)) else f"{path}: {message}"
        raise CheckpointError(f"{message} {what_to_do}") from None
    return checkpoint


def check_thresholds(checkpoint: dict) -> None:
    """`val_threshold` (chosen on validation) and `threshold`: absent or None, or a number in
    [0, 1]; else a ValueError naming the field. A NaN would call every image "real" (P(fake) >=
    NaN is never true), silently: it is refused when the checkpoint is read."""
    for name in ("val_threshold", "threshold", "video_threshold"):
        value = checkpoint.get(name)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0 <= value <= 1:
            raise ValueError(f"{name} must be a number from 0 to 1 (the P(fake) from which an "
                             f"image is called fake), got {value!r}.")


def read_ood_stats(run_dir: str | Path):
    """The run's OOD statistics (ood.OodStats), or None for a run trained before them (or one
    whose file is damaged: then it has no OOD score, and says so, rather than failing)."""
    from .ood import OodStats
    path = Path(run_dir) / OOD_STATS
    if not path.is_file():
        return None
    try:
        return OodStats.load(path)
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
        return None


def load_run(run_dir: str | Path, device: str = "auto"):
    """(model in eval mode on `device`, checkpoint dict without the weights). The dict also holds
    "ood": the run's OOD statistics (read_ood_stats), None for a run trained before them."""
    from .model import build_model, pick_device
    path = Path(run_dir) / CHECKPOINT
    if not path.is_file():
        raise FileNotFoundError(f"No {CHECKPOINT} in {run_dir}: is it a run directory made by "
                                "`python -m deepfake_detector train`?")
    checkpoint = read_checkpoint(path)
    model, _ = build_model("none", seed=None)  # the architecture only; the weights come next
    try:
        model.load_state_dict(checkpoint.pop("model_state"))
    except (RuntimeError, TypeError, AttributeError) as error:
        first = str(error).strip().splitlines()[0][:200]
        head = checkpoint.get("head")
        if isinstance(head, str) and "Linear(in_features=512, out_features=1" not in head:
            raise CheckpointError(f"{path} holds a model with a non-standard head ({head}), not "
                                  "Linear(512, 1): a notebook experiment, which only the notebook "
                                  "that defined the head can load (model.load_state_dict). "
                                  f"({first})") from None
        raise CheckpointError(f"{path} does not hold this project's single-logit ResNet-18 "
                              f"({first}). Train the run again, or pass the run directory that "
                              f"holds the right {CHECKPOINT}.") from None
    checkpoint["ood"] = read_ood_stats(run_dir)
    return model.to(pick_device(device)).eval(), checkpoint
