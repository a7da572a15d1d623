"""Is B better than A (issue 25): DeLong's test against its O(n^2) definition, the paired bootstrap,
McNemar and Holm on known answers, compare's verdicts on identical and on shuffled predictions
(synthetic score arrays: milliseconds), and one small end-to-end pass over the files: train
--seeds, compare (a run, its copy and the seed group) and runs (a command-line run, a notebook
run and the seeds' runs)."""
from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from deepfake_detector.compare import Entry, compare_entries
from deepfake_detector.compare_files import guard_notes
from deepfake_detector.delong import (bootstrap_counts, delong_covariance, delong_test,
                                      exact_bootstrap_variance, holm, mcnemar_exact,
                                      paired_bootstrap_aucs, percentile_endpoint_bounds,
                                      percentile_interval)
from deepfake_detector.metrics import rank_roc_auc
from deepfake_detector.seeds import parse_seeds


def delong_reference(y, scores):
    """DeLong et al. (1988) as written: every fake against every real, O(n_fake x n_real)."""
    scores = np.atleast_2d(scores)
    fakes, reals = scores[:, y == 1], scores[:, y == 0]
    psi = (fakes[:, :, None] > reals[:, None, :]) + 0.5 * (fakes[:, :, None] == reals[:, None, :])
    v10, v01 = psi.mean(axis=2), psi.mean(axis=1)
    covariance = np.cov(v10) / fakes.shape[1] + np.cov(v01) / reals.shape[1]
    return v10.mean(axis=1), covariance


def scored(n=400, strength=(1.0, 1.3, 0.7), seed=0, decimals=None):
    """Labels and one row of scores per strength (higher: more separable)."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    scores = np.array([1 / (1 + np.exp(-(rng.normal(size=n) + s * (2 * y - 1))))
                       for s in strength])
    return y, (scores if decimals is None else np.round(scores, decimals))


def test_delong_matches_its_quadratic_definition_ties_included():
    for seed, decimals in ((0, None), (1, 1), (2, 2)):  # 1 decimal: many ties within and across
        y, scores = scored(n=90, seed=seed, decimals=decimals)
        aucs, covariance = delong_covariance(y, scores)
        ref_aucs, ref_covariance = delong_reference(y, scores)
        np.testing.assert_allclose(aucs, ref_aucs, rtol=0, atol=1e-10)
        np.testing.assert_allclose(covariance, ref_covariance, rtol=0, atol=1e-10)
        assert aucs == pytest.approx([rank_roc_auc(y, s) for s in scores], abs=1e-12)
    test = delong_test(y, scores[0], scores[1])
    variance = ref_covariance[0, 0] + ref_covariance[1, 1] - 2 * ref_covariance[0, 1]
    assert test["se"] == pytest.approx(np.sqrt(variance), abs=1e-10)
    assert test["delta"] == pytest.approx(ref_aucs[0] - ref_aucs[1], abs=1e-10)


def test_the_paired_bootstrap_scores_the_resampled_images():
    y, scores = scored(n=60, decimals=1)
    replicates = paired_bootstrap_aucs(y, scores, n_bootstrap=7, seed=3)
    rows, counts = next(bootstrap_counts(y, 7, seed=3))
    for r in range(7):
        drawn = np.repeat(np.arange(y.size), counts[r].astype(int))
        assert np.bincount(y[drawn]).tolist() == np.bincount(y).tolist()  # stratified
        for k, row in enumerate(scores):
            assert replicates[r, k] == pytest.approx(rank_roc_auc(y[drawn], row[drawn]), abs=1e-12)


def test_the_exact_bootstrap_variance_is_the_variance_over_every_resample():
    import itertools
    y = np.array([1, 1, 1, 0, 0, 0, 0])
    rng = np.random.default_rng(0)
    a, b = np.round(rng.random(7), 1), np.round(rng.random(7), 1)  # ties within and across
    fakes, reals = np.flatnonzero(y == 1), np.flatnonzero(y == 0)
    deltas = []  # all 3^3 x 4^4 stratified resamples, each equally likely
    for drawn_fakes in itertools.product(fakes, repeat=fakes.size):
        for drawn_reals in itertools.product(reals, repeat=reals.size):
            drawn = np.r_[drawn_fakes, drawn_reals]
            deltas.append(rank_roc_auc(y[drawn], a[drawn]) - rank_roc_auc(y[drawn], b[drawn]))
    assert exact_bootstrap_variance(y, a, b) == pytest.approx(np.var(deltas), abs=1e-12)


def test_percentile_endpoint_bounds_hold_the_limit_quantiles():
    held = 0
    for seed in range(40):  # normal replicates: the limit interval is +-1.96
        replicates = np.random.default_rng(seed).normal(size=2000)
        (low_lo, low_hi), (high_lo, high_hi) = percentile_endpoint_bounds(replicates, 0.95, 0.95)
        lo, hi = percentile_interval(replicates)
        assert low_lo <= lo <= low_hi and high_lo <= hi <= high_hi
        held += (low_lo <= -1.959964 <= low_hi) + (high_lo <= 1.959964 <= high_hi)
    assert held >= 0.9 * 80  # 95% bounds: about 76 of the 80 ends, not fewer than 72


def test_in_a_large_sample_the_bootstrap_and_delong_agree():
    """6,000 images: the paired bootstrap's variance is its closed form's, which is DeLong's to
    O(1/n); DeLong's interval lies within what 4,000 resamples know of the bootstrap's ends (the
    cifake-dev case, with 400,000 resamples, is in benchmarks/compare_runs.py)."""
    y, scores = scored(n=6000, strength=(1.0, 1.15))
    exact = exact_bootstrap_variance(y, scores[0], scores[1])
    delong = delong_test(y, scores[0], scores[1])
    assert np.sqrt(exact) == pytest.approx(delong["se"], rel=2e-3)
    replicates = paired_bootstrap_aucs(y, scores, n_bootstrap=4000, seed=0)
    deltas = replicates[:, 0] - replicates[:, 1]
    assert np.var(deltas) == pytest.approx(exact, rel=0.1)  # a variance of 4,000 draws: +-4.5%
    (low_lo, low_hi), (high_lo, high_hi) = percentile_endpoint_bounds(deltas, 0.95, 0.99)
    d_lo, d_hi = delong["ci"]
    assert low_lo <= d_lo <= low_hi and high_lo <= d_hi <= high_hi


def test_mcnemar_and_holm_give_the_known_answers():
    assert mcnemar_exact([1, 1, 1, 0], [0, 0, 0, 0]) == {"a_only": 3, "b_only": 0, "p_value": 0.25}
    a = np.r_[np.ones(1), np.zeros(9), np.ones(20)].astype(bool)
    b = np.r_[np.zeros(1), np.ones(9), np.ones(20)].astype(bool)
    assert mcnemar_exact(a, b)["p_value"] == pytest.approx(2 * (1 + 10) / 2 ** 10)
    assert mcnemar_exact(a, a)["p_value"] == 1.0
    # Holm (1979): sorted 0.005, 0.01, 0.03, 0.04 times 4, 3, 2, 1 -> 0.02, 0.03, 0.06, 0.04,
    # made non-decreasing -> 0.02, 0.03, 0.06, 0.06, back in the input's order
    np.testing.assert_allclose(holm([0.01, 0.04, 0.03, 0.005]), [0.03, 0.06, 0.06, 0.02])
    np.testing.assert_allclose(holm([0.5, 0.9]), [1.0, 1.0])  # 0.9 x 1 < 0.5 x 2: raised to 1


def test_identical_runs_are_no_different_and_shuffled_labels_are():
    y, scores = scored(n=600, strength=(1.5,))
    same = compare_entries(y, [Entry("a", scores[0]), Entry("b", scores[0].copy())],
                           n_bootstrap=200)
    pair = same["pairs"][0]
    assert (pair["delta_auc"], pair["delong_p"], pair["mcnemar_p"]) == (0.0, 1.0, 1.0)
    assert pair["delta_auc_ci_bootstrap"] == [0.0, 0.0] and not same["holm"]
    # The run's own predictions, dealt to the images in a shuffled order: labels shuffled
    shuffled = np.random.default_rng(1).permutation(scores[0])
    result = compare_entries(y, [Entry("run", scores[0]), Entry("shuffled", shuffled)],
                             n_bootstrap=200)
    pair = result["pairs"][0]
    assert result["runs"][0]["roc_auc"] > 0.9 and abs(result["runs"][1]["roc_auc"] - 0.5) < 0.08
    assert pair["delong_p"] < 1e-30 and pair["mcnemar_p"] < 1e-20
    assert pair["delta_auc_ci_bootstrap"][0] > 0.3
    lo, hi = pair["delta_auc_ci_delong"]  # large sample: the two intervals nearly agree
    assert pair["delta_auc_ci_bootstrap"] == pytest.approx([lo, hi], abs=0.02)


def test_three_entries_get_holm_and_a_seed_group_says_which_noise_dominates():
    y, scores = scored(n=300, strength=(1.0, 1.1, 1.05, 1.2))
    group = Entry("group", scores[1:], seeds=[0, 1, 2])
    result = compare_entries(y, [Entry("a", scores[0]), Entry("b", scores[1]), group],
                             n_bootstrap=100)
    assert result["holm"] and len(result["pairs"]) == 3
    raw = [pair["delong_p"] for pair in result["pairs"]]
    np.testing.assert_allclose([pair["delong_p_holm"] for pair in result["pairs"]], holm(raw))
    run = result["runs"][2]
    assert run["roc_auc"] == pytest.approx(rank_roc_auc(y, scores[1:].mean(axis=0)))
    assert run["member_auc_sd"] == pytest.approx(np.std([rank_roc_auc(y, s) for s in scores[1:]],
                                                        ddof=1))
    assert "noise dominates" in result["pairs"][1]["dominant_noise"]


def test_guards_name_preprocessing_splits_and_the_split_that_chose_the_threshold(tmp_path):
    for name, text in (("a", "split,label,path\n"), ("b", "other\n")):
        (tmp_path / name).mkdir()
        (tmp_path / name / "split.csv").write_text(text)
    settings = [{"img_size": 64, "data_dir": str(tmp_path / "a")},
                {"img_size": 128, "data_dir": str(tmp_path / "b")}]
    notes = " | ".join(guard_notes(["r64", "r128"], settings, tmp_path / "a", "val"))
    assert "differ in img_size (r64: 64, r128: 128)" in notes and "same files" in notes
    assert "WARNING: the runs were trained on different splits" in notes
    assert "compared on val, the split that chose the threshold and the best epoch of r64" in notes
    assert guard_notes(["x", "y"], [settings[0]] * 2, tmp_path / "a", "test") == []


def test_seeds_are_read_as_lists_and_ranges():
    import argparse
    assert parse_seeds("0,1,2,3,4") == parse_seeds("0-4") == [0, 1, 2, 3, 4]
    assert parse_seeds("0-2,7,1") == [0, 1, 2, 7]
    for bad in ("a", "3-1", "-1"):
        with pytest.raises(argparse.ArgumentTypeError):
            parse_seeds(bad)


def predictions_of(run: Path) -> list[float]:
    with open(run / "predictions_val.csv", encoding="utf-8") as f:
        return [float(row["prediction"]) for row in csv.DictReader(f)]


def test_seeds_compare_and_runs_end_to_end(trained_run, split_data, tmp_path, capsys):
    """One pass over the files (~10 s on 2 cores: two seeds' runs; everything else reads them):
    train --seeds gives seed 0 the very head `train` gives, compare writes its tables and figure
    and finds a run and its copy equal, runs lists the command line's, the notebook's and the
    seeds' runs."""
    from deepfake_detector.cli import main
    root = tmp_path / "outputs"
    group = root / "seeds"
    assert main(["train", "--data", str(split_data), "--out", str(group), "--weights", "none",
                 "--img-size", "32", "--lr", "1e-2", "--cache-dir", "", "--num-workers", "0",
                 "--no-probe", "--seeds", "0,1"]) == 0
    summary = json.loads((group / "seeds.json").read_text())
    assert [run["seed"] for run in summary["runs"]] == [0, 1]
    assert "only the head's initial weights and the order of the batches" in summary["sentence"]
    assert predictions_of(group / "seed-0") == pytest.approx(predictions_of(trained_run),
                                                             abs=1e-6)
    assert {p.suffix for p in group.glob("seeds.*")} == {".json", ".md", ".csv", ".tex"}

    cli_run = Path(shutil.copytree(trained_run, root / "cli-run"))
    notebook_run = Path(shutil.copytree(trained_run, root / "notebook" / "run"))
    (notebook_run / "made_by_notebook.json").write_text('{"what": "run"}')
    out = tmp_path / "comparison"
    capsys.readouterr()
    assert main(["compare", str(trained_run), str(cli_run), str(group), "--data", str(split_data),
                 "--split", "val", "--out", str(out), "--n-bootstrap", "50"]) == 0
    printed = capsys.readouterr().out
    assert "compared on val, the split that chose the threshold" in printed
    result = json.loads((out / "compare.json").read_text())
    same = result["pairs"][0]
    assert (same["delta_auc"], same["delong_p"], same["mcnemar_p"]) == (0.0, 1.0, 1.0)
    assert result["holm"] and "delong_p_holm" in same and result["runs"][2]["seeds"] == [0, 1]
    for name in ("runs", "pairs"):
        assert all((out / "tables" / f"{name}.{ext}").is_file() for ext in ("md", "csv", "tex"))
        # random-init runs: the comparison's tables say so too (they go into papers on their own)
        assert (out / "tables" / f"{name}.csv").read_text().startswith("# RANDOM INIT")
    assert (out / "figures" / "roc_overlay.png").stat().st_size > 10_000
    assert not {"Δ", "−"} & set((out / "tables" / "pairs.tex").read_text())  # LaTeX fonts lack them
    assert main(["compare", str(trained_run), str(cli_run), "--data", str(split_data),
                 "--out", str(out)]) == 2  # never into a folder that holds a comparison
    assert "already holds files" in capsys.readouterr().err

    assert main(["runs", str(root)]) == 0
    printed = capsys.readouterr().out
    rows = list(csv.DictReader(open(root / "runs.csv", encoding="utf-8")))
    made_by = {row["run"]: row["made by"] for row in rows}
    assert made_by == {"cli-run": "train", "notebook/run": "notebook",
                       "seeds/seed-0": "train --seeds (seeds)",
                       "seeds/seed-1": "train --seeds (seeds)"}
    assert "RANDOM INIT" in printed and "seed=0" in printed and "seed=1" in printed
    assert all(float(row["val AUC"]) > 0.5 for row in rows)
    (tmp_path / "mine.csv").write_text("my own table\n")
    assert main(["runs", str(root), "--csv", str(tmp_path / "mine.csv")]) == 2  # not ours: kept
    assert (tmp_path / "mine.csv").read_text() == "my own table\n"
