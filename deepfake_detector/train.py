"""Train the single-logit head on a frozen ResNet-18: a run, step by step, from checked settings to
a complete run directory (`train`, whose `train_into` reads as the table of contents).

Two paths, one loop (loop.py). With the backbone frozen the head sees the same 512 features of an
image in every epoch, so by default they are extracted once (features.py) and the head trains on
them in milliseconds per epoch. `cache_features=False` is the plain loop (image_path.py) that
pushes every image through the whole network each epoch (needed only to augment on the fly); both
draw the same batches in the same order from the same seed, so they end in the same head.

The default recipe converges (measured on CIFAKE and the synthetic set; see the README): the head
learns on features standardised with train-split statistics (head.py; folded back into its
weights at the end, so the saved head is still one nn.Linear(512, 1) on raw features), at Adam
3e-3, with the rate cut tenfold when the val loss stalls, and early stopping, not the epoch budget,
ends it. Every run also fits a logistic-regression probe on the same features (probe.py): the
ceiling a linear head can reach, reported beside the head. What a run writes, and how it is read
back, is run_dir.py's.
"""
from __future__ import annotations

import math
import numbers
import os
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from . import CLASS_TO_IDX, distributed
from .audit import AuditWarning, audit_split
from .config import MAX_SEED, TrainConfig
from .determinism import deterministic
from .features import Views, cache_file, cached_extraction, cached_features, layer_statistics
from .figures import plt, save_figure
from .files import check_output_folder, write_json
from .head import StandardizedHead, feature_statistics
from .image_path import fit_on_images, logits_on_images
from .loop import (Fitted, NotConvergedWarning, convergence, epoch_orders, feature_batches, fit,
                   one_cpu_thread, resolved_epochs, seed_everything)
from .folder_lock import folder_lock
from .lr_find import lr_find, plot_lr_find
from .manifest import mark_complete, recording
from .metrics import choose_threshold, compute_metrics
from .model import build_model, pick_device
from .ood import fit_for_run
from .preprocessing import Preprocessing
from .probe import fit_probe, head_vs_probe, probe_summary
from .run_flags import flags_of_training
from .run_dir import (AUDIT_DIR, FIGURES_DIR, LR_FIND_JSON, OOD_STATS, PROBE_JSON, RunLog,
                      prepare_run_dir, run_dir_path, save_run)
from .split_read import MANIFEST_CSV, drop_unreadable, list_split, split_groups
from .video_metrics import VIDEO_PREDICTIONS_VAL_CSV, with_video_level, write_video_predictions
from .terminal import rounded, upscale_note
from .validation_files import finish_run


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


@dataclass
class RunContext:
    """What every step of a run needs: where it writes, what it trains, on which device, its log,
    its seeded generator (batch orders, augmented views) and how it extracts features."""
    run_dir: Path
    config: TrainConfig
    model: nn.Module
    device: torch.device
    log: RunLog
    generator: torch.Generator
    extraction: dict              # feature_options(config, log)
    flags: list[str]              # RANDOM INIT, SYNTHETIC DATA: config.json's, before it exists

    @property
    def augmentation(self) -> dict | None:
        return self.config.augmentation if self.config.augment else None


@dataclass
class RunData:
    """A run's images and what it derives from them once: labels, the class weight, the shuffle
    of every epoch, and (when the run needs them) the un-augmented features of train and val."""
    train_items: list
    val_items: list
    counts: dict
    order_per_epoch: list
    train_plain: torch.Tensor | None = None
    val_plain: torch.Tensor | None = None
    # (train, val): the OOD score's layers' statistics, taken in the extraction's own pass
    # (features.cached_extraction); None where it had none (a cache entry of an earlier version)
    plain_layers: tuple = (None, None)
    train_labels: torch.Tensor = field(init=False)
    val_labels: torch.Tensor = field(init=False)
    pos_weight: float = field(init=False)

    def __post_init__(self):
        self.train_labels = torch.tensor([y for _, y in self.train_items])
        self.val_labels = torch.tensor([y for _, y in self.val_items])
        self.pos_weight = positive_weight(self.counts)


def random_init_banner(note: str) -> str:
    line = "#" * 78
    return "\n".join([line, "#  RANDOM INIT - NOT IMAGENET-PRETRAINED".ljust(77) + "#",
                      "#  Accuracy on real data will be far below what pretrained features give.".ljust(77) + "#",
                      f"#  {note[:72]}".ljust(77) + "#", line])


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
    Preprocessing.from_config(config)  # size, decode, resize and precision, checked as one
    if config.cache_dir:  # before the work: extraction would fail only when storing its result
        check_output_folder(config.cache_dir, "--cache-dir")
    whole("lr_plateau_patience", 0)
    if isinstance(config.seed, bool) or not isinstance(config.seed, numbers.Integral) \
            or not 0 <= config.seed <= MAX_SEED:  # numpy's seeds are 32 bits
        raise ValueError(f"seed must be a whole number from 0 to {MAX_SEED}; got {config.seed!r}.")
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


# --- a whole training run -------------------------------------------------------------------

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

    run_dir = run_dir_path(config.out_dir)
    with folder_lock(run_dir):  # one writer: a second train into this folder refuses at once
        run_dir = prepare_run_dir(run_dir, config.overwrite)
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
    if (Path(data_dir) / MANIFEST_CSV).is_file():
        return items
    return drop_unreadable(items, f"{data_dir}/{split}")


def train_into(run_dir: Path, config: TrainConfig, model, weights_record: dict, train_items,
               val_items, counts: dict, generator, device,
               log_to_console: bool = True) -> TrainedRun:
    """The run, step by step, into its new directory (`train` made it and records what is
    written there)."""
    log = RunLog(run_dir, echo=log_to_console)
    flags = flags_of_training(weights_record, config.data_dir)  # config.json's, written at the end
    audit_data(config, run_dir, log, flags)
    introduce_run(model, weights_record, counts, device, log)
    if note := upscale_note([path for path, _ in train_items], config.img_size):
        log(note)  # once: 32 px images at 224 cost more and show nothing more
    data = RunData(train_items, val_items, counts,
                   epoch_orders(len(train_items), resolved_epochs(config), generator))
    run = RunContext(run_dir, config, model, device, log, generator,
                     feature_options(config, log), flags)
    start = time.perf_counter()
    data.train_plain, data.val_plain, data.plain_layers = plain_features(run, data)
    head = build_head(run, data)
    if config.lr == "find":
        config.lr = find_lr_for_run(run, data, head)
    log(head_recipe(config))
    if config.cache_features:
        history, best_epoch = fit_on_features(run, data, head)
    else:
        history, best_epoch = fit_whole_network(run, data, head)
    fitted = finish_fitting(run, head, history, best_epoch, start)
    val_probabilities = validation_probabilities(run, data)
    fit_for_run(run_dir / OOD_STATS, data.train_plain, data.train_labels, data.val_plain,
                [path for path, _ in train_items], log, [path for path, _ in val_items],
                lambda paths: layer_statistics(model, paths, run.extraction["prep"],
                                               num_workers=config.num_workers),
                data.plain_layers)  # ood.py: no second pass when the extraction took the layers
    probe = run_probe(run, data) if config.probe else None
    metrics = conclude_run(run_dir, model, config, weights_record, counts, fitted, val_items,
                           val_probabilities, log, probe)
    return TrainedRun(run_dir=run_dir, model=model, config=config, history=fitted.history,
                      best_epoch=fitted.best_epoch, metrics=metrics, val_items=val_items,
                      val_probabilities=val_probabilities, weights_record=weights_record,
                      counts=counts, train_seconds=fitted.train_seconds, device=device,
                      probe=probe)


def audit_data(config: TrainConfig, run_dir: Path, log, flags: list[str]) -> None:
    """Shortcuts (one class all PNG, the other JPEG; different sizes...) would be learned instead
    of the content: look before training. It warns, it never refuses. Its figure and tables
    carry the run's `flags` (RANDOM INIT, SYNTHETIC DATA)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", AuditWarning)
        findings = audit_split(config.data_dir, out_dir=run_dir / AUDIT_DIR, run_flags=flags)
    for flag in findings["flags"]:
        log(f"DATA AUDIT WARNING: {flag}")
    if findings["flags"]:  # stacklevel: the line that called train()
        warnings.warn(f"data audit: {len(findings['flags'])} possible shortcut(s), see "
                      f"{run_dir / AUDIT_DIR / 'audit.md'}", AuditWarning, stacklevel=4)


def introduce_run(model, weights_record: dict, counts: dict, device, log) -> None:
    """The model in eval mode on the device, and the run's first lines: a random-init banner when
    the backbone is not pretrained, the device, the counts and the class weight."""
    model.eval().to(device)  # eval: BatchNorm keeps its statistics; only the head learns
    if not weights_record["pretrained"]:
        log(random_init_banner(weights_record["note"]))
    log(f"device {device}; train {counts['train']}, val {counts['val']}; "
        f"pos_weight {positive_weight(counts):.3f}")


def needs_plain_features(config: TrainConfig) -> bool:
    """Whether a run extracts the un-augmented features of train and val: what the head trains
    on by default, and what the standardisation, the lr finder and the probe need in any case."""
    return bool(config.cache_features or config.standardize or config.probe
                or config.lr == "find")


def plain_features(run: RunContext, data: RunData) -> tuple:
    """(train, val, (train's, val's) OOD layers' statistics) un-augmented features, or (None,
    None, (None, None)) when the run needs neither. The plain loop and --augment extract them
    once too (one forward pass each, from the cache when it has them), and that pass takes the
    OOD score's layers' statistics too (features.cached_extraction)."""
    if not needs_plain_features(run.config):
        return None, None, (None, None)
    train = cached_extraction(run.model, data.train_items, desc="train features",
                              **run.extraction)
    val = cached_extraction(run.model, data.val_items, desc="val features", **run.extraction)
    # (None: a cache entry written before they were kept; its features serve all the same, and
    # ood.fit_for_run takes the layers in one more pass, saying so)
    return train.features, val.features, (train.layers, val.layers)


def build_head(run: RunContext, data: RunData) -> nn.Module:
    """What learns: model.fc, behind the train-split standardisation (StandardizedHead) unless
    config.standardize is off."""
    model, config = run.model, run.config
    if config.standardize and not isinstance(model.fc, nn.Linear):
        # Folding needs one linear layer; another head (a notebook experiment) learns on raw
        # features, and config.json records that it did.
        run.log(f"standardisation off: the head is {type(model.fc).__name__}, not one nn.Linear, "
                "so the train statistics cannot be folded into its weights")
        config.standardize = False
    if config.standardize:
        return StandardizedHead(model.fc, *feature_statistics(data.train_plain))
    return model.fc


def head_recipe(config: TrainConfig) -> str:
    """The log line that says how the head trains."""
    return (f"head: Adam lr {config.lr:g}, "
            + (f"rate x{config.lr_plateau_factor:g} after {config.lr_plateau_patience} stalled "
               "epochs, " if config.lr_plateau_patience > 0 else "constant rate, ")
            + f"at most {resolved_epochs(config)} epochs, early stopping after {config.patience}; "
            + "features " + ("standardised with train statistics" if config.standardize else "raw"))


def find_lr_for_run(run: RunContext, data: RunData, head) -> float:
    """`--lr find`: the range test on the run's own head and features; the suggestion becomes
    the run's rate, and the sweep is kept (lr_find.json, figures/lr_find.png)."""
    with one_cpu_thread(run.device):
        result = lr_find(head, data.train_plain, data.train_labels, data.pos_weight,
                         run.config.batch_size, seed=run.config.seed, device=run.device)
    write_json(run.run_dir / LR_FIND_JSON, result.record())
    save_figure(plot_lr_find(result), run.run_dir / FIGURES_DIR / "lr_find", flags=run.flags)
    plt.close("all")
    run.log(f"lr finder: suggested rate {result.suggestion:.3g} (lowest loss at "
            f"{result.min_loss_lr:.3g}); training at {result.suggestion:.3g}")
    return float(result.suggestion)


def fit_on_features(run: RunContext, data: RunData, head) -> tuple[list, int]:
    """The cached path: the head trains on features, the un-augmented ones or (--augment) one of
    the K cached augmented views of each image, drawn afresh each epoch."""
    config, train_items, augmentation = run.config, data.train_items, run.augmentation
    train_features = data.train_plain
    if augmentation:
        views = Views(augmentation, config.augment_views, config.seed)
        train_features = cached_features(run.model, train_items, desc="train features (augmented)",
                                         **{**run.extraction, "views": views})

    def train_batches(epoch):
        features = train_features
        if augmentation:  # one of the K cached views per image, drawn afresh each epoch
            view = torch.randint(len(train_features), (len(train_items),),
                                 generator=run.generator)
            features = train_features[view, torch.arange(len(train_items))]
        return feature_batches(features, data.train_labels, config.batch_size,
                               data.order_per_epoch[epoch - 1])

    head.to(run.device)
    with one_cpu_thread(run.device):
        return fit(head, head, train_batches,
                   lambda: feature_batches(data.val_plain, data.val_labels, config.batch_size),
                   config, data.pos_weight, run.device, run.log)


def fit_whole_network(run: RunContext, data: RunData, head) -> tuple[list, int]:
    """The plain loop: the whole network, ending in the (standardised) head, on images."""
    model = run.model
    model.fc = head.to(run.device)
    try:
        return fit_on_images(model, head, data.train_items, data.val_items, run.config,
                             run.augmentation, data.order_per_epoch, data.pos_weight, run.device,
                             run.log)
    finally:
        model.fc = head.linear if isinstance(head, StandardizedHead) else head


def finish_fitting(run: RunContext, head, history: list, best_epoch: int, start: float) -> Fitted:
    """The standardisation folded into the head's weights, the time since `start`, and whether
    it converged (NotConvergedWarning when the epoch budget, not early stopping, ended it)."""
    if isinstance(head, StandardizedHead):
        head.fold()  # model.fc is head.linear: now on raw features
    train_seconds = time.perf_counter() - start
    run.log(f"training took {train_seconds:.1f} s")
    converged = convergence(history, best_epoch, run.config.patience)
    run.log(converged["message"])
    if not converged["converged"]:  # stacklevel: train()'s line
        warnings.warn(f"{run.run_dir}: {converged['message']}", NotConvergedWarning, stacklevel=3)
    return Fitted(history, best_epoch, train_seconds)


def validation_probabilities(run: RunContext, data: RunData) -> np.ndarray:
    """P(fake) of the restored best head, once more over the validation split."""
    with torch.no_grad():
        if run.config.cache_features:
            val_logits = run.model.fc(data.val_plain.to(run.device)).squeeze(1).float().cpu()
        else:
            val_logits = logits_on_images(run.model, data.val_items, run.config, run.device)
    return torch.sigmoid(val_logits).numpy()


def run_probe(run: RunContext, data: RunData) -> dict:
    """The logistic-regression probe on the un-augmented train features (C by cross-validation
    on train only, folds following the split's groups), evaluated on val and, when the split has
    one, test. Writes probe.json; returns it."""
    config = run.config
    groups = split_groups(config.data_dir, list_split(config.data_dir, "train"))
    probe = fit_probe(data.train_plain.numpy(), data.train_labels.numpy(), groups=groups,
                      seed=config.seed)
    record = {**probe.record(), "trained_on": "train split, un-augmented features",
              "metrics": {}}
    splits = {"val": (data.val_items, data.val_plain)}
    if (Path(config.data_dir) / "test").is_dir():
        test_items = list_split(config.data_dir, "test")
        splits["test"] = (test_items, cached_features(run.model, test_items, desc="test features",
                                                      **run.extraction))
    for split, (items, features) in splits.items():
        labels = np.array([y for _, y in items])
        p = probe.predict_proba(features.numpy())
        val_threshold = choose_threshold(labels, p) if split == "val" else \
            record["metrics"]["val"]["val_threshold"]
        record["metrics"][split] = compute_metrics(labels, p, threshold=0.5,
                                                   val_threshold=val_threshold,
                                                   groups=split_groups(config.data_dir, items),
                                                   seed=config.seed)
    write_json(run.run_dir / PROBE_JSON, record)
    val = record["metrics"]["val"]
    run.log(f"linear probe (logistic regression, C {probe.C:g} by {probe.cv['folds']}-fold CV on "
            f"train{', group folds' if groups is not None else ''}, {probe.fit_seconds:.1f} s): "
            f"val ROC-AUC {rounded(val['roc_auc'])}, accuracy {val['accuracy']:.3f}, log loss "
            f"{rounded(val['log_loss'])}")
    return record


def feature_options(config: TrainConfig, log) -> dict:
    """How a run extracts its features; `extract` uses the same, so it fills the very cache
    entries a run with this config reads."""
    return dict(prep=Preprocessing.from_config(config), cache_dir=config.cache_dir or None,
                views=Views(seed=config.seed), batch_size=64, num_workers=config.num_workers,
                log=log)


def splits_a_run_extracts(config: TrainConfig) -> list[str]:
    """The splits whose un-augmented features `train` extracts with this config: train and val
    (the head, the standardisation, the lr finder and the probe use them), and test for the probe
    when the split has one. (Augmented views come on top with --augment.)"""
    if not needs_plain_features(config):
        return []
    has_test = (Path(config.data_dir) / "test").is_dir()
    return ["train", "val"] + (["test"] if config.probe and has_test else [])


def extract_split_features(config: TrainConfig, splits, log=print) -> dict[str, Path | None]:
    """Fill the feature cache for `splits` of config.data_dir as `train` with this config would
    (the same model, images and options, so the same cache keys). Returns {split: cache file}.

    Under torchrun every rank extracts its share of each split and rank 0 writes the cache; the
    other ranks get {split: None}. A run started afterwards finds the features there. Rank 0
    alone decides the splits and lists their images, for every rank (distributed.listed_by_main):
    an image that changes meanwhile stops the extraction, naming it, rather than cache features of
    other bytes under its key."""
    if not config.cache_dir:
        raise ValueError("extract fills the feature cache, so it needs a cache folder: give "
                         "--cache-dir (default outputs/cache), not an empty one.")
    check_config(config)
    device = pick_device(config.device)
    seed_everything(config.seed)
    model, _ = build_model(config.weights, seed=config.seed)
    model.eval().to(device)
    options = feature_options(config, log)
    files = {}
    for split in distributed.computed_by_main(lambda: list(splits)):
        # The items exactly as train lists them (the probe's test split is read as listed).
        items = distributed.listed_by_main(
            lambda: list_split(config.data_dir, split) if split == "test"
            else usable_split(config.data_dir, split))
        path = cache_file(model, items, options["prep"], config.cache_dir, options["views"]) \
            if distributed.is_main() else None  # under torchrun, the cache is rank 0's
        features = cached_features(model, items, desc=f"{split} features", cache_path=path,
                                   **options)
        files[split] = None if features is None else path
    return files


def conclude_run(run_dir: Path, model, config, weights_record: dict, counts: dict, fitted: Fitted,
                 val_items, val_probabilities, log, probe: dict | None = None) -> dict:
    """The end of every phase, once: validation metrics and the threshold chosen on them, then the
    checkpoint (written once, with them), config, history and counts, then predictions, figures,
    tables and the report. Returns the validation metrics."""
    metrics, val_threshold = validation_metrics(val_items, val_probabilities, config, fitted, probe)
    device = next(model.parameters()).device
    model.cpu()
    save_run(run_dir, model, config, weights_record, counts, fitted, val_threshold, metrics)
    model.to(device)
    finish_run(run_dir, val_items, val_probabilities, metrics, val_threshold, fitted, log, probe)
    # videos: one row per validation video too, beside predictions_val.csv (video_metrics.py)
    write_video_predictions(run_dir / VIDEO_PREDICTIONS_VAL_CSV, config.data_dir, val_items,
                            [y for _, y in val_items], val_probabilities, metrics)
    return metrics


def validation_metrics(val_items, val_probabilities, config, fitted: Fitted,
                       probe: dict | None = None) -> tuple[dict, float]:
    """Validation metrics and the decision threshold chosen on them. The metrics say whether
    training converged and, given the `probe` record (run_probe), how the head compares with the
    linear probe on the same split."""
    labels = np.array([y for _, y in val_items])
    groups = split_groups(config.data_dir, val_items)
    val_threshold = choose_threshold(labels, val_probabilities)
    metrics = compute_metrics(labels, val_probabilities, threshold=0.5, val_threshold=val_threshold,
                              groups=groups, seed=config.seed)
    # Videos (a split of the frames command's output): video-level numbers first, their own
    # threshold chosen here on the validation videos (video_metrics.py)
    metrics = with_video_level(metrics, config.data_dir, val_items, labels, val_probabilities,
                               choose=True, seed=config.seed)
    metrics["split"] = "val"
    metrics.update(convergence(fitted.history, fitted.best_epoch, config.patience))
    if probe is not None:
        probe_val = probe["metrics"]["val"]
        metrics["probe"] = probe_summary(probe_val)
        metrics["head_vs_probe"] = head_vs_probe(metrics["roc_auc"], probe_val["roc_auc"])
    return metrics, val_threshold
