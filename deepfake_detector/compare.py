"""Is B better than A? Runs side by side on the same images: each run's numbers, and for each pair
the paired tests (delong.py), as plain JSON-ready dicts and table rows. No torch and no files:
compare_files.py gathers the runs' P(fake) and writes what this returns.

An entry is one run, or a seed group (train --seeds): several heads of one recipe that differ only
in their seed. A group is scored by its ensemble mean P(fake); its members' own AUCs give the
seed-level spread, which is set beside the test set's sampling noise (DeLong's standard error) to
say which of the two noises is the larger. A group's verdicts (accuracy, McNemar) are its ensemble
mean P(fake) at the mean of its members' thresholds.

Conventions: ΔAUC is A - B (the first-named run minus the second); every interval is 95 %; the
bootstrap is stratified by class and paired (every run sees the same resampled images); with more
than two entries the p-values are also given after Holm's correction across the pairs.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from itertools import combinations

import numpy as np
from scipy.stats import norm

from .delong import (delong_covariance, holm, mcnemar_exact, paired_bootstrap_aucs,
                     percentile_endpoint_bounds, percentile_interval)
from .metrics import check_inputs, equal_error_rate, rank_roc_auc

LEVEL = 0.95
Z_LEVEL = float(norm.ppf(0.5 + LEVEL / 2))  # 1.96


@dataclass
class Entry:
    """One column of a comparison: a run (one row of P(fake)) or a seed group (one row per seed),
    the threshold its verdicts use (the run's own, chosen on its validation split) and the
    settings it was trained with (config.json)."""
    name: str
    members: np.ndarray           # (k, n): P(fake) of each member on the compared images
    threshold: float = 0.5
    settings: dict = field(default_factory=dict)
    seeds: list | None = None     # a seed group's seeds; None for a single run

    def __post_init__(self):
        self.members = np.atleast_2d(np.asarray(self.members, dtype=float))

    @property
    def is_group(self) -> bool:
        return self.seeds is not None

    @property
    def scores(self) -> np.ndarray:
        """What the entry is scored by: the run's P(fake), or the group's ensemble mean."""
        return self.members.mean(axis=0)


def log_loss_of(y: np.ndarray, p: np.ndarray) -> float:
    """Mean binary cross-entropy, P(fake) clipped to [1e-15, 1 - 1e-15] as scikit-learn does."""
    p = np.clip(p, 1e-15, 1 - 1e-15)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


def member_spread(y: np.ndarray, entry: Entry) -> dict:
    """A seed group's members' own AUCs: mean, sd (n - 1), range, one per seed."""
    aucs = np.array([rank_roc_auc(y, row) for row in entry.members])
    return {"seeds": list(entry.seeds), "member_aucs": aucs.tolist(),
            "member_auc_mean": float(aucs.mean()),
            "member_auc_sd": float(aucs.std(ddof=1)) if aucs.size > 1 else 0.0,
            "member_auc_range": [float(aucs.min()), float(aucs.max())]}


def run_summary(y: np.ndarray, entry: Entry, auc: float, se: float, replicates) -> dict:
    """One entry's numbers on the compared images."""
    p = entry.scores
    eer, _ = equal_error_rate(y, p)
    summary = {"run": entry.name, "n_images": int(y.size), "n_real": int((y == 0).sum()),
               "n_fake": int(y.sum()), "roc_auc": float(auc),
               "roc_auc_ci": percentile_interval(replicates, LEVEL), "roc_auc_se_delong": se,
               "threshold": float(entry.threshold),
               "accuracy": float(np.mean((p >= entry.threshold) == y)), "eer": eer,
               "log_loss": log_loss_of(y, p), "scored_by": "P(fake)"}
    if entry.is_group:
        summary.update(member_spread(y, entry), scored_by="ensemble mean P(fake) of the seeds")
    return summary


def dominant_noise(seed_sd: float, sampling_se: float) -> str:
    """Which noise is the larger: the seed's (the sd of one recipe's AUC across seeds) or the test
    set's (the DeLong standard error of ΔAUC), in words."""
    if seed_sd > sampling_se:
        return (f"the seed's noise dominates (seed sd {seed_sd:.4f} > sampling SE "
                f"{sampling_se:.4f}): repeat the runs with more seeds before reading a difference")
    return (f"the test set's sampling noise dominates (sampling SE {sampling_se:.4f} >= seed sd "
            f"{seed_sd:.4f}): more test images, not more seeds, would sharpen the comparison")


def seed_level(runs: list[dict], a: int, b: int, sampling_se: float) -> dict:
    """For a pair with a seed group: the difference of the members' mean AUCs, the seed-level
    spread (the groups' pooled sd; a single run has no spread of its own to add) and which
    noise dominates."""
    mean = [runs[i].get("member_auc_mean", runs[i]["roc_auc"]) for i in (a, b)]
    variances = [runs[i]["member_auc_sd"] ** 2 for i in (a, b) if "member_auc_sd" in runs[i]]
    seed_sd = math.sqrt(sum(variances) / len(variances))
    return {"difference_of_member_means": mean[0] - mean[1], "seed_sd": seed_sd,
            "dominant_noise": dominant_noise(seed_sd, sampling_se)}


def pair_summary(y, entries, runs, aucs, cov, replicates, a: int, b: int) -> dict:
    """The paired tests of entries a and b (ΔAUC = a - b)."""
    delta = float(aucs[a] - aucs[b])
    se = math.sqrt(max(float(cov[a, a] + cov[b, b] - 2 * cov[a, b]), 0.0))
    if se < 1e-15:  # the same ranking: nothing to test
        z, p_delong = 0.0, 1.0 if abs(delta) < 1e-12 else 0.0
    else:
        z, p_delong = delta / se, float(2 * norm.sf(abs(delta / se)))
    correct = [(entries[i].scores >= entries[i].threshold) == y for i in (a, b)]
    mcnemar = mcnemar_exact(*correct)
    deltas = replicates[:, a] - replicates[:, b]
    pair = {"a": entries[a].name, "b": entries[b].name, "delta_auc": delta,
            "delta_auc_ci_bootstrap": percentile_interval(deltas, LEVEL),
            "delta_auc_ci_bootstrap_mc_bounds": percentile_endpoint_bounds(deltas, LEVEL),
            "delta_auc_se_delong": se,
            "delta_auc_ci_delong": [delta - Z_LEVEL * se, delta + Z_LEVEL * se],
            "delong_z": float(z), "delong_p": p_delong,
            "mcnemar_a_only": mcnemar["a_only"], "mcnemar_b_only": mcnemar["b_only"],
            "mcnemar_p": mcnemar["p_value"]}
    if entries[a].is_group or entries[b].is_group:
        pair.update(seed_level(runs, a, b, se))
    return pair


def compare_entries(y_true, entries: list[Entry], n_bootstrap: int = 1000, seed: int = 0) -> dict:
    """Every number of a comparison of `entries` on the same images (labels `y_true`): "runs" (one
    dict per entry), "pairs" (one per pair, in order), "holm" (whether Holm's correction was
    applied: more than two entries), and how the numbers were made."""
    if len(entries) < 2:
        raise ValueError("compare needs at least two runs (or seed groups)")
    names = [entry.name for entry in entries]
    if len(set(names)) != len(names):
        raise ValueError(f"two entries share a name: {names}; give each run its own name")
    y = check_inputs(y_true, entries[0].scores)[0]
    for entry in entries:
        check_inputs(y, entry.scores)
    scores = np.vstack([entry.scores for entry in entries])
    aucs, cov = delong_covariance(y, scores)
    replicates = paired_bootstrap_aucs(y, scores, n_bootstrap, seed)
    runs = [run_summary(y, entry, aucs[i], math.sqrt(max(float(cov[i, i]), 0.0)),
                        replicates[:, i]) for i, entry in enumerate(entries)]
    pairs = [pair_summary(y, entries, runs, aucs, cov, replicates, a, b)
             for a, b in combinations(range(len(entries)), 2)]
    with_holm = len(entries) > 2
    if with_holm:
        for key in ("delong_p", "mcnemar_p"):
            for pair, adjusted in zip(pairs, holm([pair[key] for pair in pairs])):
                pair[f"{key}_holm"] = float(adjusted)
    return {"runs": runs, "pairs": pairs, "holm": with_holm, "ci_level": LEVEL,
            "n_bootstrap": int(n_bootstrap), "bootstrap_seed": int(seed),
            "ci_method": "percentile bootstrap, stratified by class, paired: the same resampled "
                         "images for every run",
            "tests": {"delong": "DeLong et al. 1988, O(n log n) as Sun & Xu 2014; two-sided",
                      "mcnemar": "exact (binomial) on the verdicts at each run's own threshold",
                      "holm": "Holm 1979, across the pairs" if with_holm else None}}


# ----------------------------------------------------------------------------- table rows

def interval_text(interval) -> str:
    return "–" if interval is None else f"[{interval[0]:.4f}, {interval[1]:.4f}]"


def run_rows(result: dict, settings: dict[str, dict]) -> list[dict]:
    """The per-run table: numbers, then the settings that differ between the runs (only those)."""
    rows = []
    for run in result["runs"]:
        row = {"run": run["run"], "images": run["n_images"], "ROC-AUC": run["roc_auc"],
               "95% CI": interval_text(run["roc_auc_ci"]),
               "accuracy (own threshold)": run["accuracy"], "threshold": run["threshold"],
               "EER": run["eer"], "log loss": run["log_loss"]}
        if any("member_auc_mean" in r for r in result["runs"]):
            spread = ("–" if "member_auc_mean" not in run else
                      f"{run['member_auc_mean']:.4f} ± {run['member_auc_sd']:.4f} "
                      f"[{run['member_auc_range'][0]:.4f}, {run['member_auc_range'][1]:.4f}] "
                      f"({len(run['seeds'])} seeds)")
            row["seeds: AUC mean ± sd [range]"] = spread
        row.update(settings.get(run["run"], {}))
        rows.append(row)
    return rows


def pair_rows(result: dict) -> list[dict]:
    """The per-pair table: ΔAUC with both intervals, DeLong, McNemar, Holm when applied. Column
    names in plain ASCII (and ±): the same rows become a LaTeX table, whose fonts lack Δ and −."""
    rows = []
    for pair in result["pairs"]:
        row = {"A": pair["a"], "B": pair["b"], "AUC A - B": pair["delta_auc"],
               "95% CI, paired bootstrap": interval_text(pair["delta_auc_ci_bootstrap"]),
               "95% CI, DeLong": interval_text(pair["delta_auc_ci_delong"]),
               "DeLong z": pair["delong_z"], "DeLong p": pair["delong_p"]}
        if result["holm"]:
            row["DeLong p (Holm)"] = pair["delong_p_holm"]
        row.update({"McNemar A only / B only": f"{pair['mcnemar_a_only']} / "
                                               f"{pair['mcnemar_b_only']}",
                    "McNemar p": pair["mcnemar_p"]})
        if result["holm"]:
            row["McNemar p (Holm)"] = pair["mcnemar_p_holm"]
        if "seed_sd" in pair:
            row["seed means A - B"] = pair["difference_of_member_means"]
            row["seed sd"] = pair["seed_sd"]
            row["which noise dominates"] = pair["dominant_noise"].split(" (")[0]
        rows.append(row)
    return rows

