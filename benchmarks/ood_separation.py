"""Does the OOD score (deepfake_detector/ood.py) tell another domain from the training domain?
Measured both ways on the data at hand, and printed side by side:

  A. a run trained on the synthetic demo set, scoring CIFAKE images (cifake-dev) against its own
     val and test images;
  B. a run trained on ~1,000 cifake-dev images, scoring synthetic images against its own val and
     test images.

For each: the AUROC of the OOD score (the other domain against the run's own test images, and
against its val images), the share of the run's own val and test images flagged (target <= 5 %)
and of the train images it was fitted on (in-sample: see ood.py),
and the share of the other domain flagged by the score, by the size check, and by either.
Everything goes through predict's own path (inference.iter_predictions): the scores are the ones
a user gets.

With --speed-base, a checkout of the package before the OOD score (e.g. `git worktree add
/tmp/before 7cd6530`): predict's CPU time on 200 of the CIFAKE images with run A, before and
after, in alternating processes (one thread each, so that other jobs on the machine disturb it
least), the median of --speed-rounds calls in each.

    python benchmarks/ood_separation.py                      # --img-size 64, --weights none
    python benchmarks/ood_separation.py --n-other 500 --n-cifake-train 1000 --work /tmp/ood-bench
    python benchmarks/ood_separation.py --speed-base /tmp/before
"""
from __future__ import annotations

import argparse
import os
import random
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
from bench_common import CIFAKE_DEV, class_files, link  # also: the package, importable

from deepfake_detector.demo_data import generate_demo_data
from deepfake_detector.inference import iter_predictions
from deepfake_detector.split import split_dataset
from deepfake_detector.train import TrainConfig, train


def sample(folder: Path, n: int, seed: int, skip: set | None = None) -> list[Path]:
    """n // 2 images per class of folder/{real,fake}, drawn with `seed`, none of `skip`."""
    rng = random.Random(seed)
    chosen = []
    for files in class_files(folder).values():
        files = [f for f in files if f not in (skip or set())]
        chosen += rng.sample(files, n // 2)
    return chosen


def linked_raw(files: list[Path], raw: Path) -> Path:
    for path in files:
        (raw / path.parent.name).mkdir(parents=True, exist_ok=True)
        link(path, raw / path.parent.name / path.name)
    return raw


def trained(raw: Path, work: Path, args) -> tuple[Path, Path]:
    """(split folder, run) for `raw`: 70/20/10 split, --weights none, features cached."""
    with warnings.catch_warnings():  # CIFAKE has byte-identical images; split groups them
        warnings.simplefilter("ignore")
        split_dataset(raw, work / "data", val_fraction=0.2, test_fraction=0.1, seed=args.seed,
                      link_mode="hardlink")
        run = train(TrainConfig(data_dir=str(work / "data"), out_dir=str(work / "run"),
                                weights=args.weights, img_size=args.img_size, probe=False,
                                cache_dir=str(args.work / "cache"), seed=args.seed),
                    log_to_console=False)
    return work / "data", Path(run)


def scored(run: Path, paths) -> dict[str, np.ndarray]:
    rows = list(iter_predictions(run, [str(p) for p in paths]))
    return {key: np.array([row[key] for row in rows], dtype=float)
            for key in ("ood_score", "ood_flag", "size_flag", "unlike_training")}


def auroc(inside: np.ndarray, outside: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score
    return float(roc_auc_score(np.r_[np.zeros(len(inside)), np.ones(len(outside))],
                               np.r_[inside, outside]))


def direction(name: str, run: Path, data: Path, other: list[Path]) -> dict:
    start = time.perf_counter()
    val, test, far = scored(run, [data / "val"]), scored(run, [data / "test"]), scored(run, other)
    train = scored(run, [data / "train"])
    return {"direction": name,
            "images (own val / own test / other)": f"{len(val['ood_score'])} / "
                                                   f"{len(test['ood_score'])} / "
                                                   f"{len(far['ood_score'])}",
            "AUROC, other vs own test": auroc(test["ood_score"], far["ood_score"]),
            "AUROC, other vs own val": auroc(val["ood_score"], far["ood_score"]),
            "own val flagged (OOD score)": val["ood_flag"].mean(),
            "own test flagged (OOD score)": test["ood_flag"].mean(),
            "own test flagged (score or size)": test["unlike_training"].mean(),
            "own train flagged (OOD score)": train["ood_flag"].mean(),
            "other flagged (OOD score)": far["ood_flag"].mean(),
            "other flagged (size)": far["size_flag"].mean(),
            "other flagged (score or size)": far["unlike_training"].mean(),
            "scoring seconds": time.perf_counter() - start}


PREDICT_CPU_SECONDS = """
import sys, time, torch
torch.set_num_threads(1)
from deepfake_detector.inference import predict_to_file
run, folder, out, rounds = sys.argv[1:5]
predict_to_file(run, [folder], out)  # warm: file cache, kernels
seconds = []
for _ in range(int(rounds)):
    start = time.process_time()
    predict_to_file(run, [folder], out)
    seconds.append(time.process_time() - start)
print(sorted(seconds)[len(seconds) // 2])
"""


def predict_speed(base: Path, run: Path, images: list[Path], work: Path, rounds: int,
                  processes: int = 3) -> dict:
    """Median CPU seconds of predict (to CSV) on `images`, with the package of `base` and with
    this checkout's, in alternating processes; the median over them."""
    folder = work / "predict"
    folder.mkdir()
    for path in images:
        link(path, folder / f"{path.parent.name}-{path.name}")
    checkouts = {"before": Path(base).resolve(), "after": Path(__file__).resolve().parents[1]}
    seconds = {name: [] for name in checkouts}
    for _ in range(processes):
        for name, checkout in checkouts.items():
            env = {**os.environ, "PYTHONPATH": str(checkout)}
            out = subprocess.run([sys.executable, "-c", PREDICT_CPU_SECONDS, str(run), str(folder),
                                  str(work / f"{name}.csv"), str(rounds)], env=env, check=True,
                                 capture_output=True, text=True).stdout
            seconds[name].append(float(out.split()[-1]))
    before, after = (float(np.median(seconds[name])) for name in checkouts)
    return {"images": len(images), "before s": before, "after s": after,
            "after / before": after / before}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cifake", type=Path, default=CIFAKE_DEV, help="real/ and fake/ folders")
    parser.add_argument("--work", type=Path, default=Path("outputs/bench-ood"),
                        help="a new folder for the sets, splits and runs")
    parser.add_argument("--n-other", type=int, default=500, help="other-domain images scored")
    parser.add_argument("--n-cifake-train", type=int, default=1000,
                        help="cifake-dev images run B is split and trained on")
    parser.add_argument("--demo-per-class", type=int, default=300, help="synthetic images a class")
    parser.add_argument("--img-size", type=int, default=64)
    parser.add_argument("--weights", default="none")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--speed-base", type=Path, default=None,
                        help="a checkout of the package before the OOD score: time predict too")
    parser.add_argument("--speed-rounds", type=int, default=5)
    args = parser.parse_args()
    if args.work.exists() and any(args.work.iterdir()):
        raise SystemExit(f"{args.work} is not empty: give a new --work folder.")

    demo_raw = generate_demo_data(args.work / "demo-raw", n_per_class=args.demo_per_class,
                                  seed=args.seed)
    cifake_train = sample(args.cifake, args.n_cifake_train, args.seed)
    cifake_other = sample(args.cifake, args.n_other, args.seed + 1, skip=set(cifake_train))
    data_a, run_a = trained(demo_raw, args.work / "A-synthetic", args)
    data_b, run_b = trained(linked_raw(cifake_train, args.work / "cifake-raw"),
                            args.work / "B-cifake", args)
    demo_other = sample(demo_raw, args.n_other, args.seed + 1)  # B never saw the synthetic set
    rows = [direction("A: trained on synthetic, other = CIFAKE", run_a, data_a, cifake_other),
            direction("B: trained on CIFAKE, other = synthetic", run_b, data_b, demo_other)]
    print(f"\nOOD score separation (--weights {args.weights}, --img-size {args.img_size}; "
          f"runs in {args.work})\n")
    width = max(map(len, rows[0])) + 2
    for key in rows[0]:
        cells = [f"{row[key]:.3f}" if isinstance(row[key], float) else str(row[key])
                 for row in rows]
        print(f"{key:<{width}}" + "".join(f"{cell:>44}" for cell in cells))
    if args.speed_base:
        speed = predict_speed(args.speed_base, run_a, cifake_other[:200], args.work,
                              args.speed_rounds)
        print(f"\npredict, run A ({args.img_size} px), {speed['images']} CIFAKE images, CPU "
              f"seconds (1 thread, medians): before {speed['before s']:.3f}, after "
              f"{speed['after s']:.3f}, ratio {speed['after / before']:.3f}")


if __name__ == "__main__":
    main()
