"""The command line of comparisons (issue 25): `compare` (runs side by side on the same images,
with paired tests), `runs` (every run under a folder, one line each) and `train --seeds` (one head
per seed on one extraction). Parsers and runners only: the work is compare_files.py's,
runs_table.py's and seeds.py's, which the runners import when they run (so --help stays light).
"""
from __future__ import annotations

import sys
from dataclasses import fields

from .config import TrainConfig, positive_int, seed_number
from .terminal import rounded


def add_compare(commands):
    p = commands.add_parser("compare", help="runs side by side on the same images: ΔAUC with a "
                                            "paired bootstrap CI, DeLong, McNemar, Holm")
    p.add_argument("runs", nargs="+", metavar="RUN",
                   help="run directories (train, finetune, the notebook's OUT/run) or seed group "
                        "folders (train --seeds), two or more; the first is A in ΔAUC = A - B")
    p.add_argument("--data", required=True,
                   help="the images to compare on: a split folder, or any folder with real/ fake/")
    p.add_argument("--split", default=None, choices=["train", "val", "test"],
                   help="which split of a split folder (default: test if it has one, else val)")
    p.add_argument("--out", default=None,
                   help="a new folder for the tables, the figure and compare.json (default "
                        "outputs/compare/<time>)")
    p.add_argument("--n-bootstrap", type=positive_int, default=1000,
                   help="paired bootstrap resamples behind every 95%% interval")
    p.add_argument("--bootstrap-seed", type=seed_number, default=0,
                   help="seed of the bootstrap resamples")
    p.add_argument("--device", default="auto",
                   help="auto (cuda, mps or cpu, in that order), or one of them")
    p.add_argument("--num-workers", type=int, default=None,
                   help="image-loading processes (default: chosen from the CPU count)")
    p.set_defaults(func=run_compare)


def p_text(p: float) -> str:
    """A p-value for people: 4 decimals, or 2 significant digits below 0.0001 (never 0.0000)."""
    return f"{p:.4f}" if p >= 1e-4 else f"{p:.1e}"


def comparison_lines(result: dict) -> list[str]:
    """What compare prints: a line per run, a line per pair, the notes, where the files are."""
    lines = [f"{len(result['runs'])} runs on the same {result['runs'][0]['n_images']} images "
             f"({result['split']} of {result['data']}):"]
    for run in result["runs"]:
        lo, hi = run["roc_auc_ci"]
        extra = (f"; seeds {rounded(run['member_auc_mean'])} ± {rounded(run['member_auc_sd'])}"
                 if "member_auc_mean" in run else "")
        lines.append(f"  {run['run']}: ROC-AUC {rounded(run['roc_auc'])} (95% CI "
                     f"{rounded(lo)}-{rounded(hi)}), accuracy {rounded(run['accuracy'])} at its "
                     f"threshold {rounded(run['threshold'], 2)}{extra}")
    for pair in result["pairs"]:
        lo, hi = pair["delta_auc_ci_bootstrap"]
        holm = (f" (Holm {p_text(pair['delong_p_holm'])})" if result["holm"] else "")
        lines.append(f"  {pair['a']} - {pair['b']}: ΔAUC {pair['delta_auc']:+.3f} (95% CI "
                     f"{lo:+.3f} to {hi:+.3f}), DeLong p {p_text(pair['delong_p'])}{holm}, "
                     f"McNemar p {p_text(pair['mcnemar_p'])}")
        if "dominant_noise" in pair:
            lines.append(f"    {pair['dominant_noise']}")
    lines += [f"note: {note}" for note in result["notes"]]
    lines.append(f"written to {result['out']} (compare.md, tables/, figures/roc_overlay.png, "
                 "compare.json with every digit)")
    return lines


def run_compare(args):
    from .compare_files import compare_runs
    result = compare_runs(args.runs, args.data, args.split, args.out, args.n_bootstrap,
                          args.bootstrap_seed, args.device, args.num_workers,
                          log=lambda m: print(m, file=sys.stderr))
    print("\n".join(comparison_lines(result)))
    return result


def add_runs(commands):
    p = commands.add_parser("runs", help="list every run under a folder: date, weights, data, "
                                         "settings that differ, val/test AUC, converged")
    p.add_argument("root", nargs="?", default="outputs", metavar="ROOT",
                   help="the folder to search, sub-folders included")
    p.add_argument("--csv", default=None,
                   help="where the table goes as CSV, every digit (default ROOT/runs.csv)")
    p.set_defaults(func=run_runs)


def run_runs(args):
    from pathlib import Path
    from .runs_table import RUNS_CSV, format_runs, runs_table, write_runs_csv
    rows = runs_table(args.root)
    print(format_runs(rows))
    if rows:
        path = write_runs_csv(rows, args.csv or Path(args.root) / RUNS_CSV)
        print(f"{len(rows)} run(s); every digit in {path}")
    return rows


def add_train_seeds(commands):
    """--seeds on the train command (its parser is made by cli.add_train, from TrainConfig):
    without it, train runs as before; with it, seeds.train_seeds."""
    from .seeds import parse_seeds
    p = commands.choices["train"]
    p.add_argument("--seeds", type=parse_seeds, default=None,
                   help='several seeds, e.g. "0,1,2,3,4" or "0-4": one head per seed on the same '
                        "cached features (one extraction), each a run in OUT/seed-<s>, and a "
                        "summary of their spread (OUT/seeds.md); replaces --seed")
    plain_train = p.get_default("func")
    p.set_defaults(func=lambda args: run_train_seeds(args, plain_train))


def run_train_seeds(args, plain_train):
    """train with --seeds: the seed group; without: the plain train command."""
    if args.seeds is None:
        return plain_train(args)
    from .seeds import train_seeds
    config = TrainConfig(**{f.name: getattr(args, f.name) for f in fields(TrainConfig)
                            if f.metadata.get("flag")})
    summary = train_seeds(config, args.seeds, log=lambda m: print(m, file=sys.stderr))
    print(summary["sentence"])
    print(f"{len(args.seeds)} runs and the summary (seeds.md, seeds.json) in {summary['folder']}")
    return summary
