"""Small jobs on files, each done in one place: a file's SHA-256, writing a file whole or not at
all, and writing JSON that way.

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


def atomic_write(path: Path, write, binary: bool = False) -> None:
    """write(f) into a temporary file beside `path`, renamed into place when complete."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(temporary, "wb" if binary else "w", **({} if binary else
                                                          {"newline": "", "encoding": "utf-8"})) as f:
            write(f)
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def write_json(path: str | os.PathLike, obj) -> None:
    """`obj` as indented UTF-8 JSON, written whole or not at all; what JSON cannot hold (a Path, a
    torch.device) is written as its str."""
    atomic_write(Path(path), lambda f: f.write(
        json.dumps(obj, indent=2, ensure_ascii=False, default=str) + "\n"))
