"""The command line: argument parsing only; every command calls the same functions as the notebook.

    python -m deepfake_detector split    --raw dataset_raw --out data
    python -m deepfake_detector train    --data data --out outputs/runs/r1 --weights imagenet
    python -m deepfake_detector evaluate --run outputs/runs/r1 --data data
    python -m deepfake_detector predict  --run outputs/runs/r1 image.jpg folder/ --out preds.json
    python -m deepfake_detector predict  --run outputs/runs/r1 clip.mp4 --timeline t/  (a row per video)
    python -m deepfake_detector gradcam  --run outputs/runs/r1 --images data/val --out outputs/cam
    python -m deepfake_detector audit      --data data
    python -m deepfake_detector robustness --run outputs/runs/r1 --data data --split val
    python -m deepfake_detector cross-eval --run outputs/runs/r1 --data other_dataset/ --name other
    python -m deepfake_detector finetune   --run outputs/runs/r1 --lr 1e-5
    python -m deepfake_detector lr-find    --data data --weights imagenet --out outputs/lr_find
    python -m deepfake_detector app        --run outputs/runs/r1   (needs the [app] extra)
    python -m deepfake_detector extract    --data data --weights imagenet   (fills the feature cache)
    python -m deepfake_detector frames     --videos videos --out frames_raw   (videos -> frames/faces)
    python -m deepfake_detector report     --run outputs/runs/r1   (rebuilds its report.md)
    python -m deepfake_detector compare    outputs/runs/a outputs/runs/b --data data  (also: runs)

Under torchrun (predict, evaluate, extract, train), put `--` before the command:
    torchrun --nproc_per_node=4 -m deepfake_detector -- predict --run outputs/runs/r1 folder/ --out p.csv
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
from dataclasses import fields
from pathlib import Path

from .config import (PRECISIONS, TrainConfig, image_size,  # noqa: F401 (re-exported)
                     port_number, positive_int, seed_number)
from .cli_clip import add_video_options
from .cli_compare import add_compare, add_runs, add_train_seeds
from .cli_report import add_report
from .cli_video import add_demo_videos, add_frames
from .huge_pages import prefer_huge_pages
from .extras import MissingExtraError
from .terminal import (HelpFormatter, command_line_words, interrupted_message, metrics_summary,
                       plain_warnings, program_name)


# The settings the command line takes, from TrainConfig: a field with a flag is an option.
TRAIN_SETTINGS = {f.name: f for f in fields(TrainConfig) if f.metadata.get("flag")}
# Those the command line insists on (weights): checked after parsing, so that a missing one gets
# one line saying which values it takes, not argparse's usage and "required: --weights".
REQUIRED_SETTINGS = [name for name, f in TRAIN_SETTINGS.items() if f.metadata["required"]]


def add_setting(parser, name: str) -> None:
    """Add the option of TrainConfig's field `name`: its flag, default, type and help text are
    the field's own (config.py), so a setting is spelled once for every command that takes it."""
    meta, default = TRAIN_SETTINGS[name].metadata, TRAIN_SETTINGS[name].default
    if meta["flag"].startswith("--no-"):  # on by default: the flag switches it off
        parser.add_argument(meta["flag"], dest=name, action="store_false", help=meta["help"])
    elif isinstance(default, bool):
        parser.add_argument(meta["flag"], dest=name, action="store_true", help=meta["help"])
    elif meta["required"]:  # None when absent: main() says what to give, in one line
        parser.add_argument(meta["flag"], dest=name, default=None, type=meta["parse"],
                            help=f"required: {meta['help']}")
    else:
        parser.add_argument(meta["flag"], dest=name, default=default, type=meta["parse"],
                            choices=meta.get("choices"), help=meta["help"])


def add_precision(p, default: str | None,
                  fp32_is: str = "the same numbers on every device") -> None:
    """--precision of a command that applies a run (its default: the run's, or fp32)."""
    p.add_argument("--precision", choices=PRECISIONS, default=default,
                   help=f"what the model computes in: fp32 ({fp32_is}), or mixed precision bf16, "
                        "fp16, amp (bf16/fp16 on CUDA, fp32 elsewhere): faster on GPUs, numbers "
                        "differ slightly" + ("" if default else " (default: the run's)"))


def add_deterministic(p, default: bool) -> None:
    """--deterministic (off by default) or --no-deterministic (on by default: evaluate)."""
    if default:
        p.add_argument("--no-deterministic", dest="deterministic", action="store_false",
                       help="allow nondeterministic GPU kernels (cuDNN autotuning): faster, but "
                            "two evaluations may differ in the 4th digit")
    else:
        p.add_argument("--deterministic", action="store_true",
                       help="torch's and cuDNN's deterministic kernels: the same numbers on "
                            "every run of a GPU, a little slower")


def add_split(commands):
    p = commands.add_parser("split", help="split raw real/fake folders into train/val[/test]")
    p.add_argument("--raw", default="dataset_raw", help="folder holding real/ and fake/")
    p.add_argument("--out", default="data", help="where train/ val/ [test/] and split.csv go")
    p.add_argument("--val-fraction", type=float, default=0.2,
                   help="share of each class held out for validation")
    p.add_argument("--test-fraction", type=float, default=0.0,
                   help="share of each class held out for a final test, e.g. 0.1 with "
                        "--val-fraction 0.1")
    p.add_argument("--seed", type=seed_number, default=0,
                   help="seed of the shuffle: the same seed and images give the same split")
    p.add_argument("--group-by", default=None,
                   help='keep related images together: "folder", "regex:PATTERN" or a CSV path,group')
    p.add_argument("--link-mode", choices=["copy", "hardlink"], default="copy",
                   help="copy the images, or hard-link them (no extra disk space; --raw and "
                        "--out on one file system)")
    p.add_argument("--replace", action="store_true", help="replace an existing split made differently")
    p.set_defaults(func=run_split)


def run_split(args):
    from .split import split_dataset
    try:
        summary = split_dataset(args.raw, args.out, val_fraction=args.val_fraction,
                                test_fraction=args.test_fraction, seed=args.seed,
                                group_by=args.group_by, link_mode=args.link_mode,
                                replace=args.replace)
    except ValueError as error:  # the library speaks Python (replace=True, out_dir): reworded
        raise ValueError(command_line_words(str(error))) from None
    print(summary)
    return summary


def add_train(commands):
    p = commands.add_parser("train", help="train the single-logit head on a frozen ResNet-18")
    for name in TRAIN_SETTINGS:
        add_setting(p, name)
    p.set_defaults(func=run_train)


def run_train(args):
    from . import distributed
    from .train import train
    config = TrainConfig(**{name: getattr(args, name) for name in TRAIN_SETTINGS})
    run = train_under_torchrun(config) if distributed.is_active() else train(config)
    if run is not None:  # None: a torchrun rank other than 0, done once its features were in
        print(metrics_summary(run.metrics, "validation", f"{run.run_dir} (checkpoint.pt, "
                              "metrics_val.json with every digit, report.md, figures/, tables/)"))
    return run


def train_under_torchrun(config):
    """`train` under torchrun: every rank extracts its share of the features into the cache, then
    the head (milliseconds an epoch) trains on rank 0 alone, from the cache, as a single process."""
    from . import distributed
    from .train import extract_split_features, splits_a_run_extracts, train
    if not config.cache_dir:
        raise ValueError("train under torchrun shares the extracted features through the feature "
                         "cache: give --cache-dir (default outputs/cache), or run without torchrun.")
    extract_split_features(config, splits_a_run_extracts(config),
                           log=lambda m: print(m, file=sys.stderr))
    main_rank = distributed.is_main()
    distributed.stop()  # from here on rank 0 is a single process; the other ranks are done
    return train(config) if main_rank else None


# What extract needs of a run's settings: those its feature-cache entries depend on.
EXTRACT_SETTINGS = ("data_dir", "weights", "img_size", "seed", "decode", "resize", "precision",
                    "cache_dir", "device", "num_workers")


def add_extract(commands):
    p = commands.add_parser("extract", help="fill the feature cache for a split, as train would "
                                            "(in parallel under torchrun)")
    p.add_argument("--split", nargs="+", choices=["train", "val", "test"], default=None,
                   help="default: the splits train extracts (train, val, and test if there is one)")
    for name in EXTRACT_SETTINGS:
        add_setting(p, name)
    p.set_defaults(func=run_extract)


def run_extract(args):
    from . import distributed
    from .train import extract_split_features, splits_a_run_extracts
    config = TrainConfig(**{name: getattr(args, name) for name in EXTRACT_SETTINGS})
    files = extract_split_features(config, args.split or splits_a_run_extracts(config),
                                   log=lambda m: print(m, file=sys.stderr))
    if distributed.is_main():
        for split, path in files.items():
            print(f"{split}: {path}")
        print(f"feature cache: {Path(config.cache_dir).resolve()}")
    return files


# What lr-find takes of a run's settings, besides --data and --no-standardize.
LR_FIND_SETTINGS = ("weights", "img_size", "batch_size", "seed", "decode", "resize", "precision",
                    "cache_dir", "device", "num_workers")


def add_lr_find(commands):
    p = commands.add_parser("lr-find", help="sweep the head's learning rate on cached features")
    p.add_argument("--data", default="data", help="folder with train/ (and val/)")
    add_setting(p, "weights")
    p.add_argument("--out", default="outputs/lr_find", help="folder for lr_find.{json,png,pdf}")
    add_setting(p, "img_size")
    add_setting(p, "batch_size")
    p.add_argument("--no-standardize", action="store_true", help="sweep on raw features")
    add_setting(p, "seed")
    for name in ("decode", "resize", "precision", "cache_dir", "device", "num_workers"):
        add_setting(p, name)
    p.set_defaults(func=run_lr_find)


def run_lr_find(args):
    from .lr_find import lr_find_on_data
    config = TrainConfig(data_dir=args.data, standardize=not args.no_standardize,
                         **{name: getattr(args, name) for name in LR_FIND_SETTINGS})
    result = lr_find_on_data(config, args.out)
    print(f"suggested learning rate {result.suggestion:.3g} (lowest loss at "
          f"{result.min_loss_lr:.3g}); sweep and plot in {args.out}")
    return result


def add_run_on_data(parser) -> None:
    """--run, --data, --split: a trained run applied to a split (or any real/ fake/ folder)."""
    parser.add_argument("--run", required=True, help="the run directory that train wrote")
    parser.add_argument("--data", default="data", help="split folder, or any folder with real/ fake/")
    parser.add_argument("--split", default="val", choices=["train", "val", "test"],
                        help="which split of a split folder")


def add_evaluate(commands):
    p = commands.add_parser("evaluate", help="metrics of a run on a split or another folder")
    add_run_on_data(p)
    p.add_argument("--out", default=None, help="folder for the metrics, predictions and figures "
                                               "(default RUN/eval/<data>-<split>)")
    p.add_argument("--batch-size", type=positive_int, default=64, help="images per batch")
    add_setting(p, "device")
    add_precision(p, None)
    add_deterministic(p, True)
    p.add_argument("--json", action="store_true",
                   help="print the metrics as one JSON object, every digit (as metrics.json), "
                        "instead of the short summary")
    p.set_defaults(func=run_evaluate)


def run_evaluate(args):
    from . import distributed
    from .inference import Numerics, evaluate_run
    metrics = evaluate_run(args.run, args.data, args.split, args.out, args.batch_size,
                           args.device, log=lambda m: print(m, file=sys.stderr),
                           numerics=Numerics(args.precision, args.deterministic))
    if distributed.is_main():  # under torchrun the other ranks only ran their share
        out = Path(args.out) if args.out else \
            Path(args.run) / "eval" / f"{Path(args.data).name}-{metrics['split']}"  # evaluate_run's
        print(json.dumps(metrics, indent=2) if args.json else metrics_summary(
            metrics, f"{metrics['split']} of {args.data}",
            f"{out} (metrics.json with every digit, predictions.csv, figures)"))
    return metrics


def add_predict(commands):
    p = commands.add_parser("predict", help="P(fake) per image, to CSV or JSON")
    p.add_argument("--run", required=True, help="the run directory that train wrote")
    p.add_argument("paths", nargs="+", help="image files and/or folders")
    p.add_argument("--out", default=None, help=".json or .csv (default: JSON to stdout)")
    p.add_argument("--batch-size", type=positive_int, default=64, help="images per batch")
    p.add_argument("--json-details", action="store_true",
                   help="JSON rows also carry predicted_label, path and how far each image is "
                        "from the training data (ood_score, ood_percentile, ood_flag, size_flag, "
                        "unlike_training), as the CSV always does; without it the JSON keeps "
                        "its usual keys")
    add_setting(p, "device")
    add_precision(p, None)
    add_deterministic(p, False)
    p.set_defaults(func=run_predict)


def run_predict(args):
    from . import distributed
    from .predictions import write_prediction_rows
    from .inference import Numerics, iter_predictions, predict_to_file
    numerics = Numerics(args.precision, args.deterministic)
    if args.out:  # streamed to the file batch by batch: flat memory for any number of images
        n = predict_to_file(args.run, args.paths, args.out, args.batch_size, args.device,
                            numerics=numerics, ood_columns=args.json_details or None)
        if distributed.is_main():
            print(f"{n} predictions written to {args.out}", file=sys.stderr)
        return n
    rows = iter_predictions(args.run, args.paths, args.batch_size, args.device, numerics=numerics,
                            ood_columns=args.json_details)
    if not distributed.is_main():  # this rank's share goes to rank 0, which prints them all
        return sum(1 for _ in rows)
    if args.json_details:
        return write_prediction_rows(rows, sys.stdout, "json")
    return write_prediction_rows(({"image_id": row["image_id"], "prediction": row["prediction"]}
                                  for row in rows), sys.stdout, "json")


def add_gradcam(commands):
    p = commands.add_parser("gradcam", help="Grad-CAM overlays, contact sheet, faithfulness")
    p.add_argument("--run", required=True, help="the run directory that train wrote")
    p.add_argument("--images", nargs="+", required=True,
                   help="a split folder (with real/ fake/: overlays sorted tp/tn/fp/fn) or files")
    p.add_argument("--out", required=True,
                   help="folder for the overlays, index.csv, the contact sheet and summary.json")
    p.add_argument("--target", default="predicted", choices=["predicted", "fake", "real"],
                   help="the class each map shows the evidence for")
    p.add_argument("--masks", default=None, help="folder of masks of the fakes (synthetic data)")
    p.add_argument("--max-images", type=positive_int, default=None,
                   help="explain at most this many images (default: all)")
    p.add_argument("--batch-size", type=positive_int, default=16, help="images per batch")
    add_setting(p, "device")
    add_precision(p, "fp32", "maps within 1e-5 of the pytorch-grad-cam package's")
    add_deterministic(p, False)
    p.set_defaults(func=run_gradcam)


def run_gradcam(args):
    from .explain import explain_run
    from .inference import Numerics
    summary = explain_run(args.run, args.images, args.out, target=args.target,
                          masks_dir=args.masks, max_images=args.max_images,
                          batch_size=args.batch_size, device=args.device,
                          numerics=Numerics(args.precision, args.deterministic))
    print(json.dumps(summary, indent=2, default=str))
    return summary


def add_demo_data(commands):
    p = commands.add_parser("demo-data", help="generate the synthetic real/fake set (with masks)")
    p.add_argument("--out", default="data/synthetic_raw",
                   help="folder for real/, fake/ and masks/ (never one with other images in it)")
    p.add_argument("--n-per-class", type=positive_int, default=None,
                   help="images per class (default 300)")
    # --img-size, as every other command says; --image-size, its old name, still works (hidden).
    p.add_argument("--img-size", dest="image_size", metavar="IMG_SIZE", type=image_size,
                   default=None,
                   help="side of the square images in px, even, at least 16 (default 160)")
    p.add_argument("--image-size", dest="image_size", type=image_size, help=argparse.SUPPRESS)
    p.add_argument("--seed", type=seed_number, default=0,
                   help="seed of the generator: the same seed gives the same files, byte for byte")
    p.set_defaults(func=run_demo_data)


def run_demo_data(args):
    from .demo_data import generate_demo_data
    options = {k: v for k, v in (("n_per_class", args.n_per_class),
                                 ("image_size", args.image_size)) if v is not None}
    out = generate_demo_data(args.out, seed=args.seed, **options)
    print(f"synthetic demo data in {out}")
    return out


def add_notebook(commands):
    p = commands.add_parser("notebook", help="execute the notebook headless into outputs/")
    p.add_argument("--notebook", default="notebooks/deepfake_detector.ipynb",
                   help="the notebook to execute")
    p.add_argument("--out", default=None, help="folder for the run (default outputs/demo-<time>)")
    p.add_argument("-p", "--parameter", nargs=2, action="append", default=[],
                   metavar=("NAME", "VALUE"),
                   help="override a parameters-cell value: a Python literal (30, 1e-3, None, "
                        "'[\"a\", \"b\"]'), otherwise taken as a plain string (imagenet)")
    p.add_argument("--timeout", type=int, default=1800, help="seconds per cell")
    p.add_argument("--cwd", default=None,
                   help="the kernel's working directory, from which the notebook's relative "
                        "paths (dataset_raw, data, outputs) are read (default: the project root)")
    p.set_defaults(func=run_notebook)


def run_notebook(args):
    from .notebook import execute_notebook, run_summary
    out = execute_notebook(args.notebook, args.out, dict(args.parameter), args.timeout,
                           cwd=args.cwd, echo=lambda line: print(line, flush=True))
    print(run_summary(out))  # banners, metrics with CIs, convergence, audit, report.md
    return out


def add_audit(commands):
    p = commands.add_parser("audit", help="look for real/fake shortcuts and duplicates in the data")
    p.add_argument("--data", default="data", help="a split, or any folder with real/ and fake/")
    p.add_argument("--out", default=None,
                   help="default: DATA/audit for a split, outputs/audit/<name> for other folders")
    p.set_defaults(func=run_audit)


def run_audit(args):
    from .audit import audit_split
    findings = audit_split(args.data, args.out)  # flags also come as a warning on stderr
    print(f"{len(findings['flags'])} flag(s); audit written to {findings['out_dir']}")
    return findings


def add_robustness(commands):
    p = commands.add_parser("robustness", help="metrics under JPEG, down-scaling and blur")
    add_run_on_data(p)
    p.add_argument("--n-bootstrap", type=int, default=200,
                   help="bootstrap resamples behind each 95%% confidence interval")
    p.add_argument("--batch-size", type=positive_int, default=64, help="images per batch")
    add_setting(p, "device")
    add_setting(p, "num_workers")
    p.set_defaults(func=run_robustness)


def run_robustness(args):
    from .robustness import robustness_table
    rows = robustness_table(args.run, args.data, args.split, n_bootstrap=args.n_bootstrap,
                            batch_size=args.batch_size, device=args.device,
                            num_workers=args.num_workers,
                            log=lambda m: print(m, file=sys.stderr))
    print(json.dumps(rows, indent=2))
    return rows


def add_cross_eval(commands):
    p = commands.add_parser("cross-eval", help="evaluate a run on another data set, as a table row")
    p.add_argument("--run", required=True, help="the run directory that train wrote")
    p.add_argument("--data", required=True, help="folder with real/ and fake/, or a split folder")
    p.add_argument("--name", default=None, help="the test set's name in the table (default: folder)")
    p.add_argument("--split", default=None, choices=["train", "val", "test"],
                   help="of a split folder (default: test if it has one, else val)")
    p.add_argument("--n-bootstrap", type=int, default=1000,
                   help="bootstrap resamples behind each 95%% confidence interval")
    p.add_argument("--batch-size", type=positive_int, default=64, help="images per batch")
    add_setting(p, "device")
    add_setting(p, "num_workers")
    p.set_defaults(func=run_cross_eval)


def run_cross_eval(args):
    from .robustness import cross_dataset_row
    row = cross_dataset_row(args.run, args.data, name=args.name, split=args.split,
                            n_bootstrap=args.n_bootstrap, batch_size=args.batch_size, device=args.device,
                            num_workers=args.num_workers,
                            log=lambda m: print(m, file=sys.stderr))
    print(json.dumps(row, indent=2))
    return row


def add_finetune(commands):
    p = commands.add_parser("finetune", help="phase 2: fine-tune layer4 of a run, compare phases")
    p.add_argument("--run", required=True, help="the phase-1 run (head trained, backbone frozen)")
    p.add_argument("--out", default=None, help="new run directory (default RUN-finetune-layer4)")
    p.add_argument("--lr", type=float, default=1e-5, help="layer4's learning rate")
    p.add_argument("--head-lr", type=float, default=None, help="the head's (default 10 x --lr)")
    p.add_argument("--epochs", type=positive_int, default=10, help="epoch budget of phase 2")
    p.add_argument("--patience", type=positive_int, default=3,
                   help="epochs without val-loss improvement before stopping")
    p.add_argument("--batch-size", type=positive_int, default=None, help="default: the run's")
    p.add_argument("--no-layer3-cache", action="store_true",
                   help="full forward passes every epoch (the cache gives the same result)")
    add_setting(p, "device")
    add_setting(p, "num_workers")
    p.set_defaults(func=run_finetune)


def run_finetune(args):
    from .finetune import Phase2Recipe, finetune_layer4
    recipe = Phase2Recipe(lr=args.lr, head_lr=args.head_lr, epochs=args.epochs,
                          patience=args.patience, batch_size=args.batch_size,
                          cache_layer3=not args.no_layer3_cache)
    out = finetune_layer4(args.run, args.out, recipe, device=args.device,
                          num_workers=args.num_workers)
    print(f"phase 2 run in {out}; both phases in {Path(out) / 'tables' / 'phases.md'}")
    return out


def add_app(commands):
    p = commands.add_parser("app", help="a web page: upload images, see verdict, P(fake), Grad-CAM")
    p.add_argument("--run", default=None, help="the run to serve (required unless --demo)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=port_number, default=8501, help="port to serve on")
    p.add_argument("--demo", action="store_true",
                   help="without --run: first train the synthetic demo run (about a minute)")
    p.set_defaults(func=run_app)


def run_app(args):
    from .serve import serve_app
    return serve_app(args.run, args.host, args.port, args.demo)  # replaces this process


COMMANDS = (add_split, add_train, add_lr_find, add_evaluate, add_predict, add_gradcam,
            add_demo_data, add_notebook, add_audit, add_robustness, add_cross_eval, add_finetune,
            add_app, add_extract, add_report, add_frames, add_demo_videos,
            add_compare, add_runs, add_train_seeds,  # --seeds onto train (cli_compare.py)
            add_video_options)  # last: it adds videos to predict and gradcam (cli_clip.py)
# The commands that split their work among torchrun's processes (distributed.py).
DISTRIBUTED_COMMANDS = ("predict", "evaluate", "extract", "train")


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    """The whole command line, named as the user called it (`prog`, default program_name():
    deepfake-detector or python -m deepfake_detector), every option's default in its --help.
    Imports nothing heavy (each command imports what it runs), so --help answers at once."""
    from . import __version__
    prog = prog or program_name()
    parser = argparse.ArgumentParser(
        prog=prog, description=__doc__.replace("python -m deepfake_detector", "%(prog)s"),
        formatter_class=HelpFormatter)
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    for add in COMMANDS:
        add(commands)
    for command in commands.choices.values():
        command.formatter_class = HelpFormatter
    return parser


def check_required_settings(parser: argparse.ArgumentParser, args) -> None:
    """A required setting left out (train's --weights): one line with the values it takes."""
    for name in REQUIRED_SETTINGS:
        if getattr(args, name, "") is None:
            meta = TRAIN_SETTINGS[name].metadata
            parser.exit(2, f"{parser.prog} {args.command}: error: {meta['flag']} is required, "
                           f"one of {meta['help']}\n")


def run(args) -> object:
    """Run the parsed command: each sub-parser set its own function (set_defaults(func=...))."""
    return args.func(args)


def check_device(args) -> None:
    """A named --device, checked before anything runs or is written (model.pick_device)."""
    if getattr(args, "device", "auto") != "auto":
        from .model import pick_device
        pick_device(args.device)


def start_distributed(args) -> None:
    """Under torchrun: join the process group, on this rank's own device (one GPU per rank)."""
    if args.command not in DISTRIBUTED_COMMANDS:
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # torchrun's processes would each do it all
            raise ValueError(f"{args.command} does not split its work among processes: run it "
                             f"without torchrun (torchrun runs {', '.join(DISTRIBUTED_COMMANDS)}).")
        return
    from . import distributed
    args.device = distributed.start(args.device)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["--"]:  # `python -m deepfake_detector -- predict ...`, as under torchrun
        argv = argv[1:]
    parser = build_parser()
    args = parser.parse_args(argv)
    check_required_settings(parser, args)
    # Large CPU tensors on huge pages (huge_pages.py): the program decides, before torch's first
    # large allocation; importing the package does not.
    prefer_huge_pages()
    # The command line only saves figures, never shows them: the headless backend, chosen here by
    # the application (importing the package leaves the backend alone), once a command runs.
    import matplotlib
    matplotlib.use("Agg")
    previous = signal.getsignal(signal.SIGTERM)
    if threading.current_thread() is threading.main_thread():
        # `kill` (a job scheduler's stop) ends a command like Ctrl-C: cleanly, and with the line.
        signal.signal(signal.SIGTERM, interrupt)
    try:
        with plain_warnings():  # "warning: ..." lines, not Python's file:line and source line
            check_device(args)
            start_distributed(args)
            run(args)
    except (ValueError, OSError, MissingExtraError) as error:
        # Errors of the user's data or choices: one clear message, not a traceback.
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"interrupted: {interrupted_message(args.command)}",
              file=sys.stderr)
        return 130
    except RuntimeError as error:
        if not lost_a_peer(error):
            raise
        # Another rank stopped (its own error is printed above) and this one lost its partner.
        first_line = str(error).strip().splitlines()[0][:300] if str(error).strip() else ""
        print(f"error: another process of this torchrun launch failed; its message is above "
              f"({type(error).__name__}: {first_line})", file=sys.stderr)
        return 2
    finally:
        if "deepfake_detector.distributed" in sys.modules:
            sys.modules["deepfake_detector.distributed"].stop()
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, previous)
    return 0


def lost_a_peer(error: RuntimeError) -> bool:
    """Under torchrun: the error of a collective whose other side went away (gloo says "closed by
    peer"; NCCL and the store raise torch.distributed's DistError)."""
    module = sys.modules.get("deepfake_detector.distributed")
    if module is None or not module.is_active():
        return False
    return isinstance(error, module.dist.DistError) or "peer" in str(error).lower()


def interrupt(signum, frame):
    raise KeyboardInterrupt


if __name__ == "__main__":
    sys.exit(main())
