"""How much of a difference is the seed's? `train --seeds 0,1,2,3,4`: one head per seed on the same
cached features, at the cost of one extraction, and a summary that puts the seed spread of the
val (and test) AUC beside the bootstrap interval of one run.

The group is one folder: a complete run per seed (seed-0/, seed-1/, ..., each as `train` writes
it) and seeds.json / seeds.{md,csv,tex}. `compare` takes the folder as one entry (compare.py).

What the seed changes: with the backbone frozen, only the head's initial weights and the order
of the batches (and the augmented views with --augment); the features are the same for every
seed. It says nothing about the backbone's variance. With random-init weights (--weights none) the
backbone is built once, from the first seed, and shared: every seed's head learns on the same
features (a run retrained alone with --seed 3 and --weights none would get another backbone).
The linear probe does not depend on the head's seed: it is fitted once, in the first seed's run;
nor do the OOD score's statistics (a pass over a sample of the images, Gaussians of the
features): fitted once, by the first seed's run, and written into every seed's run.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from .config import MAX_SEED, TrainConfig
from .files import write_json
from .ood import one_fit_per_data
from .folder_lock import LOCK_FILE, folder_lock
from .run_dir import METRICS_TEST_JSON, run_dir_path

SEEDS_JSON = "seeds.json"
WHAT_THE_SEED_CHANGES = ("the seed changes only the head's initial weights and the order of the "
                         "batches (and the augmented views with --augment); the frozen backbone's "
                         "features are the same for every seed, so this spread is the head's, "
                         "not the backbone's")


def parse_seeds(text: str) -> list[int]:
    """argparse type for --seeds: "0,1,2,3,4" or "0-4" (or both: "0-2,7"), each seed once."""
    seeds = []
    for part in str(text).split(","):
        low, _, high = part.strip().partition("-")
        try:
            first, last = int(low), int(high or low)
        except ValueError:
            raise argparse.ArgumentTypeError(f'must be seeds separated by commas, such as '
                                             f'"0,1,2,3,4" or "0-4"; got {text!r}') from None
        if not 0 <= first <= last <= MAX_SEED:
            raise argparse.ArgumentTypeError(f"seeds are whole numbers from 0 to {MAX_SEED}, a "
                                             f"range low-high; got {part.strip()!r}")
        seeds += [s for s in range(first, last + 1) if s not in seeds]
    return seeds


def spread(values) -> dict | None:
    """mean, sd (n - 1), min and max of a list of numbers (None when there are none)."""
    values = np.array([v for v in values if v is not None], dtype=float)
    if not values.size:
        return None
    return {"mean": float(values.mean()), "sd": float(values.std(ddof=1)) if values.size > 1
            else 0.0, "min": float(values.min()), "max": float(values.max()), "n": int(values.size)}


def check_group_folder(group_dir: Path, overwrite: bool) -> None:
    """A new or empty folder, or (with --overwrite) one that holds a seed group: each member's
    train --overwrite then refuses on its own if a run holds files the project did not write."""
    if not group_dir.exists() or not any(p.name != LOCK_FILE for p in group_dir.iterdir()):
        return
    if overwrite and (group_dir / SEEDS_JSON).is_file():
        return
    raise FileExistsError(f"--out {group_dir} already holds files: choose a new folder for the "
                          "seed group" + ("" if overwrite else ", or pass --overwrite to replace "
                                                               "a seed group") + ".")


def test_metrics(run, config: TrainConfig, model) -> dict | None:
    """The run's metrics on its split's test images (when it has a test split), from the cached
    features: written as the run's metrics_test.json, as `evaluate` on its own test split does."""
    from .features import cached_features
    from .manifest import recording
    from .metrics import compute_metrics
    from .split_read import list_split, split_groups
    from .train import feature_options
    import torch
    if not (Path(config.data_dir) / "test").is_dir():
        return None
    items = list_split(config.data_dir, "test")
    features = cached_features(model, items, desc="test features",
                               **feature_options(config, run_log(run)))
    with torch.no_grad():
        p = torch.sigmoid(model.fc(features.to(next(model.parameters()).device)).squeeze(1))
    labels = np.array([y for _, y in items])
    metrics = compute_metrics(labels, p.float().cpu().numpy(), threshold=0.5,
                              val_threshold=run.val_threshold,
                              groups=split_groups(config.data_dir, items), seed=config.seed)
    metrics.update({"data": str(config.data_dir), "split": "test", "run": str(run.run_dir)})
    with recording(run.run_dir):
        write_json(run.run_dir / METRICS_TEST_JSON, metrics)
    return metrics


def run_log(run):
    """A log function that appends to the run's train.log without printing."""
    from .run_dir import RunLog
    return RunLog(run.run_dir, echo=False)


def member_record(run, seed: int, test: dict | None) -> dict:
    val = run.metrics
    return {"seed": seed, "run": f"seed-{seed}", "val_auc": val.get("roc_auc"),
            "val_auc_ci": (val.get("ci") or {}).get("roc_auc"), "val_accuracy": val.get("accuracy"),
            "test_auc": test and test.get("roc_auc"),
            "test_auc_ci": test and (test.get("ci") or {}).get("roc_auc"),
            "best_epoch": run.best_epoch, "converged": val.get("converged"),
            "train_seconds": run.train_seconds}


def train_seeds(config: TrainConfig, seeds: list[int], log=print) -> dict:
    """One run per seed into config.out_dir/seed-<s>, on one extraction; returns the summary
    (also written as seeds.json and the seeds table)."""
    from . import distributed
    from .model import build_model
    from .train import check_config, train
    if distributed.is_active():
        raise ValueError("train --seeds runs in one process: run it without torchrun (extract "
                         "the features under torchrun first if you like: the seeds read them).")
    if not seeds:
        raise ValueError("--seeds needs at least one seed, such as 0,1,2,3,4")
    check_config(config)
    group_dir = run_dir_path(config.out_dir)
    check_group_folder(group_dir, config.overwrite)
    start = time.perf_counter()
    model, weights_record = build_model(config.weights, seed=seeds[0])  # one backbone for all
    with tempfile.TemporaryDirectory(prefix="deepfake-seeds-") as scratch, \
            folder_lock(group_dir), one_fit_per_data():
        cache_dir = config.cache_dir or scratch  # no cache asked for: a scratch one, for the group
        members = []
        log(f"{len(seeds)} seeds on one extraction: {WHAT_THE_SEED_CHANGES}")
        for k, seed in enumerate(seeds):
            log(f"seed {seed} ({k + 1} of {len(seeds)}) into {group_dir / f'seed-{seed}'}")
            member = replace(config, seed=seed, out_dir=str(group_dir / f"seed-{seed}"),
                             cache_dir=cache_dir, probe=config.probe and k == 0)
            seed_start = time.perf_counter()
            model.fc = build_model("none", seed=seed)[0].fc  # the head `train --seed` would get
            run = train(member, log_to_console=True, model=model, weights_record=weights_record)
            members.append(member_record(run, seed, test_metrics(run, member, model)))
            members[-1]["seconds"] = time.perf_counter() - seed_start  # the first: + extraction
        summary = seeds_summary(replace(config, out_dir=str(group_dir)), seeds, members,
                                weights_record, time.perf_counter() - start)
        write_group(group_dir, summary)
    return summary


def seeds_summary(config: TrainConfig, seeds, members: list[dict], weights_record: dict,
                  seconds: float) -> dict:
    """seeds.json: each seed's run and numbers, their spread, and the bootstrap CI beside it."""
    val_widths = [m["val_auc_ci"][1] - m["val_auc_ci"][0] for m in members if m["val_auc_ci"]]
    val = spread(m["val_auc"] for m in members)
    test = spread(m["test_auc"] for m in members)
    mean_width = float(np.mean(val_widths)) if val_widths else None
    return {
        "seeds": list(seeds), "runs": members, "val_auc": val, "test_auc": test,
        "val_auc_ci_width_mean": mean_width,
        # a 95 % interval is about 3.92 standard errors wide: the sampling sd, for the seed sd
        "val_auc_sampling_sd": None if mean_width is None else mean_width / 3.92,
        "what_the_seed_changes": WHAT_THE_SEED_CHANGES,
        "backbone": ("random init, built once from seed "
                     f"{seeds[0]} and shared by every seed" if not weights_record["pretrained"]
                     else f"{weights_record['weights']}, the same for every seed"),
        "probe": f"fitted once, in seed-{seeds[0]}" if config.probe else "off",
        "feature_extraction": "once, shared by every seed",
        "data_dir": str(config.data_dir), "folder": str(config.out_dir), "wall_seconds": seconds,
        # the first seed's run extracts the features, as a run of one seed would: the cost of
        # all the seeds against that of one, measured in the same process and minutes
        "seconds_against_the_first_seed": seconds / members[0]["seconds"],
    }


def seed_table_rows(summary: dict) -> list[dict]:
    """One row per seed, then mean ± sd and range of val and test AUC."""
    rows = [{"seed": m["seed"], "val AUC": m["val_auc"], "val AUC 95% CI": m["val_auc_ci"],
             "test AUC": m["test_auc"], "test AUC 95% CI": m["test_auc_ci"],
             "best epoch": m["best_epoch"], "converged": m["converged"]} for m in summary["runs"]]
    for name, key in (("mean ± sd", None), ("range", "range")):
        row = {"seed": name}
        for split in ("val", "test"):
            s = summary[f"{split}_auc"]
            row[f"{split} AUC"] = None if s is None else (
                f"{s['mean']:.4f} ± {s['sd']:.4f}" if key is None else f"[{s['min']:.4f}, {s['max']:.4f}]")
        rows.append(row)
    return rows


def spread_sentence(summary: dict) -> str:
    """The seed spread beside one run's bootstrap interval, in words."""
    val, sampling = summary["val_auc"], summary["val_auc_sampling_sd"]
    if val is None or sampling is None or val["n"] < 2:
        return "one seed: no seed spread to report"
    larger = "larger" if val["sd"] > sampling else "smaller"
    return (f"val AUC over {val['n']} seeds: {val['mean']:.4f} ± {val['sd']:.4f} (range "
            f"{val['min']:.4f}-{val['max']:.4f}); the seed sd is {larger} than one run's sampling "
            f"sd ({sampling:.4f}, from its 95% bootstrap CI of width "
            f"{summary['val_auc_ci_width_mean']:.4f}). {WHAT_THE_SEED_CHANGES[0].upper()}"
            f"{WHAT_THE_SEED_CHANGES[1:]}.")


def write_group(group_dir: Path, summary: dict) -> None:
    from .tables import write_table
    summary["sentence"] = spread_sentence(summary)
    write_json(group_dir / SEEDS_JSON, summary)
    write_table(seed_table_rows(summary), group_dir / "seeds",
                caption=f"ROC-AUC per seed (one extraction, {len(summary['seeds'])} heads). "
                        + summary["sentence"])
