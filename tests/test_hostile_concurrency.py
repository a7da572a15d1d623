"""Two things at once (issue 21, sections 2 and 3): torchrun's ranks that must agree on their
inputs while the folder changes, and two commands writing one folder.

* Ranks: a real two-process gloo group, this process as rank 0 and a subprocess as rank 1 (no
  torchrun: its launcher adds seconds and nothing to what is tested). Rank 1 is given another
  folder than rank 0, and the folder rank 0 listed changes right after it listed it (the test
  edits it inside rank 0's broadcast, before any rank reads an image): deterministic.
* One writer per folder: the folder is held by another process, a plain `fcntl.flock` on the lock
  file in a subprocess (so these tests need nothing of the package to hold it), then killed with
  SIGKILL for the stale-lock case.
"""
from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import subprocess
import sys
import warnings
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from deepfake_detector.cli import main

ROOT = Path(__file__).resolve().parents[1]
LOCK = ".deepfake_detector.lock"  # folder_lock.LOCK_FILE, spelled out: what another process holds

HOLDER = r"""
import fcntl, os, sys
fds = []
for folder in sys.argv[1:]:
    os.makedirs(folder, exist_ok=True)
    fd = os.open(os.path.join(folder, ".deepfake_detector.lock"), os.O_RDWR | os.O_CREAT, 0o644)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    os.ftruncate(fd, 0)
    os.write(fd, b"%d\n" % os.getpid())
    fds.append(fd)
print("held", flush=True)
sys.stdin.read()
"""


@contextmanager
def held_by_another_process(*folders):
    """Another process holds the lock of each folder for the block; yields that process."""
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, *map(str, folders)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "held\n"
        yield holder
    finally:
        holder.kill()
        holder.wait(timeout=30)


def tree(root: Path) -> dict[str, str]:
    """Every file under root (hidden ones too) and folder, with its bytes' SHA-256."""
    found = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs:
            found[os.path.relpath(os.path.join(folder, name), root) + "/"] = "folder"
        for name in files:
            path = Path(folder, name)
            found[str(path.relative_to(root))] = hashlib.sha256(path.read_bytes()).hexdigest()
    return found


def lock_is_free(folder: Path) -> bool:
    """Whether no open file holds the folder's lock (a new open of the lock file can take it);
    leaves no lock file behind when there was none."""
    path = folder / LOCK
    existed = path.exists()
    fd = os.open(path, os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    finally:
        if not existed:
            path.unlink()
        os.close(fd)
    return True


def refused(capsys, folder: Path, pid: int) -> str:
    """The one line a refused command printed: it names the folder and the holder's pid."""
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert str(folder.resolve()) in err and f"pid {pid}" in err, err
    return err


# --- one writer per folder ------------------------------------------------------------------

def test_a_second_split_into_a_folder_being_written_refuses_naming_its_pid(raw_dataset, tmp_path,
                                                                           capsys):
    """Two splits into one --out at once both said "created", and left 1,060 files for 800 rows
    and images in train/ and val/ at once. The second now refuses and touches nothing."""
    from deepfake_detector import folder_lock
    assert folder_lock.LOCK_FILE == LOCK
    out = tmp_path / "data"
    assert main(["split", "--raw", str(raw_dataset), "--out", str(out)]) == 0
    capsys.readouterr()
    with held_by_another_process(out) as holder:
        before = tree(tmp_path)  # dataset_raw/ and data/, the holder's lock file included
        assert main(["split", "--raw", str(raw_dataset), "--out", str(out), "--replace"]) == 2
        assert "error:" in refused(capsys, out, holder.pid)
        # into a new folder too (the two splits of the issue): the first holds it, the second stops
        assert main(["split", "--raw", str(raw_dataset), "--out", str(out), "--seed", "3"]) == 2
        refused(capsys, out, holder.pid)
        assert tree(tmp_path) == before


def test_a_second_train_into_a_run_being_written_refuses_and_deletes_nothing(
        run_to_change, split_data, capsys):
    """Two trains into one --out ended in tracebacks, with one run's checkpoint beside the other's
    probe.json. The second now refuses before it writes (even with --overwrite)."""
    with held_by_another_process(run_to_change) as holder:
        before = tree(run_to_change)
        assert main(["train", "--data", str(split_data), "--out", str(run_to_change),
                     "--overwrite", "--weights", "none", "--img-size", "32", "--epochs", "1",
                     "--no-probe", "--cache-dir", "", "--num-workers", "0"]) == 2
        refused(capsys, run_to_change, holder.pid)
        assert tree(run_to_change) == before


def test_every_command_that_writes_a_folder_refuses_one_being_written(
        run_to_change, trained_run, split_data, tmp_path):
    """finetune, evaluate, gradcam, lr-find, robustness, cross-eval, audit, demo-data and the
    notebook, at their library entry points (which the notebook calls too)."""
    from deepfake_detector.audit import audit_split
    from deepfake_detector.config import TrainConfig
    from deepfake_detector.demo_data import generate_demo_data
    from deepfake_detector.explain import explain_run
    from deepfake_detector.finetune import finetune_layer4
    from deepfake_detector.folder_lock import FolderBusyError
    from deepfake_detector.inference import evaluate_run
    from deepfake_detector.lr_find import lr_find_on_data
    from deepfake_detector.notebook import execute_notebook
    from deepfake_detector.robustness import cross_dataset_row, robustness_table
    out = tmp_path / "out"
    config = TrainConfig(data_dir=str(split_data), weights="none", img_size=32, cache_dir="",
                         num_workers=0)
    commands = {
        "finetune": lambda: finetune_layer4(trained_run, out),
        "evaluate": lambda: evaluate_run(trained_run, split_data, out_dir=out, n_bootstrap=10),
        "gradcam": lambda: explain_run(trained_run, [split_data / "val"], out, max_images=2),
        "lr-find": lambda: lr_find_on_data(config, out),
        "robustness": lambda: robustness_table(run_to_change, split_data, n_bootstrap=10),
        "cross-eval": lambda: cross_dataset_row(run_to_change, split_data, n_bootstrap=10),
        "audit": lambda: audit_split(split_data, out),
        "demo-data": lambda: generate_demo_data(out, n_per_class=2, image_size=16),
        "notebook": lambda: execute_notebook(out_dir=out),
    }
    with held_by_another_process(out, run_to_change) as holder:
        before = tree(tmp_path)
        for name, command in commands.items():
            with pytest.raises(FolderBusyError, match=f"pid {holder.pid}") as caught:
                command()
            assert str((run_to_change if name in ("robustness", "cross-eval") else out).resolve()) \
                in str(caught.value), name
        assert tree(tmp_path) == before


def test_the_lock_is_released_after_success_after_an_error_and_after_ctrl_c(
        raw_dataset, split_data, run_to_change, tmp_path, monkeypatch):
    import deepfake_detector.split as split_module
    from deepfake_detector.folder_lock import folder_lock
    from deepfake_detector.split import SplitExistsError, split_dataset
    from deepfake_detector.train import TrainConfig, train
    out = tmp_path / "data"
    assert split_dataset(raw_dataset, out).status == "created"
    assert not (out / LOCK).exists() and lock_is_free(out)
    with pytest.raises(SplitExistsError):  # an error inside the lock: other settings
        split_dataset(raw_dataset, out, seed=1)
    assert not (out / LOCK).exists() and lock_is_free(out)
    with pytest.raises(FileExistsError):  # train's error inside the lock: the run exists
        train(TrainConfig(data_dir=str(split_data), out_dir=str(run_to_change), weights="none",
                          img_size=32, cache_dir="", num_workers=0), log_to_console=False)
    assert not (run_to_change / LOCK).exists() and lock_is_free(run_to_change)

    held_while_writing = []

    def ctrl_c(*args, **kwargs):
        held_while_writing.append(not lock_is_free(tmp_path / "interrupted"))
        raise KeyboardInterrupt
    monkeypatch.setattr(split_module, "place_files", ctrl_c)
    with pytest.raises(KeyboardInterrupt):
        split_dataset(raw_dataset, tmp_path / "interrupted")
    assert held_while_writing == [True]
    assert not (tmp_path / "interrupted" / LOCK).exists() and lock_is_free(tmp_path / "interrupted")
    monkeypatch.undo()
    # and the same command again completes it
    assert split_dataset(raw_dataset, tmp_path / "interrupted").status in ("created", "unchanged")

    # Nested locks of one folder in one process (cross-eval calls evaluate) are one lock, held
    # until the outermost ends; a folder the lock made and nobody wrote into goes with it.
    fresh = tmp_path / "fresh" / "deeper"
    with folder_lock(fresh):
        with folder_lock(fresh, fresh):
            pass
        assert not lock_is_free(fresh)
    assert not (tmp_path / "fresh").exists()


def test_a_lock_left_by_a_killed_process_blocks_nothing_and_is_no_foreign_file(
        raw_dataset, run_to_change, tmp_path):
    from deepfake_detector.manifest import foreign_files
    from deepfake_detector.run_dir import prepare_run_dir
    from deepfake_detector.split import split_dataset
    out, empty = tmp_path / "data", tmp_path / "new-run"
    with held_by_another_process(out, run_to_change, empty) as holder:
        holder.kill()  # SIGKILL: no clean-up of its own; the kernel drops its locks
        holder.wait(timeout=30)
    assert (out / LOCK).read_text() == f"{holder.pid}\n"  # its lock file stays behind
    assert split_dataset(raw_dataset, out).status == "created"
    assert not (out / LOCK).exists()
    # A run holding a stale lock file is still wholly the project's: --overwrite may replace it;
    # a folder holding nothing else is a new run's folder.
    assert (run_to_change / LOCK).exists() and foreign_files(run_to_change) == []
    assert prepare_run_dir(str(empty), overwrite=False) == empty


def test_a_filesystem_without_locks_warns_and_goes_on(raw_dataset, tmp_path, monkeypatch):
    from deepfake_detector import folder_lock
    from deepfake_detector.split import split_dataset

    def no_locks_here(fd, operation):
        raise OSError(errno.ENOLCK, "No locks available")
    monkeypatch.setattr(folder_lock.fcntl, "flock", no_locks_here)
    with pytest.warns(folder_lock.FolderLockWarning, match="does not support file locks"):
        assert split_dataset(raw_dataset, tmp_path / "nfs").status == "created"
    monkeypatch.setattr(folder_lock, "fcntl", None)  # Windows: no fcntl at all
    with pytest.warns(folder_lock.FolderLockWarning, match="no fcntl"):
        assert split_dataset(raw_dataset, tmp_path / "windows").status == "created"
    assert not (tmp_path / "nfs" / LOCK).exists() and not (tmp_path / "windows" / LOCK).exists()


# --- ranks that agree on their inputs -------------------------------------------------------

RANK_1 = r"""
import json, sys
from datetime import timedelta
from pathlib import Path
import torch.distributed as dist
from deepfake_detector import distributed
from deepfake_detector.inference import iter_predictions
store, run, own_folder, report = sys.argv[1:]
dist.init_process_group("gloo", init_method="file://" + store, rank=1, world_size=2,
                        timeout=timedelta(seconds=60))
result = {}
try:
    # Its own folder, as a rank that listed for itself would see it: other files, more of them.
    result["rows"] = sum(1 for _ in iter_predictions(run, [own_folder], batch_size=2))
    listing = distributed.listed_by_main(lambda: sorted(Path(own_folder).iterdir()))
    result["listing"], result["stamps"] = [str(p) for p in listing], listing.stamps
    try:
        list(iter_predictions(run, [own_folder], batch_size=2))
    except FileNotFoundError as error:
        result["error"] = str(error)
finally:
    Path(report).write_text(json.dumps(result))
    dist.destroy_process_group()
"""


def write_pngs(folder: Path, n: int, seed: int) -> list[Path]:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    paths = [folder / f"img{i}.png" for i in range(n)]
    for path in paths:
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(path)
    return paths


def test_every_rank_works_from_rank_0s_list_and_a_file_changed_since_is_skipped_by_name(
        trained_run, tmp_path, monkeypatch):
    """4 torchrun predicts while another process added and removed a file: 49 rows under the wrong
    image_id, or an IndexError. Now rank 0 lists once, for every rank; a file that changed or
    vanished after the listing is skipped and named, not read as another."""
    import torch.distributed as dist
    from deepfake_detector import distributed
    from deepfake_detector.inference import iter_predictions
    listed = write_pngs(tmp_path / "listed", 6, seed=0)  # batches of 2: rank 0 has 0 and 2
    write_pngs(tmp_path / "other", 8, seed=1)  # rank 1's own view: more files, other names
    changed, vanished = listed[2], listed[4]  # read by rank 1 and by rank 0
    broadcast, edits = dist.broadcast_object_list, []

    def folder_edited_after_listing(*args, **kwargs):  # (inside rank 0's first broadcast)
        if not edits:
            changed.write_bytes(changed.read_bytes() + b"appended")  # still a valid PNG
            vanished.unlink()
            edits.append(True)
        return broadcast(*args, **kwargs)
    monkeypatch.setattr(dist, "broadcast_object_list", folder_edited_after_listing)
    report, store = tmp_path / "rank1.json", tmp_path / "store"
    rank_1 = subprocess.Popen([sys.executable, "-c", RANK_1, str(store), str(trained_run),
                               str(tmp_path / "other"), str(report)], cwd=ROOT,
                              env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        dist.init_process_group("gloo", init_method=f"file://{store}", rank=0, world_size=2,
                                timeout=timedelta(seconds=60))
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                rows = list(iter_predictions(trained_run, [tmp_path / "listed"], batch_size=2))
            listing = distributed.listed_by_main(lambda: sorted((tmp_path / "listed").iterdir()))
            with pytest.raises(FileNotFoundError, match="nowhere"):
                list(iter_predictions(trained_run, [tmp_path / "nowhere"], batch_size=2))
        finally:
            dist.destroy_process_group()
        assert rank_1.wait(timeout=60) == 0
    finally:
        rank_1.kill()
    assert [row["image_id"] for row in rows] == ["img0.png", "img1.png", "img3.png", "img5.png"]
    skipped = "\n".join(str(w.message) for w in caught)
    assert f"{changed}: changed after the inputs were listed" in skipped
    assert f"{vanished}: vanished after the inputs were listed" in skipped
    rank_1_saw = json.loads(report.read_text())
    assert rank_1_saw["rows"] == 0  # its share went to rank 0, which wrote every row
    assert rank_1_saw["listing"] == [str(p) for p in listing] and len(listing) == 5
    assert [tuple(s) for s in rank_1_saw["stamps"]] == [tuple(s) for s in listing.stamps]
    assert "nowhere" in rank_1_saw["error"]  # rank 0's listing error, on every rank


def test_extraction_stops_at_a_file_changed_since_the_listing_naming_it(tmp_path):
    """Features must cover every listed image (and are cached under the listed files' key), so
    extraction does not skip a changed file: it stops, naming it, in one line; predict and
    evaluate skip it (above)."""
    from deepfake_detector.data import ImageDataset, uint8_transform
    from deepfake_detector.distributed import Listing
    from deepfake_detector.images import ImageLoadError
    paths = write_pngs(tmp_path / "split", 3, seed=2)
    listing = Listing([(path, 0) for path in paths])
    paths[1].write_bytes(paths[1].read_bytes() + b"appended")
    extraction = ImageDataset(listing, uint8_transform(32))
    assert extraction[0][0].shape == (32, 32, 3)
    with pytest.raises(ImageLoadError, match=f"{paths[1]} changed after the inputs were listed"):
        extraction[1]
    assert ImageDataset(listing, uint8_transform(32), skip_unreadable=True)[1][0] is None
