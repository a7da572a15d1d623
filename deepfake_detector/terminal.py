"""What the command line prints for people, in the words of the command line. No torch here, so
the parser (and --help) stays instant.

    program_name()        the name the user typed: deepfake-detector, or python -m deepfake_detector
    HelpFormatter         --help states every option's default
    plain_warnings()      a warning is printed as "warning: ...", without Python's source lines
    metrics_summary()     a few rounded lines of metrics (train, evaluate); files keep every digit
    command_line_words()  the library's Python words in a message (replace=True, out_dir) as options
    interrupted_message() what Ctrl-C kept, and how to go on, per command
    upscale_note()        the one line training says when --img-size is far above the images' size
"""
from __future__ import annotations

import argparse
import contextlib
import math
import re
import sys
import warnings
from pathlib import Path

MODULE_PROGRAM = "python -m deepfake_detector"
CONSOLE_SCRIPT = "deepfake-detector"


def program_name(argv0: str | None = None) -> str:
    """The console script's name when that is what ran (deepfake-detector, deepfake-detector.exe);
    otherwise `python -m deepfake_detector`: under -m and torchrun sys.argv[0] is __main__.py, and
    from Python (main([...]) in a notebook or a test) it is whatever program imported the
    package."""
    argv0 = (sys.argv[0] if sys.argv else "") if argv0 is None else argv0
    name = Path(argv0).name.removesuffix(".exe")
    return CONSOLE_SCRIPT if name.startswith(CONSOLE_SCRIPT) else MODULE_PROGRAM


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """The description as written (its examples keep their columns), and each option's default
    after its help text (argparse.ArgumentDefaultsHelpFormatter's hook)."""

    def _get_help_string(self, action):
        return help_with_default(action)


# A help text that already states its default: "(default 224)", "default: the run's", "off by
# default".
STATES_ITS_DEFAULT = re.compile(r"\(default|default:|by default|%\(default\)", re.IGNORECASE)


def help_with_default(action: argparse.Action) -> str:
    """An option's help text with its default: "(default: 224)", "(off by default)" for a switch,
    "(probe on by default)" for a --no-probe switch. Unchanged where the text already speaks of its
    default, or where there is none to state (None: the text says what happens)."""
    text = action.help or ""
    if (not action.option_strings or action.default is argparse.SUPPRESS
            or STATES_ITS_DEFAULT.search(text)):
        return text
    if action.nargs == 0 and isinstance(action.const, bool):  # store_true / store_false
        if action.const:
            return f"{text} (off by default)"
        switched = action.option_strings[0].removeprefix("--no-").replace("-", " ")
        return f"{text} ({switched} on by default)"
    if action.default is None or action.default == "" or action.default == []:
        return text
    return f"{text} (default: %(default)s)"


def plain_warning(message, category, filename, lineno, line=None) -> str:
    """warnings.formatwarning for people: the message alone, as the commands' other lines."""
    return f"warning: {message}\n"


@contextlib.contextmanager
def plain_warnings():
    """While a command runs, warnings print as "warning: ..." (no file name, line number or
    source line); warnings that are recorded (pytest, catch_warnings) are untouched."""
    previous = warnings.formatwarning
    warnings.formatwarning = plain_warning
    try:
        yield
    finally:
        warnings.formatwarning = previous


# --------------------------------------------------------------------------- summaries

def rounded(value, digits: int = 3) -> str:
    return "undefined" if value is None else f"{value:.{digits}f}"


def interval(metrics: dict, key: str) -> str:
    ci = (metrics.get("ci") or {}).get(key)
    if not ci or None in ci:
        return ""
    return f" ({round(100 * metrics.get('ci_level', 0.95))}% CI {ci[0]:.3f}-{ci[1]:.3f})"


def metrics_summary(metrics: dict, title: str, written: str) -> str:
    """A few lines for people: ROC-AUC with its CI, accuracy at both thresholds, EER, whether
    training converged (when the metrics say), notes, and where the full-precision files are."""
    lines = [f"{title}: {metrics.get('n_images')} images ({metrics.get('n_real')} real, "
             f"{metrics.get('n_fake')} fake)"]
    weights = metrics.get("weights")
    if isinstance(weights, dict) and not weights.get("pretrained", True):
        lines[0] += ", RANDOM INIT backbone (not ImageNet-pretrained)"
    from .video_metrics import summary_lines  # frames of videos: the videos' numbers first
    lines += summary_lines(metrics)
    lines.append(f"  ROC-AUC    {rounded(metrics.get('roc_auc'))}{interval(metrics, 'roc_auc')}")
    accuracy = (f"  accuracy   {rounded(metrics.get('accuracy'))} at threshold "
                f"{metrics.get('threshold', 0.5):g}{interval(metrics, 'accuracy')}")
    if metrics.get("val_threshold") is not None:
        accuracy += (f"; {rounded(metrics.get('accuracy_at_val_threshold'))} at the threshold "
                     f"chosen on val, {metrics['val_threshold']:.3f}")
    lines.append(accuracy)
    if metrics.get("eer") is not None:
        at = metrics.get("eer_threshold")
        lines.append(f"  EER        {rounded(metrics['eer'])}"
                     + (f" (at P(fake) {at:.3f})" if at is not None else ""))
    if "converged" in metrics:  # the message starts "converged: " or "NOT CONVERGED: "
        lines.append(f"  converged  {'yes' if metrics['converged'] else 'NO'}: "
                     f"{metrics.get('message', '').split(': ', 1)[-1]}")
    lines += [f"  note: {note}" for note in metrics.get("notes") or []]
    lines.append(f"  written    {written}")
    return "\n".join(lines)


# --------------------------------------------------------------------------- the user's words

# The library's words, for notebook users, and what the command line calls the same thing.
# A word, not part of a path or a longer name: "out_dir." ends a sentence, "out_dir.txt" is a file.
WORD = r"(?<![\w/.-]){}(?![\w/-]|\.\w)"
PYTHON_TO_OPTIONS = ((r"replace=True \(CLI: --replace\)", "--replace"),
                     (r"replace=True", "--replace"),
                     (WORD.format("out_dir"), "--out"),
                     (WORD.format("raw_dir"), "--raw"),
                     (WORD.format("split_dataset"), "the split command"))


def command_line_words(message: str) -> str:
    """A split's message in the command line's words: `--replace`, `--out`, `--raw`."""
    for python, option in PYTHON_TO_OPTIONS:
        message = re.sub(python, option, message)
    return message


# Ctrl-C: one line per command, saying what was kept and how to go on.
KEPT_BY_DEFAULT = ("files are written whole or not at all, so what was written is kept; "
                   "re-running the same command carries on from there.")
KEPT_WHEN_INTERRUPTED = {
    "split": "the manifest and the files copied so far are kept (raw data untouched); re-running "
             "the same command carries on and copies the rest.",
    "train": "the run folder is kept, marked unfinished, with the features extracted before the "
             "last completed pass in the feature cache; re-running the same command replaces the "
             "unfinished run (no --overwrite needed) and carries on from the cached features.",
    "finetune": "the phase-2 folder is kept, marked unfinished; re-running the same command "
                "replaces it (no --overwrite needed).",
    "gradcam": "the overlays written so far are kept and listed in index.csv and summary.json; "
               "re-running the same command carries on with the images not yet explained.",
    "predict": "nothing partial is kept (the output file appears whole or not at all); "
               "re-running the same command starts again.",
}


def interrupted_message(command: str) -> str:
    return KEPT_WHEN_INTERRUPTED.get(command, KEPT_BY_DEFAULT)


# --------------------------------------------------------------------------- the images' size

UPSCALE_SAMPLE = 200  # train images whose headers are read (evenly spaced): milliseconds
FAR_BELOW = 3         # --img-size at least 3 times the median native long side: say so


def upscale_note(train_paths, img_size: int) -> str | None:
    """One line when --img-size is far above the training images' native size (32 px CIFAKE at
    224: each pixel becomes a 7 x 7 block), with a size that keeps the detail; None otherwise.
    From the headers of a sample of the train images (no pixel decoded)."""
    from .ood import native_long_side
    median = native_long_side(train_paths, at_most=UPSCALE_SAMPLE).get("median")
    if not median or img_size < FAR_BELOW * median:
        return None
    suggestion = min(img_size, max(64, 32 * math.ceil(2 * median / 32)))
    return (f"the training images are {median:g} px (median long side), upscaled "
            f"{img_size / median:.0f}x to --img-size {img_size}: slower and no more detail; "
            f"consider --img-size {suggestion}")
