"""Phase 2, for comparison: fine-tune layer4 of a trained run, and report both phases side by side.

Phase 1 (train.py) fits the head on a frozen backbone. Phase 2 starts from that converged head
and lets the last residual stage, layer4, adapt too, at a learning rate ten times lower than the
head's: the ImageNet features should bend towards the task, not be overwritten by a small data set.

What stays fixed, and why:
- conv1 .. layer3 keep their weights (requires_grad False), so their output for an image never
  changes. Without augmentation that output (layer3's) is computed once and layer4 + head train
  on it: the same numbers as the full forward pass, a fraction of the cost.
- Every BatchNorm layer stays in eval mode, layer4's included: it normalises with the running
  statistics it was trained with and never updates them. Batches of 32 from a small data set
  give noisy batch statistics, and letting the running averages drift towards them would change
  the features under the head at every step. BatchNorm's scale and shift in layer4 do learn:
  they are ordinary parameters of layer4.

The result is a new run directory (never an overwrite; default RUN-finetune-layer4) with the
layout train.py writes, so inference, evaluation, Grad-CAM and robustness work on it unchanged,
plus tables/phases.{md,csv,tex}: phase 1 and phase 2 on the same validation split, with phase 1's
linear probe (probe.py) beside them: the best a linear head does on the frozen features, which is
the bar fine-tuning has to clear. Its probe.json is copied over, so the report shows it too.
"""
from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from .progress import tqdm

from .data import make_loader, normalize_batch, pixel_transform, resolve_resize
from .determinism import deterministic
from .features import autocast_for, channels_last, exact_fp32
from .preprocessing import Preprocessing
from .report import write_report
from .tables import write_table
from .config import TrainConfig
from .image_path import fit_on_images, logits_on_images
from .folder_lock import holds_anything, locks_folders
from .loop import Fitted, epoch_orders, feature_batches, fit, run_epoch, seed_everything
from .manifest import mark_complete, read_run_manifest, recording
from .run_dir import (METRICS_VAL_JSON, PROBE_JSON, TABLES_DIR, RunExistsError, RunLog, load_run,
                      prepare_run_dir, read_run_config)
from .split_read import list_split
from .train import class_counts, conclude_run, positive_weight, random_init_banner

SUFFIX = "-finetune-layer4"
HEAD_LR_FACTOR = 10                        # the head learns 10x faster than layer4 by default
LAYER3_CACHE_MAX_BYTES = 2 * 1024 ** 3     # above this, stream images (layer3 outputs are big)


@dataclass
class FinetuneConfig(TrainConfig):
    """The phase-1 run's config, with phase 2's own settings; saved as config.json."""
    parent_run: str = ""                    # the phase-1 run this one continues
    head_lr: float = 0.0                    # Adam on fc; `lr` is layer4's
    trainable: tuple = ("layer4", "fc")
    cache_layer3: bool = True               # train on cached layer3 outputs when possible
    layer3_cached: bool = False             # whether it was possible (no augmentation, fits)
    trainable_parameters: int = 0


# ----------------------------------------------------------------------------- the model

def unfreeze_layer4(model: nn.Module) -> int:
    """layer4 and fc learn, everything before stays as it is; BatchNorm in eval mode (see the
    module docstring). Returns the number of trainable parameters."""
    for name, parameter in model.named_parameters():
        parameter.requires_grad = name.startswith(("layer4.", "fc."))
    model.eval()
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def up_to_layer3(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """The frozen part: (N, 3, H, W) images -> (N, 256, H/16, W/16) layer3 output."""
    x = model.maxpool(model.relu(model.bn1(model.conv1(images))))
    return model.layer3(model.layer2(model.layer1(x)))


def layer4_and_head(model: nn.Module) -> nn.Sequential:
    """The trained part as one module on layer3 outputs; it shares its layers with `model`."""
    return nn.Sequential(model.layer4, model.avgpool, nn.Flatten(1), model.fc)


class TrainedPart:
    """layer4 + fc in the shape loop.fit expects of its `head`: fit gives parameters() to Adam
    (here two parameter groups, each with its own learning rate) and keeps the best state_dict()
    for early stopping."""

    def __init__(self, model: nn.Module, lr: float, head_lr: float):
        self.model, self.lr, self.head_lr = model, lr, head_lr

    def parameters(self):
        return [{"params": list(self.model.layer4.parameters()), "lr": self.lr},
                {"params": list(self.model.fc.parameters()), "lr": self.head_lr}]

    def state_dict(self) -> dict:
        return {"layer4": self.model.layer4.state_dict(), "fc": self.model.fc.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.model.layer4.load_state_dict(state["layer4"])
        self.model.fc.load_state_dict(state["fc"])


class Layer4InPrecision(nn.Module):
    """layer4_and_head on layer3 outputs with layer4 in `precision` and the head in float32: what
    image_path.BackboneInPrecision computes on images in the plain loop, from layer3 on."""

    def __init__(self, model: nn.Module, device, precision: str = "fp32"):
        super().__init__()
        self.model, self.device, self.precision = model, torch.device(device), precision

    def forward(self, x):
        with autocast_for(self.device, self.precision):
            x = torch.flatten(self.model.avgpool(self.model.layer4(x)), 1)
        return self.model.fc(x.float())


def layer3_outputs(model, items, prep: Preprocessing, batch_size: int, device, num_workers,
                   desc: str) -> torch.Tensor:
    """layer3 outputs of `items`, in order, on the CPU (decoded to uint8 in workers, normalised
    per batch, as features.extract_features does with the same `prep`). no_grad rather than
    inference_mode: layer4 trains on these, and autograd refuses inference-mode tensors as saved
    inputs."""
    resize = resolve_resize(prep.resize, device)
    loader = make_loader(items, pixel_transform(prep.img_size, resize), batch_size,
                         num_workers=num_workers, device=device, decode_size=prep.decode_size)
    on_device = prep.img_size if resize == "device" else None
    outputs = None
    with torch.no_grad(), autocast_for(device, prep.precision):
        for images, _, indices in tqdm(loader, desc=desc, unit="batch", leave=False):
            batch = up_to_layer3(model, normalize_batch(images, prep.mean, prep.std, device,
                                                        on_device)).float().cpu()
            if outputs is None:
                outputs = torch.empty(len(items), *batch.shape[1:])
            outputs[indices] = batch
    return outputs


def layer3_bytes(model, img_size: int, n_images: int) -> int:
    with torch.no_grad():
        probe = up_to_layer3(model, torch.zeros(1, 3, img_size, img_size,
                                                device=next(model.parameters()).device))
    return probe.numel() * 4 * n_images


# ----------------------------------------------------------------------------- phase 2

def phase2_config(parent: Path, out: Path, **settings) -> FinetuneConfig:
    """The phase-1 config (same data, image size, seed, augmentation) with phase 2's settings."""
    recorded = read_run_config(parent)  # checked: a bad field is named, with the file
    recorded.setdefault("decode", "full")  # a run from before decode modes decoded in full
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    config = FinetuneConfig(**{k: v for k, v in recorded.items() if k in known})
    return dataclasses.replace(config, out_dir=str(out), parent_run=str(parent), overwrite=False,
                               cache_features=False, **settings)


@dataclass(frozen=True)
class Phase2Recipe:
    """Phase 2's own settings: layer4 at `lr`, the head at `head_lr` (default HEAD_LR_FACTOR x
    lr; a head that has converged needs only small corrections as layer4 moves, and the ratio
    stays the same whatever phase 1 used), Adam, at most `epochs`, early stopping after
    `patience` epochs without val-loss improvement; `batch_size` default the run's;
    `cache_layer3`: train on cached layer3 outputs when possible (the same result, faster)."""
    lr: float = 1e-5
    head_lr: float | None = None
    epochs: int = 10
    patience: int = 3
    batch_size: int | None = None
    cache_layer3: bool = True


def phase2_folder(run_dir, out_dir=None) -> Path:
    """Where phase 2 of `run_dir` goes: out_dir, by default run_dir + "-finetune-layer4"."""
    return Path(out_dir) if out_dir else Path(run_dir).with_name(Path(run_dir).name + SUFFIX)


@locks_folders(lambda a: (phase2_folder(a["run_dir"], a["out_dir"]),))  # one writer (folder_lock)
def finetune_layer4(run_dir, out_dir=None, recipe: Phase2Recipe = Phase2Recipe(),
                    device: str = "auto", num_workers: int | None = None,
                    log_to_console: bool = True) -> Path:
    """Phase 2 of `run_dir` as `recipe` says (Phase2Recipe): layer4 and the head, Adam, early
    stopping on the val loss with the best state restored. Returns the new run directory
    (default run_dir + "-finetune-layer4"; never overwritten)."""
    lr, head_lr, cache_layer3 = recipe.lr, recipe.head_lr, recipe.cache_layer3
    epochs, patience, batch_size = recipe.epochs, recipe.patience, recipe.batch_size
    parent = Path(run_dir)
    out = phase2_folder(run_dir, out_dir)
    manifest = read_run_manifest(out) if out.is_dir() else None
    unfinished = manifest is not None and manifest.get("complete") is False
    if out.exists() and (not out.is_dir() or holds_anything(out)) and not unfinished:
        raise RunExistsError(f"{out} already exists and is not empty; phase 2 never overwrites a "
                             "run. Choose another --out, or delete that folder yourself.")
    head_lr = HEAD_LR_FACTOR * lr if head_lr is None else head_lr
    # Phase 2 keeps its own short recipe: a constant rate (its patience is shorter than any
    # plateau schedule's), no standardisation (the head is phase 1's, on raw features), and no
    # probe of its own (its features move; phase 1's probe on the frozen ones is the reference).
    settings = dict(lr=lr, head_lr=head_lr, epochs=epochs, patience=patience,
                    cache_layer3=cache_layer3, device=device, num_workers=num_workers,
                    lr_plateau_patience=0, standardize=False, probe=False)
    if batch_size is not None:
        settings["batch_size"] = batch_size
    config = phase2_config(parent, out, **settings)

    model, checkpoint = load_run(parent, config.device)
    run_dir = prepare_run_dir(str(out), overwrite=False)
    with recording(run_dir), deterministic(config.deterministic):  # the phase-1 run's settings
        phase2_into(run_dir, parent, model, checkpoint, config, lr, head_lr, cache_layer3,
                    log_to_console)
    mark_complete(run_dir)
    return run_dir


def phase2_into(run_dir: Path, parent: Path, model, checkpoint: dict, config, lr: float,
                head_lr: float, cache_layer3: bool, log_to_console: bool) -> None:
    log = RunLog(run_dir, echo=log_to_console)
    generator = seed_everything(config.seed)
    if not checkpoint["weights"].get("pretrained", True):
        log(random_init_banner(checkpoint["weights"].get("note", "")))
    config.trainable_parameters = unfreeze_layer4(model)
    log(f"phase 2 of {parent}: layer4 at lr {lr:g}, head at lr {head_lr:g}; "
        f"{config.trainable_parameters:,} trainable parameters; BatchNorm statistics frozen")

    train_items = list_split(config.data_dir, "train")
    val_items = list_split(config.data_dir, "val")
    counts = class_counts(config.data_dir, train_items, val_items)
    pos_weight = positive_weight(counts)  # as in phase 1
    augmentation = config.augmentation if config.augment else None
    config.layer3_cached = bool(cache_layer3 and not augmentation and layer3_bytes(
        model, config.img_size, len(train_items) + len(val_items)) <= LAYER3_CACHE_MAX_BYTES)

    start = time.perf_counter()
    history, best_epoch, val_logits = fit_layer4(model, TrainedPart(model, lr, head_lr), config,
                                                 train_items, val_items, pos_weight, generator,
                                                 augmentation, log)
    train_seconds = time.perf_counter() - start
    log(f"phase 2 took {train_seconds:.1f} s ("
        + ("on cached layer3 outputs)" if config.layer3_cached else "full forward passes)"))

    parent_probe = parent / PROBE_JSON
    if parent_probe.is_file():
        probe = json.loads(parent_probe.read_text())
        (run_dir / PROBE_JSON).write_text(json.dumps({**probe, "from_run": str(parent)},
                                                     indent=2) + "\n")
    conclude_run(run_dir, model, config, checkpoint["weights"], counts,
                 Fitted(history, best_epoch, train_seconds), val_items,
                 torch.sigmoid(val_logits).numpy(), log)
    write_table(phase_rows(parent, run_dir, sum(p.numel() for p in model.fc.parameters())),
                run_dir / TABLES_DIR / "phases",
                caption="Phase 1 (head on a frozen backbone) and phase 2 (layer4 fine-tuned) on the "
                        "same validation split, which chose each phase's early-stopping epoch and "
                        "threshold: optimistic for both. Phase 2 starts from phase 1, so its time "
                        "adds to phase 1's.")
    write_report(run_dir)


def fit_on_layer3_outputs(model, part: TrainedPart, config: FinetuneConfig, train_items, val_items,
                          pos_weight: float, order_per_epoch, log):
    """fit_layer4's cached path: layer3 outputs computed once, layer4 + head trained on them."""
    device = next(model.parameters()).device
    common = dict(prep=Preprocessing.from_config(config), batch_size=64, device=device,
                  num_workers=config.num_workers)
    train_x = layer3_outputs(model, train_items, desc="train layer3", **common)
    val_x = layer3_outputs(model, val_items, desc="val layer3", **common)
    train_y = torch.tensor([y for _, y in train_items])
    val_y = torch.tensor([y for _, y in val_items])
    module = Layer4InPrecision(model, device, config.precision)  # = layer4_and_head in fp32

    def train_batches(epoch):
        return feature_batches(train_x, train_y, config.batch_size, order_per_epoch[epoch - 1])

    def val_batches():
        return feature_batches(val_x, val_y, config.batch_size)

    history, best_epoch = fit(module, part, train_batches, val_batches, config, pos_weight,
                              device, log)
    _, _, val_logits, _ = run_epoch(module, val_batches(), nn.BCEWithLogitsLoss(), None, device)
    return history, best_epoch, val_logits


def fit_layer4(model, part: TrainedPart, config: FinetuneConfig, train_items, val_items,
               pos_weight: float, generator, augmentation, log):
    """loop.fit on layer4 + head, fed cached layer3 outputs or whole images (augmented on the
    fly if phase 1 was). Returns (history, best epoch, val logits of the restored best state)."""
    device = next(model.parameters()).device
    order_per_epoch = epoch_orders(len(train_items), config.epochs, generator)
    if config.layer3_cached:
        # The same memory layout as the plain loop below: convolution kernels of another layout
        # round differently, and training amplifies that (0.6% in val loss after 3 epochs on AVX-512).
        # The same precision too, backward included (exact_fp32: no TF32 in fp32 on CUDA).
        with channels_last(model), exact_fp32(device, config.precision):
            return fit_on_layer3_outputs(model, part, config, train_items, val_items, pos_weight,
                                         order_per_epoch, log)
    history, best_epoch = fit_on_images(model, part, train_items, val_items, config, augmentation,
                                        order_per_epoch, pos_weight, device, log)
    return history, best_epoch, logits_on_images(model, val_items, config, device)


def phase_rows(phase1: Path, phase2: Path, phase1_parameters: int) -> list[dict]:
    """One row per phase from the two run directories' metrics_val.json and config.json."""
    rows = []
    for phase, run in (("1: head, frozen backbone", phase1), ("2: layer4 + head", phase2)):
        metrics = json.loads((run / METRICS_VAL_JSON).read_text())
        config = read_run_config(run)
        rows.append({
            "phase": phase, "run": run.name,
            "val accuracy": metrics["accuracy"],
            "val accuracy (val threshold)": metrics.get("accuracy_at_val_threshold"),
            "val ROC-AUC": metrics["roc_auc"], "val AP": metrics["average_precision"],
            "val EER": metrics["eer"],
            "best epoch": config.get("best_epoch"),
            "train seconds": config.get("train_seconds"),
            "trainable parameters": config.get("trainable_parameters", phase1_parameters),
        })
    probe_file = phase1 / PROBE_JSON
    if probe_file.is_file():  # the ceiling of phase 1's frozen features, on the same val split
        probe = json.loads(probe_file.read_text())
        metrics = probe["metrics"]["val"]
        rows.insert(1, {
            "phase": "1: linear probe, frozen backbone", "run": phase1.name,
            "val accuracy": metrics["accuracy"],
            "val accuracy (val threshold)": metrics.get("accuracy_at_val_threshold"),
            "val ROC-AUC": metrics["roc_auc"], "val AP": metrics["average_precision"],
            "val EER": metrics["eer"], "best epoch": None, "train seconds": probe.get("fit_seconds"),
            "trainable parameters": phase1_parameters,
        })
    return rows

