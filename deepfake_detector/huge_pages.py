"""Ask PyTorch to put large CPU tensors on transparent huge pages: a switch for a program's start.

A ResNet-18 pass at batch 64 and 224 px allocates about 600 MB of activations. glibc hands blocks
that large back to the kernel when they are freed, so every pass faults them in again: 150,000
faults on 4 kB pages, 512x fewer on 2 MB huge pages. PyTorch has its own switch for this
(THP_MEM_ALLOC_ENABLE, off by default), read once, at its first large allocation. Measured on 2
cores: the backbone's forward 1.15-1.16x as fast, the kernel's share of its CPU time down from
20-22% to 8-9% (benchmarks/huge_pages.py).

Importing the package changes nothing in the process (as it leaves matplotlib alone): the
program that starts decides. The command line calls `prefer_huge_pages()` first thing, and the
notebook's setup cell calls it visibly. Linux only; elsewhere the switch is ignored.
"""
from __future__ import annotations

import os

SWITCH = "THP_MEM_ALLOC_ENABLE"


def prefer_huge_pages() -> bool:
    """Turn PyTorch's huge-page switch on unless the environment already says (a value the user
    set wins; THP_MEM_ALLOC_ENABLE=0 keeps 4 kB pages). Call it before the first large tensor.
    Returns whether the switch is on."""
    os.environ.setdefault(SWITCH, "1")
    return os.environ[SWITCH] not in ("", "0")
