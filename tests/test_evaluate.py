"""evaluate.py: metrics against sklearn and hand-computed cases, bootstrap CIs, thresholds,
groups, tables, prediction files, figures and the run report."""
import csv
import json
import tracemalloc

import numpy as np
import pytest
from sklearn.metrics import (accuracy_score, average_precision_score, balanced_accuracy_score,
                             brier_score_loss, log_loss, precision_recall_fscore_support,
                             roc_auc_score)

from deepfake_detector import metrics as metrics_module
from deepfake_detector import plots as ev
from deepfake_detector.figures import save_figure
from deepfake_detector.metrics import (bootstrap_ci, choose_threshold, compute_metrics,
                                       equal_error_rate, expected_calibration_error,
                                       reliability_curve)
from deepfake_detector.predictions import read_predictions, write_predictions
from deepfake_detector.report import RANDOM_INIT_WARNING, write_report
from deepfake_detector.tables import metrics_table_rows, write_table


def noisy_scores(n, seed=0, separation=0.4):
    """Labels and P(fake) from two overlapping normals: a decent but imperfect detector."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    p = np.clip(rng.normal(0.3 + separation * y, 0.2), 0, 1)
    return y, p


# ----------------------------------------------------------------------------- metrics

def test_perfect_classifier():
    m = compute_metrics([0, 0, 1, 1], [0.1, 0.2, 0.8, 0.9], n_bootstrap=50)
    assert m["accuracy"] == 1.0 and m["balanced_accuracy"] == 1.0
    assert m["roc_auc"] == 1.0 and m["average_precision"] == 1.0
    assert m["eer"] == 0.0
    assert m["confusion_matrix"] == [[2, 0], [0, 2]]
    assert (m["n_images"], m["n_real"], m["n_fake"]) == (4, 2, 2)


def test_random_classifier_is_at_chance():
    rng = np.random.default_rng(1)
    y, p = rng.integers(0, 2, 20_000), rng.random(20_000)
    m = compute_metrics(y, p, n_bootstrap=0)
    assert m["roc_auc"] == pytest.approx(0.5, abs=0.02)
    assert m["eer"] == pytest.approx(0.5, abs=0.02)
    assert m["accuracy"] == pytest.approx(0.5, abs=0.02)
    assert m["average_precision"] == pytest.approx(y.mean(), abs=0.02)


def test_known_confusion_matrix():
    # 4 real: one scored >= 0.5 (fp); 6 fake: two scored < 0.5 (fn).
    y = [0, 0, 0, 0, 1, 1, 1, 1, 1, 1]
    p = [0.1, 0.2, 0.3, 0.7, 0.2, 0.4, 0.6, 0.8, 0.9, 0.95]
    m = compute_metrics(y, p, n_bootstrap=0)
    assert m["confusion_matrix"] == [[3, 1], [2, 4]]
    assert m["accuracy"] == pytest.approx(0.7)
    assert m["balanced_accuracy"] == pytest.approx((3 / 4 + 4 / 6) / 2)
    assert m["per_class"]["fake"] == pytest.approx(
        {"precision": 4 / 5, "recall": 4 / 6, "f1": 2 * (4 / 5) * (4 / 6) / (4 / 5 + 4 / 6),
         "support": 6})
    assert m["per_class"]["real"]["precision"] == pytest.approx(3 / 5)
    assert "real" in m["classification_report"] and "fake" in m["classification_report"]


def test_threshold_is_inclusive_and_val_threshold_reported_beside_it():
    m = compute_metrics([0, 1], [0.5, 0.5], val_threshold=0.6, n_bootstrap=0)
    assert m["confusion_matrix"] == [[0, 1], [0, 1]]  # p == threshold counts as fake
    assert (m["threshold"], m["accuracy"]) == (0.5, 0.5)
    assert (m["val_threshold"], m["accuracy_at_val_threshold"]) == (0.6, 0.5)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("threshold", [0.5, 0.35])
def test_matches_sklearn(seed, threshold):
    y, p = noisy_scores(300, seed)
    m = compute_metrics(y, p, threshold=threshold, n_bootstrap=0)
    y_pred = (p >= threshold).astype(int)
    assert m["accuracy"] == pytest.approx(accuracy_score(y, y_pred))
    assert m["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y, y_pred))
    assert m["roc_auc"] == pytest.approx(roc_auc_score(y, p))
    assert m["average_precision"] == pytest.approx(average_precision_score(y, p))
    assert m["log_loss"] == pytest.approx(log_loss(y, p))
    assert m["brier"] == pytest.approx(brier_score_loss(y, p))
    precision, recall, f1, support = precision_recall_fscore_support(y, y_pred, labels=[0, 1])
    for idx, name in enumerate(("real", "fake")):
        assert m["per_class"][name] == pytest.approx(
            {"precision": precision[idx], "recall": recall[idx], "f1": f1[idx],
             "support": support[idx]})


def test_metrics_are_plain_json_without_nan():
    y, p = noisy_scores(200)
    m = compute_metrics(y, p, val_threshold=0.4, groups=np.arange(200) // 4, n_bootstrap=20)
    assert json.loads(json.dumps(m, allow_nan=False)) == m


@pytest.mark.parametrize("label", [0, 1])
def test_single_class_gives_none_and_a_note(label):
    m = compute_metrics([label] * 6, [0.1, 0.3, 0.5, 0.6, 0.8, 0.9], n_bootstrap=20)
    assert m["roc_auc"] is None and m["average_precision"] is None and m["eer"] is None
    assert m["ci"]["roc_auc"] is None and m["ci"]["accuracy"] is not None
    assert any("one class" in note for note in m["notes"])
    json.dumps(m, allow_nan=False)


def test_string_labels_accepted_and_bad_inputs_rejected():
    assert compute_metrics(["real", "fake"], [0.2, 0.9], n_bootstrap=0)["accuracy"] == 1.0
    with pytest.raises(ValueError, match="logits"):
        compute_metrics([0, 1], [-2.0, 3.0])
    with pytest.raises(ValueError):
        compute_metrics([0, 1, 1], [0.2, 0.9])


# ----------------------------------------------------------------------------- EER

@pytest.mark.parametrize("y, p, eer, threshold", [
    # exact crossing: at t=0.6 one real in four is above (FPR 1/4), one fake in four below (FNR 1/4)
    ([0, 0, 0, 0, 1, 1, 1, 1], [0.1, 0.2, 0.3, 0.7, 0.4, 0.6, 0.8, 0.9], 0.25, 0.6),
    # crossing between ROC points (FPR, FNR) = (0, 1/2) at t=0.9 and (1, 0) at t=0.5: weight 1/3
    ([0, 1, 1], [0.5, 0.5, 0.9], 1 / 3, 0.9 + (0.5 - 0.9) / 3),
    ([0, 1], [0.6, 0.4], 1.0, 0.6),  # fully inverted detector
    ([0, 1], [0.3, 0.3], 0.5, 0.65),  # all tied: halfway between the +inf point (read 1.0) and 0.3
])
def test_equal_error_rate(y, p, eer, threshold):
    got_eer, got_threshold = equal_error_rate(y, p)
    assert got_eer == pytest.approx(eer)
    assert got_threshold == pytest.approx(threshold)


# ----------------------------------------------------------------------------- calibration

def test_ece_hand_case():
    # bin of 0.1 (1/15..2/15): 2 images, half fake -> |0.5 - 0.1| * 2/4;
    # bin of 0.9 (13/15..14/15): 2 images, all fake -> |1 - 0.9| * 2/4.
    y, p = [0, 1, 1, 1], [0.1, 0.1, 0.9, 0.9]
    assert expected_calibration_error(y, p) == pytest.approx(0.4 * 0.5 + 0.1 * 0.5)
    assert compute_metrics(y, p, n_bootstrap=0)["ece"] == pytest.approx(0.25)


def test_ece_zero_when_frequencies_match_probabilities():
    y = [1] * 2 + [0] * 8 + [1] * 7 + [0] * 3
    p = [0.2] * 10 + [0.7] * 10
    assert expected_calibration_error(y, p) == pytest.approx(0.0, abs=1e-12)


def test_reliability_curve_bins():
    curve = reliability_curve([0, 1, 1, 0], [0.0, 1.0, 0.99, 0.5], n_bins=15)
    assert curve["counts"].sum() == 4 and curve["counts"][-1] == 2  # 1.0 lands in the last bin
    assert curve["counts"][0] == 1 and curve["counts"][7] == 1
    assert curve["accuracy"][-1] == 1.0 and curve["confidence"][-1] == pytest.approx(0.995)
    assert np.isnan(curve["accuracy"][1])  # empty bin
    assert curve["bin_centres"][0] == pytest.approx(1 / 30)


# ----------------------------------------------------------------------------- bootstrap

def test_bootstrap_is_deterministic_and_contains_the_estimate():
    y, p = noisy_scores(200)
    first = compute_metrics(y, p, n_bootstrap=50, seed=7)
    assert bootstrap_ci(y, p, n_bootstrap=50, seed=7) == first["ci"]
    assert bootstrap_ci(y, p, n_bootstrap=50, seed=8) != first["ci"]
    for name in ("accuracy", "roc_auc", "average_precision"):
        lo, hi = first["ci"][name]
        assert lo <= first[name] <= hi


def test_bootstrap_narrows_with_more_data():
    small = bootstrap_ci(*noisy_scores(100, seed=3), n_bootstrap=60)
    large = bootstrap_ci(*noisy_scores(1600, seed=3), n_bootstrap=60)
    for name in ("accuracy", "roc_auc", "average_precision"):
        width = lambda ci: ci[name][1] - ci[name][0]  # noqa: E731
        assert width(large) < width(small) / 2  # 16x the data: about 1/4 the width expected


# ----------------------------------------------------------------------------- threshold choice

@pytest.mark.parametrize("real, fake, expected", [
    ([0.6, 0.65, 0.7], [0.8, 0.85, 0.9], 0.75),  # separable above 0.5: midpoint of the gap
    ([0.1, 0.2, 0.3], [0.6, 0.8, 0.9], 0.5),  # 0.5 already separates: ties go to 0.5
    ([0.01, 0.02], [0.1, 0.2], 0.06),
])
def test_choose_threshold_separates(real, fake, expected):
    y, p = [0] * len(real) + [1] * len(fake), real + fake
    threshold = choose_threshold(y, p)
    assert threshold == pytest.approx(expected)
    assert balanced_accuracy_score(y, (np.array(p) >= threshold).astype(int)) == 1.0


def test_choose_threshold_is_optimal_on_noisy_data():
    y, p = noisy_scores(150, seed=5)
    chosen = balanced_accuracy_score(y, (p >= choose_threshold(y, p)).astype(int))
    best_brute_force = max(balanced_accuracy_score(y, (p >= t).astype(int)) for t in np.unique(p))
    assert chosen == pytest.approx(best_brute_force)


def test_choose_threshold_single_class_warns():
    with pytest.warns(UserWarning):
        assert choose_threshold([1, 1], [0.2, 0.9]) == 0.5


# ----------------------------------------------------------------------------- groups

def test_group_means_rescue_noisy_frames():
    # Frame level: a real frame at 0.7 outranks fake frames at 0.4/0.45, but every real video
    # averages below every fake video.
    groups = ["r1"] * 3 + ["r2"] * 3 + ["f1"] * 3 + ["f2"] * 3 + ["mixed"] * 2
    y = [0] * 6 + [1] * 6 + [0, 1]
    p = [0.1, 0.2, 0.7, 0.2, 0.3, 0.1, 0.4, 0.9, 0.8, 0.45, 0.9, 0.95, 0.5, 0.5]
    m = compute_metrics(y, p, groups=groups, n_bootstrap=20)
    assert m["roc_auc"] < 1.0
    group = m["group_level"]
    assert (group["n_groups"], group["n_real_groups"], group["n_fake_groups"]) == (4, 2, 2)
    assert group["n_mixed_label_groups_excluded"] == 1 and group["notes"]
    assert group["roc_auc"] == 1.0 and group["accuracy"] == 1.0
    assert group["average_precision"] == 1.0


def test_group_level_single_class_is_none():
    group = compute_metrics([1, 1, 0, 1], [0.2, 0.4, 0.6, 0.9], groups=["a", "a", "b", "b"],
                            n_bootstrap=0)["group_level"]
    assert group["n_groups"] == 1 and group["roc_auc"] is None and group["notes"]


# ----------------------------------------------------------------------------- tables

def test_write_table_outputs_parse(tmp_path):
    rows = [{"metric_name": "ROC-AUC", "value": 0.912345, "95% CI": [0.9, 0.93]},
            {"metric_name": "A & B #1", "value": None, "95% CI": None}]
    paths = write_table(rows, tmp_path / "tables" / "main_results", caption="Test split, n_images=10")
    assert [path.suffix for path in paths] == [".md", ".csv", ".tex"]
    with open(paths[1], newline="") as f:
        read_back = list(csv.DictReader(f))
    assert float(read_back[0]["value"]) == 0.912345 and json.loads(read_back[0]["95% CI"]) == [0.9, 0.93]
    assert read_back[1]["value"] == ""
    tex = paths[2].read_text()
    assert r"\begin{tabular}{lrr}" in tex and r"\toprule" in tex and r"\bottomrule" in tex
    assert r"metric\_name" in tex and r"95\% CI" in tex and r"A \& B \#1" in tex
    assert r"\caption{Test split, n\_images=10}" in tex and "0.9123" in tex
    assert r"A \& B \#1 & -- & -- \\" in tex  # missing values: an en dash
    md_lines = paths[0].read_text().splitlines()
    assert md_lines[2] == "| metric_name | value | 95% CI |"
    assert md_lines[3] == "|:---|---:|---:|"
    assert md_lines[4] == "| ROC-AUC | 0.9123 | [0.9000, 0.9300] |"
    assert md_lines[5] == "| A & B #1 | – | – |"


def test_metrics_table_rows():
    y, p = noisy_scores(200)
    m = compute_metrics(y, p, val_threshold=0.45, n_bootstrap=20)
    rows = {row["metric"]: row for row in metrics_table_rows(m)}
    assert rows["ROC-AUC"]["value"] == m["roc_auc"] and rows["ROC-AUC"]["95% CI"] == m["ci"]["roc_auc"]
    assert rows["Accuracy (threshold 0.50)"]["95% CI"] == m["ci"]["accuracy"]
    assert rows["Accuracy (val-chosen threshold 0.450)"]["value"] == m["accuracy_at_val_threshold"]
    assert {"EER", "ECE (15 bins)", "Log loss", "Brier score", "Average precision"} <= set(rows)


# ----------------------------------------------------------------------------- prediction files

def test_predictions_json_exact_format(tmp_path):
    rows = [{"image_id": "1.png", "prediction": np.float32(0.00025)},
            {"prediction": 0.1 + 0.2, "image_id": "2.png", "label": 1, "split": "test"}]
    path = write_predictions(rows, tmp_path / "predictions.json")
    assert json.loads(path.read_text()) == [
        {"image_id": "1.png", "prediction": 0.00025},
        {"image_id": "2.png", "prediction": 0.30000000000000004, "label": 1, "split": "test"}]
    assert list(read_predictions(path)[1]) == ["image_id", "prediction", "label", "split"]
    assert path.read_text().splitlines()[1] == '{"image_id": "1.png", "prediction": 0.00025},'


def test_predictions_csv_round_trip(tmp_path):
    rows = [{"image_id": "007", "prediction": 0.1 + 0.2, "label": 1, "path": "a/007.png"},
            {"image_id": "8", "prediction": 1e-9, "label": 0, "path": "b/8.png"}]
    path = write_predictions(rows, tmp_path / "predictions.csv")
    assert path.read_text().splitlines()[0] == "image_id,prediction,label,path"
    assert read_predictions(path) == rows


def test_predictions_reject_non_probabilities(tmp_path):
    with pytest.raises(ValueError):
        write_predictions([{"image_id": "x", "prediction": 1.5}], tmp_path / "p.json")
    with pytest.raises(ValueError):
        write_predictions([{"image_id": "x"}], tmp_path / "p.json")



def test_predictions_stream_to_disk_in_flat_memory(tmp_path):
    """A generator of rows is written as it comes: the writer's peak memory is a small fraction of
    what the same rows take as a list (what a million-image predict would otherwise hold)."""
    n = 50_000

    def rows():
        for i in range(n):
            yield {"image_id": f"{i:06d}.png", "prediction": i / n, "label": i % 2}

    for suffix in (".csv", ".json"):
        tracemalloc.start()
        path = write_predictions(rows(), tmp_path / f"streamed{suffix}")
        streamed_peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert path.read_bytes() == write_predictions(list(rows()), tmp_path / f"listed{suffix}").read_bytes()
    tracemalloc.start()
    listed = list(rows())
    listed_peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert len(listed) == n and streamed_peak < listed_peak / 20, (streamed_peak, listed_peak)


def test_a_streamed_row_with_new_columns_fails_and_leaves_no_file(tmp_path):
    rows = iter([{"image_id": "a", "prediction": 0.1}, {"image_id": "b", "prediction": 0.2, "x": 1}])
    with pytest.raises(ValueError, match="keys \\['x'\\]"):
        write_predictions(rows, tmp_path / "p.csv")
    assert list(tmp_path.iterdir()) == []  # no half-written file, no temporary left behind
    assert write_predictions(iter([]), tmp_path / "empty.json").read_text() == "[]\n"

# ----------------------------------------------------------------------------- figures

HISTORY = [{"epoch": 1, "train_loss": 0.69, "train_acc": 0.55, "val_loss": 0.60, "val_acc": 0.65,
            "val_auc": 0.70, "seconds": 10.0},
           {"epoch": 2, "train_loss": 0.50, "train_acc": 0.75, "val_loss": 0.45, "val_acc": 0.80,
            "val_auc": 0.85, "seconds": 9.5},
           {"epoch": 3, "train_loss": 0.40, "train_acc": 0.82, "val_loss": 0.48, "val_acc": 0.79,
            "val_auc": None, "seconds": 9.7}]


def _assert_saved(paths, n_figures):
    assert sorted(path.suffix for path in paths) == [".pdf"] * n_figures + [".png"] * n_figures
    assert all(path.is_file() and path.stat().st_size > 0 for path in paths)


def test_evaluation_figures_save_png_and_pdf(tmp_path):
    y, p = noisy_scores(200)
    m = compute_metrics(y, p, val_threshold=0.45, n_bootstrap=0)
    paths = ev.save_evaluation_figures(y, p, m, tmp_path / "figures", "Test", name_prefix="test_")
    _assert_saved(paths, len(ev.EVALUATION_FIGURES))
    assert {path.stem for path in paths} == {f"test_{name}" for name in ev.EVALUATION_FIGURES}


@pytest.mark.parametrize("plot", [ev.plot_confusion_matrix, ev.plot_roc_curve, ev.plot_pr_curve,
                                  ev.plot_reliability_diagram, ev.plot_probability_histogram])
def test_figures_survive_one_class(plot):
    fig = plot([1, 1, 1], [0.2, 0.6, 0.9])
    assert fig.axes and fig.axes[0].get_title()
    ev.plt.close(fig)


def test_history_figure_and_best_epoch(tmp_path):
    assert ev.best_epoch_by_val_loss(HISTORY) == 2
    fig = ev.plot_history(HISTORY)
    assert len(fig.axes) == 3  # loss, accuracy, val ROC-AUC
    _assert_saved(save_figure(fig, tmp_path / "learning_curves"), 1)
    assert len(ev.plot_history([{k: v for k, v in h.items() if k != "val_auc"}
                                for h in HISTORY]).axes) == 2


# ----------------------------------------------------------------------------- report

def _fake_run_dir(run_dir):
    y, p = noisy_scores(120)
    (run_dir / "figures").mkdir(parents=True)
    (run_dir / "config.json").write_text(json.dumps({
        "epochs": 3, "data_citation": "Some et al., Fake Faces, 2024",
        "weights": {"weights": "none", "pretrained": False, "sha256": None,
                    "note": "ImageNet weights unavailable, demo fell back to random init"}}))
    (run_dir / "history.json").write_text(json.dumps(HISTORY))
    (run_dir / "data_counts.json").write_text(json.dumps(
        {"train": {"real": 50, "fake": 50}, "val": {"real": 60, "fake": 60}}))
    metrics = compute_metrics(y, p, val_threshold=0.45, n_bootstrap=30)
    (run_dir / "metrics_val.json").write_text(json.dumps(metrics))
    for name in ("learning_curves", "val_roc_curve", "extra_plot"):  # the report only links them
        (run_dir / "figures" / f"{name}.png").write_bytes(b"\x89PNG")
    (run_dir / "robustness.json").write_text(json.dumps(
        [{"perturbation": "jpeg_q50", "roc_auc": 0.81}, {"perturbation": "blur", "roc_auc": 0.77}]))
    return metrics


def test_report_warns_on_random_init_and_shows_metrics(tmp_path):
    metrics = _fake_run_dir(tmp_path)
    text = write_report(tmp_path).read_text()
    assert text.splitlines()[0] == RANDOM_INIT_WARNING
    assert "demo fell back to random init" in text
    assert f"{metrics['roc_auc']:.4f}" in text
    lo, hi = metrics["ci"]["roc_auc"]
    assert f"[{lo:.4f}, {hi:.4f}]" in text
    assert "![Learning curves](figures/learning_curves.png)" in text
    assert "(figures/val_roc_curve.png)" in text and "(figures/val_pr_curve.png)" not in text
    assert "(figures/extra_plot.png)" in text
    assert "No test split was used" in text
    assert "jpeg_q50" in text and "## How to cite the data" in text
    assert "| train | 50 | 50 | 100 | 0.500 |" in text


def test_report_tolerates_an_empty_run_dir(tmp_path):
    text = write_report(tmp_path).read_text()
    assert RANDOM_INIT_WARNING not in text and "Nothing to report yet" in text


def test_report_without_warning_when_pretrained(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"weights": {"pretrained": True, "note": "x"}}))
    text = write_report(tmp_path).read_text()
    assert RANDOM_INIT_WARNING not in text and "## Configuration" in text
    assert "How to cite" not in text


@pytest.mark.parametrize("n, n_levels", [(10, 3), (200, 1000), (1000, 20)])
def test_fast_bootstrap_statistics_equal_sklearn(n, n_levels):
    """The bootstrap's own AUC and AP (fast, no input re-checks) against sklearn, ties included."""
    from sklearn.metrics import average_precision_score, roc_auc_score
    from deepfake_detector.metrics import rank_roc_auc, stepwise_average_precision
    rng = np.random.default_rng(n)
    y = rng.integers(0, 2, n)
    y[:2] = [0, 1]
    p = np.round(rng.uniform(size=n) * n_levels) / n_levels  # coarse levels make ties
    assert rank_roc_auc(y, p) == pytest.approx(roc_auc_score(y, p), abs=1e-12)
    assert stepwise_average_precision(y, p) == pytest.approx(average_precision_score(y, p), abs=1e-12)


def one_replicate_at_a_time(y, p, threshold=0.5, n_bootstrap=1000, seed=0):
    """bootstrap_ci as it was written before it was vectorised (issue 12): one replicate per
    loop, numpy's rng.choice, the scalar statistics. The reference the fast one must equal."""
    rng = np.random.default_rng(seed)
    class_indices = [idx for idx in (np.flatnonzero(y == 0), np.flatnonzero(y == 1)) if idx.size]
    both = len(class_indices) == 2
    samples = {name: [] for name in (("accuracy", "roc_auc", "average_precision") if both
                                     else ("accuracy",))}
    for _ in range(n_bootstrap):
        pick = np.concatenate([rng.choice(idx, size=idx.size) for idx in class_indices])
        y_b, p_b = y[pick], p[pick]
        samples["accuracy"].append(np.mean((p_b >= threshold).astype(int) == y_b))
        if both:
            samples["roc_auc"].append(metrics_module.rank_roc_auc(y_b, p_b))
            samples["average_precision"].append(metrics_module.stepwise_average_precision(y_b, p_b))
    ci = {"accuracy": None, "roc_auc": None, "average_precision": None}
    for name, values in samples.items():
        tail = 100 * (1 - metrics_module.CI_LEVEL) / 2  # 2.5000000000000022, as bootstrap_ci computes it
        lo, hi = np.percentile(values, [tail, 100 - tail])
        ci[name] = [float(lo), float(hi)]
    return ci


@pytest.mark.parametrize("n, decimals, dtype", [(800, None, np.float64), (37, 1, np.float64),
                                                (5, 1, np.float64), (1203, 3, np.float32)])
def test_vectorised_bootstrap_gives_the_same_intervals_bit_for_bit(n, decimals, dtype, monkeypatch):
    """Scoring many replicates at once (and in chunks) must not move a single bit: the same seed
    gives the same intervals as one replicate at a time, with ties and without."""
    rng = np.random.default_rng(n)
    y = (rng.random(n) < 0.4).astype(int)
    y[:2] = [0, 1]
    p = rng.random(n)
    p = (np.round(p, decimals) if decimals is not None else p).astype(dtype)
    monkeypatch.setattr(metrics_module, "BOOTSTRAP_CHUNK_VALUES", 7 * n)  # several chunks, one partial
    for threshold, seed in ((0.5, 0), (0.3, 11)):
        assert metrics_module.bootstrap_ci(y, p, threshold, 300, seed) == \
            one_replicate_at_a_time(y, p.astype(np.float64), threshold, 300, seed)
    only_real = np.zeros(n, dtype=int)  # one class: accuracy's interval only
    assert metrics_module.bootstrap_ci(only_real, p, n_bootstrap=50) == \
        one_replicate_at_a_time(only_real, p.astype(np.float64), n_bootstrap=50)


# --- several figures at once, on several cores (figures.save_figures) ---------------------------

def _pixels(path):
    from PIL import Image
    with Image.open(path) as image:
        return np.asarray(image)


def test_figures_drawn_by_forked_processes_are_the_ones_drawn_in_one(tmp_path):
    from deepfake_detector.figures import save_figures
    y, p = noisy_scores(200)
    m = compute_metrics(y, p, val_threshold=0.45, n_bootstrap=0)
    written = {}
    for processes in (1, 3):
        drawings = ev.evaluation_drawings(y, p, m, tmp_path / f"p{processes}", "Test")
        paths = save_figures(drawings, processes=processes)
        assert paths == [stem.with_suffix(s) for stem in drawings for s in (".png", ".pdf")]
        _assert_saved(paths, len(ev.EVALUATION_FIGURES))
        written[processes] = paths
    for one, forked in zip(written[1], written[3]):
        if one.suffix == ".png":
            np.testing.assert_array_equal(_pixels(one), _pixels(forked))


def test_a_figure_whose_process_fails_is_drawn_again_and_its_error_raised(tmp_path):
    import os
    from deepfake_detector.figures import save_figures
    parent = os.getpid()

    def fails_in_a_copy():
        if os.getpid() != parent:
            raise RuntimeError("the copy failed")  # printed by the copy, then drawn here
        return ev.plot_history(HISTORY)

    def always_fails():
        raise ValueError("no such figure")

    paths = save_figures({tmp_path / "fine": lambda: ev.plot_history(HISTORY),
                          tmp_path / "redrawn": fails_in_a_copy}, processes=2)
    _assert_saved(paths, 2)
    with pytest.raises(ValueError, match="no such figure"):
        save_figures({tmp_path / "a": lambda: ev.plot_history(HISTORY),
                      tmp_path / "b": always_fails}, processes=2)


def test_figures_are_drawn_in_this_process_where_a_copy_could_not_draw(monkeypatch):
    import sys
    from deepfake_detector import figures
    if not sys.platform.startswith("linux"):
        assert figures.drawing_processes(6) == 1
        return
    monkeypatch.setattr(figures.os, "sched_getaffinity", lambda pid: {0, 1, 2, 3})
    assert figures.drawing_processes(6) == 4 and figures.drawing_processes(3) == 3
    assert figures.drawing_processes(1) == 1
    monkeypatch.setitem(sys.modules, "ipykernel", object())  # a notebook's kernel
    assert figures.drawing_processes(6) == 1
    monkeypatch.delitem(sys.modules, "ipykernel")
    monkeypatch.setattr(figures.plt, "get_backend", lambda: "QtAgg")  # a window on a display
    assert figures.drawing_processes(6) == 1
