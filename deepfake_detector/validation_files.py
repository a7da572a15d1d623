"""The validation files of a run, written once its head is trained: the head-against-probe
table, metrics_val.json, the predictions, the six figures, the tables and report.md. Both phases
(train.py, finetune.py through train.conclude_run) end here."""
from __future__ import annotations

from functools import partial
from pathlib import Path

import numpy as np

from .figures import plt, save_figures
from .files import write_json
from .loop import Fitted
from .plots import evaluation_drawings, plot_history
from .predictions import write_predictions
from .probe import comparison_rows
from .report import write_report
from .run_flags import flag_record, flags_of_run
from .run_dir import FIGURES_DIR, METRICS_VAL_JSON, PREDICTIONS_VAL_CSV, TABLES_DIR
from .tables import metrics_table_rows, write_table
from .terminal import rounded


def finish_run(run_dir: Path, val_items, val_probabilities, metrics: dict, val_threshold: float,
               fitted: Fitted, log=print, probe: dict | None = None) -> None:
    """The validation files of a run: the head-vs-probe table, metrics, predictions, figures,
    tables, report."""
    labels = np.array([y for _, y in val_items])
    if probe is not None:
        write_table(comparison_rows(metrics, probe["metrics"]["val"]),
                    run_dir / TABLES_DIR / "head_vs_probe",
                    caption="The trained head against a logistic-regression probe on the same "
                            "frozen features (validation split, 95% bootstrap CIs)")
        log(metrics["head_vs_probe"]["verdict"])
    # RANDOM INIT / SYNTHETIC DATA, from the config.json written just before: in the metrics too
    metrics.update(flag_record(flags_of_run(run_dir)))
    write_json(run_dir / METRICS_VAL_JSON, metrics)
    write_predictions([{"image_id": path.name, "prediction": float(p), "label": int(y),
                        "path": str(path)} for (path, y), p in zip(val_items, val_probabilities)],
                      run_dir / PREDICTIONS_VAL_CSV)
    save_figures(run_drawings(run_dir / FIGURES_DIR, fitted.history, fitted.best_epoch, labels,
                              val_probabilities, metrics))
    write_table(metrics_table_rows(metrics), run_dir / TABLES_DIR / "metrics_val",
                caption="Validation metrics with 95% bootstrap confidence intervals")
    plt.close("all")
    write_report(run_dir)
    video = metrics.get("video") or {}  # frames of videos: the videos' numbers lead
    if video.get("n_videos"):
        log(f"val videos: accuracy {rounded(video['accuracy_at_val_threshold'])} at the video "
            f"threshold {video['val_threshold']:.3f}, ROC-AUC {rounded(video['roc_auc'])} "
            f"({video['n_videos']} videos); frames:")
    log(f"val accuracy {metrics['accuracy']:.3f}, ROC-AUC {rounded(metrics['roc_auc'])}, "
        f"threshold chosen on val {val_threshold:.3f}; run saved in {run_dir}")


def run_drawings(figures: Path, history, best_epoch, labels, val_probabilities,
                 metrics: dict) -> dict:
    """A run's six figures, for save_figures: the learning curves and the validation figures,
    the costliest first (save_figures deals them out in this order)."""
    return {figures / "learning_curves": partial(plot_history, history, best_epoch=best_epoch),
            **evaluation_drawings(labels, val_probabilities, metrics, figures,
                                  title_prefix="Validation", name_prefix="val_")}

