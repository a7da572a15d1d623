"""Progress bars that suit where they are shown.

* In JupyterLab (an IPython kernel with ipywidgets): `tqdm.auto`'s widget bars.
* In a terminal: tqdm's usual bar, redrawn in place.
* Headless (the notebook executed by `python -m deepfake_detector notebook`, CI logs, a pipe):
  one line per bar, written when the bar closes, instead of a redraw every tenth of a second that
  fills a log or an executed notebook with hundreds of outputs.

`DEEPFAKE_DETECTOR_PROGRESS` = "log", "widget" or "terminal" forces one; the headless notebook
runner sets "log" for its kernel.
"""
from __future__ import annotations

import io
import os
import sys

from tqdm import tqdm as terminal_tqdm
from tqdm.auto import tqdm as auto_tqdm

ENV = "DEEPFAKE_DETECTOR_PROGRESS"


class LogLineBar(terminal_tqdm):
    """Counts like tqdm, draws nothing while running, and writes its final state as one line."""

    def __init__(self, *args, **kwargs):
        kwargs.update(file=io.StringIO(), mininterval=float("inf"), maxinterval=float("inf"))
        super().__init__(*args, **kwargs)

    def close(self):
        if self.disable:  # closed already (tqdm closes again on garbage collection), or disabled
            return
        line = str(self)
        super().close()
        print(line, file=sys.stderr, flush=True)


def in_kernel() -> bool:
    shell = sys.modules.get("IPython") and sys.modules["IPython"].get_ipython()
    return shell is not None and type(shell).__name__ == "ZMQInteractiveShell"


def bar_class():
    mode = os.environ.get(ENV, "").lower()
    if mode == "log":
        return LogLineBar
    if mode == "widget" or (not mode and in_kernel()):
        return auto_tqdm
    if mode == "terminal" or sys.stderr.isatty():
        return terminal_tqdm
    return LogLineBar


def tqdm(*args, **kwargs):
    """tqdm's signature; the bar's kind is chosen as the module docstring says."""
    return bar_class()(*args, **kwargs)


def finish_early(bar, reason: str, count: int) -> None:
    """Close `bar` as finished although it stopped before its total, saying why (`reason`, e.g.
    "early stopping: no better val loss for 10 epochs"). tqdm reads a bar closed short of its total
    as a failure (a red widget, "69/500 14%"); a loop that ends early by design is a success, so
    its total becomes `count`, the steps done (a bar iterating a range counts in a local variable
    until it is closed, so the caller says), and the reason goes where the bar shows its numbers."""
    if getattr(bar, "disable", True):  # closed already, or disabled
        return
    budget = bar.total
    bar.n = bar.total = count
    container = getattr(bar, "container", None)  # tqdm.notebook's widget: (label, bar, numbers)
    if container is not None:
        container.children[1].max = max(count, 1)
    bar.set_postfix_str(f"{reason}; stopped after {count} of at most {budget}", refresh=False)
    bar.close()
    if container is not None:  # the abandoned `for` over the bar ends in a GeneratorExit later,
        bar.disp = lambda *args, **kwargs: None  # which tqdm.notebook would paint red
