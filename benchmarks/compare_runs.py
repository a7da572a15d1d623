"""Is B better than A, and what does a seed cost? (issue 25) On the CIFAKE dev sample:

1. a split (80/10/10) and three runs, 32 px (CIFAKE's own size), 64 px and 128 px (random init:
   no ImageNet weights here);
2. `train --seeds 0,1,2,3,4` at 64 px and at 224 px, each from a cold cache: the wall time of
   the five seeds against that of the first seed's run, which does all a one-seed run does
   (target <= 1.5x at 224 px: one extraction, five heads);
3. `compare` of the 32, 64 and 128 px runs and the 64 px seed group on the test split: the
   tables and the ROC-overlay figure, and the paired bootstrap interval of ΔAUC beside DeLong's
   (64 px against 128 px);
4. the large-sample case, held out: a second split (40/10/50), 32 px against 64 px again, compared
   on its 5,000 test images; the paired bootstrap's interval of ΔAUC from 400,000 resamples (with
   the Monte Carlo bounds of its ends) and its closed-form variance, beside DeLong's interval;
5. `compare`'s core on 10,000 images x 5 synthetic runs, bootstrap (1,000 resamples), tables and
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


def train_run(work: Path, split: Path, name: str, size: int, run: str, cache: str,
              seeds: str | None = None) -> dict:
    """`train --weights none` at `size` px into work/runs/`run` (timed as `name`)."""
    return timed(work, name, CLI + [
        "train", "--data", str(split), "--weights", "none", "--num-workers", "0",
        "--img-size", str(size), *(["--seeds", seeds] if seeds else []),
        "--out", str(work / "runs" / run), "--cache-dir", str(work / cache)])


def train_runs(work: Path, split: Path) -> dict:
    return {
        "one seed": train_run(work, split, "train 64 px, one seed", 64, "px64", "cache64-one"),
        "five seeds": train_run(work, split, "train 64 px, seeds 0-4", 64, "px64-seeds",
                                "cache64-five", seeds="0,1,2,3,4"),
        "32 px": train_run(work, split, "train 32 px", 32, "px32", "cache32"),
        "128 px": train_run(work, split, "train 128 px", 128, "px128", "cache128"),
        "five seeds, 224 px": train_run(work, split, "train 224 px, seeds 0-4", 224,
                                        "px224-seeds", "cache224-five", seeds="0,1,2,3,4"),
    }


def compare_cifake(work: Path, split: Path) -> dict:
    out = work / "compare4"
    runs = [work / "runs" / name for name in ("px32", "px64", "px128", "px64-seeds")]
    seconds = timed(work, "compare 4 entries", CLI + ["compare", *map(str, runs), "--data",
                                                      str(split), "--split", "test", "--out",
                                                      str(out)])
    result = json.loads((out / "compare.json").read_text())
    result["seconds"] = seconds["wall"]
    result["group"] = json.loads((runs[3] / "seeds.json").read_text())
    result["group_224"] = json.loads((work / "runs" / "px224-seeds" / "seeds.json").read_text())
    return result


HELDOUT_RESAMPLES = 400_000  # Monte Carlo error of the interval's ends: about +-3e-5 of AUC


def heldout_intervals(work: Path) -> dict:
    """The large-sample case on images no run has seen: split 40/10/50, 32 px against 64 px,
    `compare` on the 5,000 test images; then, from compare's predictions.csv, the paired
    bootstrap interval of ΔAUC with HELDOUT_RESAMPLES resamples (and the 95% Monte Carlo bounds
    of its two ends), the bootstrap's closed-form variance and DeLong's interval."""
    import csv
    from deepfake_detector.delong import (delong_test, exact_bootstrap_variance,
                                          paired_bootstrap_aucs, percentile_endpoint_bounds,
                                          percentile_interval)
    kept = work / "heldout-intervals.json"
    if kept.is_file():
        return json.loads(kept.read_text())
    split = work / "cifake-heldout"
    if not (split / "split.csv").is_file():
        subprocess.run(CLI + ["split", "--raw", str(CIFAKE_DEV), "--out", str(split),
                              "--val-fraction", "0.1", "--test-fraction", "0.5",
                              "--link-mode", "hardlink"], check=True, cwd=ROOT)
    runs = [work / "runs" / f"heldout-px{size}" for size in (32, 64)]
    for size in (32, 64):
        train_run(work, split, f"held out: train {size} px", size, f"heldout-px{size}",
                  f"cache-heldout{size}")
    out = work / "compare-heldout"
    timed(work, "held out: compare", CLI + ["compare", *map(str, runs), "--data", str(split),
                                            "--split", "test", "--out", str(out)])
    with open(out / "predictions.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))[1:]
    y = np.array([int(row[1]) for row in rows])
    scores = np.array([[float(row[2]) for row in rows], [float(row[3]) for row in rows]])
    start = time.perf_counter()
    replicates = paired_bootstrap_aucs(y, scores, HELDOUT_RESAMPLES, seed=0)
    deltas = replicates[:, 0] - replicates[:, 1]
    delong = delong_test(y, scores[0], scores[1])
    result = {"n_images": int(y.size), "n_bootstrap": HELDOUT_RESAMPLES,
              "delta_auc": delong["delta"], "delong_ci": delong["ci"], "delong_se": delong["se"],
              "delong_p": delong["p_value"],
              "compare_pair": json.loads((out / "compare.json").read_text())["pairs"][0],
              "bootstrap_ci": percentile_interval(deltas),
              "bootstrap_ci_mc_bounds": percentile_endpoint_bounds(deltas),
              "bootstrap_sd": float(deltas.std(ddof=1)),
              "bootstrap_sd_exact": float(np.sqrt(exact_bootstrap_variance(y, *scores))),
              "seconds": time.perf_counter() - start}
    kept.write_text(json.dumps(result, indent=2))
    return result


def heldout_sentence(h: dict) -> str:
    """The held-out large-sample check, in words, with its verdict."""
    (b_lo, b_hi), (d_lo, d_hi) = h["bootstrap_ci"], h["delong_ci"]
    (lo_min, lo_max), (hi_min, hi_max) = h["bootstrap_ci_mc_bounds"]
    mc = max(lo_max - lo_min, hi_max - hi_min) / 2
    default = h["compare_pair"]
    mc_default = max(hi - lo for lo, hi in default["delta_auc_ci_bootstrap_mc_bounds"]) / 2
    if b_lo <= d_lo and d_hi <= b_hi:
        verdict = (f"**the bootstrap interval contains DeLong's** (by {d_lo - b_lo:.1e} below and "
                   f"{b_hi - d_hi:.1e} above)")
    elif lo_min <= d_lo <= lo_max and hi_min <= d_hi <= hi_max:
        verdict = "DeLong's ends lie within the Monte Carlo bounds of the bootstrap's, not nested"
    else:
        verdict = "**the two intervals differ beyond the bootstrap's Monte Carlo error**"
    return (f"- **The large-sample case, held out**: a second split of the dev sample (4,000 train "
            f"/ 1,000 val / {h['n_images']:,} test), 32 px against 64 px, compared on the "
            f"{h['n_images']:,} test images: ΔAUC {h['delta_auc']:+.4f}, DeLong's 95% CI "
            f"[{d_lo:+.5f}, {d_hi:+.5f}] (SE {h['delong_se']:.6f}, p {h['delong_p']:.2g}; McNemar p "
            f"{default['mcnemar_p']:.2g}); paired bootstrap, {h['n_bootstrap']:,} resamples, "
            f"[{b_lo:+.5f}, {b_hi:+.5f}], each end known to ±{mc:.0e} (95% Monte Carlo bounds): "
            f"{verdict}. The bootstrap's SD over its resamples is {h['bootstrap_sd']:.6f}, its "
            f"closed form (every resample, `delong.exact_bootstrap_variance`) "
            f"{h['bootstrap_sd_exact']:.6f}, DeLong's SE {h['delong_se']:.6f}: the two methods "
            f"measure the same spread to {abs(h['bootstrap_sd_exact'] / h['delong_se'] - 1):.1e} "
            "(relative), so which interval nests in the other is decided by the bootstrap's skew "
            "and its Monte Carlo noise, at the fifth decimal. `compare` itself, at its default "
            f"1,000 resamples, gives [{default['delta_auc_ci_bootstrap'][0]:+.4f}, "
            f"{default['delta_auc_ci_bootstrap'][1]:+.4f}], ends known to ±{mc_default:.4f} "
            "(compare.md states this error).")


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
    group_dir = next(Path(path) for path in result["paths"] if str(path).endswith("px64-seeds"))
    passes = backbone_seconds(group_dir / f"seed-{seeds['seeds'][0]}" / "train.log")
    lines = [
        f"Measured {time.strftime('%Y-%m-%d')} with `python benchmarks/compare_runs.py` on "
        f"{machine(torch.device('cpu'))['cpu']}, 2 cores{load_words(five['load_after'])}. CIFAKE dev sample, 8,000 train / 1,000 val / 1,000 test, random-init backbone "
        "(no ImageNet weights on this machine), compared on the 1,000 test images.", "",
        result["tables"]["runs"], "", result["tables"]["pairs"], "",
        f"![ROC curves of the compared runs, with 95% bootstrap bands]({figure})", "",
        f"- **Paired bootstrap against DeLong** ({pair['a']} − {pair['b']}, single runs): on the "
        f"1,000 test images, {intervals(pair, 1000)}. DeLong p {pair['delong_p']:.2g}, McNemar p "
        f"{pair['mcnemar_p']:.2g}.",
        heldout_sentence(result["heldout"]),
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
        f"- **Speed**: `compare` of the four entries on 1,000 test images: {result['seconds']:.0f} s "
        f"wall (features from the runs' caches). The core on {speed['n_images']:,} images x "
        f"{speed['n_runs']} synthetic runs ({speed['pairs']} pairs, 1,000 paired bootstrap "
        f"resamples, DeLong, McNemar, Holm): {speed['numbers_seconds']:.1f} s wall "
        f"({speed['numbers_cpu_seconds']:.1f} s CPU) for the numbers, {speed['total_seconds']:.1f} s "
        f"wall ({speed['total_cpu_seconds']:.1f} s CPU) with the tables, predictions.csv and the "
        f"figure with its bands, at load average {speed['load_after']:.0f} (target < 30 s).",
    ]
    return "\n".join(lines) + "\n"


def load_words(load: float) -> str:
    """How busy the 2 cores were when the seeds were timed, and what that does to wall seconds."""
    if load < 2:
        return f" (load average about {load:.0f} after the seeds' runs)"
    return f" shared with other jobs (load average about {load:.0f}: wall seconds are inflated)"


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
    result["tables"] = {name: (work / "compare4" / "tables" / f"{name}.md").read_text().split("\n\n", 1)[1].strip()
                        for name in ("runs", "pairs")}
    result["heldout"] = heldout_intervals(work)
    result["pair"] = next(p for p in result["pairs"] if p["a"].endswith("px64") and p["b"].endswith("px128"))
    speed = synthetic_speed(work)
    figure = "docs/compare_roc_overlay.png"
    shutil.copyfile(work / "compare4" / "figures" / "roc_overlay.png", ROOT / figure)
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
