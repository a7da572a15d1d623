"""One way to save a figure, so every picture is ready for a paper: PNG and PDF at 300 dpi.

Importing this package never touches matplotlib's backend or its global rcParams: your
`%matplotlib widget` or your own style stay as they are. The project's figures get their style
per figure, from `paper_style` (a decorator on every plotting function, or a `with` block). The
command line picks the headless Agg backend itself, in `cli.main`.
"""
from __future__ import annotations

import functools
from pathlib import Path

import matplotlib.pyplot as plt

# Readable when a figure is shrunk to one column of a two-column paper.
PAPER_STYLE = {"font.size": 10, "axes.titlesize": 11, "axes.labelsize": 10,
               "legend.fontsize": 9, "xtick.labelsize": 9, "ytick.labelsize": 9,
               "figure.dpi": 100, "savefig.bbox": "tight"}


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


def save_figure(fig, path_stem: str | Path, formats=("png", "pdf"), dpi: int = 300) -> list[Path]:
    """Save `fig` as path_stem.png and path_stem.pdf (300 dpi); returns the written paths.
    The figure stays open, so the notebook can still show it inline."""
    stem = Path(path_stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    written = []
    for fmt in formats:
        path = stem.with_suffix(f".{fmt}")
        fig.savefig(path, dpi=dpi, bbox_inches="tight")
        written.append(path)
    return written


@paper_style
def image_grid(images, titles=None, title_colors=None, ncols: int = 8, cell_inches: float = 1.5):
    """A grid of uint8 (H, W, 3) images with a caption each: the pictures the notebook shows."""
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
    return fig
