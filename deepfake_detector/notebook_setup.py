"""The notebook's housekeeping, behind one call per cell, and its small tables for people.

The teaching cells of notebooks/deepfake_detector.ipynb should each read as the idea they teach.
What they also need, and what is not the idea, lives here:

* `start_session(globals())`, in the setup cell: the project root as the working directory
  (JupyterLab starts in notebooks/), this kernel's output folder (kept when the cell runs again,
  new with a new kernel), large CPU tensors on huge pages (huge_pages.py), the device.
* `session.split_dataset(...)` and `session.train(config, ...)`: split.split_dataset and
  train.train, replacing only a split or a run that this notebook made (notebook.py's marker and
  `claim_for_notebook`; the parameters REPLACE_SPLIT and REPLACE_RUN allow more, read when the
  cell runs). A training re-run starts from the head as it was before the first training, so
  every re-run trains the same head again; `session.untrained_head(model)` is a copy of it.

And what the notebook prints for people, rounded, with a sentence that reads it: the metrics at
the run's threshold (`metrics_table`), the robustness rows (`robustness_summary`), the
faithfulness checks (`localisation_summary`, `randomisation_summary`), and several figures laid
out as one picture for a screen (`figure_grid_png`). The files keep full precision.
"""
from __future__ import annotations

import copy
import io
import os
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from . import split as splitting
from . import train as training
from .figures import plt
from .huge_pages import prefer_huge_pages
from .model import IMAGENET_FILE, pick_device, torch_checkpoint_dir
from .notebook import claim_for_notebook, mark_as_notebooks
from .run_flags import flags_of_config, flags_of_run, register_folder_flags
from .tables import markdown_table
from .widgets import threshold_words

# What outlives a re-run of the setup cell (a module lives as long as its kernel): the session's
# output folder, and the head train() last trained with its state before training ("head").
_KERNEL = {}


class NotebookSession:
    """What the notebook's cells share besides the teaching: its output folder (`out`, figures
    in `figures`), the device, and the notebook's parameters (`parameters`: the notebook's
    globals(), read when a cell runs, so a changed REPLACE_RUN counts at once)."""

    def __init__(self, parameters: dict, out: Path, device: torch.device):
        self.parameters, self.out, self.device = parameters, Path(out), device
        self.figures = self.out / "figures"
        self.data_dir, self.run_dir = None, None  # the latest split and run of this session
        register_folder_flags(self.figures, self.flags)

    def flags(self) -> list[str]:
        """What the session's figures carry (run_flags): its latest run's RANDOM INIT and
        SYNTHETIC DATA; before training, its split's SYNTHETIC DATA (a picture of the data
        depends on no weights)."""
        if self.run_dir is not None:
            return flags_of_run(self.run_dir)
        return flags_of_config({"data_dir": str(self.data_dir)}) if self.data_dir else []

    def split_dataset(self, raw_dir, data_dir, **settings):
        """split.split_dataset(raw_dir, data_dir, **settings); a different split already in
        data_dir is replaced only if this notebook made it or REPLACE_SPLIT is True (else one
        line says so, and nothing changes). Returns the split's summary."""
        try:
            summary = splitting.split_dataset(raw_dir, data_dir, **settings)
        except splitting.SplitExistsError:  # a different split is there: whose is it?
            allowed = bool(self.parameters.get("REPLACE_SPLIT"))
            claim_for_notebook(data_dir, "REPLACE_SPLIT", allowed)  # stops here if not ours
            print(f"replacing the split in {data_dir}: "
                  + ("REPLACE_SPLIT = True" if allowed else "this notebook made it"))
            summary = splitting.split_dataset(raw_dir, data_dir, replace=True, **settings)
        mark_as_notebooks(data_dir, "split", raw_dir=raw_dir, **settings)
        self.data_dir = data_dir
        return summary

    def train(self, config, model=None, weights_record=None, log_to_console: bool = True):
        """train.train(config, ...) into config.out_dir, which is replaced only if this notebook
        made it or REPLACE_RUN is True. With `model`, its head starts from where it stood before
        this notebook first trained it, so a re-run trains the same head again (a new head, from
        a re-run of the head cell, is the new start)."""
        allowed = bool(self.parameters.get("REPLACE_RUN"))
        replacing = claim_for_notebook(config.out_dir, "REPLACE_RUN", allowed)
        if replacing:
            print(f"re-run: replacing the run in {config.out_dir} "
                  f"({'REPLACE_RUN = True' if allowed else 'made by this notebook'})")
        config.overwrite = replacing
        if model is not None:
            self._reset_head(model)
        caught = []
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                run = training.train(config, log_to_console=log_to_console, model=model,
                                     weights_record=weights_record)
        finally:
            for warning in caught:  # told at the cell's line, not at this housekeeping's
                warnings.warn(warning.message, warning.category, stacklevel=2)
        if model is not None:
            _KERNEL["head"] = (model.fc, _KERNEL["head"][1])
        mark_as_notebooks(run, "run")
        self.run_dir = Path(run)  # a TrainedRun is its run directory as a path
        return run

    @staticmethod
    def _reset_head(model) -> None:
        trained = _KERNEL.get("head")
        if trained is not None and model.fc is trained[0]:
            model.fc.load_state_dict(trained[1])  # the head trained before: back to its start
        else:  # a head not trained yet: this is where training starts, on every re-run
            _KERNEL["head"] = (model.fc, copy.deepcopy(model.fc.state_dict()))

    def untrained_head(self, model) -> torch.nn.Module:
        """A copy of the model's head, on the CPU, as train() started it (before training, it is
        the head as it stands)."""
        head = copy.deepcopy(model.fc).cpu()
        trained = _KERNEL.get("head")
        if trained is not None and model.fc is trained[0]:
            head.load_state_dict(trained[1])
        return head


def start_session(parameters: dict) -> NotebookSession:
    """The setup cell's housekeeping (module docstring); `parameters`: the notebook's globals(),
    where OUTPUT_DIR ("" = outputs/notebook-<date-time>, one per kernel), REPLACE_SPLIT and
    REPLACE_RUN are read."""
    if Path.cwd().name == "notebooks":  # JupyterLab starts here; all paths are from the root
        os.chdir("..")
    _KERNEL.setdefault("out", f"outputs/notebook-{time.strftime('%Y%m%d-%H%M%S')}")
    out = Path(parameters.get("OUTPUT_DIR") or _KERNEL["out"])
    (out / "figures").mkdir(parents=True, exist_ok=True)
    # Large CPU tensors (a batch's activations) on 2 MB pages: the backbone runs about 1.15x as
    # fast on a CPU. PyTorch reads the switch at its first large tensor, so it is set first.
    prefer_huge_pages()
    session = NotebookSession(parameters, out, pick_device())
    print(f"artefacts of this session: {out}\ndevice: {session.device}  |  torch {torch.__version__}")
    return session


# --- what the notebook prints for people ------------------------------------------------------

def random_init_banner(weights_record: dict) -> str:
    """The loud Markdown banner of a random-init backbone (build_model's record), in the
    notebook's words: which parameter chose it, and how to get ImageNet weights instead."""
    if weights_record.get("note", "").startswith("random init, chosen"):
        why = 'You chose it: `WEIGHTS = "none"`.'
    else:
        reason = weights_record.get("note", "").partition("random init: ")[2]
        reason = reason.partition(" To use ImageNet")[0].strip().rstrip(".")
        why = ('ImageNet weights could not be loaded, so `WEIGHTS = "imagenet-or-none"` fell back '
               f"to random init (`{reason}`). For ImageNet weights, put "
               f"torchvision's `{IMAGENET_FILE}` into `{torch_checkpoint_dir()}/` (where there is "
               "internet it downloads by itself), or set `WEIGHTS` to the file's path; "
               '`WEIGHTS = "imagenet"` stops here instead of falling back.')
    return ("# ⚠ RANDOM INIT — NOT IMAGENET-PRETRAINED\n"
            f"{why}\n\nThe backbone's features are random projections; accuracy on real data "
            "will be far below what ImageNet features give.")


def _number(value, digits: int = 3) -> str:
    return "—" if value is None or (isinstance(value, float) and np.isnan(value)) \
        else f"{value:.{digits}f}"


def _interval(ci) -> str:
    return "" if not ci or None in ci else f"{ci[0]:.3f}–{ci[1]:.3f}"


def metrics_table(metrics: dict) -> str:
    """A Markdown table of the headline metrics (metrics.compute_metrics' dict), rounded, with
    their 95% CIs; accuracy at the threshold the metrics were computed at, named in its row (the
    run's threshold, `val_threshold`, when it is that one; beside it when it is not)."""
    ci = metrics.get("ci") or {}
    threshold, run_threshold = metrics.get("threshold", 0.5), metrics.get("val_threshold")
    at = f"at {threshold_words(threshold, run_threshold)}"
    rows = [("accuracy", at, metrics.get("accuracy"), ci.get("accuracy")),
            ("balanced accuracy", at, metrics.get("balanced_accuracy"), None)]
    if run_threshold is not None and abs(run_threshold - threshold) >= 5e-4:
        rows.append(("accuracy", f"at {threshold_words(run_threshold, run_threshold)}",
                     metrics.get("accuracy_at_val_threshold"), None))
    rows += [("ROC-AUC", "any threshold: how well P(fake) ranks fakes above reals",
              metrics.get("roc_auc"), ci.get("roc_auc")),
             ("average precision", "any threshold: the PR curve's area",
              metrics.get("average_precision"), ci.get("average_precision")),
             ("EER", "where both error rates are equal", metrics.get("eer"), None),
             ("ECE", "calibration error: 0 is perfectly calibrated", metrics.get("ece"), None)]
    return markdown_table([{"metric": name, "value": _number(value), "95% CI": _interval(interval),
                            "about": what} for name, what, value, interval in rows])


def robustness_summary(rows: list[dict], threshold: float) -> str:
    """robustness.robustness_table's rows as a small rounded Markdown table (accuracy at the run's
    `threshold`), and one sentence that reads it."""
    clean = next(row for row in rows if row["perturbation"] == "clean")
    table = [{"perturbation": row["perturbation"],
              f"accuracy at the run's threshold {threshold:.3f}": row.get("accuracy_at_val_threshold"),
              "ROC-AUC": row.get("roc_auc"), "ROC-AUC 95% CI": _interval(row.get("roc_auc 95% CI")),
              "ROC-AUC change": "" if row is clean or row.get("roc_auc") is None
              or clean.get("roc_auc") is None else f"{row['roc_auc'] - clean['roc_auc']:+.3f}"}
             for row in rows]
    scored = [row for row in rows if row is not clean and row.get("roc_auc") is not None]
    table = markdown_table(table, float_format="{:.3f}")
    if clean.get("roc_auc") is None or not scored:
        return table + "\n\nROC-AUC is undefined here (one class only)."
    worst = min(scored, key=lambda row: row["roc_auc"])
    drop = clean["roc_auc"] - worst["roc_auc"]
    if drop > 0.05:
        reading = (f"The largest drop is under **{worst['perturbation']}**: ROC-AUC falls from "
                   f"{clean['roc_auc']:.3f} to {worst['roc_auc']:.3f}, so the detector relies on "
                   "detail that this degradation destroys.")
    else:
        largest = f" (at most {drop:.3f}, under {worst['perturbation']})" if drop > 0 else ""
        reading = (f"No perturbation lowers ROC-AUC by more than 0.05{largest}: on this split the "
                   "detector does not hinge on fine detail that re-saving or resizing destroys.")
    return f"{table}\n\n{reading}"


def localisation_summary(scores: dict) -> str:
    """The pointing game and IoU of gradcam.localisation_scores against a random map, as a small
    rounded Markdown table, and one sentence that reads it."""
    n = scores["n"]
    table = [{"check": "pointing game: the map's peak inside the mask",
              "Grad-CAM": _number(scores["pointing_game"], 2),
              "random map": f"{_number(scores['pointing_game_expected'], 2)} (expected)"},
             {"check": f"IoU of the map (>= {scores['threshold']}) with the mask",
              "Grad-CAM": _number(scores["mean_iou"], 2),
              "random map": _number(scores["mean_iou_random"], 2)}]
    if not n:
        return markdown_table(table) + "\n\nNo caught fake had a mask to score."
    hits, chance = scores["pointing_game"], scores["pointing_game_expected"]
    verdict = ("it points at the manipulation more often than chance." if hits > chance else
               "no better than chance, so here the map does not show where the manipulation is.")
    reading = (f"On {n} fake{'' if n == 1 else 's'} with a mask, the map's peak falls in the "
               f"manipulated region {hits:.0%} of the time, against {chance:.0%} for a random "
               f"map: {verdict}" + (" (Few images: a noisy estimate.)" if n < 20 else ""))
    return f"{markdown_table(table)}\n\n{reading}"


def randomisation_summary(randomised: list) -> str:
    """gradcam.randomisation_check's [(step, correlation), ...] as a small rounded Markdown table,
    and one sentence that reads it (maps that depend on the model change as it is randomised)."""
    table = [{"re-initialised, cumulatively": f"... + {step}" if i else step,
              "rank correlation with the trained model's maps": _number(rho, 2)}
             for i, (step, rho) in enumerate(randomised)]
    scored = {step: rho for step, rho in randomised if rho is not None and np.isfinite(rho)}
    if not scored:
        return (f"{markdown_table(table)}\n\nUndefined (—): every map of these images is constant "
                "(at this image size layer4's grid may be a single cell), so there is nothing to "
                "correlate. Use larger images (IMG_SIZE) for this check.")
    lowest = min(scored.values())
    if scored.get("fc") is not None and scored["fc"] < 0.5:
        reading = (f"Re-initialising the head alone drops the correlation to {scored['fc']:.2f}: the "
                   "maps depend on what the model learned, as a faithful explanation must.")
    elif lowest < 0.5:
        reading = (f"The maps change as layers are re-initialised (correlation down to "
                   f"{lowest:.2f}): they depend on the network's weights, not on the image alone.")
    else:
        reading = (f"The maps hardly change as the model is randomised (correlation at least "
                   f"{lowest:.2f}): they show the image more than what the model learned, so do "
                   "not read them as the model's reasons.")
    return f"{markdown_table(table)}\n\n{reading}"


def figure_grid_png(rows: list[list], gap: int = 16, dpi: int = 100) -> bytes:
    """Figures laid out for a screen: `rows` of matplotlib figures, each drawn at its own size
    (nothing rescaled), side by side on a white canvas, as one PNG. The figures are closed."""
    drawn = []
    for row in rows:
        pictures = []
        for fig in row:
            buffer = io.BytesIO()
            fig.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight", facecolor="white")
            plt.close(fig)
            pictures.append(Image.open(buffer).convert("RGB"))
        drawn.append(pictures)
    width = max(sum(p.width for p in row) + gap * (len(row) - 1) for row in drawn)
    height = sum(max(p.height for p in row) for row in drawn) + gap * (len(drawn) - 1)
    canvas = Image.new("RGB", (width, height), "white")
    top = 0
    for row in drawn:
        left = 0
        for picture in row:
            canvas.paste(picture, (left, top))
            left += picture.width + gap
        top += max(p.height for p in row) + gap
    buffer = io.BytesIO()
    canvas.save(buffer, format="PNG")
    return buffer.getvalue()
