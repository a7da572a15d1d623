"""Finding the images: the class folders of a raw data folder, the image files in them, and what
each file holds (decoded once, so an unreadable file is found before training, not in it).

No torch here, and no writing: raw files are only ever read."""
from __future__ import annotations

import os
import re
from pathlib import Path

from . import CLASS_NAMES
from .files import is_utf8, printable, sha256_of_file
from .images import ImageLoadError, decode_image, regular_file_problem
from .progress import tqdm
from .split_errors import SplitError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif")

# Folder names are reduced to their words; 'Real', 'real_data', '0_real', 'FAKE-images' all match.
CLASS_WORDS = {"real": "real", "reals": "real", "fake": "fake", "fakes": "fake"}
FILLER_WORDS = {"data", "image", "images", "img", "imgs", "photo", "photos", "face", "faces",
                "frame", "frames", "set"}
NOT_UTF8 = ("its name is not valid UTF-8, so no manifest, table or log could hold it as it is; "
            "rename it")


# ---------------------------------------------------------------------------------------------
# Finding class folders and images


def expected_layout(raw_dir: str | os.PathLike) -> str:
    name = Path(raw_dir).name or "dataset_raw"
    return (f"Expected layout:\n  {name}/\n"
            "    real/   *.jpg *.png ...   (sub-folders are fine, e.g. one per video)\n"
            "    fake/   *.jpg *.png ...\n"
            "Class folder names are matched ignoring case: real, Real, REAL, real_data, 0_real, "
            "real_images (and the same for fake).")


def class_of_folder(name: str) -> str | None:
    """'Real', 'real_data', '0_real', 'FAKE-images' -> 'real' or 'fake'; any other name -> None."""
    words = [w for w in re.split(r"[^a-z]+", name.lower()) if w and w not in FILLER_WORDS]
    return CLASS_WORDS.get(words[0]) if len(words) == 1 else None


def find_class_folders(raw_dir: str | os.PathLike) -> dict[str, Path]:
    """{"real": raw_dir/<its real folder>, "fake": raw_dir/<its fake folder>}, or a SplitError
    that names the folder and shows the layout expected."""
    raw_dir = Path(raw_dir)
    if not raw_dir.is_dir():
        what = "is a file, not a folder" if raw_dir.exists() else "does not exist"
        raise SplitError(f"Data folder {raw_dir} {what}.\n{expected_layout(raw_dir)}")
    subfolders = sorted(p for p in raw_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
    found = {label: [p for p in subfolders if class_of_folder(p.name) == label]
             for label in CLASS_NAMES}
    for label, folders in found.items():
        if len(folders) > 1:
            names = " and ".join(f"'{p.name}'" for p in folders)
            raise SplitError(f"{raw_dir} has {len(folders)} folders for class '{label}': {names}. "
                             "Merge them into one, or move all but one out of this folder.")
    missing = [label for label, folders in found.items() if not folders]
    if missing:
        seen = ", ".join(p.name for p in subfolders) or "none"
        raise SplitError(f"No {' or '.join(repr(m) for m in missing)} class folder in {raw_dir} "
                         f"(its sub-folders: {seen}).{_nested_hint(subfolders)}\n"
                         f"{expected_layout(raw_dir)}")
    return {label: folders[0] for label, folders in found.items()}


def _nested_hint(subfolders: list[Path]) -> str:
    # A common slip: pointing at the folder above the real data (an unzipped archive's wrapper).
    for folder in subfolders:
        labels = {class_of_folder(p.name) for p in folder.iterdir() if p.is_dir()}
        if set(CLASS_NAMES) <= labels:
            return f" Did you mean {folder}?"
    return ""


def is_image_name(name: str) -> bool:
    """By extension, any case; hidden files (.DS_Store, macOS's ._photo.jpg) are not images."""
    return not name.startswith(".") and name.lower().endswith(IMAGE_EXTENSIONS)


def find_images(folder: str | os.PathLike, recursive: bool = True) -> list[Path]:
    """Image files in folder (and its sub-folders), sorted by path, so any listing order gives
    the same list. Hidden folders (.ipynb_checkpoints) are skipped; linked folders are not followed."""
    folder = Path(folder)
    if not folder.is_dir():
        what = "is a file, not a folder" if folder.exists() else "does not exist"
        raise SplitError(f"Image folder {folder} {what}.")
    images = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = [d for d in dirs if not d.startswith(".")] if recursive else []
        images += [Path(root, name) for name in files if is_image_name(name)]
    return sorted(images, key=lambda path: path.relative_to(folder).parts)


def raw_has_images(raw_dir: str | os.PathLike) -> bool:
    """True if raw_dir holds any image file, in any layout. The demo generates synthetic data only
    into a raw folder without images: a folder laid out wrongly gets split_dataset's error instead
    of made-up images next to the user's own."""
    raw_dir = Path(raw_dir)
    if not raw_dir.is_dir():
        return False
    for root, dirs, files in os.walk(raw_dir):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        if any(is_image_name(name) for name in files):
            return True
    return False


def images_of_class(folder: Path, raw_dir: Path) -> list[Path]:
    """find_images of one class folder; a folder without any is a SplitError showing the layout."""
    images = find_images(folder)
    if not images:
        raise SplitError(f"Class folder {folder} has no images (looked for "
                         f"{' '.join(IMAGE_EXTENSIONS)} in any case, sub-folders included).\n"
                         f"{expected_layout(raw_dir)}")
    return images


# ---------------------------------------------------------------------------------------------
# Checking images


def check_image(path: str | os.PathLike) -> str | None:
    """None if PIL decodes the whole file, else why not: empty, not an image, truncated, unreadable."""
    return inspect_image(Path(path))[1]


def inspect_image(path: Path) -> tuple[dict | None, str | None]:
    """({sha256, bytes, format, width, height, mode, frames}, None) for a good image, (None, reason)
    else. Only regular files are read (a FIFO or /dev/zero behind an image name is refused, not
    read); the bytes are hashed in blocks and decoded by images.decode_image, the project's one
    opener, under its pixel limit."""
    if not is_utf8(path.name):
        return None, NOT_UTF8
    problem = regular_file_problem(path)
    if problem:
        return None, problem
    try:
        size = os.path.getsize(path)
        if not size:
            return None, "empty file (0 bytes)"
        digest = sha256_of_file(Path(path))
    except OSError as error:
        return None, f"unreadable ({type(error).__name__}: {error.strerror or error})"
    try:
        image, facts = decode_image(path)
    except ImageLoadError as error:
        return None, str(error)
    image.close()
    return {"sha256": digest, "bytes": size, **facts}, None


def inspect_candidates(raw_dir: Path, class_folders: dict[str, Path],
                       candidates: dict[str, list[Path]]) -> tuple[list[dict], list[tuple[str, str]]]:
    """Decode every candidate image once: (a record of each good one, (source, why) of each other).
    A record is all the split plan knows of a file: label, source (its path relative to raw_dir),
    inspect_image's facts and in_class (its path relative to its class folder)."""
    records, excluded = [], []
    for label, paths in candidates.items():
        for path in tqdm(paths, desc=f"checking {label}", unit="img", leave=False,
                         disable=len(paths) < 500):
            source = path.relative_to(raw_dir).as_posix()
            facts, reason = inspect_image(path) if is_utf8(source) else (None, NOT_UTF8)
            source = printable(source)
            if reason:
                excluded.append((source, reason))
            else:
                records.append({"label": label, "source": source, **facts,
                                "in_class": path.relative_to(class_folders[label]).as_posix()})
    return records, excluded
