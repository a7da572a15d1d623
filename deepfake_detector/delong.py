"""Paired statistics for classifiers scored on the same images: DeLong's test for correlated
ROC-AUCs, computed in O(n log n) as Sun & Xu (2014) do, the paired stratified bootstrap of the
AUCs (the same resampled images for every classifier), McNemar's exact test on two sets of
verdicts, and Holm's step-down correction across several tests.

No torch and no files: arrays in, numbers out (compare.py puts them together). Labels are 0 (real)
and 1 (fake); fake is the positive class, as everywhere in the package.

References:
- E. R. DeLong, D. M. DeLong, D. L. Clarke-Pearson, "Comparing the areas under two or more
  correlated receiver operating characteristic curves: a nonparametric approach", Biometrics 44
  (1988) 837-845.
- X. Sun, W. Xu, "Fast implementation of DeLong's algorithm for comparing the areas under
  correlated receiver operating characteristic curves", IEEE Signal Processing Letters 21 (2014)
  1389-1393: the placements from three mid-rankings instead of n_fake x n_real comparisons.
- S. Holm, "A simple sequentially rejective multiple test procedure", Scand. J. Statist. 6 (1979).
"""
from __future__ import annotations

import math

import numpy as np
from scipy.stats import binom, binomtest, norm, rankdata

BOOTSTRAP_CHUNK_VALUES = 2_000_000  # replicates x images held at once (16 MB per float array)


def _labels_and_scores(y_true, scores) -> tuple[np.ndarray, np.ndarray]:
    """Labels as 0/1 ints, scores as a (k, n) float array: one row per classifier."""
    y = np.asarray(y_true).ravel().astype(int)
    s = np.atleast_2d(np.asarray(scores, dtype=float))
    if s.shape[1] != y.size:
        raise ValueError(f"{y.size} labels but {s.shape[1]} scores per classifier")
    if not np.isin(y, (0, 1)).all():
        raise ValueError("labels must be 0 (real) or 1 (fake)")
    if not np.isfinite(s).all():
        raise ValueError("scores must be finite numbers")
    return y, s


# ----------------------------------------------------------------------------- DeLong

def delong_covariance(y_true, scores) -> tuple[np.ndarray, np.ndarray]:
    """(AUC of each classifier, their k x k covariance matrix), DeLong's estimate, in O(n log n).

    Sun & Xu: with Tz the mid-ranks of all scores of a classifier, Tx those of the fakes among
    themselves and Ty those of the reals among themselves, the placement of fake i (the share of
    reals it beats, ties counting half) is (Tz_i - Tx_i) / n_real, and that of real j (the share
    of fakes that beat it) is 1 - (Tz_j - Ty_j) / n_fake. The AUC is the mean placement of the
    fakes; its covariance is S10 / n_fake + S01 / n_real, S10 and S01 the covariance matrices
    (across classifiers) of the fakes' and the reals' placements."""
    y, s = _labels_and_scores(y_true, scores)
    fakes, reals = s[:, y == 1], s[:, y == 0]
    m, n = fakes.shape[1], reals.shape[1]
    if m < 2 or n < 2:
        raise ValueError("DeLong's test needs at least two real and two fake images")
    tx, ty = rankdata(fakes, axis=1), rankdata(reals, axis=1)
    tz = rankdata(np.concatenate([fakes, reals], axis=1), axis=1)
    aucs = (tz[:, :m].sum(axis=1) / m - (m + 1) / 2) / n
    v10 = (tz[:, :m] - tx) / n
    v01 = 1 - (tz[:, m:] - ty) / m
    covariance = np.atleast_2d(np.cov(v10)) / m + np.atleast_2d(np.cov(v01)) / n
    return aucs, covariance


def delong_test(y_true, scores_a, scores_b, level: float = 0.95) -> dict:
    """DeLong's test of AUC(a) = AUC(b) for two classifiers scored on the same images.

    Returns {auc_a, auc_b, delta (a - b), se (of delta), z, p_value (two-sided), ci ([lo, hi],
    the normal interval of delta at `level`)}. Identical rankings give delta 0, se 0 and p 1."""
    aucs, cov = delong_covariance(y_true, np.vstack([scores_a, scores_b]))
    delta = float(aucs[0] - aucs[1])
    variance = float(cov[0, 0] + cov[1, 1] - 2 * cov[0, 1])
    se = math.sqrt(max(variance, 0.0))
    if se < 1e-15:  # the same ranking twice (or as good as): nothing to test
        z, p_value = 0.0, 1.0 if abs(delta) < 1e-12 else 0.0
    else:
        z = delta / se
        p_value = float(2 * norm.sf(abs(z)))
    half = float(norm.ppf(0.5 + level / 2)) * se
    return {"auc_a": float(aucs[0]), "auc_b": float(aucs[1]), "delta": delta, "se": se,
            "z": float(z), "p_value": p_value, "ci": [delta - half, delta + half]}


# ----------------------------------------------------------------------------- paired bootstrap

def bootstrap_counts(y_true, n_bootstrap: int = 1000, seed: int = 0,
                     chunk_values: int = BOOTSTRAP_CHUNK_VALUES):
    """Yield (rows, counts): `counts[r, i]` is how often image i is drawn in replicate r, a chunk
    of replicates at a time. Stratified by class, as metrics.bootstrap_ci: each replicate draws
    n_real reals and n_fake fakes with replacement. Seeded, hence deterministic; every classifier
    scored with the same counts sees the same resampled images (a paired bootstrap)."""
    y = np.asarray(y_true).ravel().astype(int)
    if n_bootstrap < 1:
        raise ValueError("n_bootstrap must be at least 1")
    rng = np.random.default_rng(seed)
    classes = [np.flatnonzero(y == label) for label in (0, 1)]
    per_chunk = max(1, chunk_values // max(y.size, 1))
    for start in range(0, n_bootstrap, per_chunk):
        rows = slice(start, min(start + per_chunk, n_bootstrap))
        b = rows.stop - rows.start
        counts = np.zeros((b, y.size))
        for members in classes:
            if members.size:
                draws = rng.integers(0, members.size, size=(b, members.size))
                draws += np.arange(b)[:, None] * members.size
                counts[:, members] = np.bincount(draws.ravel(), minlength=b * members.size
                                                 ).reshape(b, members.size)
        yield rows, counts


class SortedScores:
    """One classifier's scores sorted once, with the tie groups that AUC and ROC need: the
    resampled AUCs are then weighted sums in this fixed order, without sorting each replicate."""

    def __init__(self, y: np.ndarray, score: np.ndarray):
        self.order = np.argsort(score, kind="mergesort")
        ordered = score[self.order]
        self.is_fake = y[self.order] == 1
        positions = np.arange(ordered.size)
        new_group = np.r_[True, np.diff(ordered) != 0]
        self.first = np.maximum.accumulate(np.where(new_group, positions, 0))
        ends = np.r_[new_group[1:], True]
        self.last = np.minimum.accumulate(np.where(ends, positions, ordered.size)[::-1])[::-1]

    def aucs(self, counts: np.ndarray) -> np.ndarray:
        """The AUC of each replicate whose image counts are the rows of `counts`: the weighted
        Mann-Whitney statistic, ties counting half (equal to rank_roc_auc on the resample)."""
        weights = counts[:, self.order]
        real_weights = np.where(self.is_fake, 0.0, weights)
        reals_up_to = np.concatenate([np.zeros((len(weights), 1)),
                                      np.cumsum(real_weights, axis=1)], axis=1)
        fake_at = np.flatnonzero(self.is_fake)
        first, last = self.first[fake_at], self.last[fake_at]
        below = reals_up_to[:, first]
        tied = reals_up_to[:, last + 1] - below
        wins = (weights[:, fake_at] * (below + 0.5 * tied)).sum(axis=1)
        return wins / (weights[:, fake_at].sum(axis=1) * real_weights.sum(axis=1))


def paired_bootstrap_aucs(y_true, scores, n_bootstrap: int = 1000, seed: int = 0) -> np.ndarray:
    """(n_bootstrap, k) AUCs of k classifiers on the same stratified bootstrap resamples."""
    y, s = _labels_and_scores(y_true, scores)
    if not 0 < y.sum() < y.size:
        raise ValueError("the paired bootstrap of AUCs needs both real and fake images")
    sorted_scores = [SortedScores(y, row) for row in s]
    out = np.empty((n_bootstrap, len(s)))
    for rows, counts in bootstrap_counts(y, n_bootstrap, seed):
        for k, scores_k in enumerate(sorted_scores):
            out[rows, k] = scores_k.aucs(counts)
    return out


def percentile_interval(values, level: float = 0.95) -> list[float]:
    """The central `level` of bootstrap replicates, as [lo, hi]."""
    tail = 100 * (1 - level) / 2
    lo, hi = np.percentile(values, [tail, 100 - tail])
    return [float(lo), float(hi)]


def percentile_endpoint_bounds(values, level: float = 0.95, confidence: float = 0.95) -> list:
    """How well `values` (B bootstrap replicates) pin down percentile_interval's two ends: for
    each end, [lo, hi] order statistics holding the end that infinitely many resamples would
    give with probability >= `confidence` (the distribution-free interval of a quantile: the
    number of replicates below it is Binomial(B, q)). [[lo of the low end, hi of the low end],
    [lo of the high end, hi of the high end]]; their half-widths are the Monte Carlo error."""
    ordered = np.sort(np.asarray(values, dtype=float).ravel())
    b, tail = ordered.size, (1 - confidence) / 2
    bounds = []
    for q in ((1 - level) / 2, (1 + level) / 2):
        below, above = binom.ppf(tail, b, q), binom.ppf(1 - tail, b, q)
        bounds.append([float(ordered[max(int(below) - 1, 0)]), float(ordered[min(int(above), b - 1)])])
    return bounds


def exact_bootstrap_variance(y_true, scores_a, scores_b) -> float:
    """The variance of ΔAUC = AUC(a) - AUC(b) over ALL stratified paired bootstrap resamples, in
    closed form (what paired_bootstrap_aucs approaches as its resamples grow, without their
    Monte Carlo noise). With psi_ij the kernel of fake i against real j (a's win, ties half,
    minus b's), split as U + a_i + b_j + r_ij (the empirical Hoeffding decomposition): the
    variance is mean(a^2) / m + mean(b^2) / n + mean(r^2) / (m n). DeLong's is the first two
    with m - 1 and n - 1 for m and n, without the third: the two agree to O(1 / n), so in a
    large sample the bootstrap and DeLong's intervals have the same width. O(m n) time, taken in
    blocks of fakes (memory O(n))."""
    y, s = _labels_and_scores(y_true, np.vstack([scores_a, scores_b]))
    fakes, reals = s[:, y == 1], s[:, y == 0]
    m, n = fakes.shape[1], reals.shape[1]
    row_means, column_sums, square_sum = np.empty(m), np.zeros(n), 0.0
    block = max(1, BOOTSTRAP_CHUNK_VALUES // max(n, 1))
    for start in range(0, m, block):
        rows = slice(start, start + block)
        psi = sum(sign * ((fakes[k, rows, None] > reals[k]) + 0.5 * (fakes[k, rows, None] == reals[k]))
                  for k, sign in ((0, 1.0), (1, -1.0)))
        row_means[rows] = psi.mean(axis=1)
        column_sums += psi.sum(axis=0)
        square_sum += float((psi * psi).sum())
    u, column_means = row_means.mean(), column_sums / m
    var_fakes, var_reals = np.mean((row_means - u) ** 2), np.mean((column_means - u) ** 2)
    var_residual = square_sum / (m * n) - u * u - var_fakes - var_reals
    return float(var_fakes / m + var_reals / n + max(var_residual, 0.0) / (m * n))


# ----------------------------------------------------------------------------- verdicts, many tests

def mcnemar_exact(correct_a, correct_b) -> dict:
    """McNemar's exact test on paired verdicts: of the images exactly one classifier gets right,
    is each as likely to be a's as b's? {a_only (a right, b wrong), b_only, p_value}: the
    two-sided binomial test of a_only among a_only + b_only at 1/2 (1 when they never disagree)."""
    a = np.asarray(correct_a, dtype=bool).ravel()
    b = np.asarray(correct_b, dtype=bool).ravel()
    if a.shape != b.shape:
        raise ValueError(f"{a.size} verdicts against {b.size}: McNemar's test pairs them image by image")
    a_only, b_only = int(np.sum(a & ~b)), int(np.sum(~a & b))
    disagreements = a_only + b_only
    p_value = 1.0 if disagreements == 0 else float(binomtest(a_only, disagreements, 0.5).pvalue)
    return {"a_only": a_only, "b_only": b_only, "p_value": min(1.0, p_value)}


def holm(p_values) -> np.ndarray:
    """Holm's step-down adjusted p-values: the i-th smallest of m is multiplied by (m - i + 1),
    made non-decreasing in that order, capped at 1. Reject where adjusted <= alpha: the
    family-wise error rate stays at most alpha, whatever the dependence between the tests."""
    p = np.asarray(p_values, dtype=float).ravel()
    order = np.argsort(p, kind="mergesort")
    scaled = (p.size - np.arange(p.size)) * p[order]
    adjusted = np.empty_like(p)
    adjusted[order] = np.minimum(np.maximum.accumulate(scaled), 1.0)
    return adjusted
