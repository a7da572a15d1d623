"""Does the head reach the linear-probe ceiling? The default recipe against the seed recipe.

    python benchmarks/head_vs_probe.py --data /work/handoff/cifake-split --img-size 224 \
        --cache-dir outputs/cache                 # the README's table (one extraction, then seconds)
    python benchmarks/head_vs_probe.py --data data/synthetic/split --img-size 160

`--data` is a split folder (train/ and val/, as `split` writes it). Each recipe is one `train()`
run with random-init weights (`--weights`, default none: no ImageNet weights here) on the same
cached features, so every row sees exactly the same features; the probe is the logistic regression
every run fits (probe.py). Prints one markdown table: per recipe, the epochs, whether early
stopping ended training, the training time (config.json `train_seconds`: the head's epochs, plus
the one feature extraction on a cold cache), and head and probe side by side on val.
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
import warnings
from pathlib import Path

RECIPES = {
    "default": {},
    "seed (Adam 1e-4, 50 epochs, patience 5, raw features)": dict(
        lr=1e-4, epochs=50, patience=5, lr_plateau_patience=0, standardize=False),
    "seed, run to convergence (the issue's --lr 3e-3 --epochs 500 --patience 20)": dict(
        lr=3e-3, epochs=500, patience=20, lr_plateau_patience=0, standardize=False),
    "default at --lr 1e-2": dict(lr=1e-2),
    "--lr find": dict(lr="find"),
}


def ci(metrics: dict, key: str) -> str:
    low_high = (metrics.get("ci") or {}).get(key)
    return f"{metrics[key]:.4f} [{low_high[0]:.3f}, {low_high[1]:.3f}]" if low_high else \
        f"{metrics[key]:.4f}"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="a split folder with train/ and val/")
    parser.add_argument("--img-size", type=int, default=224)
    parser.add_argument("--weights", default="none")
    parser.add_argument("--cache-dir", default="outputs/cache")
    parser.add_argument("--out", default=None, help="where the runs go (default: a temp folder)")
    parser.add_argument("--recipes", nargs="*", default=[*list(RECIPES)[:2], "--lr find"],
                        help="names from RECIPES (default: default, seed, --lr find)")
    parser.add_argument("--json", default=None, help="also write the rows here")
    args = parser.parse_args(argv)

    from deepfake_detector.train import TrainConfig, train
    out = Path(args.out or tempfile.mkdtemp(prefix="head_vs_probe-"))
    rows = []
    for index, name in enumerate(args.recipes):
        config = TrainConfig(data_dir=args.data, out_dir=str(out / f"recipe{index}"),
                             weights=args.weights, img_size=args.img_size,
                             cache_dir=args.cache_dir, **RECIPES[name])
        start = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # audit and convergence warnings: in the table
            run = Path(train(config, log_to_console=False))
        wall = time.perf_counter() - start
        recorded = json.loads((run / "config.json").read_text())
        metrics = json.loads((run / "metrics_val.json").read_text())
        probe = json.loads((run / "probe.json").read_text())
        probe_val = probe["metrics"]["val"]
        rows.append({
            "recipe": name, "lr": recorded["lr"], "best / run / budget epochs":
                f"{recorded['best_epoch']} / {recorded['epochs_run']} / {recorded['epochs']}",
            "converged": recorded["converged"], "train s": round(recorded["train_seconds"], 1),
            "run wall s": round(wall, 1),
            "head AUC [95% CI]": ci(metrics, "roc_auc"), "head acc": round(metrics["accuracy"], 4),
            "head log loss": round(metrics["log_loss"], 4),
            "probe AUC [95% CI]": ci(probe_val, "roc_auc"),
            "probe acc": round(probe_val["accuracy"], 4),
            "probe log loss": round(probe_val["log_loss"], 4),
            "head / probe AUC": round(metrics["roc_auc"] / probe_val["roc_auc"], 4),
            "probe C": probe["C"], "probe fit s": round(probe["fit_seconds"], 1),
        })
        print(f"done: {name} ({wall:.0f} s)", flush=True)
    columns = list(rows[0])
    print("| " + " | ".join(columns) + " |")
    print("|" + "---|" * len(columns))
    for row in rows:
        print("| " + " | ".join(str(row[c]) for c in columns) + " |")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
