"""The training loop, whatever it trains on: the epoch budget, the seeded batch orders, one epoch,
and `fit` (Adam, BCEWithLogitsLoss, the plateau schedule, early stopping with the best state
restored), then whether it converged. Both paths of train.py and finetune.py's phase 2 run it."""
from __future__ import annotations

import contextlib
import copy
import time
from dataclasses import dataclass

import numpy as np
import torch
from sklearn.metrics import roc_auc_score
from torch import nn

from .config import TrainConfig
from .progress import finish_early, tqdm

CACHED_EPOCHS, PLAIN_EPOCHS = 500, 50   # the epoch budget when `epochs` is None


def resolved_epochs(config: TrainConfig) -> int:
    """The epoch budget: an epoch on cached features costs milliseconds, one of the plain loop a
    full forward pass over every image, so each path has its own default."""
    if config.epochs is not None:
        return int(config.epochs)
    return CACHED_EPOCHS if config.cache_features else PLAIN_EPOCHS


class NotConvergedWarning(UserWarning):
    """The epoch budget, not early stopping, ended training."""


@dataclass
class Fitted:
    """The outcome of fitting: one dict per epoch (train/val loss and accuracy, val AUC, rate,
    seconds), the epoch whose weights were kept, and how long training took."""
    history: list
    best_epoch: int
    train_seconds: float


def seed_everything(seed: int) -> torch.Generator:
    torch.manual_seed(seed)
    np.random.seed(seed)
    return torch.Generator().manual_seed(seed)


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
                finish_early(progress, f"early stopping: no better val loss for "
                                       f"{config.patience} epochs", epoch)  # a success, not a red bar
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
