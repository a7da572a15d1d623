"""split.py: raw files stay untouched, counts are exact, groups stay whole, re-runs are safe."""
import errno
import hashlib
import json
import os
import random
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

from deepfake_detector import discovery, split_files, split_read
from deepfake_detector.discovery import (check_image, class_of_folder, find_class_folders,
                                         find_images, raw_has_images)
from deepfake_detector.split import SplitError, SplitExistsError, SplitWarning, split_dataset
from deepfake_detector.split_plan import plan_split, split_targets
from deepfake_detector.split_read import list_split, read_split_manifest


def make_image(path: Path, seed: int, size: int = 8, format: str | None = None) -> Path:
    """A tiny image whose bytes are unique to its seed."""
    pixels = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, format=format)
    return path


def make_raw(root: Path, n_real: int = 50, n_fake: int = 30, real: str = "real",
             fake: str = "fake") -> Path:
    raw = root / "raw"
    for i in range(n_real):
        make_image(raw / real / f"r{i:03d}.png", seed=i)
    for i in range(n_fake):
        make_image(raw / fake / f"f{i:03d}.png", seed=10_000 + i)
    return raw


def snapshot(folder: Path) -> dict[str, tuple]:
    """Every file under folder, hidden ones too: content hash, inode, modification time."""
    files = {}
    for root, _, names in os.walk(folder):
        for name in names:
            path = Path(root, name)
            stat = path.stat()
            files[path.relative_to(folder).as_posix()] = (
                hashlib.sha256(path.read_bytes()).hexdigest(), stat.st_ino, stat.st_mtime_ns)
    return files


def split_quietly(*args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SplitWarning)
        return split_dataset(*args, **kwargs)


def files_in_split_folders(out: Path) -> set[str]:
    return {p.relative_to(out).as_posix() for s in split_read.SPLITS if (out / s).is_dir()
            for p in (out / s).rglob("*") if p.is_file()}


def assignment(out: Path) -> dict[str, str]:
    return {row["source"]: row["split"] for row in read_split_manifest(out)}


# --- raw data is only ever read ----------------------------------------------------------------


@pytest.mark.parametrize("link_mode", ["copy", "hardlink"])
def test_raw_files_are_never_moved_edited_or_deleted(tmp_path, link_mode):
    raw = make_raw(tmp_path, 20, 12)
    make_image(raw / "real" / "vid 1" / "0000 (10).jpg", seed=99)
    (raw / "fake" / "broken.jpg").write_text("not an image")
    (raw / "fake" / ".DS_Store").write_bytes(b"\0\1")
    before = snapshot(raw)
    out = tmp_path / "data"

    split_quietly(raw, out, link_mode=link_mode)
    split_quietly(raw, out, link_mode=link_mode)
    split_quietly(raw, out, seed=1, link_mode=link_mode, replace=True)
    assert snapshot(raw) == before

    row = read_split_manifest(out)[0]
    same_inode = (out / row["path"]).stat().st_ino == (raw / row["source"]).stat().st_ino
    assert same_inode == (link_mode == "hardlink")


def test_hardlink_falls_back_to_copy_with_a_note(tmp_path, monkeypatch):
    def no_links(src, dst):
        raise OSError(errno.EXDEV, "Invalid cross-device link")
    monkeypatch.setattr(split_files.os, "link", no_links)
    summary = split_quietly(make_raw(tmp_path, 5, 5), tmp_path / "data", link_mode="hardlink")
    assert any("copied instead" in w and "10 files" in w for w in summary.warnings)
    assert len(files_in_split_folders(tmp_path / "data")) == 10


# --- counts ------------------------------------------------------------------------------------


@pytest.mark.parametrize("n_real, n_fake, val, test, expected", [
    (50, 30, 0.2, 0.0, {"train": (40, 24), "val": (10, 6)}),
    (50, 30, 0.1, 0.1, {"train": (40, 24), "val": (5, 3), "test": (5, 3)}),
    (10, 5, 0.2, 0.0, {"train": (8, 4), "val": (2, 1)}),
    (3, 2, 0.1, 0.1, {"train": (1, 1), "val": (1, 1), "test": (1, 0)}),
])
def test_split_is_stratified_and_exact(tmp_path, n_real, n_fake, val, test, expected):
    out = tmp_path / "data"
    summary = split_quietly(make_raw(tmp_path, n_real, n_fake), out, val_fraction=val,
                            test_fraction=test)
    assert summary.status == "created"
    assert summary.counts == {s: {"real": r, "fake": f} for s, (r, f) in expected.items()}
    for s, (n_r, n_f) in expected.items():  # the folders hold what the summary says
        assert len(find_images(out / s / "real")) == n_r
        assert len(find_images(out / s / "fake")) == n_f if n_f else not (out / s / "fake").exists()
    assert files_in_split_folders(out) == {row["path"] for row in read_split_manifest(out)}


@pytest.mark.parametrize("n, val, test, expected", [
    (2, 0.2, 0.0, {"val": 1, "test": 0}),      # at least one in val, one left for train
    (2, 0.1, 0.1, {"val": 1, "test": 0}),      # too few for test as well
    (3, 0.1, 0.1, {"val": 1, "test": 1}),
    (3, 0.5, 0.4, {"val": 1, "test": 1}),      # train keeps one
    (50, 0.2, 0.0, {"val": 10, "test": 0}),
    (25, 0.1, 0.0, {"val": 3, "test": 0}),     # 2.5 rounds up
    (1000, 0.1, 0.1, {"val": 100, "test": 100}),
])
def test_split_targets(n, val, test, expected):
    assert split_targets(n, val, test) == expected


def test_manifest_records_every_image(tmp_path):
    raw = make_raw(tmp_path, 4, 3)
    make_image(raw / "fake" / "gray.jpg", seed=7, size=12)
    Image.open(raw / "fake" / "gray.jpg").convert("L").save(raw / "fake" / "gray.jpg")
    out = tmp_path / "data"
    split_quietly(raw, out)
    rows = {row["source"]: row for row in read_split_manifest(out)}
    assert list(next(iter(rows.values())))[:11] == list(split_read.MANIFEST_COLUMNS)
    gray = rows["fake/gray.jpg"]
    assert (gray["format"], gray["width"], gray["height"], gray["mode"]) == ("JPEG", 12, 12, "L")
    assert gray["bytes"] == (raw / "fake" / "gray.jpg").stat().st_size
    assert gray["sha256"] == hashlib.sha256((raw / "fake" / "gray.jpg").read_bytes()).hexdigest()
    assert gray["label"] == "fake" and gray["path"].startswith(f"{gray['split']}/fake/")
    record = json.loads((out / "split.json").read_text())
    assert record["settings"] == {"raw_dir": str(raw.resolve()), "val_fraction": 0.2,
                                  "test_fraction": 0.0, "seed": 0, "group_by": None,
                                  "link_mode": "copy"}
    assert record["counts"] == {"train": {"real": 3, "fake": 3}, "val": {"real": 1, "fake": 1}}
    assert record["package_version"] and record["created"]


# --- determinism -------------------------------------------------------------------------------


def test_same_seed_same_split_other_seed_other_split(tmp_path, monkeypatch):
    raw = make_raw(tmp_path)
    first = split_quietly(raw, tmp_path / "a", seed=0)
    split_quietly(raw, tmp_path / "b", seed=0)
    split_quietly(raw, tmp_path / "c", seed=1)
    assert assignment(tmp_path / "a") == assignment(tmp_path / "b")
    assert assignment(tmp_path / "a") != assignment(tmp_path / "c")
    assert split_quietly(raw, tmp_path / "c", seed=1).counts == first.counts

    real_walk = os.walk  # a filesystem that lists everything backwards gives the same split

    def backwards_walk(top, *args, **kwargs):
        for root, dirs, files in real_walk(top, *args, **kwargs):
            dirs.reverse()
            yield root, dirs, files[::-1]
    monkeypatch.setattr(discovery.os, "walk", backwards_walk)
    split_quietly(raw, tmp_path / "d", seed=0)
    assert assignment(tmp_path / "d") == assignment(tmp_path / "a")


# --- finding folders and images ----------------------------------------------------------------


@pytest.mark.parametrize("real, fake", [
    ("real", "fake"), ("Real", "Fake"), ("REAL", "FAKE"), ("real_data", "fake_data"),
    ("0_real", "1_fake"), ("Real Images", "fake-images"), ("reals", "Fakes"),
])
def test_class_folder_spellings(tmp_path, real, fake):
    raw = make_raw(tmp_path, 5, 5, real=real, fake=fake)
    (raw / "notes").mkdir()
    assert find_class_folders(raw) == {"real": raw / real, "fake": raw / fake}
    assert split_quietly(raw, tmp_path / "data").counts["val"] == {"real": 1, "fake": 1}


@pytest.mark.parametrize("name", ["realistic", "unreal", "real_fake", "fake2real", "other", "data"])
def test_other_folder_names_are_not_classes(name):
    assert class_of_folder(name) is None


def test_two_folders_of_one_class_is_an_error_naming_both(tmp_path):
    raw = make_raw(tmp_path, 3, 3)
    make_image(raw / "Real" / "x.png", seed=1)
    with pytest.raises(SplitError, match="'Real' and 'real'"):
        split_dataset(raw, tmp_path / "data")


def test_awkward_file_names(tmp_path):
    raw = make_raw(tmp_path, 6, 6)
    names = ["0000 (10).jpg", "[crop] face #2.png", "日本語 é ü.png", "vid 1/frame (2).JPG",
             "a & b;c'.png"]
    for i, name in enumerate(names):
        make_image(raw / "real" / name, seed=500 + i)
    out = tmp_path / "data"
    split_quietly(raw, out)
    rows = {row["source"]: row for row in read_split_manifest(out)}
    for name in names:
        row = rows[f"real/{name}"]
        assert row["path"].endswith("/" + name.replace("/", "__"))
        assert (out / row["path"]).read_bytes() == (raw / "real" / name).read_bytes()
    assert len(list_split(out, "train")) + len(list_split(out, "val")) == 17


def test_extensions_in_any_case_hidden_files_ignored(tmp_path):
    folder = tmp_path / "images"
    wanted = ["a.JPG", "b.Jpeg", "c.PNG", "d.bmp", "e.WEBP", "f.tif", "g.TIFF", "h.gif",
              "sub/h.png"]
    for i, name in enumerate(wanted):
        make_image(folder / name, seed=i)
    for name in ["notes.txt", ".DS_Store", "._a.JPG", ".hidden/x.png",
                 ".ipynb_checkpoints/y.png"]:
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(b"junk")
    assert [p.relative_to(folder).as_posix() for p in find_images(folder)] == wanted
    assert len(find_images(folder, recursive=False)) == 8
    assert all(check_image(p) is None for p in find_images(folder))


# --- bad files ---------------------------------------------------------------------------------


def bad_files(folder: Path) -> dict[str, str]:
    """name -> a word the reason must contain."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "text.jpg").write_text("this is not a picture")
    png = make_image(folder / "whole.png", seed=1, size=64).read_bytes()
    (folder / "truncated.png").write_bytes(png[: len(png) // 2])
    jpeg = make_image(folder / "whole.jpg", seed=2, size=64, format="JPEG").read_bytes()
    (folder / "truncated.jpg").write_bytes(jpeg[: len(jpeg) * 2 // 3])
    (folder / "whole.png").unlink()
    (folder / "whole.jpg").unlink()
    return {"empty.jpg": "empty", "text.jpg": "not an image", "truncated.png": "decoded",
            "truncated.jpg": "truncated"}


def test_check_image_names_the_problem(tmp_path):
    for name, word in bad_files(tmp_path).items():
        assert word in check_image(tmp_path / name), name
    assert check_image(make_image(tmp_path / "fine.png", seed=3)) is None
    assert "unreadable" in check_image(tmp_path / "missing.png")


def test_truncation_is_caught_even_where_pil_was_told_to_tolerate_it(tmp_path, monkeypatch):
    bad_files(tmp_path)
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)  # as some libraries do
    assert "truncated" in check_image(tmp_path / "truncated.jpg")
    assert ImageFile.LOAD_TRUNCATED_IMAGES is True  # and it is left as it was


def test_split_does_not_import_torch():
    code = "import sys, deepfake_detector.split; print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"


def test_bad_files_are_left_out_and_reported_in_one_warning(tmp_path):
    raw = make_raw(tmp_path, 10, 10)
    bad = bad_files(raw / "fake" / "broken")
    with pytest.warns(SplitWarning) as caught:
        summary = split_dataset(raw, tmp_path / "data")
    about_bad = [str(w.message) for w in caught if "broken/" in str(w.message)]
    assert len(about_bad) == 1
    assert all(f"fake/broken/{name}" in about_bad[0] for name in bad)
    assert sorted(source for source, _ in summary.excluded) == sorted(f"fake/broken/{n}" for n in bad)
    assert sum(summary.counts[s]["fake"] for s in summary.counts) == 10
    assert not any("broken" in row["source"] for row in read_split_manifest(tmp_path / "data"))
    record = json.loads((tmp_path / "data" / "split.json").read_text())
    assert len(record["excluded"]) == 4


# --- errors that name the path -----------------------------------------------------------------


def test_missing_raw_dir(tmp_path):
    with pytest.raises(SplitError, match="does not exist") as error:
        split_dataset(tmp_path / "nowhere", tmp_path / "data")
    assert str(tmp_path / "nowhere") in str(error.value) and "real/" in str(error.value)


def test_missing_class_folder(tmp_path):
    raw = make_raw(tmp_path, 5, 0)
    (raw / "fakes_v2").mkdir()  # "fakes" and "v" -> not a class name
    with pytest.raises(SplitError, match="No 'fake' class folder") as error:
        split_dataset(raw, tmp_path / "data")
    assert str(raw) in str(error.value) and "fake/" in str(error.value)


def test_wrapper_folder_gets_a_hint(tmp_path):
    make_raw(tmp_path / "zip", 3, 3)  # tmp/zip/raw/{real,fake}
    with pytest.raises(SplitError, match="Did you mean .*raw"):
        split_dataset(tmp_path / "zip", tmp_path / "data")


@pytest.mark.parametrize("content", ["nothing", "no images", "one image", "only broken"])
def test_class_folder_without_enough_images(tmp_path, content):
    raw = make_raw(tmp_path, 5, 0)
    fake = raw / "fake"
    fake.mkdir()
    if content == "no images":
        (fake / "readme.txt").write_text("hi")
        (fake / ".DS_Store").write_bytes(b"x")
    if content == "one image":
        make_image(fake / "one.png", seed=1)
    if content == "only broken":
        bad_files(fake)
    with pytest.raises(SplitError) as error:
        split_dataset(raw, tmp_path / "data")
    assert str(fake) in str(error.value)
    assert not (tmp_path / "data").exists()


@pytest.mark.parametrize("kwargs", [
    {"val_fraction": 0}, {"val_fraction": 1.2}, {"test_fraction": -0.1},
    {"val_fraction": 0.5, "test_fraction": 0.5}, {"link_mode": "move"}, {"seed": "zero"},
    {"group_by": "regex:("}, {"group_by": "no_such_file.csv"},
])
def test_bad_arguments(tmp_path, kwargs):
    with pytest.raises(SplitError):
        split_dataset(make_raw(tmp_path, 3, 3), tmp_path / "data", **kwargs)


@pytest.mark.parametrize("out", ["raw", "raw/data", "raw/real/data"])
def test_out_dir_in_raw_dir_is_refused(tmp_path, out):
    raw = make_raw(tmp_path, 3, 3)
    before = snapshot(raw)
    with pytest.raises(SplitError, match="raw data folder"):
        split_dataset(raw, tmp_path / out)
    assert snapshot(raw) == before


def test_raw_dir_in_a_split_folder_is_refused(tmp_path):
    raw = make_raw(tmp_path / "data" / "train", 3, 3)
    with pytest.raises(SplitError, match="inside .*train"):
        split_dataset(raw, tmp_path / "data")


# --- re-runs -----------------------------------------------------------------------------------


def test_rerun_changes_nothing_and_restores_deleted_files(tmp_path):
    raw, out = make_raw(tmp_path), tmp_path / "data"
    first = split_quietly(raw, out, test_fraction=0.1)
    before = snapshot(out)

    again = split_quietly(raw, out, test_fraction=0.1)
    assert again.status == "unchanged" and again.counts == first.counts
    assert snapshot(out) == before  # not one byte or time changed

    os.utime(raw / "real" / "r000.png", ns=(1, 1))  # touched, same bytes: still the same split
    assert split_quietly(raw, out, test_fraction=0.1).status == "unchanged"
    after = snapshot(out)  # split.json now remembers the new time; all else is as it was
    assert after.pop("split.json") != before.pop("split.json") and after == before

    gone = read_split_manifest(out)[-1]["path"]
    (out / gone).unlink()
    with pytest.warns(SplitWarning, match="Restored 1 split files"):
        restored = split_dataset(raw, out, test_fraction=0.1)
    assert restored.status == "unchanged" and restored.restored == 1
    assert snapshot(out)[gone][0] == before[gone][0]


def test_an_interrupted_split_is_completed_by_a_rerun(tmp_path, monkeypatch):
    raw, out = make_raw(tmp_path, 10, 10), tmp_path / "data"
    real_copy, calls = shutil.copyfile, []

    def copy_then_crash(src, dst):
        calls.append(src)
        if len(calls) == 7:
            raise KeyboardInterrupt
        return real_copy(src, dst)
    monkeypatch.setattr(split_files.shutil, "copyfile", copy_then_crash)
    with pytest.raises(KeyboardInterrupt):
        split_quietly(raw, out)
    monkeypatch.setattr(split_files.shutil, "copyfile", real_copy)
    summary = split_quietly(raw, out)
    assert summary.status == "unchanged" and summary.restored == 14
    assert files_in_split_folders(out) == {row["path"] for row in read_split_manifest(out)}


@pytest.mark.parametrize("change", [{"seed": 1}, {"val_fraction": 0.3}, {"test_fraction": 0.1},
                                    {"group_by": "folder"}, {"link_mode": "hardlink"}])
def test_other_settings_are_refused(tmp_path, change):
    raw, out = make_raw(tmp_path, 10, 10), tmp_path / "data"
    split_quietly(raw, out)
    before = snapshot(out)
    with pytest.raises(SplitExistsError) as error:
        split_dataset(raw, out, **change)
    message = str(error.value)
    assert next(iter(change)) in message and "replace=True" in message and "--replace" in message
    assert snapshot(out) == before


@pytest.mark.parametrize("change", ["added", "removed", "changed"])
def test_other_raw_files_are_refused(tmp_path, change):
    raw, out = make_raw(tmp_path, 10, 10), tmp_path / "data"
    split_quietly(raw, out)
    before = snapshot(out)
    if change == "added":
        make_image(raw / "fake" / "new.png", seed=777)
    if change == "removed":
        (raw / "fake" / "f003.png").unlink()
    if change == "changed":
        make_image(raw / "fake" / "f003.png", seed=778)
    with pytest.raises(SplitExistsError, match=f"1 raw files {change}, e.g. fake/"):
        split_dataset(raw, out)
    assert snapshot(out) == before


def test_hand_made_split_folders_are_refused_even_with_replace(tmp_path):
    raw, out = make_raw(tmp_path, 10, 10), tmp_path / "data"
    mine = make_image(out / "train" / "real" / "mine.png", seed=4242).read_bytes()
    with pytest.raises(SplitExistsError, match="not made by split_dataset"):
        split_dataset(raw, out)
    before = snapshot(out)
    with pytest.raises(SplitExistsError, match=r"(?s)did not write.*train/real/mine.png"):
        split_quietly(raw, out, replace=True)
    assert snapshot(out) == before and (out / "train/real/mine.png").read_bytes() == mine
    (out / "train" / "real" / "mine.png").unlink()  # moved away by its owner: now it goes ahead
    assert split_quietly(raw, out, replace=True).status == "replaced"  # its empty folders


def test_replace_refuses_over_foreign_files_and_deletes_only_its_own(tmp_path):
    """One policy with `train --overwrite`: a file split_dataset did not write (or an edited
    one) makes --replace refuse, naming it, and nothing is deleted."""
    raw, out = make_raw(tmp_path), tmp_path / "data"
    split_quietly(raw, out, seed=0)
    (out / "train" / "real" / "my notes.txt").write_text("keep me")
    edited = out / read_split_manifest(out)[0]["path"]
    (out / "README.md").write_text("my data folder")
    (out / "train" / "real" / ".DS_Store").write_bytes(b"clutter")
    before = snapshot(out)
    with pytest.raises(SplitExistsError, match=r"(?s)1 file\(s\).*train/real/my notes.txt"):
        split_quietly(raw, out, seed=1, replace=True)
    assert snapshot(out) == before
    (out / "train" / "real" / "my notes.txt").unlink()
    edited.write_bytes(edited.read_bytes() + b"edited")
    with pytest.raises(SplitExistsError, match="edited since"):
        split_quietly(raw, out, seed=1, replace=True)
    edited.unlink()
    summary = split_quietly(raw, out, seed=1, replace=True)
    assert summary.status == "replaced"
    split_quietly(raw, tmp_path / "fresh", seed=1)
    assert assignment(out) == assignment(tmp_path / "fresh")
    assert files_in_split_folders(out) == {row["path"] for row in read_split_manifest(out)}
    assert (out / "README.md").read_text() == "my data folder"  # outside the split folders


# --- groups ------------------------------------------------------------------------------------


def make_videos(root: Path, nested: bool) -> Path:
    """real: 10 videos of 5 frames and 2 loose images; fake: 8 videos of 5 frames."""
    raw = root / "raw"
    for label, n_videos, offset in (("real", 10, 0), ("fake", 8, 1000)):
        for v in range(n_videos):
            for f in range(5):
                name = f"vid{v:02d}/{f}.png" if nested else f"vid{v:02d}_{f}.png"
                make_image(raw / label / name, seed=offset + 10 * v + f)
    make_image(raw / "real" / "loose_a.png", seed=9001)
    make_image(raw / "real" / "loose_b.png", seed=9002)
    return raw


@pytest.mark.parametrize("nested, group_by", [(True, "folder"), (False, r"regex:^(vid\d+)_")])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_groups_stay_whole(tmp_path, nested, group_by, seed):
    raw, out = make_videos(tmp_path, nested), tmp_path / "data"
    with pytest.warns(SplitWarning) as caught:
        summary = split_dataset(raw, out, seed=seed, group_by=group_by, test_fraction=0.1)
    assert summary.n_groups == 10 + 2 + 8
    assert any("2 " in str(w.message) and "own" in str(w.message) for w in caught)
    splits_of_group = {}
    for row in read_split_manifest(out):
        splits_of_group.setdefault(row["group"], set()).add(row["split"])
    assert len(splits_of_group) == 20
    assert all(len(splits) == 1 for splits in splits_of_group.values())
    for s in ("train", "val", "test"):  # every split still gets both classes
        assert summary.counts[s]["real"] > 0 and summary.counts[s]["fake"] > 0


def test_group_csv(tmp_path):
    raw, out = make_videos(tmp_path, nested=False), tmp_path / "data"
    video = {p: p.stem[:5] if p.stem.startswith("vid") else p.stem  # vid03_2 -> vid03
             for label in ("real", "fake") for p in find_images(raw / label)}
    lines = ["path,group"] + [f"{p.relative_to(raw).as_posix()},{group}" for p, group in video.items()]
    groups_csv = tmp_path / "groups.csv"
    groups_csv.write_text("\n".join(lines + ["real/gone.png,vid00"]) + "\n")
    summary = split_quietly(raw, out, group_by=groups_csv)
    assert summary.n_groups == 10 + 2 + 8
    assert any("1 files listed in" in w and "real/gone.png" in w for w in summary.warnings)

    groups_csv.write_text("\n".join(lines[:-1]) + "\n")  # one image no longer listed
    with pytest.raises(SplitError, match="1 images are not listed .*fake/vid07_4.png"):
        split_dataset(raw, tmp_path / "other", group_by=groups_csv)


@pytest.mark.parametrize("seed", range(5))
def test_identical_bytes_never_straddle_splits(tmp_path, seed):
    raw, out = make_raw(tmp_path, 20, 20), tmp_path / "data"
    for i in range(6):  # six copies of one picture, under names far apart
        shutil.copyfile(raw / "real" / "r005.png", raw / "real" / f"z copy {i}.png")
    summary = split_quietly(raw, out, seed=seed)
    copies = {row["split"] for row in read_split_manifest(out)
              if row["sha256"] == hashlib.sha256((raw / "real" / "r005.png").read_bytes()).hexdigest()}
    assert len(copies) == 1
    assert summary.n_groups == 40


def test_same_bytes_in_both_classes_is_warned_and_kept_in_train(tmp_path):
    raw, out = make_raw(tmp_path, 10, 10), tmp_path / "data"
    shutil.copyfile(raw / "real" / "r001.png", raw / "fake" / "also real.png")
    summary = split_quietly(raw, out)
    assert any("both the real and the fake" in w and "fake/also real.png = real/r001.png" in w
               for w in summary.warnings)
    rows = {row["source"]: row for row in read_split_manifest(out)}
    assert rows["real/r001.png"]["split"] == rows["fake/also real.png"]["split"] == "train"


# --- the plan, without a disk ------------------------------------------------------------------

PLAN_SETTINGS = {"raw_dir": "/nowhere/raw", "val_fraction": 0.2, "test_fraction": 0.0, "seed": 0,
                 "group_by": None, "link_mode": "copy"}
PLAN_CLASS_FOLDERS = {"real": Path("/nowhere/raw/real"), "fake": Path("/nowhere/raw/fake")}


def record(label: str, in_class: str, content: str | None = None) -> dict:
    """What discovery.inspect_candidates records of an image, made up: no file behind it. Records
    with the same content are byte-identical copies."""
    content = f"{label}/{in_class}" if content is None else content
    return {"label": label, "source": f"{label}/{in_class}", "in_class": in_class,
            "sha256": hashlib.sha256(content.encode()).hexdigest(), "bytes": 100 + len(content),
            "format": "PNG", "width": 8, "height": 8, "mode": "RGB", "frames": 1}


def records(n_real: int, n_fake: int) -> list[dict]:
    return ([record("real", f"r{i:03d}.png") for i in range(n_real)] +
            [record("fake", f"f{i:03d}.png") for i in range(n_fake)])


@pytest.fixture
def no_disk(monkeypatch):
    """Any file access while the plan is made fails the test."""
    def refuse(*args, **kwargs):
        raise AssertionError(f"the split plan touched the disk: {args}")
    for name in ("stat", "lstat", "open", "scandir", "listdir", "walk", "link", "replace"):
        monkeypatch.setattr(os, name, refuse)
    monkeypatch.setattr("builtins.open", refuse)


def plan(recs: list[dict], excluded=(), group_of=None, **settings) -> dict:
    return plan_split(recs, list(excluded), {**PLAN_SETTINGS, **settings}, PLAN_CLASS_FOLDERS,
                      group_of)


def split_of(result: dict) -> dict[str, str]:
    return {row["source"]: row["split"] for row in result["rows"]}


@pytest.mark.parametrize("n_real, n_fake, val, test, expected", [
    (50, 30, 0.2, 0.0, {"train": (40, 24), "val": (10, 6)}),
    (50, 30, 0.1, 0.1, {"train": (40, 24), "val": (5, 3), "test": (5, 3)}),
])
def test_plan_is_stratified_and_exact_without_a_disk(no_disk, n_real, n_fake, val, test, expected):
    result = plan(records(n_real, n_fake), val_fraction=val, test_fraction=test)
    assert result["counts"] == {s: {"real": r, "fake": f} for s, (r, f) in expected.items()}
    assert result["n_groups"] == n_real + n_fake and result["notes"] == []
    rows = result["rows"]
    assert [row["path"] for row in rows] == [f"{row['split']}/{row['label']}/{row['source'][5:]}"
                                             for row in rows]
    assert list(rows[0]) == list(split_read.MANIFEST_COLUMNS)
    assert rows == sorted(rows, key=lambda row: (split_read.SPLITS.index(row["split"]),
                                                 row["label"] == "fake", row["path"]))


def test_plan_is_seeded_and_ignores_the_order_of_the_records(no_disk):
    recs = records(50, 30)
    first = plan(recs, seed=0)
    shuffled = recs[:]
    random.Random(1).shuffle(shuffled)
    assert plan(shuffled, seed=0) == first
    other = plan(recs, seed=1)
    assert split_of(other) != split_of(first) and other["counts"] == first["counts"]
    assert all("split" not in r and "group" not in r for r in recs)  # the caller's records as given


@pytest.mark.parametrize("group_by", ["folder", r"regex:^(vid\d+)_", "/nowhere/groups.csv"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_plan_never_lets_a_group_straddle_splits(no_disk, group_by, seed):
    recs, group_of = [], {}
    for label, n_videos in (("real", 10), ("fake", 8)):
        for v in range(n_videos):
            for f in range(5):
                name = f"vid{v:02d}/{f}.png" if group_by == "folder" else f"vid{v:02d}_{f}.png"
                recs.append(record(label, name))
                group_of[f"{label}/{name}"] = f"vid{v:02d}"
    recs += [record("real", "loose_a.png"), record("real", "loose_b.png")]
    group_of.update({"real/loose_a.png": None, "real/loose_b.png": None})
    result = plan(recs, group_by=group_by, test_fraction=0.1, seed=seed, group_of=group_of)
    assert result["n_groups"] == 10 + 8 + 2
    splits_of_group = {}
    for row in result["rows"]:
        splits_of_group.setdefault(row["group"], set()).add(row["split"])
    assert len(splits_of_group) == 20 and all(len(s) == 1 for s in splits_of_group.values())
    for s in ("train", "val", "test"):
        assert result["counts"][s]["real"] > 0 and result["counts"][s]["fake"] > 0


def test_plan_needs_the_group_file_read_for_it():
    with pytest.raises(ValueError, match="group_of"):
        plan(records(5, 5), group_by="/nowhere/groups.csv")


@pytest.mark.parametrize("seed", range(5))
def test_plan_keeps_byte_identical_files_together(no_disk, seed):
    recs = records(20, 20)
    recs += [record("real", f"z copy {i}.png", content="real/r005.png") for i in range(6)]
    recs.append(record("fake", "also real.png", content="real/r001.png"))
    result = plan(recs, seed=seed)
    splits = split_of(result)
    assert {splits[f"real/z copy {i}.png"] for i in range(6)} == {splits["real/r005.png"]}
    assert splits["real/r001.png"] == splits["fake/also real.png"] == "train"
    assert result["n_groups"] == 40
    assert any("7 images are byte-identical" in note for note in result["notes"])
    assert any("fake/also real.png = real/r001.png" in note for note in result["notes"])


def test_plan_reports_left_out_files_and_refuses_too_few(no_disk):
    excluded = [("fake/broken.jpg", "not an image"), ("fake/empty.png", "empty file (0 bytes)")]
    result = plan(records(5, 3), excluded)
    assert result["excluded"] == excluded
    assert any("Left out 2 files under /nowhere/raw" in note and "fake/broken.jpg: not an image"
               in note for note in result["notes"])
    with pytest.raises(SplitError, match=r"(?s)/nowhere/raw/fake has 1 readable.*fake/empty.png"):
        plan(records(5, 1), excluded)


# --- reading a split ---------------------------------------------------------------------------


def test_list_split_from_the_manifest(tmp_path):
    out = tmp_path / "data"
    split_quietly(make_raw(tmp_path, 50, 30), out, val_fraction=0.1, test_fraction=0.1)
    for s, (n_real, n_fake) in {"train": (40, 24), "val": (5, 3), "test": (5, 3)}.items():
        items = list_split(out, s)
        labels = [label for _, label in items]
        assert (labels.count(0), labels.count(1)) == (n_real, n_fake)
        assert all(path.is_file() and path.parent.name == ("real", "fake")[label]
                   for path, label in items)
    (out / read_split_manifest(out)[0]["path"]).unlink()
    with pytest.raises(SplitError, match="missing.*same settings"):
        list_split(out, "train")


def test_list_split_without_test_split(tmp_path):
    out = tmp_path / "data"
    split_quietly(make_raw(tmp_path, 5, 5), out)
    with pytest.raises(SplitError, match="no 'test' images.*test_fraction"):
        list_split(out, "test")


def test_list_split_from_hand_made_folders(tmp_path):
    data = tmp_path / "mine"
    for i in range(3):
        make_image(data / "train" / "Real" / f"{i}.png", seed=i)
        make_image(data / "train" / "FAKE" / "sub" / f"{i}.jpg", seed=10 + i)
    (data / "train" / "FAKE" / ".DS_Store").write_bytes(b"x")
    items = list_split(data, "train")
    assert [label for _, label in items] == [0, 0, 0, 1, 1, 1]
    with pytest.raises(SplitError, match=f"{data / 'val'}"):
        list_split(data, "val")


def test_raw_has_images(tmp_path):
    assert not raw_has_images(tmp_path / "missing")
    (tmp_path / "raw" / "real").mkdir(parents=True)
    (tmp_path / "raw" / "README.md").write_text("put images here")
    (tmp_path / "raw" / "real" / ".DS_Store").write_bytes(b"x")
    assert not raw_has_images(tmp_path / "raw")
    make_image(tmp_path / "raw" / "misplaced.JPG", seed=1, format="JPEG")
    assert raw_has_images(tmp_path / "raw")


def test_summary_prints_a_table(tmp_path):
    summary = split_quietly(make_raw(tmp_path, 50, 30), tmp_path / "data")
    text = str(summary)
    assert text.splitlines()[0].split() == ["split", "real", "fake", "total"]
    assert text.splitlines()[1].split() == ["train", "40", "24", "64"]
    assert text.splitlines()[2].split() == ["val", "10", "6", "16"]
    assert text.splitlines()[3].split() == ["total", "50", "30", "80"]
    assert "created" in text and "split.csv" in text
