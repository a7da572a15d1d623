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
