"""Is B better than A, and what does a seed cost? (issue 25) On the CIFAKE dev sample:

1. a split (80/10/10) and two runs, 32 px (CIFAKE's own size) against 64 px (random init: no
   ImageNet weights here);
2. `train --seeds 0,1,2,3,4` at 64 px and at 224 px, each from a cold cache: the wall time of
   the five seeds against that of the first seed's run, which does all a one-seed run does
   (target <= 1.5x at 224 px: one extraction, five heads);
3. `compare` of the 32 px run, the 64 px run and the 64 px seed group on the test split: the
   tables and the ROC-overlay figure, and the paired bootstrap interval of ΔAUC beside DeLong's;
4. `compare`'s core on 10,000 images x 5 synthetic runs, bootstrap (1,000 resamples), tables and
   figure included (target < 30 s on 2 cores).

    python benchmarks/compare_runs.py --work /tmp/compare-bench            # all of it
    python benchmarks/compare_runs.py --work /tmp/compare-bench --readme   # and README's section

Each step keeps its outputs in --work and is skipped when they are there, so an interrupted run
resumes; the timings are kept in --work/timings.json. The results go to
benchmarks/results/compare_runs.md (and, with --readme, between README.md's compare_runs markers),
the figure to docs/compare_roc_overlay.png.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

from bench_common import CIFAKE_DEV, machine  # also makes the checkout importable

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-m", "deepfake_detector"]
BEGIN, END = "<!-- compare_runs:begin -->", "<!-- compare_runs:end -->"


def child_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def timed(work: Path, name: str, command: list[str]) -> dict:
    """Run a command of the CLI once (skipped when its times are recorded): {wall, cpu} seconds
    (CPU: user + system of the command, what a shared machine's other jobs change least)."""
    timings_path = work / "timings.json"
    timings = json.loads(timings_path.read_text()) if timings_path.is_file() else {}
    if name not in timings:
        print("$", " ".join(command[2:]), flush=True)
        start, cpu = time.perf_counter(), child_cpu()
        subprocess.run(command, check=True, cwd=ROOT)
        timings[name] = {"wall": time.perf_counter() - start, "cpu": child_cpu() - cpu,
                         "load_after": os.getloadavg()[0]}
        timings_path.write_text(json.dumps(timings, indent=2))
    return timings[name]


def train_runs(work: Path, split: Path) -> dict:
    common = ["--data", str(split), "--weights", "none", "--num-workers", "0"]
    seconds = {}
    seconds["one seed"] = timed(work, "train 64 px, one seed", CLI + [
        "train", *common, "--img-size", "64", "--out", str(work / "runs" / "px64"),
        "--cache-dir", str(work / "cache64-one")])
    seconds["five seeds"] = timed(work, "train 64 px, seeds 0-4", CLI + [
        "train", *common, "--img-size", "64", "--seeds", "0,1,2,3,4",
        "--out", str(work / "runs" / "px64-seeds"), "--cache-dir", str(work / "cache64-five")])
    seconds["32 px"] = timed(work, "train 32 px", CLI + ["train", *common, "--img-size", "32",
                                                          "--out", str(work / "runs" / "px32"),
                                                          "--cache-dir", str(work / "cache32")])
    seconds["five seeds, 224 px"] = timed(work, "train 224 px, seeds 0-4", CLI + [
        "train", *common, "--img-size", "224", "--seeds", "0,1,2,3,4",
        "--out", str(work / "runs" / "px224-seeds"), "--cache-dir", str(work / "cache224-five")])
    return seconds


def compare_cifake(work: Path, split: Path) -> dict:
    out = work / "compare"
    runs = [work / "runs" / "px32", work / "runs" / "px64", work / "runs" / "px64-seeds"]
    seconds = timed(work, "compare 3 entries", CLI + ["compare", *map(str, runs), "--data",
                                                      str(split), "--split", "test", "--out",
                                                      str(out)])
    result = json.loads((out / "compare.json").read_text())
    result["seconds"] = seconds["wall"]
    # The large-sample check of the intervals: the 8,000 train images (features from the caches),
    # 2,000 resamples so that the bootstrap's own Monte Carlo noise stays small.
    timed(work, "compare on train", CLI + ["compare", *map(str, runs[:2]), "--data", str(split),
                                          "--split", "train", "--n-bootstrap", "2000",
                                          "--out", str(work / "compare-train")])
    train = json.loads((work / "compare-train" / "compare.json").read_text())
    result["pair_train"] = train["pairs"][0]
    result["group"] = json.loads((runs[2] / "seeds.json").read_text())
    result["group_224"] = json.loads((work / "runs" / "px224-seeds" / "seeds.json").read_text())
    return result


def synthetic_speed(work: Path, n_images: int = 10_000, n_runs: int = 5) -> dict:
    """compare's core on synthetic scores: numbers, tables and figure, as compare_runs does."""
    from deepfake_detector.compare import Entry, compare_entries, pair_rows, run_rows
    from deepfake_detector.compare_files import write_comparison
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, n_images)
    signal = [0.6, 0.8, 0.9, 1.0, 1.2]
    entries = [Entry(f"run{k}", 1 / (1 + np.exp(-(rng.normal(size=n_images) + signal[k] * (2 * y - 1)))),
                     0.5) for k in range(n_runs)]
    items = [(Path(f"image{i}.png"), int(label)) for i, label in enumerate(y)]
    out = work / "synthetic-speed"
    shutil.rmtree(out, ignore_errors=True)
    start, cpu = time.perf_counter(), time.process_time()
    result = compare_entries(y, entries, n_bootstrap=1000, seed=0)
    numbers, numbers_cpu = time.perf_counter() - start, time.process_time() - cpu
    result.update({"data": "synthetic", "split": "all", "notes": [],
                   "settings_that_differ": {}})
    write_comparison(out, items, entries, result, 1000, 0)
    total, total_cpu = time.perf_counter() - start, time.process_time() - cpu
    assert run_rows(result, {}) and pair_rows(result)
    return {"n_images": n_images, "n_runs": n_runs, "pairs": len(result["pairs"]),
            "numbers_seconds": numbers, "total_seconds": total, "numbers_cpu_seconds": numbers_cpu,
            "total_cpu_seconds": total_cpu, "load_after": os.getloadavg()[0]}


def results_markdown(train_seconds: dict, result: dict, speed: dict, figure: str) -> str:
    runs = {run["run"].split("/")[-1]: run for run in result["runs"]}
    five = train_seconds["five seeds"]
    group, pair, seeds = runs.get("px64-seeds", {}), result["pair"], result["group"]
    g224 = result["group_224"]
    passes = backbone_seconds(Path(result["paths"][2]) / f"seed-{seeds['seeds'][0]}" / "train.log")
    lines = [
        f"Measured {time.strftime('%Y-%m-%d')} with `python benchmarks/compare_runs.py` on "
        f"{machine(torch.device('cpu'))['cpu']}, 2 cores shared with other jobs (load average "
        f"about {five['load_after']:.0f}: wall seconds are inflated). CIFAKE dev sample, 8,000 train / 1,000 val / 1,000 test, random-init backbone "
        "(no ImageNet weights on this machine), compared on the 1,000 test images.", "",
        result["tables"]["runs"], "", result["tables"]["pairs"], "",
        f"![ROC curves of the compared runs, with 95% bootstrap bands]({figure})", "",
        f"- **Paired bootstrap against DeLong** ({pair['a']} − {pair['b']}, single runs): on the "
        f"1,000 test images, {intervals(pair, 1000)}. DeLong p {pair['delong_p']:.2g}, McNemar p "
        f"{pair['mcnemar_p']:.2g}. On the 8,000 train images (the large-sample case; training "
        f"images, so for the intervals only; 2,000 resamples), {intervals(result['pair_train'], 2000)}.",
        f"- **Seeds, 224 px**: `train --seeds 0,1,2,3,4 --img-size 224`, cold feature cache: all "
        f"five seeds took **{g224['seconds_against_the_first_seed']:.2f}x** the wall time of the "
        f"first seed's run ({g224['wall_seconds']:.0f} s against {g224['runs'][0]['seconds']:.0f} s; "
        "the first seed extracts the features, fits the probe and the OOD statistics exactly as a "
        "one-seed run does, and the two are measured in the same minutes; target <= 1.5x). Val "
        f"AUC over the seeds {g224['val_auc']['mean']:.4f} ± {g224['val_auc']['sd']:.4f}, test AUC "
        f"{g224['test_auc']['mean']:.4f} ± {g224['test_auc']['sd']:.4f}.",
        f"- **Seeds, 64 px** (the group compared above): all five seeds took "
        f"**{seeds['seconds_against_the_first_seed']:.2f}x** the wall time of its first seed's run "
        f"({seeds['wall_seconds']:.0f} s against {seeds['runs'][0]['seconds']:.0f} s; the first "
        "seed extracts the features and fits the probe exactly as a one-seed run does, and the two "
        f"are measured in the same minutes): at 64 px the extraction is cheap, so the heads' "
        f"files weigh more ({passes:.0f} s of the first seed's {seeds['runs'][0]['seconds']:.0f} s "
        "were backbone passes). Test AUC over "
        f"the seeds: {group.get('member_auc_mean', float('nan')):.4f} ± "
        f"{group.get('member_auc_sd', float('nan')):.4f} (range "
        f"{fmt_range(group.get('member_auc_range'))}), against one run's 95% bootstrap CI of width "
        f"{width(runs.get('px64', {}).get('roc_auc_ci')):.4f}: the seed moves the AUC far less "
        "than the test set's sampling does.",
        f"- **Speed**: `compare` of the three entries on 1,000 test images: {result['seconds']:.0f} s "
        f"wall (features from the runs' caches). The core on {speed['n_images']:,} images x "
        f"{speed['n_runs']} synthetic runs ({speed['pairs']} pairs, 1,000 paired bootstrap "
        f"resamples, DeLong, McNemar, Holm): {speed['numbers_seconds']:.1f} s wall "
        f"({speed['numbers_cpu_seconds']:.1f} s CPU) for the numbers, {speed['total_seconds']:.1f} s "
        f"wall ({speed['total_cpu_seconds']:.1f} s CPU) with the tables, predictions.csv and the "
        f"figure with its bands, at load average {speed['load_after']:.0f} (target < 30 s).",
    ]
    return "\n".join(lines) + "\n"


def intervals(pair: dict, n_bootstrap: int) -> str:
    """The paired bootstrap's interval of ΔAUC beside DeLong's, in words."""
    boot, delong = pair["delta_auc_ci_bootstrap"], pair["delta_auc_ci_delong"]
    gap = max(abs(boot[0] - delong[0]), abs(boot[1] - delong[1]))
    verdict = ("the bootstrap interval contains DeLong's" if boot[0] <= delong[0] and
               delong[1] <= boot[1] else f"the two agree to {gap:.4f} at either end (not nested)")
    return (f"ΔAUC {pair['delta_auc']:+.4f}: paired bootstrap 95% CI {fmt_ci(boot)} (width "
            f"{width(boot):.4f}), DeLong's {fmt_ci(delong)} (width {width(delong):.4f}, SE "
            f"{pair['delta_auc_se_delong']:.4f}): {verdict}")


def backbone_seconds(train_log: Path) -> float:
    """The seconds a run's log gives to backbone passes: extractions and the OOD layers' pass."""
    import re
    return sum(float(m.group(1)) for m in re.finditer(r"(?:extracted \d+ images in|val images,) "
                                                      r"([\d.]+) s", train_log.read_text()))


def fmt_range(values) -> str:
    return "–" if not values else f"{values[0]:.4f}-{values[1]:.4f}"


def fmt_ci(ci) -> str:
    return f"[{ci[0]:+.4f}, {ci[1]:+.4f}]"


def width(ci) -> float:
    return float("nan") if not ci else ci[1] - ci[0]


def contains(pair: dict, slack: float = 0.002) -> bool:
    (b_lo, b_hi), (d_lo, d_hi) = pair["delta_auc_ci_bootstrap"], pair["delta_auc_ci_delong"]
    return b_lo <= d_lo + slack and d_hi - slack <= b_hi


def update_readme(text: str) -> None:
    readme = ROOT / "README.md"
    current = readme.read_text(encoding="utf-8")
    if BEGIN not in current or END not in current:
        raise SystemExit(f"README.md has no {BEGIN} ... {END} markers: add them where the results go")
    head, rest = current.split(BEGIN, 1)
    tail = rest.split(END, 1)[1]
    readme.write_text(head + BEGIN + "\n" + text + END + tail, encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", default="/tmp/compare-bench", help="working folder (resumable)")
    parser.add_argument("--readme", action="store_true", help="also write README.md's section")
    args = parser.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    split = work / "cifake-split"
    if not (split / "split.csv").is_file():
        subprocess.run(CLI + ["split", "--raw", str(CIFAKE_DEV), "--out", str(split),
                              "--val-fraction", "0.1", "--test-fraction", "0.1",
                              "--link-mode", "hardlink"], check=True, cwd=ROOT)
    train_seconds = train_runs(work, split)
    result = compare_cifake(work, split)
    result["tables"] = {name: (work / "compare" / "tables" / f"{name}.md").read_text().split("\n\n", 1)[1].strip()
                        for name in ("runs", "pairs")}
    result["pair"] = next(p for p in result["pairs"] if p["a"].endswith("px32") and p["b"].endswith("px64"))
    speed = synthetic_speed(work)
    figure = "docs/compare_roc_overlay.png"
    shutil.copyfile(work / "compare" / "figures" / "roc_overlay.png", ROOT / figure)
    text = results_markdown(train_seconds, result, speed, figure)
    results = ROOT / "benchmarks" / "results"
    results.mkdir(exist_ok=True)
    (results / "compare_runs.md").write_text(text, encoding="utf-8")
    print(text)
    print(json.dumps({"train_seconds": train_seconds, "speed": speed}, indent=2))
    if args.readme:
        update_readme(text)


if __name__ == "__main__":
    main()
