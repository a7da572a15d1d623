"""Does reduced-size JPEG decoding move accuracy? The same head trained twice on megapixel JPEGs,
once with `decode="draft"` (large JPEGs decoded at 1/2, 1/4 or 1/8 scale before the resize, the
default of new runs) and once with `decode="full"`, everything else equal; the val ROC-AUCs and
their 95% bootstrap CIs side by side, per data set.

    python benchmarks/reduced_decode_accuracy.py                       # 1,000 + 1,000 per set
    python benchmarks/reduced_decode_accuracy.py --n-per-class 500 --img-size 224
    python benchmarks/reduced_decode_accuracy.py --sets synthetic --out outputs/decode-accuracy

Data sets, both saved as 1280 x 1024 JPEG photos at quality 90 (benchmarks/train_speed.py's
`photo_from`: bicubic upscale, film grain, a soft vignette):
    cifake      a balanced, seeded subset of ../shared/data/cifake-dev (CIFAKE: Bird & Lotfi 2024,
                Krizhevsky 2009); never copied into the repository
    synthetic   the project's synthetic set (deepfake_detector.demo_data), 160 px, upscaled

Both runs use random init (`weights none`: no ImageNet weights here), the default recipe, the
same seed and the same split; only the decoding differs. Verdict per set: the two AUCs are each
inside the other's CI ("within its CI"), or not.
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
import warnings
from pathlib import Path


from bench_common import CIFAKE_DEV, PHOTO_SIZE, make_photo_set  # noqa: E402


def synthetic_photos(n_per_class: int, work: Path, seed: int) -> Path:
    """The synthetic set at its own size, then saved as megapixel JPEG photos."""
    from deepfake_detector.demo_data import generate_demo_data
    small = generate_demo_data(work / "synthetic-small", n_per_class=n_per_class, seed=seed)
    return make_photo_set(small, 2 * n_per_class, work / "synthetic-photos", seed)


def train_both(data_dir: Path, work: Path, args) -> dict:
    from deepfake_detector.train import TrainConfig, train
    results = {}
    for decode in ("full", "draft"):
        config = TrainConfig(data_dir=str(data_dir), out_dir=str(work / f"run-{decode}"),
                             weights="none", img_size=args.img_size, seed=args.seed,
                             cache_dir="", probe=False, decode=decode,
                             num_workers=args.num_workers)
        start = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # audit and convergence notes: in the run's log
            run = train(config, log_to_console=False)
        metrics = run.metrics
        results[decode] = {"roc_auc": metrics["roc_auc"], "ci": metrics["ci"]["roc_auc"],
                           "accuracy": metrics["accuracy"], "n_val": metrics["n_images"],
                           "best_epoch": run.best_epoch, "seconds": time.perf_counter() - start}
        print(f"  {decode:5} decode: val ROC-AUC {metrics['roc_auc']:.4f} "
              f"[{metrics['ci']['roc_auc'][0]:.4f}, {metrics['ci']['roc_auc'][1]:.4f}], "
              f"accuracy {metrics['accuracy']:.4f}, {results[decode]['seconds']:.0f} s", flush=True)
    full, draft = results["full"], results["draft"]
    results["within_ci"] = (full["ci"][0] <= draft["roc_auc"] <= full["ci"][1]
                            and draft["ci"][0] <= full["roc_auc"] <= draft["ci"][1])
    results["auc_difference"] = draft["roc_auc"] - full["roc_auc"]
    return results


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sets", nargs="+", default=["cifake", "synthetic"],
                        choices=["cifake", "synthetic"])
    parser.add_argument("--n-per-class", type=int, default=1000)
    parser.add_argument("--img-size", type=int, default=224)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--num-workers", type=int, default=None)
    parser.add_argument("--json", default=None, help="also write the figures to this JSON file")
    args = parser.parse_args(argv)
    from deepfake_detector.split import split_dataset
    begin, results = time.perf_counter(), {"args": vars(args), "load_before": os.getloadavg()}
    with tempfile.TemporaryDirectory(prefix="decode-accuracy-") as temporary:
        work = Path(temporary)
        for name in args.sets:
            start = time.perf_counter()
            if name == "cifake":
                raw = make_photo_set(CIFAKE_DEV, 2 * args.n_per_class, work / "cifake-photos",
                                     args.seed)
            else:
                raw = synthetic_photos(args.n_per_class, work, args.seed)
            with warnings.catch_warnings():  # CIFAKE has byte-identical images; split groups them
                warnings.simplefilter("ignore")
                split_dataset(raw, work / f"{name}-data", val_fraction=0.2, seed=args.seed)
            print(f"{name}: {2 * args.n_per_class} photos of {PHOTO_SIZE[0]} x {PHOTO_SIZE[1]} "
                  f"made and split in {time.perf_counter() - start:.0f} s", flush=True)
            results[name] = train_both(work / f"{name}-data", work / name, args)
    results["load_after"], results["total_s"] = os.getloadavg(), time.perf_counter() - begin
    print(f"\nval ROC-AUC with 95% bootstrap CI, weights none, {args.img_size} px, "
          f"{args.n_per_class} + {args.n_per_class} images per set (80/20 split)")
    print(f"{'set':10} {'full decode':>26} {'draft decode':>26} {'draft - full':>13}  verdict")
    for name in args.sets:
        r = results[name]
        cell = lambda x: f"{x['roc_auc']:.4f} [{x['ci'][0]:.4f}, {x['ci'][1]:.4f}]"  # noqa: E731
        print(f"{name:10} {cell(r['full']):>26} {cell(r['draft']):>26} "
              f"{r['auc_difference']:+13.4f}  "
              + ("within each other's CI" if r["within_ci"] else "OUTSIDE the CI"))
    print(f"load {results['load_before']} -> {results['load_after']}; {results['total_s']:.0f} s")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return results


if __name__ == "__main__":
    main()
