"""The run directory, as one module: the names of its files, making a new one, its log, and
what a run records there: config.json (run_record) and the checkpoint, written (save_run) and read
back (read_checkpoint, load_run) side by side.

Every module that reads or writes a run's files names them with the constants below. Importing
this module loads no torch (the app's launcher and the command line's parser read the names):
what needs torch imports it where it is used.
"""
from __future__ import annotations

import pickle
import platform
import time
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path

from . import CLASS_TO_IDX, __version__
from .config import TrainConfig
from .files import write_json
from .manifest import (NotOursError, read_run_manifest, record_written, remove_run_dir,
                       start_run_dir)
from .preprocessing import Preprocessing

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
FIGURES_DIR, TABLES_DIR, AUDIT_DIR = "figures", "tables", "audit"


class RunExistsError(FileExistsError):
    pass


def prepare_run_dir(out_dir: str, overwrite: bool) -> Path:
    """A new, empty run directory with its manifest (manifest.py). An existing run is replaced
    only when asked (`overwrite`), or when it is an unfinished run (a failed or interrupted
    attempt), and only if every file in it is one the project wrote: otherwise nothing is
    deleted and the error names the files that would have been lost."""
    run_dir = Path(out_dir or f"outputs/runs/{time.strftime('%Y%m%d-%H%M%S')}")
    if run_dir.exists() and not run_dir.is_dir():
        raise RunExistsError(f"{run_dir} is a file, not a folder. Choose another --out.")
    if run_dir.exists() and any(run_dir.iterdir()):
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
        "metrics": {k: metrics[k] for k in ("accuracy", "roc_auc", "average_precision",
                                            "balanced_accuracy", "n_images") if k in metrics},
    }


def run_record(config: TrainConfig, weights_record: dict, fitted) -> dict:
    """What config.json records: the config (epochs resolved), the backbone's weights, the data's
    synthetic-set record, when, with which libraries, and how training went. `fitted` is
    loop.Fitted: history, best epoch, training time."""
    from .demo_data import synthetic_origin
    from .loop import convergence, resolved_epochs
    converged = convergence(fitted.history, fitted.best_epoch, config.patience)
    # synthetic_data: the demo set's record when the run was trained on it (None otherwise), so
    # every later view of the run (report, app) can say SYNTHETIC DATA without the data at hand.
    return {**asdict(config), "epochs": resolved_epochs(config),
            "weights_record": weights_record,
            "synthetic_data": synthetic_origin(config.data_dir),
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
    return checkpoint


def load_run(run_dir: str | Path, device: str = "auto"):
    """(model in eval mode on `device`, checkpoint dict without the weights)."""
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
    return model.to(pick_device(device)).eval(), checkpoint
