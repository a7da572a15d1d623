"""A learning-rate finder for the head, after fastai's `lr_find` (L. Smith's range test).

From a copy of the untrained head, take one Adam step per batch of cached features while the
learning rate grows exponentially from `start_lr` to `end_lr`, and record the (smoothed) training
loss. Too small a rate and the loss hardly moves; too large and it blows up. The suggestion is the
rate at which the smoothed loss fell fastest: where a step does the most good. On cached features
the whole sweep is a few hundred steps of a 513-parameter layer: well under a second.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .config import TrainConfig
from .folder_lock import locks_folders
from .head import StandardizedHead, feature_statistics
from .preprocessing import Preprocessing

LR_FIND_START, LR_FIND_END, LR_FIND_STEPS = 1e-6, 10.0, 200
DIVERGED_FACTOR = 4.0        # stop when the smoothed loss exceeds 4 x its minimum (fastai's rule)
SMOOTHING = 0.95             # exponential moving average of the per-step loss


@dataclass
class LRFinderResult:
    lrs: list[float]
    losses: list[float]          # smoothed (bias-corrected EMA) training loss after each step
    raw_losses: list[float]
    suggestion: float            # steepest descent of the smoothed loss
    min_loss_lr: float           # the rate of the lowest smoothed loss (a rate to stay below)

    def record(self) -> dict:
        return {"suggestion": self.suggestion, "min_loss_lr": self.min_loss_lr,
                "rule": "steepest descent of the smoothed training loss",
                "lrs": self.lrs, "losses": self.losses}


def lr_find(head: nn.Module, features: torch.Tensor, labels: torch.Tensor, pos_weight: float = 1.0,
            batch_size: int = 32, start_lr: float = LR_FIND_START, end_lr: float = LR_FIND_END,
            n_steps: int = LR_FIND_STEPS, seed: int = 0, device="cpu") -> LRFinderResult:
    """The range test on `head` (left untouched: a copy is trained) over (N, D) `features`."""
    if not 0 < start_lr < end_lr:
        raise ValueError(f"need 0 < start_lr < end_lr, got {start_lr} and {end_lr}")
    module = copy.deepcopy(head).to(device).train()
    loss_fn = nn.BCEWithLogitsLoss(pos_weight=torch.tensor(pos_weight, device=device))
    optimizer = torch.optim.Adam(module.parameters(), lr=start_lr)
    generator = torch.Generator().manual_seed(seed)
    growth = (end_lr / start_lr) ** (1 / max(n_steps - 1, 1))
    order, position = torch.randperm(len(labels), generator=generator), 0
    lrs, losses, raw, average, best = [], [], [], 0.0, math.inf
    for step in range(n_steps):
        if position + batch_size > len(order):  # a fresh shuffle whenever the data runs out
            order, position = torch.randperm(len(labels), generator=generator), 0
        index = order[position:position + batch_size]
        position += batch_size
        lr = start_lr * growth ** step
        for group in optimizer.param_groups:
            group["lr"] = lr
        logits = module(features[index].to(device)).squeeze(1)
        loss = loss_fn(logits, labels[index].to(device).float())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        value = loss.item()
        average = SMOOTHING * average + (1 - SMOOTHING) * value
        smoothed = average / (1 - SMOOTHING ** (step + 1))
        lrs.append(lr), losses.append(smoothed), raw.append(value)
        best = min(best, smoothed)
        if not math.isfinite(smoothed) or (step > 10 and smoothed > DIVERGED_FACTOR * best):
            break
    return LRFinderResult(lrs=lrs, losses=losses, raw_losses=raw,
                          suggestion=steepest_lr(lrs, losses),
                          min_loss_lr=float(lrs[int(np.nanargmin(losses))]))


def steepest_lr(lrs, losses) -> float:
    """The rate where the smoothed loss falls fastest per decade of rate, looked for before the
    minimum of the loss (past it the loss is on its way up) and past the first steps (where the
    moving average is still warming up)."""
    lrs, losses = np.asarray(lrs, dtype=float), np.asarray(losses, dtype=float)
    end = int(np.nanargmin(losses)) + 1
    skip = min(10, max(end - 2, 0))
    if end - skip < 3:
        return float(lrs[max(end - 1, 0)] / 10)  # no descent to speak of: a tenth of the minimum
    slope = np.gradient(losses[skip:end], np.log10(lrs[skip:end]))
    return float(lrs[skip + int(np.argmin(slope))])


def plot_lr_find(result: LRFinderResult, title: str = "Learning-rate finder"):
    """Loss against learning rate (log axis), with the suggestion marked."""
    from .figures import plt
    figure, ax = plt.subplots(figsize=(5.5, 3.6))
    ax.plot(result.lrs, result.raw_losses, color="0.75", linewidth=0.8, label="loss per step")
    ax.plot(result.lrs, result.losses, color="#0072B2", label="smoothed")
    suggested = int(np.argmin(np.abs(np.log(result.lrs) - math.log(result.suggestion))))
    ax.scatter([result.suggestion], [result.losses[suggested]], color="#D55E00", zorder=3,
               label=f"suggested lr {result.suggestion:.2g}")
    ax.set_xscale("log")
    low, high = min(result.losses), max(result.losses[0], min(result.losses) * 1.5)
    ax.set_ylim(low - 0.05 * (high - low + 1e-9), high + 0.2 * (high - low + 1e-9))
    ax.set_xlabel("learning rate (Adam)")
    ax.set_ylabel("training loss (BCE)")
    ax.set_title(title)
    ax.legend(frameon=False)
    ax.spines[["top", "right"]].set_visible(False)
    figure.tight_layout()
    return figure


@locks_folders(lambda a: (a["out_dir"],))  # one writer per folder (folder_lock.py)
def lr_find_on_data(config: TrainConfig, out_dir, log=print) -> LRFinderResult:
    """`lr-find`: the range test on the train split of config.data_dir, as `train` with this
    config would start it (same weights and seed, same fresh head, same standardisation, same
    class weighting, at config.batch_size). Writes OUT/lr_find.json and OUT/lr_find.{png,pdf}.
    The features come from (and go to) the same cache as `train`'s, extracted with the same
    Preprocessing (Preprocessing.from_config), so the training run that follows does not
    extract them again."""
    from . import CLASS_TO_IDX
    from .features import Views, cached_features
    from .figures import plt, save_figure
    from .model import build_model, pick_device
    from .split_read import list_split
    from .files import check_output_folder, write_json
    from .run_dir import LR_FIND_JSON
    from .run_flags import flags_of_training

    data_dir, weights, seed = config.data_dir, config.weights, config.seed
    batch_size, standardize, img_size = config.batch_size, config.standardize, config.img_size
    # Everything that can fail checked before the sweep: the device, the preprocessing, the
    # outputs (the folder of the results, the feature cache).
    device = pick_device(config.device)
    prep = Preprocessing.from_config(config)
    check_output_folder(out_dir, "--out")
    if config.cache_dir:
        check_output_folder(config.cache_dir, "--cache-dir")
    items = list_split(data_dir, "train")
    labels = torch.tensor([y for _, y in items])
    n_fake = int(labels.sum())
    if n_fake in (0, len(labels)):
        raise ValueError(f"{data_dir}/train needs images of both classes {tuple(CLASS_TO_IDX)}")
    model, record = build_model(weights, seed=seed)
    model.to(device)
    if not record["pretrained"]:
        log(f"RANDOM INIT backbone: {record['note']}")
    features = cached_features(model, items, prep, config.cache_dir or None, Views(seed=seed),
                               num_workers=config.num_workers, desc="train features", log=log)
    head = StandardizedHead(model.fc, *feature_statistics(features)) if standardize else model.fc
    result = lr_find(head, features, labels, pos_weight=(len(labels) - n_fake) / n_fake,
                     batch_size=batch_size, seed=seed, device=device)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / LR_FIND_JSON, {**result.record(), "data_dir": str(data_dir),
                                    "weights": record, "img_size": img_size,
                                    "batch_size": batch_size, "standardize": standardize})
    # its flags (RANDOM INIT, SYNTHETIC DATA): those of the run these settings would train
    save_figure(plot_lr_find(result), out / "lr_find", flags=flags_of_training(record, data_dir))
    plt.close("all")
    return result
