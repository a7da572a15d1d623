"""One way to save a figure, so every picture is ready for a paper: PNG and PDF at 300 dpi.
Several figures at once (`save_figures`) are drawn on several cores where that is safe.

Importing this package never touches matplotlib's backend or its global rcParams: your
`%matplotlib widget` or your own style stay as they are. The project's figures get their style
per figure, from `paper_style` (a decorator on every plotting function, or a `with` block). The
command line picks the headless Agg backend itself, in `cli.main`.
"""
from __future__ import annotations

import functools
import multiprocessing
import os
import sys
import warnings
from pathlib import Path

import matplotlib.pyplot as plt

from .run_flags import flag_note, flags_of_path

# Readable when a figure is shrunk to one column of a two-column paper.
PAPER_STYLE = {"font.size": 10, "axes.titlesize": 11, "axes.labelsize": 10,
               "legend.fontsize": 9, "xtick.labelsize": 9, "ytick.labelsize": 9,
               "figure.dpi": 100, "savefig.bbox": "tight"}
FIGURE_FORMATS = ("png", "pdf")  # a raster to look at, a vector file for the paper
FILE_ONLY_BACKENDS = ("agg", "pdf", "svg", "ps", "cairo", "pgf", "template")
FLAG_FOOTER_ID, FLAG_COLOUR = "run-flags", "#A00000"  # the footer's text: its id, its colour


def paper_style(function=None):
    """`with paper_style():` styles the figures made inside the block; `@paper_style` does the same
    for every call of a plotting function. Fonts are fixed when text is created, so the whole
    function runs in the style, and the global rcParams are restored on the way out."""
    if function is None:
        return plt.rc_context(PAPER_STYLE)

    @functools.wraps(function)
    def styled(*args, **kwargs):
        with plt.rc_context(PAPER_STYLE):
            return function(*args, **kwargs)
    return styled


def save_figure(fig, path_stem: str | Path, formats=FIGURE_FORMATS, dpi: int = 300,
                flags: list[str] | None = None) -> list[Path]:
    """Save `fig` as path_stem.png and path_stem.pdf (300 dpi); returns the written paths.
    The figure stays open, so the notebook can still show it inline. `flags` (default: those of
    the run the file is written into, run_flags.flags_of_path) go into a footer (stamp_flags)."""
    stem = Path(path_stem)
    stamp_flags(fig, flags_of_path(stem) if flags is None else flags)
    stem.parent.mkdir(parents=True, exist_ok=True)
    written = []
    for fmt in formats:
        path = stem.with_suffix(f".{fmt}")
        fig.savefig(path, dpi=dpi, bbox_inches="tight")
        written.append(path)
    return written


def stamp_flags(fig, flags: list[str]) -> None:
    """A small footer under the figure naming the run's flags (RANDOM INIT, SYNTHETIC DATA), one a
    line, so a figure copied into a slide or a paper still says what it shows; once per figure."""
    if not flags or any(text.get_gid() == FLAG_FOOTER_ID for text in fig.texts):
        return
    fig.text(0.5, 0.0, flag_note(flags, "\n"), ha="center", va="top", fontsize=6.5,
             fontweight="bold", color=FLAG_COLOUR, gid=FLAG_FOOTER_ID, linespacing=1.3)


def drawing_processes(n_figures: int) -> int:
    """How many processes draw `n_figures` figures: one per core, at most one per figure, where a
    forked copy of this process can draw: on Linux, with a file-only backend (a window's backend
    holds a connection to the display that a copy must not share), outside a notebook's kernel
    (its sockets, the same), and not inside a DataLoader worker or other daemon process. Else 1."""
    if (n_figures < 2 or not sys.platform.startswith("linux") or "ipykernel" in sys.modules
            or plt.get_backend().lower() not in FILE_ONLY_BACKENDS
            or multiprocessing.current_process().daemon):
        return 1
    return max(1, min(n_figures, len(os.sched_getaffinity(0))))


def save_figures(drawings: dict, processes: int | None = None) -> list[Path]:
    """Draw and save several figures: {path_stem: function returning a Figure} -> the written
    paths (save_figure's PNG and PDF), in the order given: the same pictures as saving them one
    by one (tests/test_evaluate.py compares the pixels).

    Matplotlib draws in Python, on one core: a run's six figures took 2.3-3.6 s on one core of a
    2-core test machine, most of a run's cost after training (benchmarks/fixed_cost.py). So the
    figures are split among `processes` (default drawing_processes) forked copies of this
    process, which share its memory and so start in milliseconds (PyTorch's DataLoader forks its
    workers the same way). This process
    draws the first share itself; a share whose process fails is drawn again here, where its
    error, if it has one, is raised."""
    jobs = [(Path(stem), draw) for stem, draw in drawings.items()]
    processes = drawing_processes(len(jobs)) if processes is None \
        else max(1, min(processes, len(jobs)))
    shares = [[] for _ in range(processes)]
    # Dealt back and forth (to processes 0, 1, 1, 0, 0, 1 for two): with the costliest given
    # first, the shares come out about even.
    for i, job in enumerate(jobs):
        turn, seat = divmod(i, processes)
        shares[seat if turn % 2 == 0 else processes - 1 - seat].append(job)
    children = []
    if processes > 1:
        context = multiprocessing.get_context("fork")
        with warnings.catch_warnings():
            # Python 3.12+ warns that a process with threads (torch's) forks; the copies only
            # draw with matplotlib and NumPy, and never touch torch or its threads.
            warnings.simplefilter("ignore", DeprecationWarning)
            for share in shares[1:]:
                child = context.Process(target=_draw_and_save, args=(share,), daemon=True)
                child.start()
                children.append((child, share))
    try:
        _draw_and_save(shares[0])
    finally:
        for child, _ in children:
            child.join()
    for child, share in children:
        if child.exitcode != 0:
            _draw_and_save(share)
    return [stem.with_suffix(f".{fmt}") for stem, _ in jobs for fmt in FIGURE_FORMATS]


def _draw_and_save(jobs) -> None:
    for stem, draw in jobs:
        fig = draw()
        save_figure(fig, stem)
        plt.close(fig)


@paper_style
def image_grid(images, titles=None, title_colors=None, ncols: int = 8, cell_inches: float = 1.5,
               colour_scale=None, scale_label: str = ""):
    """A grid of uint8 (H, W, 3) images with a caption each: the pictures the notebook shows.
    Heat maps among them: pass their `colour_scale` (a ScalarMappable, such as
    gradcam_files.colour_scale()) and it gets a colour bar, labelled `scale_label`."""
    n = len(images)
    nrows = max(1, -(-n // ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(ncols * cell_inches, nrows * cell_inches * 1.15),
                             squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i < n:
            ax.imshow(images[i], interpolation="nearest")  # show the pixels, do not smooth them away
            if titles is not None:
                ax.set_title(titles[i], fontsize=8,
                             color=title_colors[i] if title_colors is not None else "black")
    fig.tight_layout()
    if colour_scale is not None:
        bar = fig.colorbar(colour_scale, ax=axes, shrink=0.8, aspect=30, pad=0.01)
        bar.set_label(scale_label, fontsize=8)
        bar.ax.tick_params(labelsize=7)
    return fig
