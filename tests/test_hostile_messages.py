"""Hostile inputs, round two (issue 21, section 6): one clear line instead of a traceback, checked
before anything is written, and the one real bug among them (a probe val AUC of exactly 0 crashed
`train` before its checkpoint was written).

Every command goes through `cli.main` in-process. Options that argparse refuses are tested on the
parser alone (`build_parser`), so a check that is missing fails the test without starting the
work (an app, a 30000 px forward pass) it would have started.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from deepfake_detector.cli import build_parser, main

from conftest import make_split


def run_cli(argv, capsys) -> tuple[int, str]:
    """(exit code, stderr) of one command run in-process; argparse's refusals exit too."""
    try:
        code = main([str(a) for a in argv])
    except SystemExit as stop:
        code = stop.code
    return code, capsys.readouterr().err


def one_error_line(err: str) -> str:
    """The one line of an error (no traceback): `error: ...`."""
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, err
    return lines[0]


def parse_error(argv, capsys) -> str:
    """argparse's refusal of `argv`: exit code 2 and its error line."""
    with pytest.raises(SystemExit) as stop:
        build_parser().parse_args([str(a) for a in argv])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err.strip().splitlines()[-1]


def tree(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file()}


@pytest.fixture(scope="module")
def tiny_split(tmp_path_factory) -> Path:
    """5 real + 5 fake images of 32 px: 4 + 4 train, 1 + 1 val."""
    return make_split(tmp_path_factory.mktemp("tiny"), 5)


def no_work(monkeypatch) -> None:
    """From now on, starting a feature extraction fails the test: checks come before the work."""
    def extract_features(*args, **kwargs):
        raise AssertionError("the work started before the outputs were checked")
    monkeypatch.setattr("deepfake_detector.features.extract_features", extract_features)


QUICK_TRAIN = ["--weights", "none", "--img-size", "32", "--num-workers", "0"]


# ----------------------------------------------------------------------------- probe AUC 0

def test_train_with_a_probe_val_auc_of_0_writes_its_checkpoint(tiny_split, tmp_path, capsys):
    """One val image per class and --seed 2: the probe ranks the fake below the real (val ROC-AUC
    exactly 0), and the head-to-probe ratio divided by it. The run now completes, and the record
    says why there is no ratio."""
    out = tmp_path / "run"
    code, err = run_cli(["train", "--data", tiny_split, "--out", out, *QUICK_TRAIN,
                         "--cache-dir", "", "--seed", "2", "--epochs", "5"], capsys)
    assert code == 0, err
    assert (out / "checkpoint.pt").is_file() and (out / "report.md").is_file()
    metrics = json.loads((out / "metrics_val.json").read_text())
    if metrics["probe"]["roc_auc"] == 0:  # the case seen (it depends on the images and the seed)
        record = metrics["head_vs_probe"]
        assert record["auc_ratio"] is None and record["reached_probe"] is None
        assert "no ratio" in record["verdict"]


@pytest.mark.parametrize("head_auc, probe_auc", [(0.5, 0.0), (0.0, 0.0), (1.0, 0.0),
                                                 (0.5, float("nan"))])
def test_head_vs_probe_without_a_ratio(head_auc, probe_auc):
    from deepfake_detector.probe import head_vs_probe
    record = head_vs_probe(head_auc, probe_auc)
    assert record["auc_ratio"] is None and record["reached_probe"] is None
    assert "no ratio" in record["verdict"]
    json.dumps(record, allow_nan=False)  # metrics_val.json holds it


# ----------------------------------------------------------------------------- --device

def command_with_device(name: str, run: Path, data: Path, out: Path) -> list:
    return {"train": ["train", "--data", data, "--out", out, *QUICK_TRAIN, "--cache-dir", ""],
            "predict": ["predict", "--run", run, str(data / "val"), "--out", out / "p.csv"],
            "evaluate": ["evaluate", "--run", run, "--data", data, "--out", out],
            "lr-find": ["lr-find", "--data", data, *QUICK_TRAIN, "--cache-dir", "",
                        "--out", out]}[name]


@pytest.mark.parametrize("device", ["bogus", "", "cuda:7"])
@pytest.mark.parametrize("command", ["train", "predict", "evaluate", "lr-find"])
def test_a_device_this_machine_lacks_is_one_line_before_anything_is_written(
        command, device, trained_run, split_data, tmp_path, capsys):
    if device == "cuda:7" and torch.cuda.device_count() > 7:
        pytest.skip("this machine has a cuda:7")
    out = tmp_path / "out"
    code, err = run_cli(command_with_device(command, trained_run, split_data, out)
                        + ["--device", device], capsys)
    line = one_error_line(err)
    assert code == 2
    assert f"--device {device!r}" in line and "cpu" in line and "auto" in line
    assert not out.exists()


def test_pick_device_accepts_what_this_machine_has():
    from deepfake_detector.model import device_choices, pick_device
    assert pick_device("cpu") == torch.device("cpu")
    assert pick_device(torch.device("cpu")) == torch.device("cpu")
    for choice in device_choices():
        pick_device(choice)
    with pytest.raises(ValueError, match="--device 'meta' is not a device of this machine"):
        pick_device("meta")


# ----------------------------------------------------------------------------- --img-size

@pytest.mark.parametrize("command", ["train", "lr-find", "extract"])
def test_img_size_above_4096_is_refused_by_the_command_line(command, capsys):
    line = parse_error([command, "--weights", "none", "--img-size", "30000"], capsys)
    assert "--img-size" in line and "4096" in line and "GB" in line


def test_img_size_above_4096_is_refused_by_preprocessing_and_the_train_checks(tiny_split):
    from deepfake_detector.preprocessing import Preprocessing
    from deepfake_detector.train import TrainConfig, check_config
    with pytest.raises(ValueError, match="at most 4096.*GB"):
        Preprocessing(img_size=30000)
    assert Preprocessing(img_size=4096).img_size == 4096
    with pytest.raises(ValueError, match="at most 4096"):
        check_config(TrainConfig(data_dir=str(tiny_split), weights="none", img_size=30000))


def test_a_checkpoint_with_img_size_30000_is_refused_naming_it(run_to_change):
    from deepfake_detector.run_dir import CheckpointError, load_run
    path = run_to_change / "checkpoint.pt"
    torch.save(dict(torch.load(path, weights_only=True), img_size=30000), path)
    with pytest.raises(CheckpointError, match="checkpoint.pt: img_size must be at most 4096"):
        load_run(run_to_change)


# ----------------------------------------------------------------------------- feature cache

def test_a_damaged_feature_cache_entry_is_named_moved_aside_and_rebuilt(tiny_split, tmp_path,
                                                                        capsys):
    cache = tmp_path / "cache"
    extract = ["extract", "--data", tiny_split, *QUICK_TRAIN, "--cache-dir", cache,
               "--split", "val"]
    assert run_cli(extract, capsys)[0] == 0
    [entry] = cache.glob("features-*.pt")
    good = entry.read_bytes()
    entry.write_bytes(good[: len(good) // 3])  # truncated, as a full disk or a kill leaves it
    damaged = entry.read_bytes()
    with pytest.warns(UserWarning, match=f"{entry.name} is damaged.*moved aside") as caught:
        code, err = run_cli(extract, capsys)
    assert code == 0, err
    assert len([w for w in caught if "damaged" in str(w.message)]) == 1
    [aside] = cache.glob(f"{entry.name}.damaged-*")
    assert aside.read_bytes() == damaged  # kept as it was, never deleted
    assert torch.load(entry, weights_only=True)["features"].shape == (2, 512)  # rebuilt
    assert run_cli(extract, capsys)[0] == 0  # and read back from now on


def test_a_cache_entry_of_the_wrong_shape_is_moved_aside(tmp_path):
    from deepfake_detector.features import read_cache_entry
    entry = tmp_path / "features-x.pt"
    torch.save({"features": torch.zeros(3, 512)}, entry)
    with pytest.warns(UserWarning, match="features-x.pt is damaged"):
        assert read_cache_entry(entry, (2,)) is None
    assert not entry.exists() and len(list(tmp_path.glob("features-x.pt.damaged-*"))) == 1


# ----------------------------------------------------------------------------- run files

def test_a_config_json_that_is_a_list_is_named_by_evaluate_finetune_and_the_model_card(
        run_to_change, split_data, tmp_path, capsys):
    from deepfake_detector import uploads
    (run_to_change / "config.json").write_text("[1, 2]")
    before = tree(run_to_change)
    for argv in (["evaluate", "--run", run_to_change, "--data", split_data],
                 ["finetune", "--run", run_to_change, "--out", tmp_path / "phase2"]):
        code, err = run_cli(argv, capsys)
        line = one_error_line(err)
        assert code == 2 and "config.json must hold a JSON object" in line, line
    assert tree(run_to_change) == before and not (tmp_path / "phase2").exists()
    with pytest.raises(ValueError, match="config.json must hold a JSON object"):
        uploads.model_card(run_to_change, {"img_size": 32})


def test_an_img_size_that_is_a_string_is_named_with_its_file(run_to_change, split_data,
                                                             tmp_path, capsys):
    from deepfake_detector import uploads
    config = json.loads((run_to_change / "config.json").read_text())
    (run_to_change / "config.json").write_text(json.dumps({**config, "img_size": "abc"}))
    code, err = run_cli(["finetune", "--run", run_to_change, "--out", tmp_path / "p2"], capsys)
    line = one_error_line(err)
    assert code == 2 and not (tmp_path / "p2").exists()
    assert f"{run_to_change / 'config.json'}: img_size must be a whole number" in line
    assert "got 'abc'" in line and "fix the file" in line
    with pytest.raises(ValueError, match="config.json: img_size must be a whole number"):
        uploads.model_card(run_to_change, {"img_size": 32})
    code, err = run_cli(["evaluate", "--run", run_to_change, "--data", split_data], capsys)
    assert code == 2 and "config.json: img_size" in one_error_line(err)
    assert not (run_to_change / "eval").exists()
    # the checkpoint's own img_size: predict names the checkpoint and the field
    shutil.copy(run_to_change / "checkpoint.pt", tmp_path / "good.pt")
    path = run_to_change / "checkpoint.pt"
    torch.save(dict(torch.load(path, weights_only=True), img_size="abc"), path)
    code, err = run_cli(["predict", "--run", run_to_change, split_data / "val"], capsys)
    line = one_error_line(err)
    assert code == 2 and "checkpoint.pt: img_size must be a whole number" in line


def test_the_run_config_reader_accepts_what_train_writes(trained_run):
    from deepfake_detector.run_dir import read_run_config
    assert read_run_config(trained_run)["img_size"] == 32
    assert read_run_config(trained_run / "missing", required=False) is None


# ----------------------------------------------------------------------------- --port, --seed

@pytest.mark.parametrize("port", ["99999", "0", "-1", "http"])
def test_app_port_outside_1_to_65535_is_refused(port, capsys):
    line = parse_error(["app", "--run", "r", "--port", port], capsys)
    assert "--port" in line and "65535" in line


@pytest.mark.parametrize("seed", ["-1", "1e23", str(2**32), "x"])
@pytest.mark.parametrize("command", [["train", "--weights", "none"], ["split"], ["demo-data"],
                                     ["lr-find", "--weights", "none"],
                                     ["extract", "--weights", "none"]])
def test_every_seed_option_takes_0_to_2_to_the_32_minus_1(command, seed, capsys):
    line = parse_error([*command, "--seed", seed], capsys)
    assert "--seed" in line and "0 to 4294967295" in line


def test_seeds_at_the_bounds_parse_and_train_checks_its_seed(tiny_split):
    from deepfake_detector.train import TrainConfig, check_config
    for seed in ("0", str(2**32 - 1)):
        assert build_parser().parse_args(["split", "--seed", seed]).seed == int(seed)
    with pytest.raises(ValueError, match="seed must be a whole number from 0 to 4294967295"):
        check_config(TrainConfig(data_dir=str(tiny_split), weights="none", seed=-1))


# ----------------------------------------------------------------------------- outputs first

def test_lr_find_checks_its_outputs_before_the_work(tiny_split, tmp_path, monkeypatch, capsys):
    no_work(monkeypatch)
    a_file = tmp_path / "a_file"
    a_file.write_text("not a folder")
    outs = [a_file, a_file / "sub"] + ([Path("/dev/full")] if Path("/dev/full").exists() else [])
    for out in outs:
        code, err = run_cli(["lr-find", "--data", tiny_split, *QUICK_TRAIN, "--cache-dir", "",
                             "--out", out], capsys)
        line = one_error_line(err)
        assert code == 2 and f"--out {out}" in line and "not a folder" in line
    code, err = run_cli(["lr-find", "--data", tiny_split, *QUICK_TRAIN, "--cache-dir", a_file,
                         "--out", tmp_path / "lr"], capsys)
    assert code == 2 and f"--cache-dir {a_file} is not a folder" in one_error_line(err)
    assert a_file.read_text() == "not a folder" and not (tmp_path / "lr").exists()


@pytest.mark.parametrize("command", ["train", "extract"])
def test_a_cache_dir_that_is_a_file_is_refused_before_the_work(command, tiny_split, tmp_path,
                                                               monkeypatch, capsys):
    no_work(monkeypatch)
    a_file = tmp_path / "cache"
    a_file.write_text("not a folder")
    argv = [command, "--data", tiny_split, *QUICK_TRAIN, "--cache-dir", a_file]
    if command == "train":
        argv += ["--out", tmp_path / "run"]
    code, err = run_cli(argv, capsys)
    assert code == 2 and f"--cache-dir {a_file} is not a folder" in one_error_line(err)
    assert a_file.read_text() == "not a folder" and not (tmp_path / "run").exists()
