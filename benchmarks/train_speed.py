"""Training speed: cached features against the plain loop, extraction against the raw forward pass.

    python benchmarks/train_speed.py                  # the issue's figures (about 40 min on 2 cores)
    python benchmarks/train_speed.py --quick          # a smoke run, about a minute
    python benchmarks/train_speed.py --device cuda --json outputs/bench-cuda.json
    python benchmarks/train_speed.py --profile        # also: where the extraction pass spends time
    python benchmarks/train_speed.py --sweep          # also: extraction vs batch size and workers
    python benchmarks/train_speed.py --data photos --n-images 400 --epochs 1 --skip-plain \
        --predict-images 400                          # megapixel JPEG photos (made from CIFAKE)

Every figure comes from this one run, on this one machine, over the same images: a balanced,
seeded subset of CIFAKE (real = CIFAR-10, fake = Stable Diffusion; Bird & Lotfi 2024,
Krizhevsky 2009), split 80/20 into a temporary folder by deepfake_detector.split.

    raw forward       ResNet-18's backbone on pre-made tensors (channels-last, inference mode, AMP on
                      CUDA, same batch size): the speed limit of any pass over images
    extraction        cached_features on the training images, cold cache: hashing the files, the
                      backbone fingerprint, decoding, resizing, the forward pass, writing the cache;
                      --extraction-rounds times, each beside the raw forward just before and after
                      it (this machine's speed drifts by up to 20% a minute): the median ratio
    training          train() end to end, N epochs, cached features (cold cache, extraction
                      included) against the plain loop (every image through the backbone every epoch)
    predict           predict_to_file over --predict-images files into a CSV (what `predict --out`
                      does), in a child process of its own so its peak resident memory is its own,
                      beside the raw forward just before and after it; its memory with its workers
                      (PSS) in a second, shorter child, as sampling it slows predict
    data path         extraction (cold cache) with the JPEGs decoded in full or at reduced size
                      (draft), each resized per image by PIL or per batch on the device, and predict
                      with the run's checkpoint set to each decode mode: images/s and the ratio to
                      the raw forward just before and after each, medians of alternating rounds

`--data photos`: instead of CIFAKE's 32 px files, megapixel JPEG photos made from them (each
CIFAKE image upscaled to 1280 x 1024 with bicubic, plus film grain and a soft vignette so that
the file is not a smooth upscale, saved at quality 90: 0.2-0.4 MB, like a camera's small JPEG).
Any folder holding real/ and fake/ can be passed with --data instead.
"""
from __future__ import annotations

import argparse
import contextlib
import cProfile
import io
import json
import os
import pstats
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from bench_common import (CIFAKE_DEV, PHOTO_SIZE, machine, make_photo_set,  # noqa: E402
                          make_predict_folder, make_split, raw_forward, synchronize)

QUICK = dict(n_images=200, img_size=112, epochs=3, predict_images=500, forward_images=128)


# --- the machine and the memory -------------------------------------------------------------

def peak_rss_mb() -> float:
    """This process's peak resident memory. VmHWM, where Linux has it: ru_maxrss would also count
    the parent's memory at the fork before exec (Linux carries it over), VmHWM starts afresh."""
    with contextlib.suppress(OSError):
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024


def pss_mb(pid: int | str = "self") -> float:
    """Proportional set size: shared pages split among the processes sharing them, so the sum
    over a process and its forked DataLoader workers is the memory they use together."""
    with open(f"/proc/{pid}/smaps_rollup") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("Pss:")) / 1024


class PeakPss:
    """Samples the PSS of this process plus its worker processes every `every` seconds."""

    def __init__(self, every: float = 0.1):
        import multiprocessing
        import threading
        self.peak, self.every, self.children = 0.0, every, multiprocessing.active_children
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.sample, daemon=True)

    def sample(self) -> None:
        while not self.stop.wait(self.every):
            with contextlib.suppress(OSError, StopIteration, ValueError):
                total = pss_mb() + sum(pss_mb(child.pid) for child in self.children())
                self.peak = max(self.peak, total)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join()


# --- the images -------------------------------------------------------------------------------

# --- the figures ------------------------------------------------------------------------------

def beside_raw_forward(tasks: dict, rounds: int, forward) -> dict:
    """Each task (round -> images/s) `rounds` times, with the raw forward measured before the first
    and after every task: each figure's ratio is to the mean of the raw forwards on either side of
    it. This machine's speed drifts by up to 20% from one minute to the next (CPU time with it),
    so one raw forward against one pass measured minutes apart says more about the drift than
    about the pass; the median over the rounds says about the pass."""
    forwards = [forward()]
    figures = {name: {"rates": [], "ratios": []} for name in tasks}
    for round_ in range(rounds):
        for name, task in tasks.items():
            rate = task(round_)
            forwards.append(forward())
            figures[name]["rates"].append(rate)
            figures[name]["ratios"].append(rate / ((forwards[-2] + forwards[-1]) / 2))
    for figure in figures.values():
        figure["rate"] = statistics.median(figure["rates"])
        figure["ratio"] = statistics.median(figure["ratios"])
    return {"tasks": figures, "forwards": forwards, "forward": statistics.median(forwards),
            "rounds": rounds}


def ratio_text(figure: dict) -> str:
    """'0.86x (0.81-0.90)': the median ratio over the rounds, and their range when more than one."""
    ratios = figure["ratios"]
    spread = f" ({min(ratios):.2f}-{max(ratios):.2f})" if len(ratios) > 1 else ""
    return f"{figure['ratio']:.2f}x{spread}"


def extraction(model, items, args, device, cache_dir: Path) -> float:
    """Images/s of cached_features on a cold cache, everything included, decoded as train()
    decodes by default (Preprocessing's defaults, TrainConfig's)."""
    from deepfake_detector.features import cached_features
    from deepfake_detector.preprocessing import Preprocessing
    start = time.perf_counter()
    cached_features(model, items, Preprocessing(args.img_size), cache_dir=cache_dir,
                    batch_size=args.batch_size, num_workers=args.num_workers,
                    log=lambda message: None)
    synchronize(device)
    return len(items) / (time.perf_counter() - start)


def train_once(data_dir: Path, out: Path, cache: bool, args, weights: str) -> dict:
    from deepfake_detector.train import TrainConfig, train
    config = TrainConfig(data_dir=str(data_dir), out_dir=str(out), weights=weights,
                         img_size=args.img_size, epochs=args.epochs, batch_size=args.train_batch_size,
                         patience=args.patience or args.epochs, seed=args.seed,
                         cache_features=cache, cache_dir=str(out.parent / f"cache-{out.name}"),
                         device=args.device, num_workers=args.num_workers)
    start = time.perf_counter()
    run_dir = train(config, log_to_console=False)
    wall = time.perf_counter() - start
    read = lambda name: json.loads((run_dir / name).read_text())  # noqa: E731
    return {"wall_s": wall, "train_s": read("config.json")["train_seconds"],
            "epochs_run": len(read("history.json")), "history": read("history.json"),
            "metrics": read("metrics_val.json"), "run_dir": str(run_dir)}


def predict_in_child(run_dir: str, folder: Path, args, pss: bool = False) -> dict:
    """predict_to_file in a fresh interpreter: its peak RSS is predict's own, not this process's.
    With `pss`, a thread samples the memory of predict and its workers every 0.1 s: on 2 cores
    that sampling slowed predict by up to a third (measured), so speed is timed without it."""
    command = [sys.executable, __file__, "--predict-child", run_dir, str(folder),
               "--batch-size", str(args.batch_size), "--device", args.device]
    if args.num_workers is not None:
        command += ["--num-workers", str(args.num_workers)]
    if pss:
        command += ["--predict-pss"]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"predict child failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def predict_child(run_dir: str, folder: str, batch_size: int, device: str, num_workers,
                  pss: bool = False) -> None:
    """What `predict --out predictions.csv` does: every image's row streamed into a CSV file."""
    from deepfake_detector.inference import predict_to_file
    out_file = Path(folder).parent / f"predictions-{Path(folder).name}.csv"
    sampler = PeakPss() if pss and Path("/proc/self/smaps_rollup").exists() \
        else contextlib.nullcontext()
    start = time.perf_counter()
    with sampler:
        n_images = predict_to_file(run_dir, [folder], out_file, batch_size=batch_size,
                                   device=device, num_workers=num_workers)
    seconds = time.perf_counter() - start
    print(json.dumps({"n_images": n_images, "seconds": seconds,
                      "images_per_s": n_images / seconds, "peak_rss_mb": peak_rss_mb(),
                      "peak_pss_with_workers_mb": getattr(sampler, "peak", None)}))


def data_path(model, items, run_dir: str, predict_folder: Path, args, device, work: Path) -> dict:
    """Extraction for each decode mode x resize place, and predict for each decode mode, in
    alternating rounds, each beside the raw forward measured just before and just after it."""
    import shutil
    from deepfake_detector.features import cached_features
    from deepfake_detector.preprocessing import Preprocessing
    runs = {}
    for decode in ("full", "draft"):  # the trained run, its checkpoint set to each decode mode
        runs[decode] = work / f"run-{decode}"
        shutil.copytree(run_dir, runs[decode])
        checkpoint = torch.load(runs[decode] / "checkpoint.pt", weights_only=True)
        checkpoint["decode"] = decode
        torch.save(checkpoint, runs[decode] / "checkpoint.pt")
    items = items[:args.data_path_images]

    def extract(decode, resize):
        def task(round_):
            prep = Preprocessing(args.img_size, decode=decode, resize=resize)
            start = time.perf_counter()
            cached_features(model, items, prep, batch_size=args.batch_size,
                            cache_dir=work / f"cache-dp-{round_}-{decode}-{resize}",
                            num_workers=args.num_workers, log=lambda message: None)
            synchronize(device)
            return len(items) / (time.perf_counter() - start)
        return task

    def predict(decode):
        return lambda round_: predict_in_child(str(runs[decode]), predict_folder, args)["images_per_s"]

    tasks = {f"extraction, {decode} decode, {resize} resize": extract(decode, resize)
             for decode in ("full", "draft") for resize in ("pil", "device")}
    tasks.update({f"predict, {decode} decode (resize auto)": predict(decode)
                  for decode in ("full", "draft")})
    # The raw forward over as many images as the extraction: the same time scale of drift.
    figures = beside_raw_forward(tasks, args.data_path_rounds, lambda: raw_forward(
        model, len(items), args.batch_size, args.img_size, device))
    for name, figure in figures["tasks"].items():
        print(f"data path, {name}: " + ", ".join(f"{rate:.1f}" for rate in figure["rates"])
              + f" img/s, ratio {ratio_text(figure)}", flush=True)
    return {"n_images": len(items), "predict_images": args.predict_images, **figures,
            "load": os.getloadavg()}


def data_path_report(d: dict, what: str) -> list[str]:
    lines = ["", f"data path: {d['n_images']} {what} (extraction; predict over "
             f"{d['predict_images']}), median of {d['rounds']} alternating rounds, each beside the "
             f"raw forward just before and after it; load {d['load'][0]:.2f} {d['load'][1]:.2f} "
             f"{d['load'][2]:.2f}",
             f"{'':40} {'images/s':>12}   {'ratio (range)':>16}   target",
             f"{'raw forward (backbone), images/s':40} {d['forward']:12.1f}"]
    for name, figure in d["tasks"].items():
        lines.append(f"{name:40} {figure['rate']:12.1f}   {ratio_text(figure):>16}   "
                     ">= 0.85x raw forward")
    return lines


# --- optional: a profile and a sweep ------------------------------------------------------------

PROFILE_GROUPS = {  # function name -> what it stands for, in the summary
    "backbone_features": "backbone forward (convolutions)",
    "__getitem__": "per image: read + decode + resize (ImageDataset)",
    "collate": "stacking a batch (default_collate)",
    "normalize_batch": "uint8 -> normalised float, per batch",
    "files_digest": "hashing the files (cache key)",
    "backbone_fingerprint": "hashing the weights (cache key)",
    "save": "writing the cache (torch.save)",
}


def profile_extraction(model, items, args, device, cache_dir: Path) -> dict:
    """cProfile over one cold cached_features pass with the decoding in this process (0 workers),
    so that every per-image cost shows; returns the summary and prints the top functions."""
    from deepfake_detector.features import cached_features
    from deepfake_detector.preprocessing import Preprocessing
    profiler = cProfile.Profile()
    profiler.enable()
    cached_features(model, items, Preprocessing(args.img_size, decode="full"), cache_dir=cache_dir,
                    batch_size=args.batch_size, num_workers=0, log=lambda message: None)
    synchronize(device)
    profiler.disable()
    stats = pstats.Stats(profiler)
    total = max(stats.total_tt, 1e-9)
    summary = {}
    for (_, _, name), (_, _, _, cumulative, _) in stats.stats.items():
        if name in PROFILE_GROUPS:
            group = PROFILE_GROUPS[name]
            summary[group] = max(summary.get(group, 0.0), cumulative)
    summary["total"] = total
    text = io.StringIO()
    pstats.Stats(profiler, stream=text).sort_stats("tottime").print_stats(15)
    print("\nProfile of one extraction pass (0 workers, cProfile, top 15 by own time):")
    lines = text.getvalue().splitlines()
    start = next((i for i, line in enumerate(lines) if "ncalls" in line), 0)
    print("\n".join(line for line in lines[start:] if line.strip()))
    print(f"\n{'where the time goes':52} {'seconds':>8} {'share':>6}")
    for group, seconds in sorted(summary.items(), key=lambda kv: -kv[1]):
        print(f"{group:52} {seconds:8.2f} {seconds / total:6.1%}")
    return summary


def cpu_seconds() -> float:
    """CPU time of this process and its finished children (DataLoader workers): on a busy machine
    a steadier measure of the work a setting costs than the wall clock."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def sweep(model, items, args, device) -> list[dict]:
    """Extraction (no cache) for each batch size and worker count, raw forward beside it."""
    from deepfake_detector.features import extract_features
    from deepfake_detector.preprocessing import Preprocessing
    results = []
    for batch_size in (32, 64, 128):
        forward = raw_forward(model, len(items), batch_size, args.img_size, device)
        for workers in (0, 1, 2):
            start, cpu = time.perf_counter(), cpu_seconds()
            extract_features(model, items, Preprocessing(args.img_size, decode="full"),
                             batch_size=batch_size, num_workers=workers)
            synchronize(device)
            seconds, cpu = time.perf_counter() - start, cpu_seconds() - cpu
            results.append({"batch_size": batch_size, "num_workers": workers,
                            "extraction_images_per_s": len(items) / seconds,
                            "cpu_ms_per_image": 1e3 * cpu / len(items),
                            "raw_forward_images_per_s": forward})
            print(f"sweep: batch {batch_size:4d}, workers {workers}: extraction "
                  f"{len(items) / seconds:7.1f} img/s ({1e3 * cpu / len(items):6.1f} CPU-ms/img), "
                  f"raw forward {forward:7.1f} img/s, ratio {len(items) / seconds / forward:.2f}",
                  flush=True)
    return results


# --- the report -------------------------------------------------------------------------------

def report(r: dict) -> str:
    m, a, c, p, q = r["machine"], r["args"], r["cached"], r["plain"], r["predict"]
    e, x = r["extraction"], r["extraction"]["tasks"]["extraction"]
    ps = r["predict_speed"]
    lines = [
        f"deepfake-detector train_speed  {m['date']}  {m['cpu']} ({m['cores']} cores, "
        f"{m['torch_threads']} torch threads)  {m.get('gpu', m['device'])}  torch {m['torch']}  "
        f"huge pages {m.get('huge_pages', 'unknown')}",
        f"{a['n_images']} {r['what']} ({r['n_train']} train / {r['n_val']} val) at "
        f"{a['img_size']} px, batch {a['batch_size']}, workers {r['num_workers']}, "
        f"weights {r['weights']}",
        "",
        f"{'':40} {'value':>12}   {'ratio (range)':>16}   target",
        f"{'raw forward (backbone), images/s':40} {e['forward']:12.1f}",
        f"{'extraction (cold cache), images/s':40} {x['rate']:12.1f}   {ratio_text(x):>16}   "
        f">= 0.85x raw forward (median of {e['rounds']}, each beside the raw forward around it)",
    ]
    if p is not None:
        lines += ["", f"{a['epochs']} epochs, end to end ({c['epochs_run']} run)"
                  f"{'':9} {'cached':>12}   {'plain':>8}   plain / cached",
                  f"{'  train() wall time, s':40} {c['wall_s']:12.1f}   {p['wall_s']:8.1f}   "
                  f"{p['wall_s'] / c['wall_s']:.2f}x (target >= 6x: 10 epochs, 4000 images, 224 px)",
                  f"{'  of which training, s':40} {c['train_s']:12.1f}   {p['train_s']:8.1f}   "
                  f"{p['train_s'] / c['train_s']:.2f}x"]
        for key in ("accuracy", "roc_auc"):
            lines.append(f"{'  val ' + key:40} {c['metrics'][key]:12.4f}   {p['metrics'][key]:8.4f}   "
                         f"|diff| {abs(c['metrics'][key] - p['metrics'][key]):.1e}")
        lines.append(f"{'  max |diff| over history and metrics':40} {r['max_metric_diff']:12.1e}"
                     f"{'':14}target <= 1e-3")
    else:
        lines += ["", f"{a['epochs']} epochs, cached: train() {c['wall_s']:.1f} s (plain loop skipped)"]
    lines += [
        "",
        f"{'raw forward, just before and after':40} "
        f"{' / '.join(f'{f:.1f}' for f in ps['forwards']):>12}",
        f"{'predict, images/s':40} {q['images_per_s']:12.1f}   "
        f"{ratio_text(ps['tasks']['predict']):>16}   >= 0.85x raw forward ({q['n_images']} images)",
        f"{'predict peak RSS, MB':40} {q['peak_rss_mb']:12.0f}{'':14}< 2048 MB",
        f"{'predict peak PSS with its workers, MB':40} "
        f"{fmt(r['predict_memory']['peak_pss_with_workers_mb'], '12.0f')}"
        f"{'':14}({r['predict_memory']['n_images']} images, sampled every 0.1 s)",
        f"{'this process peak RSS (training), MB':40} {r['peak_rss_mb']:12.0f}",
        f"{'benchmark wall time, s':40} {r['total_s']:12.0f}",
    ]
    if r.get("data_path"):
        lines += data_path_report(r["data_path"], r["what"])
    return "\n".join(lines)


def fmt(value, spec: str) -> str:
    return format(value, spec) if value is not None else "n/a".rjust(int(spec.split(".")[0]))


def max_metric_diff(cached: dict, plain: dict) -> float:
    """The largest difference between the two paths over every epoch's numbers and the final ones."""
    diffs = [abs(c[k] - p[k]) for c, p in zip(cached["history"], plain["history"])
             for k in ("train_loss", "val_loss", "val_acc", "val_auc") if c[k] is not None]
    diffs += [abs(cached["metrics"][k] - plain["metrics"][k])
              for k in ("accuracy", "roc_auc", "average_precision")]
    return max(diffs)


def resolve_weights(choice: str) -> str:
    """"auto": torchvision's ImageNet file where it is on disk already, random init otherwise
    (never a download: speed does not depend on the weights, only the val metrics do)."""
    if choice != "auto":
        return choice
    from deepfake_detector.model import IMAGENET_FILE, torch_checkpoint_dir
    return "imagenet" if (torch_checkpoint_dir() / IMAGENET_FILE).is_file() else "none"


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(CIFAKE_DEV),
                        help='a folder holding real/ and fake/ (default: ../shared/data/cifake-dev, or '
                             '$DEEPFAKE_DETECTOR_CIFAKE_DIR), '
                             'or "photos": megapixel JPEGs made from CIFAKE (see above)')
    parser.add_argument("--data-path-images", type=int, default=400,
                        help="images per data-path extraction (decode x resize); 0: skip it")
    parser.add_argument("--data-path-rounds", type=int, default=2)
    parser.add_argument("--extraction-rounds", type=int, default=3,
                        help="cold-cache extractions of the training images, each beside the raw "
                             "forward before and after it (the median is reported)")
    parser.add_argument("--n-images", type=int, default=4000, help="balanced subset, 80/20 split")
    parser.add_argument("--img-size", type=int, default=224)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--patience", type=int, default=None,
                        help="early stopping (default: = epochs, so all of them are timed)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, mps")
    parser.add_argument("--batch-size", type=int, default=64,
                        help="raw forward, extraction and predict (train() extracts with 64)")
    parser.add_argument("--train-batch-size", type=int, default=32, help="the head's batches")
    parser.add_argument("--num-workers", type=int, default=None, help="default: data.default_num_workers")
    parser.add_argument("--forward-images", type=int, default=512, help="images for the raw forward")
    parser.add_argument("--predict-images", type=int, default=20000)
    parser.add_argument("--weights", default="auto",
                        help='"imagenet", "none", a .pth path, or "auto" (ImageNet if on disk)')
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip-plain", action="store_true", help="leave out the (slow) plain loop")
    parser.add_argument("--profile", action="store_true", help="cProfile one extraction pass too")
    parser.add_argument("--sweep", action="store_true", help="extraction per batch size x workers")
    parser.add_argument("--quick", action="store_true",
                        help=f"smoke run: {', '.join(f'{k}={v}' for k, v in QUICK.items())}")
    parser.add_argument("--json", default=None, help="also write every figure to this JSON file")
    parser.add_argument("--predict-child", nargs=2, metavar=("RUN", "FOLDER"), help=argparse.SUPPRESS)
    parser.add_argument("--predict-pss", action="store_true", help=argparse.SUPPRESS)
    quick = parser.parse_known_args(argv)[0].quick
    if quick:  # smaller defaults; anything given on the command line still wins
        parser.set_defaults(**QUICK)
    return parser.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.predict_child:
        return predict_child(*args.predict_child, args.batch_size, args.device, args.num_workers,
                             args.predict_pss)
    from deepfake_detector.data import default_num_workers
    from deepfake_detector.model import build_model
    from deepfake_detector.split_read import list_split

    begin = time.perf_counter()
    device = torch.device(args.device)
    weights = resolve_weights(args.weights)
    result = {"machine": machine(device), "args": vars(args), "weights": weights,
              "num_workers": default_num_workers(device) if args.num_workers is None
              else args.num_workers}
    with tempfile.TemporaryDirectory(prefix="train_speed-") as temporary:
        work = Path(temporary)
        source = Path(args.data)
        result["what"] = "CIFAKE images" if source == CIFAKE_DEV else f"images of {source}"
        if args.data == "photos":
            n_photos = max(args.n_images, min(args.predict_images, 2000))
            source = make_photo_set(CIFAKE_DEV, n_photos, work / "photos", args.seed)
            result["what"] = (f"{PHOTO_SIZE[0]} x {PHOTO_SIZE[1]} JPEG photos (quality 90, made "
                              "from CIFAKE)")
            print(f"{n_photos} photos made in {source}", flush=True)
        data_dir = make_split(source, args.n_images, work, args.seed)
        # Made first, so that a problem with it shows in seconds, not after the long training runs.
        predict_folder = make_predict_folder(source, args.predict_images, work / "predict")
        # Predict streams: its memory does not grow with the number of images (tests hold it),
        # so a shorter run, with the memory sampler, gives its memory.
        memory_folder = make_predict_folder(source, min(args.predict_images, 1000),
                                            work / "predict-memory")
        train_items = list_split(data_dir, "train")
        result["n_train"], result["n_val"] = len(train_items), len(list_split(data_dir, "val"))
        model = build_model(weights, seed=args.seed)[0].to(device)
        print(f"{result['n_train']} + {result['n_val']} images split into {data_dir}", flush=True)

        forward = lambda: raw_forward(model, args.forward_images, args.batch_size,  # noqa: E731
                                      args.img_size, device)
        result["extraction"] = beside_raw_forward(
            {"extraction": lambda round_: extraction(model, train_items, args, device,
                                                     work / f"cache-extraction-{round_}")},
            args.extraction_rounds, forward)
        figure = result["extraction"]["tasks"]["extraction"]
        print(f"raw forward {', '.join(f'{f:.1f}' for f in result['extraction']['forwards'])} "
              f"img/s, extraction {', '.join(f'{r:.1f}' for r in figure['rates'])} img/s: "
              f"{ratio_text(figure)}", flush=True)
        if args.profile:
            result["profile"] = profile_extraction(model, train_items, args, device, work / "cache-profile")
        if args.sweep:
            result["sweep"] = sweep(model, train_items[:min(len(train_items), 512)], args, device)

        result["cached"] = train_once(data_dir, work / "cached", True, args, weights)
        print(f"cached: {result['cached']['wall_s']:.1f} s", flush=True)
        result["plain"] = None
        if not args.skip_plain:
            result["plain"] = train_once(data_dir, work / "plain", False, args, weights)
            result["max_metric_diff"] = max_metric_diff(result["cached"], result["plain"])
            print(f"plain: {result['plain']['wall_s']:.1f} s", flush=True)
        result["peak_rss_mb"] = peak_rss_mb()

        # Beside the raw forward just before and after it: the machine's speed drifts.
        result["predict"] = {}

        def predict(round_):
            result["predict"] = predict_in_child(result["cached"]["run_dir"], predict_folder, args)
            return result["predict"]["images_per_s"]
        result["predict_speed"] = beside_raw_forward({"predict": predict}, 1, forward)
        result["predict_memory"] = predict_in_child(result["cached"]["run_dir"], memory_folder,
                                                    args, pss=True)
        result["data_path"] = None
        if args.data_path_images:
            result["data_path"] = data_path(model, train_items, result["cached"]["run_dir"],
                                            predict_folder, args, device, work)
    result["total_s"] = time.perf_counter() - begin
    print("\n" + report(result))
    if args.json:
        for run in ("cached", "plain"):
            if result[run]:
                result[run].pop("run_dir")  # a temporary folder, gone by now
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=2, default=str) + "\n")
    return result


if __name__ == "__main__":
    main()
