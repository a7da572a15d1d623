"""Fit the single-logit head on a frozen ResNet-18: loss, optimiser, early stopping, run directory.

Two paths, one loop. With the backbone frozen the head sees the same 512 features of an image in
every epoch, so by default they are extracted once (features.py) and the head trains on them in
milliseconds per epoch. `cache_features=False` is the plain loop that pushes every image through
the whole network each epoch (needed only to augment on the fly); both draw the same batches in the
same order from the same seed, so they end in the same head.

The default recipe converges (measured on CIFAKE and the synthetic set; see the README): the head
learns on features standardised with train-split statistics (folded back into its weights at the
end, so the saved head is still one nn.Linear(512, 1) on raw features), at Adam 3e-3, with the
rate cut tenfold when the val loss stalls, and early stopping, not the epoch budget, ends it. Every
run also fits a logistic-regression probe on the same features (probe.py): the ceiling a linear
head can reach, reported beside the head.
"""
from __future__ import annotations

import contextlib
import copy
import math
import numbers
import os
import platform
import time
import warnings
from dataclasses import asdict, dataclass
from functools import partial
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import sklearn
import torch
import torchvision
from sklearn.metrics import roc_auc_score
from torch import nn
from .progress import tqdm

from . import CLASS_TO_IDX, __version__, distributed
from .audit import AuditWarning, audit_split
from .demo_data import synthetic_origin
from .config import TrainConfig
from .data import IMAGENET_MEAN, IMAGENET_STD, eval_transform, make_loader, train_transform, \
    check_decode, decode_size, normalize_batch, own_size_transform, resolve_resize
from .determinism import deterministic
from .features import (autocast_for, cache_file, cached_features, channels_last, check_precision,
                       exact_fp32, head_in_fp32)
from .files import write_json
from .manifest import (NotOursError, mark_complete, record_written, recording, remove_run_dir,
                       start_run_dir)
from .manifest import read_manifest as read_run_manifest
from .lr_find import lr_find, plot_lr_find
from .probe import (comparison_rows, fit_probe, floored_scale, fold_standardization,
                    head_vs_probe, probe_summary)
from .model import build_model, pick_device
from .metrics import choose_threshold, compute_metrics
from .plots import evaluation_drawings, plot_history
from .predictions import write_predictions
from .report import write_report
from .tables import metrics_table_rows, write_table
from .figures import plt, save_figure, save_figures
from .split import drop_unreadable, list_split, split_groups


CACHED_EPOCHS, PLAIN_EPOCHS = 500, 50   # the epoch budget when `epochs` is None


def resolved_epochs(config: TrainConfig) -> int:
    """The epoch budget: an epoch on cached features costs milliseconds, one of the plain loop a
    full forward pass over every image, so each path has its own default."""
    if config.epochs is not None:
        return int(config.epochs)
    return CACHED_EPOCHS if config.cache_features else PLAIN_EPOCHS


class RunExistsError(FileExistsError):
    pass


@dataclass(eq=False)
class TrainedRun(os.PathLike):
    """What `train` returns: the live results of a run, and (as a path) its run directory.

    It is path-like, so `train(config) / "history.json"`, `Path(run)`, `open(run / ...)`, Path
    methods such as `run.resolve()` and
    `load_run(run)` work as they did when train returned the directory. The files in the directory
    stay the durable record; these attributes are the same numbers, without reading them back.
    """
    run_dir: Path
    model: nn.Module              # the trained model, best head restored, eval mode, on `device`
    config: TrainConfig
    history: list                 # one dict per epoch: train/val loss and accuracy, val AUC, seconds
    best_epoch: int
    metrics: dict                 # validation metrics (as metrics_val.json)
    val_items: list               # (path, label) per validation image, in order
    val_probabilities: np.ndarray  # P(fake) per validation image, same order
    weights_record: dict
    counts: dict                  # images per split and class
    train_seconds: float
    device: torch.device
    probe: dict | None = None     # the linear-probe ceiling (as probe.json), when it was fitted

    def __fspath__(self) -> str:
        return os.fspath(self.run_dir)

    def __getattr__(self, name):
        # Everything else a Path does (run.resolve(), run.rglob("*"), run.name ...), as the
        # directory that train() used to return.
        if name.startswith("__") or name == "run_dir":
            raise AttributeError(name)
        return getattr(self.run_dir, name)

    def __eq__(self, other) -> bool:
        if isinstance(other, (TrainedRun, os.PathLike)):
            return Path(os.fspath(self)) == Path(os.fspath(other))
        return NotImplemented

    def __hash__(self) -> int:
        return hash(self.run_dir)

    def __truediv__(self, other) -> Path:
        return self.run_dir / other

    def __str__(self) -> str:
        return str(self.run_dir)

    def __repr__(self) -> str:
        return (f"TrainedRun({str(self.run_dir)!r}, best_epoch={self.best_epoch}, "
                f"val accuracy={self.metrics.get('accuracy')}, device={self.device})")

    @property
    def val_labels(self) -> np.ndarray:
        return np.array([label for _, label in self.val_items])

    @property
    def val_paths(self) -> list[Path]:
        return [Path(path) for path, _ in self.val_items]

    @property
    def val_threshold(self) -> float:
        """The decision threshold chosen on the validation split (optimistic there)."""
        return float(self.metrics["val_threshold"])


class NotConvergedWarning(UserWarning):
    """The epoch budget, not early stopping, ended training."""


class RunLog:
    """print(), and the same line appended to the run's train.log."""

    def __init__(self, run_dir: Path, echo: bool = True):
        self.path, self.echo = run_dir / "train.log", echo

    def __call__(self, message: str = "") -> None:
        if self.echo:
            print(message, flush=True)
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(message + "\n")
        # Recorded line by line: a run killed outright (SIGKILL, power loss) can still be replaced.
        record_written(self.path.parent, [self.path])


def random_init_banner(note: str) -> str:
    line = "#" * 78
    return "\n".join([line, "#  RANDOM INIT - NOT IMAGENET-PRETRAINED".ljust(77) + "#",
                      "#  Accuracy on real data will be far below what pretrained features give.".ljust(77) + "#",
                      f"#  {note[:72]}".ljust(77) + "#", line])


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


def check_config(config: TrainConfig) -> None:
    """Every number and choice checked before anything is written (ValueError: one clear line)."""
    def whole(name, minimum):
        value = getattr(config, name)
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
            raise ValueError(f"{name} must be a whole number >= {minimum}; got {value!r}.")

    for name, minimum in (("batch_size", 1), ("img_size", 1), ("patience", 1),
                          ("augment_views", 1)):
        whole(name, minimum)
    if config.epochs is not None:  # None: the default budget for the path (resolved_epochs)
        whole("epochs", 1)
    if config.num_workers is not None:
        whole("num_workers", 0)
    check_decode(config.decode)
    resolve_resize(config.resize, "cpu")  # only checks the name here
    whole("lr_plateau_patience", 0)
    check_precision(config.precision)
    if not (isinstance(config.lr_plateau_factor, numbers.Real)
            and 0 < config.lr_plateau_factor < 1):
        raise ValueError("lr_plateau_factor must be a number between 0 and 1 (exclusive); got "
                         f"{config.lr_plateau_factor!r}.")
    if not (config.lr == "find" or (isinstance(config.lr, numbers.Real)
                                    and not isinstance(config.lr, bool)
                                    and math.isfinite(config.lr) and config.lr > 0)):
        raise ValueError(f"lr must be a positive number (e.g. 1e-4) or 'find'; got {config.lr!r}.")
    for name in ("weight_decay", "min_delta"):
        value = getattr(config, name)
        if not isinstance(value, numbers.Real) or not math.isfinite(value) or value < 0:
            raise ValueError(f"{name} must be a number >= 0; got {value!r}.")


def seed_everything(seed: int) -> torch.Generator:
    torch.manual_seed(seed)
    np.random.seed(seed)
    return torch.Generator().manual_seed(seed)


# --- the loop -------------------------------------------------------------------------------

def epoch_orders(n: int, epochs: int, generator: torch.Generator) -> list[torch.Tensor]:
    """The shuffle of every epoch, drawn up front: both paths consume exactly these orders."""
    return [torch.randperm(n, generator=generator) for _ in range(epochs)]


def run_epoch(module, batches, loss_fn, optimizer=None, device="cpu"):
    """One pass over `batches` of (inputs, labels); trains when given an optimizer.
    Returns (mean loss, accuracy, logits, labels)."""
    total_loss, all_logits, all_labels = 0.0, [], []
    with torch.set_grad_enabled(optimizer is not None):
        for inputs, labels in batches:
            inputs, labels = inputs.to(device), labels.to(device).float()
            logits = module(inputs).squeeze(1)
            loss = loss_fn(logits, labels)
            if optimizer is not None:
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
            total_loss += loss.item() * len(labels)
            all_logits.append(logits.detach().float().cpu())
            all_labels.append(labels.cpu())
    logits, labels = torch.cat(all_logits), torch.cat(all_labels)
    accuracy = ((logits > 0).float() == labels).float().mean().item()
    return total_loss / len(labels), accuracy, logits, labels


def safe_auc(labels: torch.Tensor, logits: torch.Tensor) -> float | None:
    return float(roc_auc_score(labels.numpy(), logits.numpy())) if labels.unique().numel() == 2 \
        else None


def fit(module, head, train_batches, val_batches, config: TrainConfig, pos_weight: float,
        device, log=print):
    """Adam on the head, BCEWithLogitsLoss, early stopping on the validation loss.

    `train_batches(epoch)` and `val_batches()` yield (inputs, labels) for `module`, which is the
    head on cached features, or the whole network on images. The best head is restored at the end.
    """
    loss_fn = nn.BCEWithLogitsLoss(pos_weight=torch.tensor(pos_weight, device=device))
    optimizer = torch.optim.Adam(head.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    plateau_patience = getattr(config, "lr_plateau_patience", 0)
    # A plateau in the val loss usually means the steps are too coarse for the last stretch, not
    # that the head is done: a tenfold smaller rate finds the bottom; early stopping ends training
    # when that does not help either.
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
        optimizer, factor=config.lr_plateau_factor, patience=plateau_patience,
        threshold=config.min_delta, threshold_mode="abs") if plateau_patience > 0 else None
    history, best_loss, best_epoch, best_state, waited = [], float("inf"), 0, None, 0
    epochs = resolved_epochs(config)
    progress = tqdm(range(1, epochs + 1), desc="epochs", unit="epoch", leave=False)
    for epoch in progress:
        start = time.perf_counter()
        lr = optimizer.param_groups[-1]["lr"]
        train_loss, train_acc, _, _ = run_epoch(module, train_batches(epoch), loss_fn, optimizer, device)
        val_loss, val_acc, val_logits, val_labels = run_epoch(module, val_batches(), loss_fn, None, device)
        history.append({"epoch": epoch, "train_loss": train_loss, "train_acc": train_acc,
                        "val_loss": val_loss, "val_acc": val_acc,
                        "val_auc": safe_auc(val_labels, val_logits), "lr": lr,
                        "seconds": time.perf_counter() - start})
        progress.set_postfix(train_loss=f"{train_loss:.4f}", val_loss=f"{val_loss:.4f}",
                             val_acc=f"{val_acc:.3f}")
        if scheduler is not None:
            scheduler.step(val_loss)
        if val_loss < best_loss - config.min_delta:
            best_loss, best_epoch, waited = val_loss, epoch, 0
            best_state = copy.deepcopy(head.state_dict())
        else:
            waited += 1
            if waited >= config.patience:
                log(f"early stopping after epoch {epoch}: val loss has not improved by "
                    f"{config.min_delta} for {config.patience} epochs")
                break
    head.load_state_dict(best_state)
    log(f"best epoch {best_epoch}: val loss {best_loss:.4f}, val accuracy "
        f"{history[best_epoch - 1]['val_acc']:.4f} (its head weights restored)")
    return history, best_epoch


def convergence(history: list, best_epoch: int, patience: int) -> dict:
    """A run has converged when early stopping ended it: the last `patience` epochs brought no
    improvement. Otherwise the epoch budget ran out while the val loss was still falling, and the
    head is not done. Returns {"converged", "epochs_run", "message"}."""
    converged = len(history) - best_epoch >= patience
    message = (f"converged: early stopping ended training after epoch {len(history)} "
               f"(best epoch {best_epoch})") if converged else (
        f"NOT CONVERGED: the epoch budget ran out after {len(history)} epochs while the val loss "
        f"was still improving (best epoch {best_epoch}). This head is short of what its features "
        "allow: train again with a larger --epochs, or the default recipe (no --lr/--epochs/"
        "--patience overrides), or at the rate `lr-find` suggests.")
    return {"converged": converged, "epochs_run": len(history), "message": message}


class StandardizedHead(nn.Module):
    """`linear` applied to (x - mean) / std: the head learns on standardised features, so one
    learning rate suits any backbone's feature scale. `fold()` writes the standardisation into
    `linear`'s weights, which then act on raw features: the saved head stays nn.Linear(512, 1)."""

    def __init__(self, linear: nn.Linear, mean: torch.Tensor, std: torch.Tensor):
        super().__init__()
        self.linear = linear
        self.register_buffer("mean", mean.float())
        self.register_buffer("std", std.float())

    def forward(self, x):
        return self.linear((x - self.mean) / self.std)

    def fold(self) -> nn.Linear:
        weight, bias = fold_standardization(self.linear.weight.data, self.linear.bias.data,
                                            self.mean, self.std)
        with torch.no_grad():
            self.linear.weight.copy_(weight)
            self.linear.bias.copy_(bias)
        return self.linear


def feature_statistics(features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-feature mean and standard deviation over the train split (in float64), the standard
    deviation floored as the probe's is (probe.floored_scale: no near-constant feature is blown up)."""
    x = features.double()
    return x.mean(dim=0), floored_scale(x.std(dim=0, unbiased=False))


@contextlib.contextmanager
def one_cpu_thread(device):
    """Batches of a 513-parameter head are too small to share among threads: on a busy CPU the
    threads mostly wait for each other (measured: 186 ms an epoch with 2 threads on a loaded
    2-core machine, 25 ms with 1). The backbone's passes keep every thread."""
    if torch.device(device).type != "cpu":
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def feature_batches(features, labels, batch_size, order=None):
    order = torch.arange(len(labels)) if order is None else order
    for start in range(0, len(order), batch_size):
        index = order[start:start + batch_size]
        yield features[index], labels[index]


class BackboneInPrecision(nn.Module):
    """The plain loop's network: the backbone in `precision`, as extraction computes the cached
    features (features.autocast_for), then the head in float32 on float32 features, as the cached
    path's head sees them. In fp32 it computes what model(images) does."""

    def __init__(self, model: nn.Module, device, precision: str = "fp32"):
        super().__init__()
        self.model, self.device, self.precision = model, torch.device(device), precision

    def forward(self, images):
        with autocast_for(self.device, self.precision):
            return head_in_fp32(self.model, images)


def image_batches(items, transform, config, order, device, augmentation=None):
    """The plain loop's batches: decode and push images each time (augmenting on the fly).
    Decoded and resized as the cached path's extraction does (config.decode, config.resize),
    in `order`, so both paths see the same pixels in the same batches."""
    sampler = None if order is None else order.tolist()
    size = decode_size(config.decode, config.img_size)
    if resolve_resize(config.resize, device, augmentation) == "device":
        loader = make_loader(items, own_size_transform(config.img_size), config.batch_size,
                             sampler=sampler, num_workers=config.num_workers, device=device,
                             decode_size=size)
        for images, labels, _ in loader:
            yield normalize_batch(images, IMAGENET_MEAN, IMAGENET_STD, device,
                                  config.img_size), labels
        return
    loader = make_loader(items, transform, config.batch_size, sampler=sampler,
                         num_workers=config.num_workers, device=device, decode_size=size)
    for images, labels, _ in loader:
        yield images.to(device).contiguous(memory_format=torch.channels_last), labels


# --- a whole training run -------------------------------------------------------------------

def fit_on_images(model, trained, train_items, val_items, config, augmentation, order_per_epoch,
                  pos_weight: float, device, log) -> tuple[list, int]:
    """`fit` on whole images, pushed through the network every epoch (augmented on the fly when
    asked): the plain loop of phase 1 and the uncached path of phase 2. `trained` is the part
    that learns (the head, or layer4 + head). The network runs in config.precision, as the
    cached path's extraction does (BackboneInPrecision)."""
    train_tf = train_transform(config.img_size, augmentation)
    val_tf = eval_transform(config.img_size)
    network = BackboneInPrecision(model, device, config.precision)
    with channels_last(model), exact_fp32(device, config.precision):  # backward too
        return fit(network, trained,
                   lambda epoch: image_batches(train_items, train_tf, config,
                                               order_per_epoch[epoch - 1], device, augmentation),
                   lambda: image_batches(val_items, val_tf, config, None, device),
                   config, pos_weight, device, log)


def logits_on_images(model, items, config, device) -> torch.Tensor:
    """The model's logits for `items`, in order (one pass, no gradients kept), in
    config.precision as training computed them."""
    with channels_last(model), exact_fp32(device, config.precision):
        _, _, logits, _ = run_epoch(BackboneInPrecision(model, device, config.precision),
                                    image_batches(items, eval_transform(config.img_size),
                                                  config, None, device),
                                    nn.BCEWithLogitsLoss(), None, device)
    return logits


def train(config: TrainConfig, log_to_console: bool = True, model: nn.Module | None = None,
          weights_record: dict | None = None) -> TrainedRun:
    """Train a head as `config` says; returns a TrainedRun: the live model, history, metrics and
    validation predictions, and (path-like) the run directory with everything a later step needs.

    `model` (with its `weights_record`, as build_model returns them): train this model's head
    instead of building one from config.weights; the notebook passes the model it built and
    froze in front of the student. Its backbone must match config.weights (the record says which).

    Everything that can be checked is checked before the run directory is made (the numbers, the
    weights, the data), so a failed call leaves nothing behind to block its retry. Every file
    written into the run is recorded in its manifest; the run is marked complete at the end.
    """
    if model is not None and weights_record is None:
        raise ValueError("train(model=...) needs the weights_record that build_model returned "
                         "with it: the run must record which weights its backbone holds.")
    check_config(config)
    device = pick_device(config.device)
    generator = seed_everything(config.seed)
    if model is None:
        model, weights_record = build_model(config.weights, seed=config.seed)

    train_items = usable_split(config.data_dir, "train")
    val_items = usable_split(config.data_dir, "val")
    counts = class_counts(config.data_dir, train_items, val_items)

    run_dir = prepare_run_dir(config.out_dir, config.overwrite)
    config.out_dir = str(run_dir)
    with recording(run_dir), deterministic(config.deterministic):
        trained = train_into(run_dir, config, model, weights_record, train_items, val_items,
                             counts, generator, device, log_to_console)
    mark_complete(run_dir)
    return trained


def class_counts(data_dir, train_items, val_items) -> dict:
    """{"train": {"real": n, "fake": n}, "val": {...}}; both classes are needed in both splits."""
    counts = {split: {name: sum(1 for _, y in items if y == index)
                      for name, index in CLASS_TO_IDX.items()}
              for split, items in (("train", train_items), ("val", val_items))}
    for split, per_class in counts.items():
        if min(per_class.values()) == 0:
            raise ValueError(f"{data_dir}/{split} has no images of class "
                             f"{min(per_class, key=per_class.get)!r}: both classes are needed.")
    return counts


def positive_weight(counts: dict) -> float:
    """Imbalanced data: weigh the positive (fake) class so each class counts equally in the loss."""
    return counts["train"]["real"] / counts["train"]["fake"]


def usable_split(data_dir, split: str):
    """list_split's items; in a hand-made split (no split.csv, so never checked by split_dataset)
    unreadable files are left out and listed in one warning."""
    items = list_split(data_dir, split)
    if (Path(data_dir) / "split.csv").is_file():
        return items
    return drop_unreadable(items, f"{data_dir}/{split}")


def train_into(run_dir: Path, config: TrainConfig, model, weights_record: dict, train_items,
               val_items, counts: dict, generator, device,
               log_to_console: bool = True) -> TrainedRun:
    log = RunLog(run_dir, echo=log_to_console)
    # Shortcuts (one class all PNG, the other JPEG; different sizes...) would be learned instead of
    # the content: look before training. It warns, it never refuses.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", AuditWarning)
        findings = audit_split(config.data_dir, out_dir=run_dir / "audit")
    for flag in findings["flags"]:
        log(f"DATA AUDIT WARNING: {flag}")
    if findings["flags"]:
        warnings.warn(f"data audit: {len(findings['flags'])} possible shortcut(s), see "
                      f"{run_dir / 'audit' / 'audit.md'}", AuditWarning, stacklevel=3)
    pos_weight = positive_weight(counts)

    model.eval().to(device)  # eval: BatchNorm keeps its statistics; only the head learns
    if not weights_record["pretrained"]:
        log(random_init_banner(weights_record["note"]))
    log(f"device {device}; train {counts['train']}, val {counts['val']}; pos_weight {pos_weight:.3f}")

    augmentation = config.augmentation if config.augment else None
    epochs = resolved_epochs(config)
    order_per_epoch = epoch_orders(len(train_items), epochs, generator)
    train_labels = torch.tensor([y for _, y in train_items])
    val_labels = torch.tensor([y for _, y in val_items])
    common = feature_options(config, device, log)
    start = time.perf_counter()
    # Un-augmented features of train and val: what the head trains on by default, and what the
    # standardisation, the lr finder and the probe need in any case. The plain loop and --augment
    # extract them once for that (one forward pass each, from the cache when it has them).
    needs_plain_features = (config.cache_features or config.standardize or config.probe
                            or config.lr == "find")
    train_plain = val_plain = None
    if needs_plain_features:
        train_plain = cached_features(model, train_items, desc="train features", **common)
        val_plain = cached_features(model, val_items, desc="val features", **common)

    head = model.fc
    if config.standardize and not isinstance(model.fc, nn.Linear):
        # Folding needs one linear layer; another head (a notebook experiment) learns on raw
        # features, and config.json records that it did.
        log(f"standardisation off: the head is {type(model.fc).__name__}, not one nn.Linear, so "
            "the train statistics cannot be folded into its weights")
        config.standardize = False
    if config.standardize:
        head = StandardizedHead(model.fc, *feature_statistics(train_plain))
    if config.lr == "find":
        config.lr = find_lr_for_run(head, train_plain, train_labels, pos_weight, config, run_dir,
                                    device, log)
    log(f"head: Adam lr {config.lr:g}, "
        + (f"rate x{config.lr_plateau_factor:g} after {config.lr_plateau_patience} stalled epochs, "
           if config.lr_plateau_patience > 0 else "constant rate, ")
        + f"at most {epochs} epochs, early stopping after {config.patience}; features "
        + ("standardised with train statistics" if config.standardize else "raw"))

    if config.cache_features:
        train_features = train_plain
        if augmentation:
            train_features = cached_features(model, train_items, augmentation=augmentation,
                                             n_views=config.augment_views,
                                             desc="train features (augmented)", **common)
        val_features = val_plain

        def train_batches(epoch):
            features = train_features
            if augmentation:  # one of the K cached views per image, drawn afresh each epoch
                view = torch.randint(len(train_features), (len(train_items),), generator=generator)
                features = train_features[view, torch.arange(len(train_items))]
            return feature_batches(features, train_labels, config.batch_size,
                                   order_per_epoch[epoch - 1])

        head.to(device)
        with one_cpu_thread(device):
            history, best_epoch = fit(head, head, train_batches,
                                      lambda: feature_batches(val_features, val_labels,
                                                              config.batch_size),
                                      config, pos_weight, device, log)
    else:
        model.fc = head.to(device)  # the whole network ends in the (standardised) head
        try:
            history, best_epoch = fit_on_images(model, head, train_items, val_items, config,
                                                augmentation, order_per_epoch, pos_weight, device,
                                                log)
        finally:
            model.fc = head.linear if isinstance(head, StandardizedHead) else head
    if isinstance(head, StandardizedHead):
        head.fold()  # model.fc is head.linear: now on raw features
    train_seconds = time.perf_counter() - start
    log(f"training took {train_seconds:.1f} s")
    converged = convergence(history, best_epoch, config.patience)
    log(converged["message"])
    if not converged["converged"]:
        warnings.warn(f"{run_dir}: {converged['message']}", NotConvergedWarning, stacklevel=2)

    with torch.no_grad():  # the restored best head, once more over the validation split
        if config.cache_features:
            val_logits = model.fc(val_features.to(device)).squeeze(1).float().cpu()
        else:
            val_logits = logits_on_images(model, val_items, config, device)
    probe = None
    if config.probe:
        probe = run_probe(model, train_plain, train_labels, val_plain, val_items, config, common,
                          run_dir, log)
    val_probabilities = torch.sigmoid(val_logits).numpy()
    metrics = conclude_run(run_dir, model, config, weights_record, counts, history, best_epoch,
                           train_seconds, val_items, val_probabilities, log, probe)
    return TrainedRun(run_dir=run_dir, model=model, config=config, history=history,
                      best_epoch=best_epoch, metrics=metrics, val_items=val_items,
                      val_probabilities=val_probabilities, weights_record=weights_record,
                      counts=counts, train_seconds=train_seconds, device=device, probe=probe)


def feature_options(config: TrainConfig, device, log) -> dict:
    """How a run extracts its features; `extract` uses the same, so it fills the very cache
    entries a run with this config reads."""
    return dict(img_size=config.img_size, cache_dir=config.cache_dir or None, batch_size=64,
                device=device, num_workers=config.num_workers, seed=config.seed, log=log,
                decode=config.decode, resize=config.resize, precision=config.precision)


def splits_a_run_extracts(config: TrainConfig) -> list[str]:
    """The splits whose un-augmented features `train` extracts with this config: train and val
    (the head, the standardisation, the lr finder and the probe use them), and test for the probe
    when the split has one. (Augmented views come on top with --augment.)"""
    if not (config.cache_features or config.standardize or config.probe or config.lr == "find"):
        return []
    has_test = (Path(config.data_dir) / "test").is_dir()
    return ["train", "val"] + (["test"] if config.probe and has_test else [])


def extract_split_features(config: TrainConfig, splits, log=print) -> dict[str, Path | None]:
    """Fill the feature cache for `splits` of config.data_dir as `train` with this config would
    (the same model, images and options, so the same cache keys). Returns {split: cache file}.

    Under torchrun every rank extracts its share of each split and rank 0 writes the cache; the
    other ranks get {split: None}. A run started afterwards finds the features there."""
    if not config.cache_dir:
        raise ValueError("extract fills the feature cache, so it needs a cache folder: give "
                         "--cache-dir (default outputs/cache), not an empty one.")
    check_config(config)
    device = pick_device(config.device)
    seed_everything(config.seed)
    model, _ = build_model(config.weights, seed=config.seed)
    model.eval().to(device)
    options = feature_options(config, device, log)
    files = {}
    for split in splits:
        # The items exactly as train lists them (the probe's test split is read as listed).
        items = list_split(config.data_dir, split) if split == "test" \
            else usable_split(config.data_dir, split)
        path = cache_file(model, items, config.img_size, IMAGENET_MEAN, IMAGENET_STD, None, 1,
                          config.seed, device, config.cache_dir, config.decode,
                          resolve_resize(config.resize, device), config.precision) \
            if distributed.is_main() else None  # under torchrun, the cache is rank 0's
        features = cached_features(model, items, desc=f"{split} features", cache_path=path,
                                   **options)
        files[split] = None if features is None else path
    return files


def find_lr_for_run(head, train_features, train_labels, pos_weight, config, run_dir, device, log):
    """`--lr find`: the range test on the run's own head and features; the suggestion becomes
    the run's rate, and the sweep is kept (lr_find.json, figures/lr_find.png)."""
    with one_cpu_thread(device):
        result = lr_find(head, train_features, train_labels, pos_weight, config.batch_size,
                         seed=config.seed, device=device)
    write_json(run_dir / "lr_find.json", result.record())
    save_figure(plot_lr_find(result), run_dir / "figures" / "lr_find")
    plt.close("all")
    log(f"lr finder: suggested rate {result.suggestion:.3g} (lowest loss at "
        f"{result.min_loss_lr:.3g}); training at {result.suggestion:.3g}")
    return float(result.suggestion)


def run_probe(model, train_features, train_labels, val_features, val_items, config, common,
              run_dir, log) -> dict:
    """The logistic-regression probe on the un-augmented train features (C by cross-validation
    on train only, folds following the split's groups), evaluated on val and, when the split has
    one, test. Writes probe.json; returns it."""
    groups = split_groups(config.data_dir, list_split(config.data_dir, "train"))
    probe = fit_probe(train_features.numpy(), train_labels.numpy(), groups=groups, seed=config.seed)
    record = {**probe.record(), "trained_on": "train split, un-augmented features",
              "metrics": {}}
    splits = {"val": (val_items, val_features)}
    if (Path(config.data_dir) / "test").is_dir():
        test_items = list_split(config.data_dir, "test")
        splits["test"] = (test_items, cached_features(model, test_items, desc="test features",
                                                      **common))
    for split, (items, features) in splits.items():
        labels = np.array([y for _, y in items])
        p = probe.predict_proba(features.numpy())
        val_threshold = choose_threshold(labels, p) if split == "val" else \
            record["metrics"]["val"]["val_threshold"]
        record["metrics"][split] = compute_metrics(labels, p, threshold=0.5,
                                                   val_threshold=val_threshold,
                                                   groups=split_groups(config.data_dir, items),
                                                   seed=config.seed)
    write_json(run_dir / "probe.json", record)
    val = record["metrics"]["val"]
    log(f"linear probe (logistic regression, C {probe.C:g} by {probe.cv['folds']}-fold CV on "
        f"train{', group folds' if groups is not None else ''}, {probe.fit_seconds:.1f} s): val "
        f"ROC-AUC {val['roc_auc']}, accuracy {val['accuracy']:.4f}, log loss {val['log_loss']}")
    return record


def conclude_run(run_dir: Path, model, config, weights_record: dict, counts: dict, history: list,
                 best_epoch: int, train_seconds: float, val_items, val_probabilities, log,
                 probe: dict | None = None) -> dict:
    """The end of every phase, once: validation metrics and the threshold chosen on them, then the
    checkpoint (written once, with them), config, history and counts, then predictions, figures,
    tables and the report. Returns the validation metrics."""
    metrics, val_threshold = validation_metrics(val_items, val_probabilities, config, history,
                                                best_epoch, config.data_dir, probe)
    device = next(model.parameters()).device
    model.cpu()
    save_run(run_dir, model, config, weights_record, history, best_epoch, counts, train_seconds,
             val_threshold, metrics)
    model.to(device)
    finish_run(run_dir, val_items, val_probabilities, metrics, val_threshold, history, best_epoch,
               log, probe)
    return metrics


def validation_metrics(val_items, val_probabilities, config, history, best_epoch, data_dir,
                       probe: dict | None = None) -> tuple[dict, float]:
    """Validation metrics and the decision threshold chosen on them. The metrics say whether
    training converged and, given the `probe` record (run_probe), how the head compares with the
    linear probe on the same split."""
    labels = np.array([y for _, y in val_items])
    groups = split_groups(data_dir, val_items)
    val_threshold = choose_threshold(labels, val_probabilities)
    metrics = compute_metrics(labels, val_probabilities, threshold=0.5, val_threshold=val_threshold,
                              groups=groups, seed=config.seed)
    metrics["split"] = "val"
    metrics.update(convergence(history, best_epoch, config.patience))
    if probe is not None:
        probe_val = probe["metrics"]["val"]
        metrics["probe"] = probe_summary(probe_val)
        metrics["head_vs_probe"] = head_vs_probe(metrics["roc_auc"], probe_val["roc_auc"])
    return metrics, val_threshold


def finish_run(run_dir: Path, val_items, val_probabilities, metrics: dict, val_threshold: float,
               history, best_epoch, log=print, probe: dict | None = None) -> None:
    """The validation files of a run: the head-vs-probe table, metrics, predictions, figures,
    tables, report."""
    labels = np.array([y for _, y in val_items])
    if probe is not None:
        write_table(comparison_rows(metrics, probe["metrics"]["val"]),
                    run_dir / "tables" / "head_vs_probe",
                    caption="The trained head against a logistic-regression probe on the same "
                            "frozen features (validation split, 95% bootstrap CIs)")
        log(metrics["head_vs_probe"]["verdict"])
    write_json(run_dir / "metrics_val.json", metrics)
    write_predictions([{"image_id": path.name, "prediction": float(p), "label": int(y),
                        "path": str(path)} for (path, y), p in zip(val_items, val_probabilities)],
                      run_dir / "predictions_val.csv")
    save_figures(run_drawings(run_dir / "figures", history, best_epoch, labels, val_probabilities,
                              metrics))
    write_table(metrics_table_rows(metrics), run_dir / "tables" / "metrics_val",
                caption="Validation metrics with 95% bootstrap confidence intervals")
    plt.close("all")
    write_report(run_dir)
    log(f"val accuracy {metrics['accuracy']:.4f}, ROC-AUC {metrics['roc_auc']}, "
        f"threshold chosen on val {val_threshold:.3f}; run saved in {run_dir}")


def run_drawings(figures: Path, history, best_epoch, labels, val_probabilities,
                 metrics: dict) -> dict:
    """A run's six figures, for save_figures: the learning curves and the validation figures,
    the costliest first (save_figures deals them out in this order)."""
    return {figures / "learning_curves": partial(plot_history, history, best_epoch=best_epoch),
            **evaluation_drawings(labels, val_probabilities, metrics, figures,
                                  title_prefix="Validation", name_prefix="val_")}


def library_versions() -> dict:
    versions = {"deepfake_detector": __version__, "torch": torch.__version__,
                "torchvision": torchvision.__version__, "numpy": np.__version__,
                "scikit-learn": sklearn.__version__, "python": platform.python_version()}
    return {name: str(v) for name, v in versions.items()}  # plain str: weights_only-loadable


def save_run(run_dir: Path, model, config: TrainConfig, weights_record: dict, history: list,
             best_epoch: int, counts: dict, train_seconds: float, val_threshold: float,
             metrics: dict) -> None:
    """Checkpoint (loadable with weights_only=True; with the validation metrics and the threshold
    chosen on them), config, history, counts."""
    checkpoint = {
        "format_version": 1,
        "model_state": model.state_dict(),
        "class_to_idx": dict(CLASS_TO_IDX),
        "img_size": config.img_size,
        # How the images were decoded (data.DECODE_MODES): predict, evaluate, Grad-CAM and the app
        # decode the same way. A checkpoint without it decoded in full.
        "decode": config.decode,
        "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD),
        "threshold": 0.5,
        "weights": weights_record,
        # What the backbone computed in while the head trained; evaluate, predict and Grad-CAM
        # default to it (features.autocast_for).
        "precision": config.precision,
        # load_run rebuilds the standard head, Linear(512, 1); another head (a notebook
        # experiment) is recorded here so that loading it fails with a clear message.
        "head": repr(model.fc),
        "best_epoch": best_epoch,
        "best_val": history[best_epoch - 1],
        "versions": library_versions(),
        # The metrics and threshold, with the weights they belong to.
        "val_threshold": float(val_threshold),
        "metrics": {k: metrics[k] for k in ("accuracy", "roc_auc", "average_precision",
                                            "balanced_accuracy", "n_images") if k in metrics},
    }
    torch.save(checkpoint, run_dir / "checkpoint.pt")
    converged = convergence(history, best_epoch, config.patience)
    # synthetic_data: the demo set's record when the run was trained on it (None otherwise), so
    # every later view of the run (report, app) can say SYNTHETIC DATA without the data at hand.
    write_json(run_dir / "config.json", {**asdict(config), "epochs": resolved_epochs(config),
                                         "weights_record": weights_record,
                                         "synthetic_data": synthetic_origin(config.data_dir),
                                         "trained_at": datetime.now(timezone.utc).isoformat(
                                             timespec="seconds"),
                                         "versions": library_versions(),
                                         "train_seconds": train_seconds, "best_epoch": best_epoch,
                                         "converged": converged["converged"],
                                         "epochs_run": converged["epochs_run"]})
    write_json(run_dir / "history.json", history)
    write_json(run_dir / "data_counts.json", counts)


