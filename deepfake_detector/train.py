"""Fit the single-logit head on a frozen ResNet-18: loss, optimiser, early stopping, run directory.

Two paths, one loop. With the backbone frozen the head sees the same 512 features of an image in
every epoch, so by default they are extracted once (features.py) and the head trains on them in
milliseconds per epoch. `cache_features=False` is the plain loop that pushes every image through
the whole network each epoch (needed only to augment on the fly); both draw the same batches in the
same order from the same seed, so they end in the same head.
"""
from __future__ import annotations

import copy
import json
import math
import numbers
import platform
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import sklearn
import torch
import torchvision
from sklearn.metrics import roc_auc_score
from torch import nn
from tqdm.auto import tqdm

from . import CLASS_TO_IDX, __version__
from .audit import AuditWarning, audit_split
from .data import DEFAULT_AUGMENTATION, IMAGENET_MEAN, IMAGENET_STD, eval_transform, make_loader, \
    train_transform
from .features import cached_features, channels_last
from .manifest import (NotOursError, mark_complete, record_written, recording, remove_run_dir,
                       start_run_dir)
from .manifest import read_manifest as read_run_manifest
from .model import build_model, pick_device
from .evaluate import (choose_threshold, compute_metrics, metrics_table_rows, plot_history,
                       save_evaluation_figures, write_predictions, write_report, write_table)
from .figures import plt, save_figure
from .split import drop_unreadable, list_split, split_groups


@dataclass
class TrainConfig:
    """Everything a run depends on; saved as config.json in the run directory."""
    data_dir: str = "data"              # holds train/{real,fake} and val/{real,fake}
    out_dir: str = ""                   # the run directory; empty: outputs/runs/<date-time>
    weights: str = "imagenet"           # "imagenet", "none" (random init) or a .pth path
    img_size: int = 224                 # ResNet-18's native input; smaller is faster, coarser CAMs
    epochs: int = 50                    # an upper bound: early stopping usually ends sooner
    batch_size: int = 32
    lr: float = 1e-4                    # Adam; the head is small, so a gentle step is enough
    weight_decay: float = 0.0
    patience: int = 5                   # epochs without val-loss improvement before stopping
    min_delta: float = 1e-4             # what counts as an improvement of the val loss
    seed: int = 0
    augment: bool = False               # off by default: see the notebook on why
    augmentation: dict = field(default_factory=lambda: dict(DEFAULT_AUGMENTATION))
    augment_views: int = 4              # augmented views cached per image (cached path only)
    cache_features: bool = True         # extract backbone features once (frozen backbone)
    cache_dir: str = "outputs/cache"    # where features are kept between runs; "" = memory only
    device: str = "auto"                # cuda, mps or cpu, in that order
    num_workers: int | None = None      # image-decoding processes; None = measured default (0 on 2 cores)
    overwrite: bool = False             # replace an existing run directory


class RunExistsError(FileExistsError):
    pass


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

    for name, minimum in (("epochs", 1), ("batch_size", 1), ("img_size", 1), ("patience", 1),
                          ("augment_views", 1)):
        whole(name, minimum)
    if config.num_workers is not None:
        whole("num_workers", 0)
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
    history, best_loss, best_epoch, best_state, waited = [], float("inf"), 0, None, 0
    progress = tqdm(range(1, config.epochs + 1), desc="epochs", unit="epoch", leave=False)
    for epoch in progress:
        start = time.perf_counter()
        train_loss, train_acc, _, _ = run_epoch(module, train_batches(epoch), loss_fn, optimizer, device)
        val_loss, val_acc, val_logits, val_labels = run_epoch(module, val_batches(), loss_fn, None, device)
        history.append({"epoch": epoch, "train_loss": train_loss, "train_acc": train_acc,
                        "val_loss": val_loss, "val_acc": val_acc,
                        "val_auc": safe_auc(val_labels, val_logits),
                        "seconds": time.perf_counter() - start})
        progress.set_postfix(train_loss=f"{train_loss:.4f}", val_loss=f"{val_loss:.4f}",
                             val_acc=f"{val_acc:.3f}")
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


def feature_batches(features, labels, batch_size, order=None):
    order = torch.arange(len(labels)) if order is None else order
    for start in range(0, len(order), batch_size):
        index = order[start:start + batch_size]
        yield features[index], labels[index]


def image_batches(items, transform, config, order, device):
    """The plain loop's batches: decode and push images each time (augmenting on the fly)."""
    sampler = None if order is None else order.tolist()
    loader = make_loader(items, transform, config.batch_size, sampler=sampler,
                         num_workers=config.num_workers, device=device)
    for images, labels, _ in loader:
        yield images.to(device).contiguous(memory_format=torch.channels_last), labels


# --- a whole training run -------------------------------------------------------------------

def train(config: TrainConfig, log_to_console: bool = True) -> Path:
    """Train a head as `config` says; returns the run directory with everything a later step needs.

    Everything that can be checked is checked before the run directory is made (the numbers, the
    weights, the data), so a failed call leaves nothing behind to block its retry. Every file
    written into the run is recorded in its manifest; the run is marked complete at the end.
    """
    check_config(config)
    device = pick_device(config.device)
    generator = seed_everything(config.seed)
    model, weights_record = build_model(config.weights, seed=config.seed)

    train_items = usable_split(config.data_dir, "train")
    val_items = usable_split(config.data_dir, "val")
    counts = {split: {name: sum(1 for _, y in items if y == index)
                      for name, index in CLASS_TO_IDX.items()}
              for split, items in (("train", train_items), ("val", val_items))}
    for split, per_class in counts.items():
        if min(per_class.values()) == 0:
            raise ValueError(f"{config.data_dir}/{split} has no images of class "
                             f"{min(per_class, key=per_class.get)!r}: both classes are needed.")

    run_dir = prepare_run_dir(config.out_dir, config.overwrite)
    config.out_dir = str(run_dir)
    with recording(run_dir):
        train_into(run_dir, config, model, weights_record, train_items, val_items, counts,
                   generator, device, log_to_console)
    mark_complete(run_dir)
    return run_dir


def usable_split(data_dir, split: str):
    """list_split's items; in a hand-made split (no split.csv, so never checked by split_dataset)
    unreadable files are left out and listed in one warning."""
    items = list_split(data_dir, split)
    if (Path(data_dir) / "split.csv").is_file():
        return items
    return drop_unreadable(items, f"{data_dir}/{split}")


def train_into(run_dir: Path, config: TrainConfig, model, weights_record: dict, train_items,
               val_items, counts: dict, generator, device, log_to_console: bool = True) -> None:
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
    # Imbalanced data: weigh the positive (fake) class so each class counts equally in the loss.
    pos_weight = counts["train"]["real"] / counts["train"]["fake"]

    model.to(device)
    if not weights_record["pretrained"]:
        log(random_init_banner(weights_record["note"]))
    log(f"device {device}; train {counts['train']}, val {counts['val']}; pos_weight {pos_weight:.3f}")

    augmentation = config.augmentation if config.augment else None
    order_per_epoch = epoch_orders(len(train_items), config.epochs, generator)
    start = time.perf_counter()
    if config.cache_features:
        cache_dir = config.cache_dir or None
        common = dict(img_size=config.img_size, cache_dir=cache_dir, batch_size=64, device=device,
                      num_workers=config.num_workers, seed=config.seed, log=log)
        train_features = cached_features(model, train_items, augmentation=augmentation,
                                         n_views=config.augment_views, desc="train features",
                                         **common)
        val_features = cached_features(model, val_items, desc="val features", **common)
        train_labels = torch.tensor([y for _, y in train_items])
        val_labels = torch.tensor([y for _, y in val_items])

        def train_batches(epoch):
            features = train_features
            if augmentation:  # one of the K cached views per image, drawn afresh each epoch
                view = torch.randint(len(train_features), (len(train_items),), generator=generator)
                features = train_features[view, torch.arange(len(train_items))]
            return feature_batches(features, train_labels, config.batch_size,
                                   order_per_epoch[epoch - 1])

        history, best_epoch = fit(model.fc, model.fc, train_batches,
                                  lambda: feature_batches(val_features, val_labels, config.batch_size),
                                  config, pos_weight, device, log)
    else:
        train_tf = train_transform(config.img_size, augmentation)
        val_tf = eval_transform(config.img_size)
        with channels_last(model):
            history, best_epoch = fit(
                model, model.fc,
                lambda epoch: image_batches(train_items, train_tf, config, order_per_epoch[epoch - 1], device),
                lambda: image_batches(val_items, val_tf, config, None, device),
                config, pos_weight, device, log)
    train_seconds = time.perf_counter() - start
    log(f"training took {train_seconds:.1f} s")

    with torch.no_grad():  # the restored best head, once more over the validation split
        if config.cache_features:
            val_logits = model.fc(val_features.to(device)).squeeze(1).float().cpu()
        else:
            with channels_last(model):
                _, _, val_logits, _ = run_epoch(model, image_batches(val_items, val_tf, config, None, device),
                                                nn.BCEWithLogitsLoss(), None, device)
    model.cpu()
    save_run(run_dir, model, config, weights_record, history, best_epoch, counts, train_seconds)
    finish_run(run_dir, val_items, torch.sigmoid(val_logits).numpy(), config, history, best_epoch,
               data_dir=config.data_dir, log=log)


def finish_run(run_dir: Path, val_items, val_probabilities, config, history, best_epoch,
               data_dir, log=print) -> dict:
    """Validation metrics, the decision threshold chosen on them, predictions, figures, report."""
    labels = np.array([y for _, y in val_items])
    groups = split_groups(data_dir, val_items)
    val_threshold = choose_threshold(labels, val_probabilities)
    metrics = compute_metrics(labels, val_probabilities, threshold=0.5, val_threshold=val_threshold,
                              groups=groups, seed=config.seed)
    metrics["split"] = "val"
    write_json(run_dir / "metrics_val.json", metrics)
    write_predictions([{"image_id": path.name, "prediction": float(p), "label": int(y),
                        "path": str(path)} for (path, y), p in zip(val_items, val_probabilities)],
                      run_dir / "predictions_val.csv")
    figures = run_dir / "figures"
    save_figure(plot_history(history, best_epoch=best_epoch), figures / "learning_curves")
    save_evaluation_figures(labels, val_probabilities, metrics, figures, title_prefix="Validation",
                            name_prefix="val_")
    write_table(metrics_table_rows(metrics), run_dir / "tables" / "metrics_val",
                caption="Validation metrics with 95% bootstrap confidence intervals")
    plt.close("all")

    checkpoint_path = run_dir / "checkpoint.pt"  # record the metrics and threshold with the weights
    checkpoint = torch.load(checkpoint_path, map_location="cpu", weights_only=True)
    checkpoint["val_threshold"] = float(val_threshold)
    checkpoint["metrics"] = {k: metrics[k] for k in ("accuracy", "roc_auc", "average_precision",
                                                     "balanced_accuracy", "n_images") if k in metrics}
    torch.save(checkpoint, checkpoint_path)
    write_report(run_dir)
    log(f"val accuracy {metrics['accuracy']:.4f}, ROC-AUC {metrics['roc_auc']}, "
        f"threshold chosen on val {val_threshold:.3f}; run saved in {run_dir}")
    return metrics


def library_versions() -> dict:
    versions = {"deepfake_detector": __version__, "torch": torch.__version__,
                "torchvision": torchvision.__version__, "numpy": np.__version__,
                "scikit-learn": sklearn.__version__, "python": platform.python_version()}
    return {name: str(v) for name, v in versions.items()}  # plain str: weights_only-loadable


def save_run(run_dir: Path, model, config: TrainConfig, weights_record: dict, history: list,
             best_epoch: int, counts: dict, train_seconds: float) -> None:
    """Checkpoint (loadable with weights_only=True), config, history, counts."""
    checkpoint = {
        "format_version": 1,
        "model_state": model.state_dict(),
        "class_to_idx": dict(CLASS_TO_IDX),
        "img_size": config.img_size,
        "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD),
        "threshold": 0.5,
        "weights": weights_record,
        "best_epoch": best_epoch,
        "best_val": history[best_epoch - 1],
        "versions": library_versions(),
    }
    torch.save(checkpoint, run_dir / "checkpoint.pt")
    write_json(run_dir / "config.json", {**asdict(config), "weights_record": weights_record,
                                         "versions": library_versions(),
                                         "train_seconds": train_seconds, "best_epoch": best_epoch})
    write_json(run_dir / "history.json", history)
    write_json(run_dir / "data_counts.json", counts)


def write_json(path: Path, obj) -> None:
    Path(path).write_text(json.dumps(obj, indent=2, default=str) + "\n", encoding="utf-8")
