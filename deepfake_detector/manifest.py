"""What this project wrote into a run directory, so that replacing a run deletes nothing else.

A run directory holds `run_manifest.json`: every file the project wrote there (training, and what
evaluate, gradcam, robustness, cross-eval, finetune and the notebook add later), with its size,
modification time and SHA-256. `train --overwrite` deletes a run only when every file in it is
listed with those same bytes; otherwise it refuses and names the files it would have lost. A split
folder follows the same policy with its own manifest, split.csv (see split.py).

Record what you write into a run (the notebook too):

    record_written(run_dir, [path, ...])          # files, or folders (all files in them)
    with recording(run_dir / "my_figures"):        # whatever appears or changes in there
        fig.savefig(run_dir / "my_figures" / "x.png")

No torch here: split.py and the notebook's first cells use it too.
"""
from __future__ import annotations

import contextlib
import json
import os
import time
from pathlib import Path

from .files import inside, sha256_of_file
from .folder_lock import LOCK_FILE

RUN_MANIFEST = "run_manifest.json"
FORMAT = 1
# What an OS drops into folders a person browses: the only files deleted without having been written.
OS_CLUTTER = {".DS_Store", "Thumbs.db", "desktop.ini"}
SHOW_AT_MOST = 20


class NotOursError(FileExistsError):
    """A folder holds files this project did not write (or that were edited since); nothing was
    deleted. The message lists them."""


def find_run_dir(path: str | os.PathLike) -> Path | None:
    """The run directory `path` is in (or is): the nearest folder up with a run_manifest.json."""
    path = Path(path).absolute()
    for folder in (path, *path.parents):
        if (folder / RUN_MANIFEST).is_file():
            return folder
    return None


def read_run_manifest(run_dir: str | os.PathLike) -> dict | None:
    """The run's manifest, None if it has none or not one this project writes. Only its
    well-formed entries are kept: a relative path inside run_dir (never `../x` or an absolute
    path) with its bytes, time and SHA-256; a file behind any other entry is not ours."""
    path = Path(run_dir) / RUN_MANIFEST
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), dict):
        return None
    base, resolved = Path(run_dir).resolve(), {}
    manifest["files"] = {name: entry for name, entry in manifest["files"].items()
                         if _well_formed(base, name, entry, resolved)}
    return manifest


def _well_formed(base: Path, name: str, entry, resolved: dict) -> bool:
    """Whether one entry of a run manifest is a file inside the run, with its facts."""
    if not isinstance(entry, dict) or not isinstance(entry.get("sha256"), str) or any(
            type(entry.get(key)) is not int for key in ("bytes", "mtime_ns")):
        return False
    try:
        return inside(base, name, False, resolved).relative_to(base).as_posix() == name
    except ValueError:
        return False


def write_manifest(run_dir: str | os.PathLike, manifest: dict) -> None:
    path = Path(run_dir) / RUN_MANIFEST
    partial = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    partial.write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(partial, path)


def start_run_dir(run_dir: str | os.PathLike) -> Path:
    """Create an empty run directory with an empty manifest, marked incomplete until
    `mark_complete`: a failed or interrupted run is replaced by its retry without --overwrite."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    write_manifest(run_dir, {"format": FORMAT, "complete": False, "files": {},
                             "started": time.strftime("%Y-%m-%dT%H:%M:%S")})
    return run_dir


def mark_complete(run_dir: str | os.PathLike) -> None:
    manifest = read_run_manifest(run_dir)
    if manifest is not None:
        manifest["complete"] = True
        write_manifest(run_dir, manifest)


def _files_under(folder: Path) -> list[Path]:
    """Every file (and symlink, never followed) under folder."""
    found = []
    for root, dirs, files in os.walk(folder):
        found += [Path(root, name) for name in files]
        found += [Path(root, name) for name in dirs if os.path.islink(os.path.join(root, name))]
    return found


def _entry(path: Path) -> dict:
    st = path.stat()
    return {"bytes": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": sha256_of_file(path)}


def record_written(run_dir: str | os.PathLike, paths) -> None:
    """Add `paths` (files, or folders: every file in them), written by this project or by the
    notebook, to the run's manifest, so that replacing the run may delete them. Paths outside
    run_dir are ignored; a run directory without a manifest (made by an older version) is left
    as it is."""
    run_dir = Path(run_dir).absolute()
    manifest = read_run_manifest(run_dir)
    if manifest is None:
        return
    for path in map(lambda p: Path(p).absolute(), [paths] if isinstance(paths, (str, os.PathLike))
                    else paths):
        files = _files_under(path) if path.is_dir() else [path]
        for file in files:
            if file.name in (RUN_MANIFEST, LOCK_FILE) or run_dir not in file.parents \
                    or not file.is_file():
                continue
            manifest["files"][file.relative_to(run_dir).as_posix()] = _entry(file)
    write_manifest(run_dir, manifest)


def _snapshot(folder: Path) -> dict[Path, tuple]:
    snapshot = {}
    for path in _files_under(folder) if folder.is_dir() else []:
        try:
            st = path.stat()
            snapshot[path] = (st.st_size, st.st_mtime_ns, st.st_ino)
        except OSError:
            pass
    return snapshot


@contextlib.contextmanager
def recording(folder: str | os.PathLike):
    """Record in the enclosing run's manifest every file that appears or changes under `folder`
    during the block (also when the block fails or is interrupted: what was written is ours).
    Outside a run directory it does nothing."""
    folder = Path(folder).absolute()
    run_dir = find_run_dir(folder)
    if run_dir is None:  # the folder may not exist yet: look from where it will be
        run_dir = next((find_run_dir(p) for p in folder.parents if p.is_dir()), None)
    before = _snapshot(folder) if run_dir is not None else {}
    try:
        yield run_dir
    finally:
        if run_dir is not None:
            after = _snapshot(folder)
            changed = [path for path, facts in after.items() if before.get(path) != facts]
            record_written(run_dir, changed)


def foreign_files(run_dir: str | os.PathLike, manifest: dict | None = None) -> list[str]:
    """Files in run_dir (relative paths) that its manifest does not list with these bytes."""
    run_dir = Path(run_dir).absolute()
    manifest = read_run_manifest(run_dir) if manifest is None else manifest
    listed = manifest["files"] if manifest else {}
    foreign = []
    for path in sorted(_files_under(run_dir)):
        relative = path.relative_to(run_dir).as_posix()
        # (the lock file of a command writing the run, or left by one that was killed: never ours
        # to list, never foreign: folder_lock.py)
        if path.name in OS_CLUTTER or path.name == LOCK_FILE or relative == RUN_MANIFEST:
            continue
        entry = listed.get(relative)
        if entry is None or path.is_symlink() or not path.is_file():
            foreign.append(relative)
            continue
        st = path.stat()
        same = st.st_size == entry["bytes"] and (st.st_mtime_ns == entry["mtime_ns"]
                                                 or sha256_of_file(path) == entry["sha256"])
        if not same:
            foreign.append(relative + " (edited since it was written)")
    return foreign


def list_message(headline: str, items: list[str]) -> str:
    shown = [f"  {item}" for item in items[:SHOW_AT_MOST]]
    if len(items) > SHOW_AT_MOST:
        shown.append(f"  ... and {len(items) - SHOW_AT_MOST} more")
    return "\n".join([headline, *shown])


def remove_run_dir(run_dir: str | os.PathLike) -> None:
    """Delete a run directory's files, all of which must be in its manifest with the same bytes;
    otherwise NotOursError lists the others and nothing is deleted."""
    run_dir = Path(run_dir).absolute()
    manifest = read_run_manifest(run_dir)
    if manifest is None:
        raise NotOursError(
            f"{run_dir} is not empty and has no {RUN_MANIFEST}: it is not a run directory this "
            "version of the project wrote, so nothing in it is deleted. Choose another --out, or "
            "move or delete that folder yourself.")
    foreign = foreign_files(run_dir, manifest)
    if foreign:
        raise NotOursError(list_message(
            f"{run_dir} holds {len(foreign)} file(s) this project did not write (or that were "
            "edited since); replacing the run would delete them, so nothing was deleted. Move "
            "them elsewhere, record them as part of the run (manifest.record_written), or choose "
            "another --out:", foreign))
    for path in _files_under(run_dir):
        if path.name not in (RUN_MANIFEST, LOCK_FILE):  # the lock of the command replacing it
            path.unlink()
    for root, dirs, _ in os.walk(run_dir, topdown=False):
        for name in dirs:
            with contextlib.suppress(OSError):
                (Path(root) / name).rmdir()
    (run_dir / RUN_MANIFEST).unlink(missing_ok=True)
