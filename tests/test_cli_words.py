"""The command line speaks like a tool (issue 23): the name the user typed, every option with a help
text and its default, one line for a missing --weights, warnings and errors in the command line's
words, and short rounded summaries where evaluate printed 144 lines of JSON."""
from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from deepfake_detector import __version__
from deepfake_detector.cli import build_parser, main

from conftest import make_raw_dataset

CONSOLE_SCRIPT = Path(sys.executable).parent / "deepfake-detector"


def commands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(subparsers.choices)


def shown_options(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    return [a for a in parser._actions
            if a.option_strings and a.help is not argparse.SUPPRESS and a.dest != "help"]


def help_entries(text: str) -> dict[str, str]:
    """Each option's entry in --help output, joined into one line, by its first option string."""
    entries, current = {}, None
    for line in text.splitlines():
        start = re.match(r"^  (-{1,2}[\w-]+)", line)
        if start:
            current = start.group(1)
            entries[current] = line.strip()
        elif current and line.startswith("   "):
            entries[current] += " " + line.strip()
        else:
            current = None
    return entries


def test_every_option_of_every_command_has_a_help_text():
    empty = [f"{name} {action.option_strings[0]}"
             for name, parser in commands(build_parser()).items()
             for action in shown_options(parser) if not (action.help or "").strip()]
    assert empty == []


@pytest.mark.parametrize("prog", ["deepfake-detector", "python -m deepfake_detector"])
def test_help_names_the_program_and_states_every_default(prog):
    parser = build_parser(prog)
    top = parser.format_help()
    assert top.startswith(f"usage: {prog} ") and f"{prog} train " in top  # the examples too
    for name, command in commands(parser).items():
        text = command.format_help()
        assert text.startswith(f"usage: {prog} {name} "), name
        entries = help_entries(text)
        for action in shown_options(command):
            if action.default in (None, "", []) and not action.nargs == 0:
                continue  # nothing to state: the text says what happens without it
            entry = entries[action.option_strings[0]]
            assert "default" in entry.lower(), (name, entry)


def test_help_says_img_size_once_and_points_to_no_internal_file():
    parser = build_parser("deepfake-detector")
    texts = {name: command.format_help() for name, command in commands(parser).items()}
    assert "--image-size" not in texts["demo-data"] and "--img-size" in texts["demo-data"]
    old, new = (parser.parse_args(["demo-data", flag, "32"]) for flag in ("--image-size",
                                                                           "--img-size"))
    assert old.image_size == new.image_size == 32  # the old spelling still works, unlisted
    assert not [name for name, text in texts.items() if re.search(r"\w+\.py\b", text)]
    precision = " ".join(help_entries(texts["gradcam"])["--precision"].split())
    assert precision.count("faster on GPUs") == 1 and precision.count("fp32 (") == 1


def test_the_program_name_is_the_one_typed():
    from deepfake_detector.terminal import program_name
    assert program_name("/home/me/project/.venv/bin/deepfake-detector") == "deepfake-detector"
    assert program_name("/env/Scripts/deepfake-detector.exe") == "deepfake-detector"
    module = "python -m deepfake_detector"
    assert program_name("/site-packages/deepfake_detector/__main__.py") == module  # -m, torchrun
    assert program_name("-c") == program_name("") == module


@pytest.mark.skipif(not CONSOLE_SCRIPT.is_file(), reason=f"no console script at {CONSOLE_SCRIPT}")
def test_version_under_both_names():
    module = "python -m deepfake_detector"
    for argv, name in (([str(CONSOLE_SCRIPT)], "deepfake-detector"),
                       ([sys.executable, "-m", "deepfake_detector"], module)):
        result = subprocess.run(argv + ["--version"], capture_output=True, text=True, timeout=60)
        assert result.stdout.strip() == f"{name} {__version__}", result.stderr
        usage = subprocess.run(argv + ["train", "--help"], capture_output=True, text=True,
                               timeout=60).stdout
        assert usage.startswith(f"usage: {name} train ")


def test_a_missing_weights_choice_is_one_line_with_the_values(tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        main(["train", "--data", str(tmp_path)])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1, err
    for word in ("--weights", "imagenet", "internet", "none", "random init", ".pth"):
        assert word in err, word
    assert not any(tmp_path.iterdir())


def test_a_changed_split_is_refused_in_command_line_words(tmp_path, capsys):
    raw = make_raw_dataset(tmp_path / "raw", n_real=6, n_fake=6)
    assert main(["split", "--raw", str(raw), "--out", str(tmp_path / "data")]) == 0
    assert main(["split", "--raw", str(raw), "--out", str(tmp_path / "data"), "--seed", "1"]) == 2
    err = capsys.readouterr().err
    assert "--replace" in err and "another --out" in err
    assert "replace=True" not in err and "out_dir" not in err and "split_dataset" not in err


def test_library_words_become_options_but_paths_stay():
    from deepfake_detector.terminal import command_line_words
    message = ("Choose another out_dir, or move the files split_dataset did not write and pass "
               "replace=True (CLI: --replace). /data/out_dir/x and out_dir.txt stay.")
    assert command_line_words(message) == (
        "Choose another --out, or move the files the split command did not write and pass "
        "--replace. /data/out_dir/x and out_dir.txt stay.")


def test_warnings_print_as_one_plain_line_without_source(tmp_path):
    """Python's format is `file.py:64: UserWarning: ...` and then the source line: the command
    line prints `warning: ...` as its other lines. Through a real process, where warnings reach
    stderr (pytest records them): a split with a zero-byte image, which imports no torch."""
    raw = make_raw_dataset(tmp_path / "raw", n_real=4, n_fake=4)
    (raw / "real" / "empty.png").write_bytes(b"")
    result = subprocess.run([sys.executable, "-m", "deepfake_detector", "split", "--raw", str(raw),
                             "--out", str(tmp_path / "data")],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "warning: " in result.stderr and "empty.png" in result.stderr
    assert not re.search(r"\.py:\d+: \w*Warning", result.stderr), result.stderr
    import warnings
    from deepfake_detector.terminal import plain_warnings
    with plain_warnings():
        assert warnings.formatwarning("skipped", UserWarning, "p.py", 64, "for n in x:") == \
            "warning: skipped\n"


def unrounded(text: str) -> list[str]:
    return re.findall(r"\d\.\d{4,}", text)


def test_evaluate_prints_a_short_rounded_summary_and_json_on_request(trained_run, split_data,
                                                                     capsys, monkeypatch):
    """What the command prints, from the metrics evaluate_run returns (test_cli runs it for real;
    here its metrics are a run's validation metrics, with the issue's AUC of 16 digits)."""
    from deepfake_detector import inference
    metrics = {**json.loads((trained_run / "metrics_val.json").read_text()),
               "roc_auc": 0.8319444444444445, "split": "val"}
    monkeypatch.setattr(inference, "evaluate_run", lambda *args, **kwargs: metrics)
    argv = ["evaluate", "--run", str(trained_run), "--data", str(split_data)]
    assert main(argv) == 0
    summary = capsys.readouterr().out
    assert len(summary.strip().splitlines()) <= 8, summary
    for words in ("ROC-AUC    0.832 (95% CI", "accuracy", "EER", "threshold",
                  str(trained_run / "eval" / f"{split_data.name}-val")):  # evaluate_run's folder
        assert words in summary, words
    assert unrounded(summary) == [], summary
    assert main(argv + ["--json"]) == 0  # every digit, as metrics.json holds them
    assert json.loads(capsys.readouterr().out) == metrics


def test_trains_words_are_rounded(trained_run):
    """train's summary (metrics_val.json through metrics_summary) and its log lines."""
    from deepfake_detector.terminal import metrics_summary
    metrics = json.loads((trained_run / "metrics_val.json").read_text())
    metrics["roc_auc"] = 0.8319444444444445  # the example
    summary = metrics_summary(metrics, "validation", str(trained_run))
    assert "ROC-AUC    0.832" in summary and "converged" in summary
    assert unrounded(summary) == []
    log = (trained_run / "train.log").read_text()
    assert [line for line in log.splitlines() if "ROC-AUC" in line and unrounded(line)] == []
    assert "upscaled" not in log  # 32 px images at --img-size 32: nothing to say


def test_training_says_once_when_small_images_are_upscaled_a_long_way(tmp_path):
    from deepfake_detector.terminal import upscale_note
    raw = make_raw_dataset(tmp_path / "raw", n_real=3, n_fake=3, size=32)
    paths = sorted(raw.rglob("*.png"))
    note = upscale_note(paths, 224)
    assert note and "32 px" in note and "7x" in note and "--img-size 64" in note
    assert upscale_note(paths, 64) is None and upscale_note(paths, 32) is None
