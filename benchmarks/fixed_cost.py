"""The fixed cost of a run after training: metrics with bootstrap CIs, figures, tables, report, probe.

    python benchmarks/fixed_cost.py                       # 2,000 + 2,000 cifake-dev images
    python benchmarks/fixed_cost.py --data data/synthetic # any split folder

Trains one run on cached features (random init, 32 px: training is not what is measured here),
then times each part of what `train` does after the head is trained, with the functions train
calls, in one process. "before" is the bootstrap as it was (one replicate per Python loop,
rng.choice, scalar statistics) and the six figures drawn one after another in one process;
"after" the vectorised bootstrap and the figures drawn by figures.save_figures on as many
processes as it picks here (drawing_processes: one per core, at most six). The repeats alternate
between the two so that a busy machine slows both alike; the two bootstraps must give the same
intervals bit for bit.
Issue 12's target: metrics with bootstrap intervals, figures and report under 3 s for 4,000 images.
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

# The CIFAKE sample beside the checkout, or the folder DEEPFAKE_DETECTOR_CIFAKE_DIR names.
CIFAKE = Path(os.environ.get("DEEPFAKE_DETECTOR_CIFAKE_DIR")
              or Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "cifake-dev")


def old_bootstrap_ci(y_true, p_fake, threshold=0.5, n_bootstrap=1000, seed=0, level=None):
    """bootstrap_ci before issue 12, verbatim but for the names and its last lines (now
    metrics.percentile_intervals, unchanged): the "before" column."""
    from deepfake_detector import metrics as ev
    level = ev.CI_LEVEL if level is None else level
    y, p = ev.check_inputs(y_true, p_fake)
    rng = np.random.default_rng(seed)
    class_indices = [idx for idx in (np.flatnonzero(y == 0), np.flatnonzero(y == 1)) if idx.size]
    both = ev.has_both_classes(y)
    names = ("accuracy", "roc_auc", "average_precision") if both else ("accuracy",)
    samples = {name: np.empty(n_bootstrap) for name in names}
    for b in range(n_bootstrap):
        pick = np.concatenate([rng.choice(idx, size=idx.size) for idx in class_indices])
        y_b, p_b = y[pick], p[pick]
        samples["accuracy"][b] = np.mean(ev.predict_fake(p_b, threshold) == y_b)
        if both:
            samples["roc_auc"][b] = ev.rank_roc_auc(y_b, p_b)
            samples["average_precision"][b] = ev.stepwise_average_precision(y_b, p_b)
    return ev.percentile_intervals(samples, level)


def cifake_split(root: Path, n_per_class: int) -> Path:
    """n_per_class real + fake cifake-dev images (symbolic links, nothing copied), split 80/20."""
    from deepfake_detector.discovery import find_images
    from deepfake_detector.split import split_dataset
    for name in ("real", "fake"):
        (root / "raw" / name).mkdir(parents=True)
        for path in find_images(CIFAKE / name)[:n_per_class]:
            os.symlink(path.resolve(), root / "raw" / name / path.name)
    split_dataset(root / "raw", root / "data", seed=0, link_mode="copy")
    return root / "data"


def timed(function):
    start = time.perf_counter()
    result = function()
    return time.perf_counter() - start, result


def main(argv=None) -> dict:
    import matplotlib
    matplotlib.use("Agg")
    import torch

    from deepfake_detector import metrics as ev
    from deepfake_detector.metrics import choose_threshold, compute_metrics
    from deepfake_detector.predictions import write_predictions
    from deepfake_detector.report import write_report
    from deepfake_detector.tables import metrics_table_rows, write_table
    from deepfake_detector.features import cached_features
    from deepfake_detector.preprocessing import Preprocessing
    from deepfake_detector.figures import drawing_processes, save_figures
    from deepfake_detector.probe import fit_probe
    from deepfake_detector.split_read import list_split, split_groups
    from deepfake_detector.train import TrainConfig, train
    from deepfake_detector.validation_files import run_drawings

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=None, help="a split folder (default: cifake-dev sample)")
    parser.add_argument("--n-per-class", type=int, default=2000, help="of cifake-dev")
    parser.add_argument("--img-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3, help="timed calls of each (median)")
    parser.add_argument("--keep", default=None, help="keep the run in this folder")
    args = parser.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="fixed_cost-"))
    try:
        data = Path(args.data) if args.data else cifake_split(work, args.n_per_class)
        run = train(TrainConfig(data_dir=str(data), out_dir=str(work / "run"), weights="none",
                                img_size=args.img_size, cache_dir=str(work / "cache"),
                                num_workers=0), log_to_console=False)
        n_images = sum(sum(c.values()) for c in run.counts.values())
        labels, p = run.val_labels, run.val_probabilities
        groups = split_groups(data, run.val_items)
        threshold = choose_threshold(labels, p)
        figures = work / "figures"
        # The run's own features, from the feature cache it filled (no second extraction).
        from_cache = dict(prep=Preprocessing.from_config(run.config), cache_dir=work / "cache",
                          num_workers=0, log=lambda m: None)
        train_items = list_split(data, "train")
        train_x = cached_features(run.model, train_items, **from_cache).numpy()
        train_y = np.array([y for _, y in train_items])
        val_x = cached_features(run.model, run.val_items, **from_cache).numpy()

        processes = drawing_processes(6)
        parts = {name: [] for name in ("metrics (bootstrap CIs), before", "metrics (bootstrap CIs), after",
                                       "figures (6 x PNG + PDF), one process",
                                       f"figures (6 x PNG + PDF), {processes} processes",
                                       "predictions, tables, report",
                                       "probe fit (logistic regression, CV)",
                                       "probe metrics (bootstrap CIs), after")}
        for _ in range(args.repeats):
            with_old = lambda: compute_metrics(labels, p, val_threshold=threshold,  # noqa: E731
                                               groups=groups, seed=0)
            ev.bootstrap_ci, new = old_bootstrap_ci, ev.bootstrap_ci
            try:
                seconds, before = timed(with_old)
            finally:
                ev.bootstrap_ci = new
            parts["metrics (bootstrap CIs), before"].append(seconds)
            seconds, metrics = timed(with_old)
            parts["metrics (bootstrap CIs), after"].append(seconds)
            assert before == metrics, "the vectorised bootstrap moved a number"

            drawings = run_drawings(figures, run.history, run.best_epoch, labels, p, metrics)
            parts["figures (6 x PNG + PDF), one process"].append(
                timed(lambda: save_figures(drawings, processes=1))[0])
            parts[f"figures (6 x PNG + PDF), {processes} processes"].append(
                timed(lambda: save_figures(drawings))[0])

            def write():
                write_predictions([{"image_id": Path(path).name, "prediction": float(q),
                                    "label": int(y), "path": str(path)}
                                   for (path, y), q in zip(run.val_items, p)],
                                  work / "run" / "predictions_val.csv")
                write_table(metrics_table_rows(metrics), work / "run" / "tables" / "metrics_val")
                write_report(work / "run")
            parts["predictions, tables, report"].append(timed(write)[0])

            seconds, probe = timed(lambda: fit_probe(train_x, train_y, seed=0))
            parts["probe fit (logistic regression, CV)"].append(seconds)
            probe_p = probe.predict_proba(val_x)
            parts["probe metrics (bootstrap CIs), after"].append(timed(
                lambda: compute_metrics(labels, probe_p, val_threshold=choose_threshold(labels, probe_p),
                                        groups=groups, seed=0))[0])

        medians = {name: statistics.median(values) for name, values in parts.items()}
        fixed_before = (medians["metrics (bootstrap CIs), before"] * 2
                        + medians["figures (6 x PNG + PDF), one process"]
                        + medians["predictions, tables, report"])
        fixed_after = (medians["metrics (bootstrap CIs), after"]
                       + medians["probe metrics (bootstrap CIs), after"]
                       + medians[f"figures (6 x PNG + PDF), {processes} processes"]
                       + medians["predictions, tables, report"])
        load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
        print(f"fixed cost after training: {n_images} images ({len(labels)} val), "
              f"{torch.get_num_threads()} CPU threads, load {load:.2f}, median of {args.repeats}")
        print(f"{'part':<42}{'seconds':>9}")
        for name, seconds in medians.items():
            print(f"{name:<42}{seconds:>9.3f}")
        print(f"{'fixed cost (head + probe metrics, figures, report), before':<60}{fixed_before:>7.2f} s")
        print(f"{'fixed cost (head + probe metrics, figures, report), after':<60}{fixed_after:>7.2f} s")
        print(f"{'... plus the probe fit':<60}"
              f"{fixed_after + medians['probe fit (logistic regression, CV)']:>7.2f} s")
        if args.keep:
            shutil.copytree(work / "run", args.keep)
        return {"n_images": n_images, "seconds": medians, "fixed_before": fixed_before,
                "fixed_after": fixed_after}
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
