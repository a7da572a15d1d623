"""Writing a split, and dealing with the one already in out_dir: write the manifest, place the
files (copies or hard links), tell whether the raw files changed since the last split, refuse a
split it cannot vouch for, and remove only what split_dataset wrote.

Raw files are only ever read: never moved, edited or deleted."""
from __future__ import annotations

import csv
import hashlib
import json
import os
import shutil
from pathlib import Path

from .files import inside, sha256_of_file, temporary_path, write_json
from .progress import tqdm
from .split_errors import SplitError, SplitExistsError, list_message
from .split_read import (MANIFEST_COLUMNS, MANIFEST_CSV, PENDING_CSV, SETTINGS_JSON, SPLITS,
                         read_split_manifest)

LINK_MODES = ("copy", "hardlink")
# A split whose files are still being placed: its rows and record under these names; split.csv and
# split.json are written only once every file is in place.
PENDING_JSON = "split.pending.json"

# What an OS drops into folders a person browses: the only files we delete without having written them.
OS_CLUTTER = {".DS_Store", "Thumbs.db", "desktop.ini"}


# ---------------------------------------------------------------------------------------------
# What is already in out_dir


def raw_fingerprint(raw_dir: Path, candidates: dict[str, list[Path]]) -> str:
    """A cheap digest of every raw image's path, size and modification time: when it matches the
    last run's, the files are the same and need not be read again (as make and rsync assume)."""
    digest = hashlib.sha256()
    for paths in candidates.values():
        for path in paths:
            try:
                stat = path.stat()
                size_and_time = f"{stat.st_size}\0{stat.st_mtime_ns}"
            except OSError:  # a broken link; it will be left out as unreadable
                size_and_time = "unreadable"
            digest.update(f"{path.relative_to(raw_dir).as_posix()}\0{size_and_time}\n".encode(
                "utf-8", "surrogateescape"))  # a name that is not UTF-8 counts too
    return digest.hexdigest()


def holds_a_split(out_dir: Path) -> bool:
    """Whether out_dir has any of the split folders, split.csv or split.json."""
    return any((out_dir / name).exists()
               for name in (*SPLITS, MANIFEST_CSV, SETTINGS_JSON, PENDING_CSV, PENDING_JSON))


def is_pending(out_dir: Path) -> bool:
    """Whether out_dir holds a split whose files were still being placed (an interrupted run)."""
    return (out_dir / PENDING_JSON).is_file()


def split_rows(out_dir: Path) -> list[dict]:
    """The rows of the split in out_dir: split.csv, or those of an interrupted split."""
    return read_split_manifest(out_dir, PENDING_CSV if is_pending(out_dir) else MANIFEST_CSV)


def read_previous_split(out_dir: Path, replace: bool) -> dict | None:
    """The last run's split.json, None if there is none; refuses split folders it cannot vouch for."""
    json_path = out_dir / (PENDING_JSON if is_pending(out_dir) else SETTINGS_JSON)
    rows_name = PENDING_CSV if is_pending(out_dir) else MANIFEST_CSV
    how_to_go_on = ("Nothing was changed. Choose another out_dir, or move the files split_dataset "
                    "did not write out of the split folders and pass replace=True (CLI: --replace).")
    if json_path.is_file():
        try:
            previous = json.loads(json_path.read_text(encoding="utf-8"))
            if isinstance(previous.get("settings"), dict) and (out_dir / rows_name).is_file():
                return previous
            problem = f"{json_path} has no settings, or {rows_name} is missing"
        except (ValueError, AttributeError) as error:
            problem = f"{json_path} is unreadable ({error})"
    elif holds_a_split(out_dir):
        found = ", ".join(n for n in (*SPLITS, MANIFEST_CSV) if (out_dir / n).exists())
        problem = f"{out_dir} already has {found} but no {SETTINGS_JSON}: not made by split_dataset"
    else:
        return None
    if replace:
        return None
    raise SplitExistsError(f"{problem}. {how_to_go_on}")


def refuse_other_settings(out_dir: Path, previous: dict, settings: dict) -> None:
    """The split in out_dir was made with other settings: refuse, naming each difference."""
    differences = [f"{key}: {previous.get(key)!r} then, {settings.get(key)!r} now"
                   for key in sorted(set(previous) | set(settings))
                   if previous.get(key) != settings.get(key)]
    if differences:
        raise SplitExistsError(exists_message(out_dir, "with other settings", differences))


def exists_message(out_dir: Path, how: str, details: list[str]) -> str:
    """Why out_dir's split is not this one (details), that nothing changed, and how to go on."""
    return (list_message(f"{out_dir} already holds a split made {how}:", details) +
            "\nNothing was changed. To split again, pass replace=True (CLI: --replace); it deletes "
            "only the split folders and manifest that split_dataset wrote. Or choose another out_dir.")


def raw_changes(previous: dict, previous_rows: list[dict], plan: dict) -> list[str]:
    """What differs between the raw files the last split saw and those there now."""
    def contents(rows, excluded):
        return ({row["source"]: row["sha256"] for row in rows} |
                {source: "left out" for source in excluded})
    before = contents(previous_rows, [e["source"] for e in previous.get("excluded", [])])
    now = contents(plan["rows"], [source for source, _ in plan["excluded"]])
    changes = []
    for what, sources in (("added", now.keys() - before.keys()),
                          ("removed", before.keys() - now.keys()),
                          ("changed", {s for s in now.keys() & before.keys() if now[s] != before[s]})):
        if sources:
            changes.append(f"{len(sources)} raw files {what}, e.g. {min(sources)}")
    return changes


def remove_previous_split(out_dir: Path) -> list[str]:
    """Delete what split_dataset wrote: split files whose bytes are still the ones in the manifest
    (and the half-written copies of an interrupted run), and the manifest. The same policy as
    `train --overwrite` (manifest.py): if the split folders hold anything else, nothing is
    deleted and SplitExistsError names those files."""
    unreadable = ""
    try:
        written = {out_dir / row["path"]: row["sha256"] for row in split_rows(out_dir)}
    except SplitError as error:  # no manifest, or not one of ours: no file is vouched for
        written = {}
        unreadable = f" ({error})" if (out_dir / MANIFEST_CSV).is_file() else ""
    temporaries = {temporary_path(path, "partial") for path in written}
    ours, foreign = [], []
    for split in SPLITS:
        for root, dirs, files in os.walk(out_dir / split):
            names = files + [d for d in dirs if os.path.islink(os.path.join(root, d))]
            for name in names:
                path = Path(root, name)
                whole = path.with_name(name[:-len(".partial")]) if name.endswith(".partial") else None
                if name in OS_CLUTTER or path in temporaries or whole in written:
                    ours.append(path)
                elif path in written and not path.is_symlink() and path.is_file() \
                        and sha256_of_file(path) == written[path]:
                    ours.append(path)
                else:
                    foreign.append(path.relative_to(out_dir).as_posix())
    if foreign:
        raise SplitExistsError(list_message(
            f"{out_dir} holds {len(foreign)} file(s) in its split folders that split_dataset did "
            f"not write (or that were edited since){unreadable}; replacing the split would "
            "delete them, so nothing was changed. Move them out of the split folders, or choose "
            "another out_dir:",
            foreign))
    for path in ours:
        path.unlink()
    for split in SPLITS:
        for root, _, _ in os.walk(out_dir / split, topdown=False):
            if not any(Path(root).iterdir()):
                Path(root).rmdir()
    for name in (MANIFEST_CSV, SETTINGS_JSON, PENDING_CSV, PENDING_JSON):
        (out_dir / name).unlink(missing_ok=True)
    return []


# ---------------------------------------------------------------------------------------------
# Writing


def write_manifest(out_dir: Path, rows: list[dict], record: dict, pending: bool = False) -> None:
    """out_dir/split.csv (rows), then split.json (record), each written whole or not at all. With
    `pending`, under the names of a split whose files are still to be placed; without, the
    pending ones are removed once the final ones are in place."""
    out_dir.mkdir(parents=True, exist_ok=True)
    csv_path = out_dir / (PENDING_CSV if pending else MANIFEST_CSV)
    partial = temporary_path(csv_path, "partial")
    with open(partial, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=MANIFEST_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    os.replace(partial, csv_path)
    write_json(out_dir / (PENDING_JSON if pending else SETTINGS_JSON), record)
    if not pending:
        for name in (PENDING_JSON, PENDING_CSV):  # the record first: it is what marks a pending split
            (out_dir / name).unlink(missing_ok=True)


def locate(raw_dir: Path, out_dir: Path, rows: list[dict], manifest: Path) -> list[tuple]:
    """(row, its raw file, its place, where the manifest says so) for each row: the raw file
    inside raw_dir, the place inside out_dir, both after `..` and linked folders are resolved.
    A row leading elsewhere is a SplitError naming the manifest, the row and the value."""
    located, resolved = [], {}
    for number, row in enumerate(rows, start=1):
        where = f"{manifest}, row {number} (line {number + 1})"
        key = "source"
        try:
            source = inside(raw_dir, row[key], False, resolved)  # only read; hash-checked
            key = "path"
            destination = inside(out_dir, row[key], resolved=resolved)
        except ValueError as error:
            raise SplitError(f"{where}: {key} {error}. The manifest was edited or damaged; "
                             "nothing was written. Split again into a new folder.") from None
        located.append((row, source, destination, where))
    return located


def place_files(located: list[tuple], link_mode: str) -> list[str]:
    """Copy or hard-link each located row's raw file to its place (see `locate`), checked against
    the manifest's SHA-256 before it is renamed into place; returns notes."""
    copied_instead = 0
    for row, source, destination, where in tqdm(located, desc=f"{link_mode} files", unit="img",
                                                leave=False, disable=len(located) < 500):
        destination.parent.mkdir(parents=True, exist_ok=True)
        # Written under a temporary name (hidden; short where the name is long), then renamed:
        # an interrupted run never leaves a half written image under a real name.
        partial = temporary_path(destination, "partial")
        partial.unlink(missing_ok=True)
        if link_mode == "hardlink":
            try:
                # To the file itself: a link to a relative symlink would point nowhere from here.
                os.link(os.path.realpath(source), partial)
                if not partial.is_file():
                    raise OSError("not a regular file")
            except OSError:  # another filesystem, or one without hard links
                partial.unlink(missing_ok=True)
                shutil.copyfile(source, partial)
                copied_instead += 1
        else:
            shutil.copyfile(source, partial)
        if sha256_of_file(partial) != row["sha256"]:
            partial.unlink()
            raise SplitError(f"{where}: the raw file {row['source']} does not hold the bytes "
                             "recorded there (its SHA-256 differs): it was edited, or the row "
                             "was. It was not copied. Split again with --replace, or into a new "
                             "folder.")
        os.replace(partial, destination)
    if copied_instead:
        return [f"link_mode='hardlink': {copied_instead} files could not be hard-linked (out_dir on "
                "another filesystem?) and were copied instead."]
    return []
