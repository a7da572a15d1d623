"""Hostile manifests and hostile names (issue 21, sections 1, 4 and two of 6): a manifest never
leads outside its own folder, a restored file is checked against its hash, one bad name never
aborts a split, names that are not UTF-8 are written escaped, and the split manifest is written
last. In every test the raw data and a "victim" folder outside the output stay byte-identical."""
from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
import os
import shutil
import sys
import warnings
from pathlib import Path

import pytest

from deepfake_detector import split_files
from deepfake_detector.cli import main
from deepfake_detector.manifest import (RUN_MANIFEST, read_run_manifest, record_written,
                                        start_run_dir)
from deepfake_detector.run_dir import RunExistsError, prepare_run_dir
from deepfake_detector.split import SplitError, SplitWarning, split_dataset
from deepfake_detector.split_read import list_split, read_split_manifest

from conftest import make_raw_dataset


def tree(folder: Path) -> dict[str, str]:
    """Every file and link under folder (links not followed): its SHA-256, or where it points."""
    found = {}
    for root, dirs, files in os.walk(folder):
        for name in files + [d for d in dirs if os.path.islink(os.path.join(root, d))]:
            path = Path(root, name)
            key = os.fsencode(path.relative_to(folder)).decode("utf-8", "backslashreplace")
            found[key] = ("-> " + os.readlink(path) if path.is_symlink()
                          else hashlib.sha256(path.read_bytes()).hexdigest())
    return found


@contextlib.contextmanager
def untouched(*folders: Path):
    """The folders are byte-identical after the block (the raw data, the victim outside)."""
    before = [tree(folder) for folder in folders]
    yield
    assert [tree(folder) for folder in folders] == before


@pytest.fixture
def world(tmp_path) -> tuple[Path, Path, Path]:
    """(raw, data, victim): a tiny raw set split into data, and a folder outside both."""
    raw = make_raw_dataset(tmp_path / "raw", n_real=4, n_fake=4, size=16)
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "v.txt").write_text("the victim's own file")
    quietly(split_dataset, raw, tmp_path / "data")
    return raw, tmp_path / "data", victim


def quietly(function, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return function(*args, **kwargs)


def edit_manifest(data: Path, number: int, **changes) -> dict:
    """Change row `number` (from 1) of data/split.csv; returns the row as it was."""
    with open(data / "split.csv", newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        columns, rows = reader.fieldnames, list(reader)
    original = dict(rows[number - 1])
    rows[number - 1].update(changes)
    with open(data / "split.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    return original


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    errors = [line for line in err if line.startswith("error:")]
    assert len(errors) == 1, err
    return errors[0]


# --- 1. a split manifest cannot point outside the split -----------------------------------------


@pytest.mark.parametrize("column, value", [
    ("path", "../victim/x.png"),  # data/../victim: the victim folder beside data and raw
    ("path", "ABSOLUTE"),
    ("source", "../victim/v.txt"),
])
def test_a_split_manifest_row_leading_outside_is_refused_naming_the_row(world, capsys,
                                                                        column, value):
    raw, data, victim = world
    value = str(victim / "x.png") if value == "ABSOLUTE" else value
    original = edit_manifest(data, 2, **{column: value})
    (data / original["path"]).unlink()  # a file to restore: what used to be copied from `value`
    with untouched(raw, victim, data):
        assert main(["split", "--raw", str(raw), "--out", str(data)]) == 2
    line = one_error_line(capsys)
    assert "split.csv, row 2" in line and value in line and column in line


def test_a_linked_split_folder_is_not_written_through(world, capsys):
    raw, data, victim = world
    shutil.rmtree(data / "train" / "real")
    os.symlink(victim, data / "train" / "real")  # its files are now "missing": restored where?
    with untouched(raw, victim, data):
        assert main(["split", "--raw", str(raw), "--out", str(data)]) == 2
    line = one_error_line(capsys)
    assert "split.csv, row" in line and "outside" in line


def test_a_restored_file_is_checked_against_its_sha256(world, capsys):
    raw, data, victim = world
    rows = read_split_manifest(data)
    other = next(row for row in rows[1:] if row["label"] == rows[0]["label"])
    edit_manifest(data, 1, source=other["source"])  # inside raw, but other bytes
    (data / rows[0]["path"]).unlink()
    with untouched(raw, victim, data):
        assert main(["split", "--raw", str(raw), "--out", str(data)]) == 2
    line = one_error_line(capsys)
    assert "split.csv, row 1" in line and other["source"] in line and "SHA-256" in line
    assert not (data / rows[0]["path"]).exists()


def test_inside_is_the_one_containment_check(tmp_path):
    from deepfake_detector.files import inside
    (tmp_path / "run" / "sub").mkdir(parents=True)
    os.symlink(tmp_path, tmp_path / "run" / "up")
    assert inside(tmp_path / "run", "sub/a.png") == (tmp_path / "run" / "sub" / "a.png").resolve()
    assert inside(tmp_path / "run", "sub/../a.png") == (tmp_path / "run" / "a.png").resolve()
    for bad in ("../x", "/etc/passwd", "sub/../../x", "up/x", "", "..", 3, None):
        with pytest.raises(ValueError):
            inside(tmp_path / "run", bad)
    assert inside(tmp_path / "run", "up", follow_links=False).name == "up"  # a link itself


# --- 1 and 6. the run manifest: entries leading out or malformed are not ours --------------------


@pytest.mark.parametrize("entry", ["a string", {}, {"bytes": "1", "mtime_ns": 1, "sha256": "x"}])
def test_a_malformed_run_manifest_entry_means_not_ours_in_one_line(tmp_path, entry):
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "v.txt").write_text("keep")
    run = start_run_dir(tmp_path / "run")
    (run / "log.txt").write_text("ours")
    (run / "notes.txt").write_text("whose?")
    record_written(run, [run / "log.txt"])
    manifest = json.loads((run / RUN_MANIFEST).read_text())
    manifest["files"]["notes.txt"] = entry
    (run / RUN_MANIFEST).write_text(json.dumps(manifest))
    with untouched(victim, run):
        with pytest.raises(RunExistsError, match=r"(?s)1 file\(s\).*notes.txt"):
            prepare_run_dir(str(run), overwrite=True)
    assert set(read_run_manifest(run)["files"]) == {"log.txt"}


def test_run_manifest_entries_leading_outside_are_ignored(tmp_path):
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "v.txt").write_text("keep")
    run = start_run_dir(tmp_path / "run")
    (run / "log.txt").write_text("ours")
    record_written(run, [run / "log.txt"])
    manifest = json.loads((run / RUN_MANIFEST).read_text())
    entry = manifest["files"]["log.txt"]
    outside = {"../victim/v.txt": entry, str(victim / "v.txt"): entry, "a/../../victim/v.txt": entry}
    manifest["files"].update(outside)
    (run / RUN_MANIFEST).write_text(json.dumps(manifest))
    assert set(read_run_manifest(run)["files"]) == {"log.txt"}
    with untouched(victim):
        assert prepare_run_dir(str(run), overwrite=True) == run
    assert [p.name for p in run.iterdir()] == [RUN_MANIFEST]


# --- 6. a split manifest with a missing column or an unknown label: one line ---------------------


def test_a_split_manifest_without_a_column_gets_one_line(world, capsys):
    raw, data, victim = world
    with open(data / "split.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    with open(data / "split.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=[c for c in rows[0] if c != "bytes"],
                                extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    with untouched(raw, victim, data):
        assert main(["split", "--raw", str(raw), "--out", str(data)]) == 2
        with pytest.raises(SplitError, match="split.csv lacks the column.s. bytes"):
            list_split(data, "train")
    assert "split.csv lacks the column(s) bytes" in one_error_line(capsys)


def test_a_split_manifest_with_an_unknown_label_gets_one_line(world, capsys):
    raw, data, victim = world
    edit_manifest(data, 3, label="REAL")
    with untouched(raw, victim, data):
        assert main(["split", "--raw", str(raw), "--out", str(data)]) == 2
        with pytest.raises(SplitError, match=r"split.csv, row 3 .*label 'REAL'"):
            list_split(data, "train")
    assert "split.csv, row 3 (line 4): label 'REAL'" in one_error_line(capsys)


# --- 4. one bad name never aborts a split; the manifest is written last ----------------------------


def test_a_long_name_and_a_deep_folder_do_not_abort_the_split(tmp_path):
    raw = make_raw_dataset(tmp_path / "raw", n_real=3, n_fake=3, size=16)
    victim = tmp_path / "victim"
    victim.mkdir()
    picture = (raw / "real" / "real (0).png").read_bytes()
    long_name = "x" * 246 + ".png"  # fits; its temporary name '.….partial' would not
    (raw / "real" / long_name).write_bytes(picture + b"1")  # bytes after the image end: distinct
    deep = raw / "fake" / Path(*["level"] * 50)  # 'level__level__…' flattened: 350 bytes
    deep.mkdir(parents=True)
    (deep / "a.png").write_bytes(picture + b"2")
    (deep / "b.png").write_bytes(picture + b"3")
    with untouched(raw, victim):
        summary = quietly(split_dataset, raw, tmp_path / "data")
        assert summary.status == "created" and not summary.excluded
        rows = read_split_manifest(tmp_path / "data")
        assert len(rows) == 9 and len({row["path"] for row in rows}) == 9
        names = {row["source"]: Path(row["path"]).name for row in rows}
        assert names[f"real/{long_name}"] == long_name  # kept as it is where it fits
        shortened = [names[f"fake/{'level/' * 50}{x}.png"] for x in "ab"]
        assert shortened[0] != shortened[1]
        assert all(name.endswith(".png") and len(name.encode()) <= 255
                   and name.startswith("level__") for name in shortened)
        for row in rows:
            assert (tmp_path / "data" / row["path"]).read_bytes() == (raw / row["source"]).read_bytes()
        assert not [p for p in (tmp_path / "data").rglob("*partial*")]
        again = quietly(split_dataset, raw, tmp_path / "data")
        assert again.status == "unchanged" and again.restored == 0


def test_an_interrupted_split_leaves_no_manifest_claiming_missing_files(tmp_path, monkeypatch):
    raw = make_raw_dataset(tmp_path / "raw", n_real=4, n_fake=4, size=16)
    data, victim = tmp_path / "data", tmp_path / "victim"
    victim.mkdir()
    real_copy, calls = shutil.copyfile, []

    def copy_then_crash(source, destination):
        calls.append(source)
        if len(calls) == 3:
            raise OSError(28, "No space left on device")
        return real_copy(source, destination)
    with untouched(raw, victim):
        monkeypatch.setattr(split_files.shutil, "copyfile", copy_then_crash)
        with pytest.raises(OSError, match="No space"):
            quietly(split_dataset, raw, data)
        assert not (data / "split.csv").exists() and not (data / "split.json").exists()
        with pytest.raises(SplitError, match="interrupted.*Run the same split command again"):
            list_split(data, "train")
        monkeypatch.setattr(split_files.shutil, "copyfile", real_copy)
        summary = quietly(split_dataset, raw, data)
        assert summary.status == "unchanged" and summary.restored == 6
        rows = read_split_manifest(data)
        assert all((data / row["path"]).is_file() for row in rows) and len(rows) == 8
        assert sorted(p.name for p in data.iterdir()) == ["split.csv", "split.json", "train", "val"]


def bytes_name(folder: Path, name: bytes) -> Path:
    """A file whose name is the given bytes (not UTF-8); skips where the filesystem refuses."""
    target = os.path.join(os.fsencode(folder), name)
    try:
        with open(target, "wb"):
            pass
    except OSError:
        pytest.skip("this filesystem only takes UTF-8 file names")
    os.remove(target)
    return Path(os.fsdecode(target))


def test_a_non_utf8_name_is_left_out_of_a_split_and_named_escaped(tmp_path):
    raw = make_raw_dataset(tmp_path / "raw", n_real=3, n_fake=3, size=16)
    victim = tmp_path / "victim"
    victim.mkdir()
    shutil.copyfile(raw / "real" / "real (0).png", bytes_name(raw / "real", b"caf\xe9.png"))
    with untouched(raw, victim), pytest.warns(SplitWarning, match=r"real/caf\\xe9.png: its name "
                                                                   "is not valid UTF-8"):
        summary = split_dataset(raw, tmp_path / "data")
    assert summary.excluded == [("real/caf\\xe9.png", summary.excluded[0][1])]
    record = json.loads((tmp_path / "data" / "split.json").read_bytes().decode("utf-8"))
    assert record["excluded"][0]["source"] == "real/caf\\xe9.png"
    assert len(read_split_manifest(tmp_path / "data")) == 6


def test_a_hand_made_split_with_a_non_utf8_name_is_read_and_audited(tmp_path):
    """What `train` does with a hand-made folder before it trains: read the items, audit them."""
    from deepfake_detector.audit import audit_split
    from deepfake_detector.train import usable_split
    hand, victim = tmp_path / "hand", tmp_path / "victim"
    make_raw_dataset(hand / "train", n_real=3, n_fake=3, size=16)
    make_raw_dataset(hand / "val", n_real=2, n_fake=2, size=16, seed=1)
    shutil.copyfile(hand / "train" / "real" / "real (0).png",
                    bytes_name(hand / "train" / "real", b"caf\xe9.png"))
    victim.mkdir()
    with untouched(hand, victim):
        with pytest.warns(SplitWarning, match=r"train/real/caf\\xe9.png: its name is not valid"):
            assert len(usable_split(hand, "train")) == 6
        quietly(audit_split, hand, out_dir=tmp_path / "audit")
    audit = (tmp_path / "audit" / "audit.json").read_bytes().decode("utf-8")
    assert "caf\\\\xe9.png" in audit  # escaped once by printable, once more by JSON
    (tmp_path / "audit" / "audit.md").read_bytes().decode("utf-8")


def test_predict_over_a_non_utf8_name_writes_it_escaped(trained_run, tmp_path, monkeypatch):
    folder, victim = tmp_path / "images", tmp_path / "victim"
    make_raw_dataset(folder, n_real=2, n_fake=0, size=16)
    shutil.copyfile(folder / "real" / "real (0).png", bytes_name(folder / "real", b"caf\xe9.png"))
    victim.mkdir()
    with untouched(folder, victim, trained_run):
        assert main(["predict", "--run", str(trained_run), "--out", str(tmp_path / "p.csv"),
                     str(folder / "real")]) == 0
        with open(tmp_path / "p.csv", newline="", encoding="utf-8") as f:
            ids = sorted(row["image_id"] for row in csv.DictReader(f))
        assert ids == ["caf\\xe9.png", "real (0).png", "real (1).png"]
        stdout = io.TextIOWrapper(io.BytesIO(), encoding="utf-8", errors="strict")
        monkeypatch.setattr(sys, "stdout", stdout)
        assert main(["predict", "--run", str(trained_run), str(folder / "real")]) == 0
        stdout.flush()
        printed = json.loads(stdout.buffer.getvalue().decode("utf-8"))
    assert sorted(row["image_id"] for row in printed) == ids
