"""torchrun on the CPU: predict and extract with 1 process against P processes, side by side.

    python benchmarks/torchrun_speed.py                       # 800 CIFAKE images, 224 px, 1 vs 2
    python benchmarks/torchrun_speed.py --quick               # a smoke run (96 images, 64 px)
    python benchmarks/torchrun_speed.py --n-images 2000 --processes 4 --device cuda   # on GPUs

Every launch runs the same command on the same files, alternately with 1 process and with P
(`torchrun --nproc_per_node=P`), each process on cores / P threads (all the cores in all). Two
figures per launch:

    parallel part   from the moment every process is ready (after a barrier) to the moment rank 0
                    has written the output: what torchrun speeds up
    end to end      the whole launch, interpreter start, imports and rendezvous included

Then the two outputs are compared: predictions file and feature cache tensors. The thread counts
differ between the two sides here (1 process x all cores, P x cores/P), so they may differ in the
last bits; the tests compare at equal threads per process, where they are byte-identical.

The images are a seeded subset of CIFAKE (Bird & Lotfi 2024, Krizhevsky 2009) from ../shared, linked
(never copied) into a temporary folder; the run predicted with is a tiny random-init one.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

from bench_common import CIFAKE_DEV, machine, make_predict_folder, make_split  # noqa: E402

QUICK = dict(n_images=96, img_size=64, repeats=1)


# --- what each launched process runs ---------------------------------------------------------

def worker(args) -> None:
    """One process of a launch (or the single process): join torchrun's group if there is one,
    wait for every rank, run the command's function, wait again; rank 0 prints the seconds."""
    import torch
    from deepfake_detector import distributed
    from deepfake_detector.inference import predict_to_file
    from deepfake_detector.train import TrainConfig, extract_split_features
    torch.set_num_threads(args.threads)
    device = distributed.start(args.device)
    distributed.barrier()
    start = time.perf_counter()
    if args.worker == "predict":
        predict_to_file(args.run, [args.images], args.out, args.batch_size, device)
    else:
        config = TrainConfig(data_dir=args.images, weights="none", img_size=args.img_size,
                             cache_dir=args.out, device=device)
        extract_split_features(config, ["train"], log=lambda message: None)
    distributed.barrier()
    seconds = time.perf_counter() - start
    if distributed.is_main():
        print(json.dumps({"seconds": seconds, "threads": torch.get_num_threads(),
                          "processes": distributed.world_size()}))
    distributed.stop()


# --- launching -----------------------------------------------------------------------------------

def launch(task: str, processes: int, threads: int, images: Path, out: Path, args) -> dict:
    """Run the worker for `task` in `processes` processes of `threads` threads; its figures."""
    options = ["--worker", task, "--images", str(images), "--out", str(out), "--run", args.run,
               "--threads", str(threads), "--img-size", str(args.img_size),
               "--batch-size", str(args.batch_size), "--device", args.device]
    script = str(Path(__file__).resolve())
    argv = [sys.executable, script, *options] if processes == 1 else \
        [sys.executable, "-m", "torch.distributed.run", "--standalone",
         f"--nproc_per_node={processes}", script, "--", *options]  # `--`: our --run is not torchrun's
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    start = time.perf_counter()
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=3600)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{task} with {processes} process(es) failed:\n{done.stderr[-3000:]}")
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    return {**figures, "wall": wall}


def same_outputs(task: str, one: Path, many: Path) -> str:
    import torch
    if task == "predict":
        a, b = (path.read_text().splitlines()[1:] for path in (one, many))
        worst = max(abs(float(x.split(",")[1]) - float(y.split(",")[1])) for x, y in zip(a, b))
        return "identical bytes" if one.read_bytes() == many.read_bytes() else \
            f"max |dP| {worst:.1e}"
    (a,), (b,) = ([torch.load(p, weights_only=True)["features"] for p in d.glob("*.pt")]
                  for d in (one, many))
    return "identical tensors" if torch.equal(a, b) else \
        f"max |d feature| {float((a - b).abs().max()):.1e}"


def tiny_run(data: Path, out: Path, img_size: int) -> str:
    from deepfake_detector.train import TrainConfig, train
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        train(TrainConfig(data_dir=str(data), out_dir=str(out), weights="none", img_size=img_size,
                          epochs=1, cache_dir="", probe=False), log_to_console=False)
    return str(out)


def report(rows: list[dict], args, load: tuple) -> str:
    lines = [f"torchrun speed: {args.n_images} CIFAKE images at {args.img_size} px, batch "
             f"{args.batch_size}, device {args.device}, {os.cpu_count()} cores; load average "
             f"{load[0]:.1f} before, {os.getloadavg()[0]:.1f} after",
             f"{'':22}{'processes x threads':>20}{'parallel s':>12}{'images/s':>10}"
             f"{'end to end s':>14}{'images/s':>10}"]
    for row in rows:
        lines.append(f"{row['task']:22}{row['layout']:>20}{row['seconds']:>12.2f}"
                     f"{row['n'] / row['seconds']:>10.1f}{row['wall']:>14.2f}"
                     f"{row['n'] / row['wall']:>10.1f}")
    for task in ("predict", "extract"):
        one, many = (min(r["seconds"] for r in rows if r["task"] == task and r["p"] == p)
                     for p in (1, args.processes))
        lines.append(f"{task}: {args.processes} processes / 1 process (parallel part, best of "
                     f"{args.repeats}): {one / many:.2f}x; outputs: {args.compared[task]}")
    return "\n".join(lines)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=str(CIFAKE_DEV), help="a folder with real/ and fake/")
    p.add_argument("--n-images", type=int, default=800)
    p.add_argument("--img-size", type=int, default=224)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--processes", type=int, default=2)
    p.add_argument("--repeats", type=int, default=2, help="launches per side, interleaved")
    p.add_argument("--device", default="cpu")
    p.add_argument("--quick", action="store_true")
    # the worker's own options (set by launch)
    p.add_argument("--worker", choices=["predict", "extract"], help=argparse.SUPPRESS)
    for name in ("--images", "--out", "--run"):
        p.add_argument(name, default="", help=argparse.SUPPRESS)
    p.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.quick:
        for key, value in QUICK.items():
            setattr(args, key, value)
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.worker:
        return worker(args)
    data = Path(args.data)
    if not (data / "real").is_dir():
        raise SystemExit(f"{data} has no real/ and fake/ folders: pass --data, a folder with both "
                         "(the CIFAKE sample is expected at ../shared/data/cifake-dev, or where "
                         "DEEPFAKE_DETECTOR_CIFAKE_DIR points).")
    load = os.getloadavg()
    cores = os.cpu_count() or 1
    with tempfile.TemporaryDirectory(prefix="torchrun-speed-") as work:
        work = Path(work)
        # extract: the train split of a split of n / 0.8 images, so that it holds n images
        split = make_split(data, int(round(args.n_images / 0.8 / 2)) * 2, work / "split", seed=0)
        images = make_predict_folder(data, args.n_images, work / "predict")
        small = make_split(data, 40, work / "small", seed=1)
        args.run = tiny_run(small, work / "run", args.img_size)
        n_train = len(list((split / "train").rglob("*.*")))
        rows, args.compared = [], {}
        for task, source, n in (("predict", images, args.n_images), ("extract", split, n_train)):
            outputs = {}
            for repeat in range(args.repeats):
                for p in (1, args.processes):  # interleaved: the machine's load hits both sides
                    threads = max(1, cores // p)
                    out = work / f"{task}-{p}-{repeat}" / ("p.csv" if task == "predict" else "")
                    out.parent.mkdir(parents=True, exist_ok=True)
                    figures = launch(task, p, threads, source, out, args)
                    rows.append({**figures, "task": task, "p": p, "n": n,
                                 "layout": f"{p} x {threads}"})
                    outputs[p] = out
                    print(f"  {task} {p} x {threads}: {figures['seconds']:.2f} s "
                          f"({n / figures['seconds']:.1f} images/s)", file=sys.stderr)
            args.compared[task] = same_outputs(task, outputs[1], outputs[args.processes])
        print(report(rows, args, load))
    print(json.dumps({"machine": machine(__import__("torch").device(args.device)),
                      "rows": rows}, default=str))


if __name__ == "__main__":
    main()
