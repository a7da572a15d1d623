"""The split plan: which split each image goes to, under which name. A pure function of the file
list (the records discovery.inspect_candidates makes: label, source, hash, size, ...) and the
settings: no disk is touched, so it can be tested with records made in memory.

The split is stratified (each class on its own), seeded, and independent of the order the
records come in; images that belong together (byte-identical copies, the user's groups) land in
one split."""
from __future__ import annotations

import random
from collections import Counter
from pathlib import Path

from . import CLASS_NAMES, CLASS_TO_IDX
from .files import fitting_name, hashed_name
from .grouping import group_records, user_group_keys
from .split_errors import SplitError, list_message
from .split_read import MANIFEST_COLUMNS, SPLITS


def plan_split(records: list[dict], excluded: list[tuple[str, str]], settings: dict,
               class_folders: dict[str, Path],
               group_of: dict[str, str | None] | None = None) -> dict:
    """Group and assign every image: the manifest's rows, the left-out files, notes and counts.

    records: one dict per readable image, as discovery.inspect_candidates makes them (label,
        source, in_class, sha256, bytes, format, width, height, mode, frames); left as they are.
    excluded: (source, why) of each file left out.
    settings: raw_dir, val_fraction, test_fraction, seed and group_by, as split.json records them.
    class_folders: {label: its folder under raw_dir}, to name it in a message.
    group_of: the group file's rows (grouping.read_group_csv) when group_by names one.
    Returns {"rows", "excluded", "n_groups", "notes", "counts"}."""
    raw_dir = Path(settings["raw_dir"])
    records = [dict(record) for record in records]  # each gets its "group" and "split" here
    notes = _inspection_notes(records, excluded, raw_dir)
    check_enough_images(records, excluded, raw_dir, class_folders)

    user_keys = user_group_keys(records, settings["group_by"], raw_dir,
                                {s for s, _ in excluded}, notes, group_of)
    groups = group_records(records, user_keys, notes)
    _assign_splits(records, groups, settings, notes)
    names = _destination_names(records)
    rows = [{"split": r["split"], "label": r["label"], "path": f"{r['split']}/{r['label']}/{name}",
             **{key: r[key] for key in MANIFEST_COLUMNS[3:]}} for r, name in zip(records, names)]
    rows.sort(key=lambda row: (SPLITS.index(row["split"]), CLASS_TO_IDX[row["label"]], row["path"]))
    return {"rows": rows, "excluded": excluded, "n_groups": len(groups), "notes": notes,
            "counts": _count(rows, settings)}


def _inspection_notes(records: list[dict], excluded: list[tuple[str, str]],
                      raw_dir: Path) -> list[str]:
    """What a person should know of the files themselves: several frames, files left out."""
    notes: list[str] = []
    multi_frame = [f"{r['source']}: {r['frames']} frames" for r in records if r["frames"] > 1]
    if multi_frame:
        notes.append(list_message(f"{len(multi_frame)} files hold several frames (animation or "
                                  "pages); only the first frame of each is used:", multi_frame))
    if excluded:
        notes.append(list_message(f"Left out {len(excluded)} files under {raw_dir} that are not "
                                  "readable images (listed in split.json too):",
                                  [f"{source}: {reason}" for source, reason in excluded]))
    return notes


def check_enough_images(records: list[dict], excluded: list[tuple[str, str]], raw_dir: Path,
                        class_folders: dict[str, Path]) -> None:
    """A SplitError unless each class has 2 readable images: one to train on, one to validate."""
    for label, folder in class_folders.items():
        n_good = sum(r["label"] == label for r in records)
        if n_good < 2:
            prefix = f"{folder.relative_to(raw_dir).as_posix()}/"
            raise SplitError(list_message(
                f"Class folder {folder} has {n_good} readable image(s); a split needs at least 2 per "
                "class, one to train on and one to validate. Left out there:",
                [f"{s}: {r}" for s, r in excluded if s.startswith(prefix)]))


def split_targets(n: int, val_fraction: float, test_fraction: float) -> dict[str, int]:
    """How many of a class's n images go to val and test: the fraction, rounded half up; at least
    one per wanted split while n allows, and never so many that train is left without one."""
    fractions = {"val": val_fraction, "test": test_fraction}
    wanted = [split for split in ("val", "test") if fractions[split] > 0]
    targets = {"val": 0, "test": 0}
    spare = n - 1  # train keeps one
    for i, split in enumerate(wanted):
        keep_for_later = min(len(wanted) - i - 1, max(spare - 1, 0))
        targets[split] = min(max(1, int(n * fractions[split] + 0.5)), spare - keep_for_later)
        spare -= targets[split]
    return targets


def _assign_splits(records: list[dict], groups: list[list[int]], settings: dict,
                   notes: list[str]) -> None:
    """Set each record's "split". Per class, whole groups in seeded random order fill test, then
    val, up to their targets; the rest is train. With single-image groups the counts are exact."""
    labels_of = [{records[i]["label"] for i in group} for group in groups]
    mixed = [group for group, labels in zip(groups, labels_of) if len(labels) > 1]
    for group in mixed:
        for i in group:
            records[i]["split"] = "train"
    if mixed:
        notes.append(list_message(
            f"{sum(map(len, mixed))} images in {len(mixed)} groups are byte for byte in both the "
            "real and the fake folder: their label contradicts itself. They were all put in train, "
            "so validation is not scored on them; better remove them from one class:",
            [" = ".join(records[i]["source"] for i in g) for g in mixed]))

    for label in CLASS_NAMES:
        n = sum(r["label"] == label for r in records)
        targets = split_targets(n, settings["val_fraction"], settings["test_fraction"])
        pure = [group for group, labels in zip(groups, labels_of) if labels == {label}]
        # A string seed is hashed the same way in every Python process (not so for str hash()).
        random.Random(f"{settings['seed']}:{label}").shuffle(pure)
        split_of = {}
        room = dict(targets)
        for k, group in enumerate(pure):
            split_of[k] = next((s for s in ("test", "val") if len(group) <= room[s]), "train")
            if split_of[k] != "train":
                room[split_of[k]] -= len(group)
        for split in ("test", "val"):  # groups too big to fit: rather one too many than none
            train_groups = [k for k in split_of if split_of[k] == "train"]
            if targets[split] and room[split] == targets[split] and len(train_groups) > 1:
                smallest = min(train_groups, key=lambda k: len(pure[k]))
                split_of[smallest] = split
                room[split] -= len(pure[smallest])
        for k, group in enumerate(pure):
            for i in group:
                records[i]["split"] = split_of[k]

        if settings["test_fraction"] > 0 and targets["test"] == 0:
            notes.append(f"Only {n} '{label}' images: too few to put one in test as well.")
        off = [f"{split} {targets[split] - room[split]} instead of {targets[split]}"
               for split in ("val", "test") if targets[split] and room[split] != 0]
        if off:
            why = "groups are kept whole" + (", contradictory images stay in train" if mixed else "")
            notes.append(f"The '{label}' counts differ from the fractions asked for ({why}): "
                         f"{', '.join(off)}.")


def _destination_names(records: list[dict]) -> list[str]:
    """'vid 1/0001.jpg' -> 'vid 1__0001.jpg': flat, unique within a class, still readable. In the
    rare case two paths flatten alike ('a/b.jpg' and 'a__b.jpg'), both get a hash of their path;
    so does a name too long for a file name (a deep folder flattened), cut to fit."""
    flat = [fitting_name(r["in_class"].replace("/", "__"), r["in_class"]) for r in records]
    # Lower case: on macOS and Windows 'A.jpg' and 'a.jpg' are one file.
    taken = Counter((r["label"], name.lower()) for r, name in zip(records, flat))
    for i, (record, name) in enumerate(zip(records, flat)):
        if taken[(record["label"], name.lower())] > 1:
            flat[i] = hashed_name(record["in_class"].replace("/", "__"), record["in_class"])
    return flat


def _count(rows: list[dict], settings: dict) -> dict[str, dict[str, int]]:
    splits = SPLITS if settings["test_fraction"] > 0 else SPLITS[:2]
    counts = {split: {label: 0 for label in CLASS_NAMES} for split in splits}
    for row in rows:
        counts[row["split"]][row["label"]] += 1
    return counts
