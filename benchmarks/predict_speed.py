"""What does the OOD score cost predict? predict's CPU time with and without its OOD work, side by
side from one run of this script, at 32 px and at 224 px on the CIFAKE sample (cifake-dev).

For each size, one run is trained (`--weights none`, --n-train CIFAKE images split 80/20: enough
val images for the per-layer statistics, ood.ENSEMBLE_MIN_VAL), then predict writes a CSV of
--n-predict other CIFAKE images, these ways, in alternating processes (one thread each, so that
other jobs on the machine disturb it least; the median of --rounds calls in each process, the
median over --processes processes):

  no OOD work   predict_to_file(..., ood_columns=False): no hooks, no sizes, no products, the
                rows a JSON file gets by default: the baseline;
  OOD columns   the CSV's default: the layers' statistics from forward hooks of the same pass,
                the ensemble score, the native size as the decode read it;
  --base        (optional) both again with the package of another checkout, e.g. the one before
                this change (/work/base22: the 512 features' score, each image's header read
                again for its size): what the rest of the two trees costs apart from the OOD
                work shows in the two "no OOD work" columns.

    python benchmarks/predict_speed.py                       # 32 and 224 px
    python benchmarks/predict_speed.py --base /work/base22 --sizes 32
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
from bench_common import CIFAKE_DEV, class_files, link, make_split  # also: the package, importable

from deepfake_detector.train import TrainConfig, train

CPU_SECONDS = """
import sys, time, torch
torch.set_num_threads(1)
from deepfake_detector.inference import predict_to_file
run, folder, out, rounds, ood = sys.argv[1:6]
ood = {"yes": True, "no": False, "default": None}[ood]
kwargs = {} if ood is None else {"ood_columns": ood}
predict_to_file(run, [folder], out, num_workers=0, **kwargs)  # warm: file cache, kernels
seconds = []
for _ in range(int(rounds)):
    start = time.process_time()
    predict_to_file(run, [folder], out, num_workers=0, **kwargs)
    seconds.append(time.process_time() - start)
print(sorted(seconds)[len(seconds) // 2])
"""


def trained_run(img_size: int, args) -> tuple[Path, set]:
    work = args.work / f"{img_size}px"
    data = make_split(args.cifake, args.n_train, work, args.seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        run = train(TrainConfig(data_dir=str(data), out_dir=str(work / "run"), weights="none",
                                img_size=img_size, probe=False, cache_dir="", seed=args.seed,
                                num_workers=0), log_to_console=False)
    return Path(run), {path.name for path in (work / "raw").rglob("*") if path.is_file()}


def predict_folder(args, skip: set) -> Path:
    folder = args.work / "predict"
    if folder.exists():
        return folder
    folder.mkdir(parents=True)
    rng = np.random.default_rng(args.seed + 1)
    for label, files in class_files(args.cifake).items():
        files = [f for f in files if f.name not in skip]
        for k in rng.choice(len(files), args.n_predict // 2, replace=False):
            link(files[k], folder / f"{label} {files[k].name}")
    return folder


def timed(variants: dict, run: Path, folder: Path, args) -> dict[str, float]:
    """{variant: median CPU seconds}, the variants' processes alternating."""
    seconds = {name: [] for name in variants}
    for _ in range(args.processes):
        for name, (checkout, ood) in variants.items():
            env = {**os.environ, "PYTHONPATH": str(checkout), "OMP_NUM_THREADS": "1"}
            out = subprocess.run([sys.executable, "-c", CPU_SECONDS, str(run), str(folder),
                                  str(args.work / f"{name}.csv"), str(args.rounds), ood],
                                 env=env, check=True, capture_output=True, text=True).stdout
            seconds[name].append(float(out.split()[-1]))
    return {name: float(np.median(values)) for name, values in seconds.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cifake", type=Path, default=CIFAKE_DEV, help="real/ and fake/ folders")
    parser.add_argument("--work", type=Path, default=Path("outputs/bench-predict-speed"),
                        help="a new folder for the splits, runs and predictions")
    parser.add_argument("--sizes", type=int, nargs="+", default=[32, 224], help="--img-size")
    parser.add_argument("--n-train", type=int, default=300, help="CIFAKE images per run (80/20)")
    parser.add_argument("--n-predict", type=int, default=200, help="CIFAKE images predicted")
    parser.add_argument("--rounds", type=int, default=5, help="predict calls timed per process")
    parser.add_argument("--processes", type=int, default=3, help="processes per variant")
    parser.add_argument("--base", type=Path, default=None,
                        help="another checkout whose package's predict is timed too")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.work.exists() and any(args.work.iterdir()):
        raise SystemExit(f"{args.work} is not empty: give a new --work folder.")
    here = Path(__file__).resolve().parents[1]
    variants = {"no OOD work": (here, "no"), "OOD columns": (here, "yes")}
    if args.base:
        variants["--base, no OOD work"] = (args.base.resolve(), "no")
        variants["--base, OOD columns"] = (args.base.resolve(), "default")
    rows = []
    for size in args.sizes:
        run, used = trained_run(size, args)
        folder = predict_folder(args, used)
        rows.append((size, timed(variants, run, folder, args)))
    print(f"\npredict to CSV, {args.n_predict} CIFAKE images, CPU seconds (1 thread; medians of "
          f"{args.rounds} calls x {args.processes} alternating processes)\n")
    print(f"{'img size':<10}" + "".join(f"{name:>22}" for name in variants) + f"{'OOD / none':>12}"
          + (f"{'OOD / --base OOD':>18}" if args.base else ""))
    for size, seconds in rows:
        ratio = seconds["OOD columns"] / seconds["no OOD work"]
        base = seconds["OOD columns"] / seconds["--base, OOD columns"] if args.base else None
        print(f"{size:<10}" + "".join(f"{seconds[name]:>22.3f}" for name in variants)
              + f"{ratio:>12.3f}" + (f"{base:>18.3f}" if base else ""))


if __name__ == "__main__":
    main()
