"""Grouping: which images must land in one split. The user's rule (group_by: a sub-folder, a
regular expression over the file name, or a CSV file of path,group) and byte-identical copies,
joined into groups by union-find.

Only read_group_csv reads a file; the rest works on the records the split plan is given."""
from __future__ import annotations

import csv
import re
from collections import Counter, defaultdict
from pathlib import Path, PurePosixPath

from .split_errors import SplitError, list_message


def normalize_group_by(group_by) -> str | None:
    """None, "folder", "regex:PATTERN" (checked), or the resolved path of a group CSV, as a string."""
    if group_by is None or str(group_by).strip().lower() in ("", "none"):
        return None
    text = str(group_by)
    if text == "folder":
        return text
    if text.startswith("regex:"):
        try:
            re.compile(text[len("regex:"):])
        except re.error as error:
            raise SplitError(f"group_by={text!r}: not a valid regular expression ({error}).") from None
        return text
    path = Path(text).expanduser()
    if not path.is_file():
        raise SplitError(f"group_by={text!r} is none of None, 'folder', 'regex:PATTERN', or an "
                         "existing CSV file with columns path,group.")
    return str(path.resolve())


def is_group_csv(group_by: str | None) -> bool:
    """Whether a normalised group_by names a group file (not None, "folder" or "regex:...")."""
    return group_by is not None and group_by != "folder" and not group_by.startswith("regex:")


def read_group_csv(path: Path) -> dict[str, str | None]:
    """{path relative to raw_dir: group, None for on its own} from a CSV file of path,group."""
    with open(path, newline="", encoding="utf-8-sig") as f:  # -sig: Excel's byte-order mark
        reader = csv.DictReader(f)
        if not reader.fieldnames or not {"path", "group"} <= set(reader.fieldnames):
            raise SplitError(f"Group file {path} needs the columns path,group; "
                             f"it has {reader.fieldnames}.")
        groups: dict[str, str | None] = {}
        for line, row in enumerate(reader, start=2):
            source = PurePosixPath((row["path"] or "").strip().replace("\\", "/")).as_posix()
            group = (row["group"] or "").strip() or None
            if groups.get(source, group) != group:
                raise SplitError(f"Group file {path}, line {line}: {source} is listed twice, in "
                                 f"groups {groups[source]!r} and {group!r}.")
            groups[source] = group
    return groups


def user_group_keys(records: list[dict], group_by: str | None, raw_dir: Path,
                    excluded_sources: set[str], notes: list[str],
                    group_of: dict[str, str | None] | None = None) -> list[str | None]:
    """The group each image belongs to by the user's rule, or None for "on its own". For a group
    file, group_of is its content (read_group_csv): this function reads no file."""
    if group_by is None:
        return [None] * len(records)
    if group_by == "folder":
        keys = [r["in_class"].rpartition("/")[0] or None for r in records]
        if loose := keys.count(None):
            notes.append(f"group_by='folder': {loose} images sit directly in a class folder, not "
                         "in a sub-folder; each of them is a group of its own.")
        return keys
    if group_by.startswith("regex:"):
        pattern = re.compile(group_by[len("regex:"):])
        keys = []
        for r in records:
            match = pattern.search(PurePosixPath(r["source"]).name)
            key = match and (match.group(1) if pattern.groups else match.group(0))
            keys.append(key or None)  # an empty match groups nothing
        unmatched = [r["source"] for r, key in zip(records, keys) if key is None]
        if unmatched:
            notes.append(list_message(f"group_by {group_by!r} found no group in {len(unmatched)} of "
                                      f"{len(records)} file names; each of those is a group of "
                                      "its own:", unmatched))
        return keys
    if group_of is None:
        raise ValueError(f"group_by={group_by!r} names a group file: pass its rows as group_of "
                         "(grouping.read_group_csv).")
    groups = group_of
    unlisted = [r["source"] for r in records if r["source"] not in groups]
    if unlisted:
        raise SplitError(list_message(
            f"{len(unlisted)} images are not listed in the group file {group_by} (its paths must be "
            f"relative to {raw_dir}, e.g. '{unlisted[0]}'); add them, or none of them is grouped:",
            unlisted))
    on_disk = {r["source"] for r in records} | excluded_sources
    absent = sorted(set(groups) - on_disk)
    if absent:
        notes.append(list_message(f"{len(absent)} files listed in {group_by} are not images under "
                                  f"{raw_dir}; ignored:", absent))
    return [groups[r["source"]] for r in records]


def group_records(records: list[dict], user_keys: list[str | None],
                  notes: list[str]) -> list[list[int]]:
    """Union-find over the images: one group for each set linked by identical bytes or by a user
    group within a class. Sets each record's "group" (a readable name) and returns the groups."""
    parent = list(range(len(records)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    first_with: dict[tuple, int] = {}
    for i, (record, key) in enumerate(zip(records, user_keys)):
        links = [("bytes", record["sha256"])] + ([("user", record["label"], key)] if key else [])
        for link in links:
            parent[root(i)] = root(first_with.setdefault(link, i))

    members = defaultdict(list)
    for i in range(len(records)):
        members[root(i)].append(i)
    groups = []
    for group in members.values():
        # The group's name: its user group ("real:vid7") if it has one, else its first file.
        name = min(f"{records[i]['label']}:{user_keys[i]}" if user_keys[i] else records[i]["source"]
                   for i in group)
        for i in group:
            records[i]["group"] = name
        groups.append(sorted(group, key=lambda i: records[i]["source"]))
    groups.sort(key=lambda group: records[group[0]]["group"])

    copies = Counter(r["sha256"] for r in records)
    if n_copies := sum(n - 1 for n in copies.values() if n > 1):
        notes.append(f"{n_copies} images are byte-identical copies of another image; each set of "
                     "copies was kept in one split.")
    return groups
