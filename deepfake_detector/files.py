"""Small jobs on files, each done in one place: a file's SHA-256, writing a file whole or not at
all, and writing JSON that way; where a manifest's relative path may lead (`inside`), names that
fit the filesystem (`temporary_path`, `fitting_name`), and names UTF-8 cannot hold (`printable`).

Imports nothing heavy (the command line's parser and the app's pages may use it).
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path


def sha256_of_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


MAX_NAME_BYTES = 255  # one file name, on ext4, XFS, APFS, NTFS...


def inside(folder: str | os.PathLike, relative, follow_links: bool = True,
           resolved: dict | None = None) -> Path:
    """folder/relative, where `relative` is a path a manifest names: it must be relative and stay
    inside `folder` once `..` and the linked folders on its way are resolved. The last part may be
    a link (a place is replaced, never written through; a raw image may be one). A ValueError
    otherwise, saying why; the caller names the manifest and the row.
    follow_links=False: `..` only, for files that are only read where the user's own links
    belong (a raw class folder linked from another disk); their bytes are checked by hash.
    resolved: a dict kept across the rows of one manifest, so that each folder is resolved once."""
    if not isinstance(relative, str) or not relative.strip() or "\0" in relative:
        raise ValueError(f"{relative!r} is not a path")
    if os.path.isabs(relative):
        raise ValueError(f"{relative!r} is an absolute path; a relative one is expected")
    base = _resolve(os.fspath(folder), resolved)
    joined = os.path.join(base, relative)
    parent, name = os.path.split(joined if follow_links else os.path.normpath(joined))
    if name in ("", ".", ".."):
        raise ValueError(f"{relative!r} does not name a file" if follow_links else
                         f"{relative!r} leads outside {base}")
    parent = _resolve(parent, resolved) if follow_links else parent
    if parent != base and not parent.startswith(base.rstrip(os.sep) + os.sep):
        raise ValueError(f"{relative!r} leads outside {base}")
    return Path(parent, name)


def _resolve(folder: str, resolved: dict | None) -> str:
    if resolved is None:
        return os.path.realpath(folder)
    if folder not in resolved:
        resolved[folder] = os.path.realpath(folder)
    return resolved[folder]


def printable(name) -> str:
    """A file name (str, bytes or path) as text any UTF-8 output can hold, the same in CSV, JSON,
    logs and messages: bytes that are not UTF-8 (kept by Python as surrogates) become \\xe9."""
    if isinstance(name, bytes):
        return name.decode("utf-8", "backslashreplace")
    name = os.fspath(name)
    try:
        return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:  # surrogates that no file name decoded to
        return name.encode("utf-8", "backslashreplace").decode("utf-8")


def is_utf8(name) -> bool:
    """Whether a str name (or path) can be written as UTF-8 as it is."""
    try:
        os.fspath(name).encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def fitting_name(name: str, key: str, limit: int = MAX_NAME_BYTES) -> str:
    """`name` when it fits in `limit` bytes, else its start, '~', 8 hex digits of key's SHA-256
    and its extension: the same name for the same key, distinct names for distinct keys."""
    if len(os.fsencode(name)) <= limit:
        return name
    return hashed_name(name, key, limit)


def hashed_name(name: str, key: str, limit: int = MAX_NAME_BYTES) -> str:
    """name's stem (cut to fit `limit` bytes), '~', 8 hex digits of key's SHA-256, extension."""
    stem, suffix = os.path.splitext(name)
    if len(os.fsencode(suffix)) > 16:  # not an extension worth keeping
        stem, suffix = name, ""
    tag = "~" + hashlib.sha256(os.fsencode(key)).hexdigest()[:8]
    room = limit - len(os.fsencode(tag + suffix))
    stem = os.fsencode(stem)[:room].decode("utf-8", "ignore")
    return stem + tag + suffix


def temporary_path(path: Path, tag: str) -> Path:
    """A hidden name beside `path` for writing it before it is renamed into place:
    '.NAME.TAG', or '.<hash of NAME>.TAG' where that would not fit in a file name."""
    name = f".{path.name}.{tag}"
    if len(os.fsencode(name)) > MAX_NAME_BYTES:
        name = f".{hashlib.sha256(os.fsencode(path.name)).hexdigest()[:16]}.{tag}"
    return path.with_name(name)


def atomic_write(path: Path, write, binary: bool = False) -> None:
    """write(f) into a temporary file beside `path`, renamed into place when complete."""
    temporary = temporary_path(path, f"{os.getpid()}.tmp")
    try:
        with open(temporary, "wb" if binary else "w", **({} if binary else
                                                          {"newline": "", "encoding": "utf-8"})) as f:
            write(f)
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def check_output_folder(path: str | os.PathLike, option: str) -> Path:
    """`path` as a Path when it is a folder this process can write into, or can create; else a
    ValueError in one line naming `option`. Nothing is created: a command checks its outputs
    before its work, so a bad one fails at once, not after the work."""
    path = Path(path)
    for folder in (path, *Path(os.path.abspath(path)).parents):
        if not folder.exists():
            continue
        if not folder.is_dir():
            what = "is not a folder" if folder == path else f"cannot be made: {folder} is not a folder"
            raise ValueError(f"{option} {path} {what}. Choose another {option}.")
        if not os.access(folder, os.W_OK | os.X_OK):
            what = "is not writable" if folder == path else f"cannot be made: {folder} is not writable"
            raise ValueError(f"{option} {path} {what}. Choose another {option}.")
        return path
    return path


def read_json_object(path: str | os.PathLike) -> dict | None:
    """The JSON object in `path`; None when the file is absent, unreadable, not JSON or not an
    object: for the files a command reads back to decide what is there (its own records, a run's
    config), where anything else means "not ours", never a crash."""
    try:
        value = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def write_json(path: str | os.PathLike, obj) -> None:
    """`obj` as indented UTF-8 JSON, written whole or not at all; what JSON cannot hold (a Path, a
    torch.device) is written as its str."""
    atomic_write(Path(path), lambda f: f.write(
        json.dumps(obj, indent=2, ensure_ascii=False, default=str) + "\n"))
