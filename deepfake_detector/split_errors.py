"""The errors and warnings of splitting and reading a split, and how their messages list files.

Every split module raises these, so they sit below all of them (split.py re-exports them)."""
from __future__ import annotations

import warnings

SHOW_AT_MOST = 20  # file names listed in one message; split.json always has them all


class SplitError(ValueError):
    """The data or the arguments cannot be split as asked; the message says what to do."""


class SplitExistsError(SplitError):
    """out_dir already holds a different split (or folders we did not make); nothing was changed."""


class SplitWarning(UserWarning):
    """Something in the data a person should know; the split went ahead."""


def list_message(headline: str, items: list[str]) -> str:
    shown = [f"  {item}" for item in items[:SHOW_AT_MOST]]
    if len(items) > SHOW_AT_MOST:
        shown.append(f"  ... and {len(items) - SHOW_AT_MOST} more")
    return "\n".join([headline, *shown])


def warn_notes(notes: list[str], stacklevel: int = 3) -> None:
    for note in notes:  # stacklevel: point at the caller of split_dataset
        warnings.warn(note, SplitWarning, stacklevel=stacklevel)
