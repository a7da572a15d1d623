"""Is an image like the training data? The Mahalanobis out-of-distribution score of Lee et al.,
"A Simple Unified Framework for Detecting Out-of-Distribution Samples and Adversarial Attacks"
(NeurIPS 2018), on the same frozen 512 backbone features the head sees; and the image's native
size, from its header, against the training images' native size.

The score. At training (train.py), on the train split's un-augmented features: the class means
mu_real, mu_fake, and one covariance shared by both classes (of each feature minus its class's
mean), shrunk with Ledoit-Wolf (scikit-learn): 512 dimensions from a few hundred images would give
a singular sample covariance. An image's score is its squared Mahalanobis distance to the nearer
class mean,

    d(f) = min_c (f - mu_c)^T Sigma^-1 (f - mu_c)        (Lee et al.'s confidence score is -d)

larger meaning further from what the model was trained on. Left out from the paper: the input
pre-processing (a gradient step on the image: a backward pass) and the ensemble over layers; this
is the penultimate-layer score alone, one 512 x 512 product per image on the features the verdict
has already computed (no second forward pass).

What it means. The score of every validation image is kept, sorted: an image's score is shown as
its percentile among them (the share of validation images that score lower), and an image beyond
the 99th percentile is flagged: the model has not seen images like it, so its verdict means
little. So about 1 % of images like the validation images are flagged, by construction.

The size. The model sees every image at img_size, but a 3000 px photo shrunk to 32 px, or a 32 px
thumbnail blown up to 224 px, is not what it was trained on. The training images' native long
side (median and range) is kept; an image more than SIZE_FACTOR times larger or smaller than the
median is flagged, read from its header alone (PIL opens lazily: no pixel is decoded).

Features come in as arrays or tensors; the products run in torch (imported where they run).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np

from .files import atomic_write

OOD_FORMAT = 1
FLAG_PERCENTILE = 99.0   # flagged beyond this percentile of the validation images' scores
SIZE_FACTOR = 4.0        # flagged when the long side is > 4x or < 1/4 of the training median
SIZE_SAMPLE = 2000       # headers read at training: at most this many train images, evenly spaced
NO_STATISTICS = "no OOD statistics in this run (trained before this version, or fine-tuned)"
NOT_SEEN = "the model has not seen images like it, so its verdict means little"


@dataclass(frozen=True, eq=False)
class OodStats:
    """What a run keeps to score an image's features (OOD_STATS in the run directory)."""
    means: np.ndarray        # (2, 512): the class means of the train features, real then fake
    whitening: np.ndarray    # (512, 512) lower-triangular L, L L^T = the inverse of the shrunk
    #                          shared covariance (its Cholesky factor, computed once at training)
    val_scores: np.ndarray   # the validation images' scores, sorted
    shrinkage: float         # Ledoit-Wolf's shrinkage coefficient
    n_train: int             # train images the means and covariance came from
    long_side: dict          # the training images' native long side: median, min, max, n (px)

    @property
    def precision(self) -> np.ndarray:
        """The inverse of the shrunk shared covariance, L L^T."""
        return self.whitening @ self.whitening.T

    @cached_property
    def _whitened(self):
        # (f - mu)^T L L^T (f - mu) = ||f L - mu L||^2: one product per image for both classes.
        # In torch, on its threads: NumPy's OpenBLAS would start threads of its own beside the
        # model's, which spin after each product (measured: +20 % CPU time for predict at 64 px).
        import torch
        whitening = torch.from_numpy(np.asarray(self.whitening, dtype=np.float64))
        return whitening, torch.from_numpy(np.asarray(self.means, dtype=np.float64)) @ whitening

    def score(self, features) -> np.ndarray:
        """The OOD score d(f) of each row of `features` (N, 512; array or tensor): larger is
        further."""
        import torch
        whitening, centres = self._whitened
        features = torch.as_tensor(features).detach().to("cpu", torch.float64)
        z = features.reshape(len(features), -1) @ whitening
        return ((z[:, None, :] - centres[None]) ** 2).sum(-1).min(1).values.numpy()

    @property
    def threshold(self) -> float:
        """The FLAG_PERCENTILE-th percentile of the validation scores (as an order statistic, so
        that no more than 1 % of the validation images lie beyond it)."""
        return float(np.quantile(self.val_scores, FLAG_PERCENTILE / 100, method="higher"))

    def percentile(self, scores) -> np.ndarray:
        """100 x the share of validation images scoring lower: ~uniform on [0, 100] for images
        like them, 100 beyond all of them."""
        below = np.searchsorted(self.val_scores, np.asarray(scores, dtype=np.float64), "left")
        return 100.0 * below / len(self.val_scores)

    def flagged(self, scores) -> np.ndarray:
        """Beyond the FLAG_PERCENTILE-th percentile of the validation images."""
        return np.asarray(scores, dtype=np.float64) > self.threshold

    def size_note(self, size: tuple[int, int] | None) -> str | None:
        """"much larger (smaller) than the training images (3000 px vs 32 px on the long side)"
        when the long side of `size` (width, height) is more than SIZE_FACTOR times off the
        training median; None otherwise (or without a size)."""
        median = self.long_side.get("median")
        if not size or not median:
            return None
        long = max(size)
        if long <= SIZE_FACTOR * median and long * SIZE_FACTOR >= median:
            return None
        which = "larger" if long > median else "smaller"
        return (f"much {which} than the training images ({long} px vs {median:g} px on the "
                "long side)")

    def describe(self) -> str:
        """One line for a model card."""
        side = self.long_side
        sizes = (f"; training images {side['median']:g} px on the long side (median, "
                 f"{side['min']}-{side['max']} px)" if side.get("median") else "")
        return (f"OOD score: squared Mahalanobis distance to the training features (Lee et al. "
                f"2018), flagged beyond the {FLAG_PERCENTILE:g}th percentile of "
                f"{len(self.val_scores)} validation images (score {self.threshold:.4g}){sizes}")

    # ------------------------------------------------------------------------- on disk

    def save(self, path: str | os.PathLike) -> None:
        """An .npz of plain arrays (read back with allow_pickle=False), written whole or not."""
        arrays = {"format": np.array(OOD_FORMAT), "means": self.means,
                  "whitening": self.whitening, "val_scores": self.val_scores,
                  "shrinkage": np.array(self.shrinkage), "n_train": np.array(self.n_train),
                  **{f"long_side_{k}": np.array(v) for k, v in self.long_side.items()
                     if v is not None}}
        atomic_write(Path(path), lambda f: np.savez(f, **arrays), binary=True)

    @classmethod
    def load(cls, path: str | os.PathLike) -> OodStats:
        with np.load(path, allow_pickle=False) as stored:
            if int(stored["format"]) != OOD_FORMAT:
                raise ValueError(f"{path}: OOD statistics of format {int(stored['format'])}, "
                                 f"this version reads {OOD_FORMAT}; train the run again.")
            long_side = {key.removeprefix("long_side_"): stored[key].item()
                         for key in stored.files if key.startswith("long_side_")}
            return cls(means=stored["means"], whitening=stored["whitening"],
                       val_scores=np.sort(stored["val_scores"]),
                       shrinkage=float(stored["shrinkage"]), n_train=int(stored["n_train"]),
                       long_side=long_side)


def fit_ood(train_features, train_labels, val_features, long_side: dict | None = None) -> OodStats:
    """Class means and the Ledoit-Wolf-shrunk shared covariance of the train features (N, 512)
    with labels 0 real / 1 fake; the validation features' scores, sorted."""
    from sklearn.covariance import LedoitWolf
    features = np.asarray(train_features, dtype=np.float64)
    labels = np.asarray(train_labels).astype(int)
    classes = [c for c in (0, 1) if np.any(labels == c)]
    means = np.stack([features[labels == c].mean(0) for c in classes])
    centred = features - means[np.searchsorted(classes, labels)]
    shrunk = LedoitWolf(assume_centered=True).fit(centred)
    precision = (shrunk.precision_ + shrunk.precision_.T) / 2  # exactly symmetric for Cholesky
    stats = OodStats(means=means, whitening=np.linalg.cholesky(precision), val_scores=np.empty(0),
                     shrinkage=float(shrunk.shrinkage_), n_train=len(features),
                     long_side=long_side or {})
    val_scores = np.sort(stats.score(np.asarray(val_features, dtype=np.float64)))
    return OodStats(means, stats.whitening, val_scores, stats.shrinkage, stats.n_train,
                    stats.long_side)


def header_size(path: str | os.PathLike) -> tuple[int, int] | None:
    """(width, height) from the file's header alone, or None when it cannot be read."""
    from .images import open_supported  # supported formats only: no other decoder runs
    try:
        with open_supported(path) as image:
            return image.size
    except Exception:  # not an image, a damaged header: no size to judge (predict says why)
        return None


def native_long_side(paths, at_most: int = SIZE_SAMPLE) -> dict:
    """Median, min and max of the native long side of `paths` (at most `at_most` of them, evenly
    spaced), from their headers; n: how many were read."""
    paths = list(paths)
    if len(paths) > at_most:
        paths = [paths[i] for i in np.linspace(0, len(paths) - 1, at_most).round().astype(int)]
    sides = [max(size) for size in map(header_size, paths) if size]
    if not sides:
        return {}
    return {"median": float(np.median(sides)), "min": int(min(sides)), "max": int(max(sides)),
            "n": len(sides)}


# ----------------------------------------------------------------------------- one image's trust

@dataclass(frozen=True)
class Assessment:
    """How far one image is from the training data, in numbers and in one line."""
    score: float | None = None        # the OOD score (None: the run has no statistics)
    percentile: float | None = None   # of the validation images' scores
    ood_flag: bool | None = None      # beyond the FLAG_PERCENTILE-th percentile
    size_note: str | None = None      # "much larger than the training images (...)", or None
    has_statistics: bool = False

    @property
    def size_flag(self) -> bool | None:
        return (self.size_note is not None) if self.has_statistics else None

    @property
    def unlike_training(self) -> bool:
        """Flagged by the OOD score or by the size: never a confident verdict."""
        return bool(self.ood_flag) or self.size_note is not None

    @property
    def note(self) -> str:
        """One line: why the verdict may (not) be trusted."""
        if not self.has_statistics:
            return f"No OOD score: {NO_STATISTICS}."
        where = f"OOD score at percentile {self.percentile:.1f} of the validation images"
        reasons = ([f"{where}, beyond {FLAG_PERCENTILE:g}"] if self.ood_flag else []) + \
            ([self.size_note] if self.size_note else [])
        if reasons:
            return f"Not like the training data ({'; '.join(reasons)}): {NOT_SEEN}."
        return f"Like the training data: {where} (flagged beyond {FLAG_PERCENTILE:g})."

    def row(self) -> dict:
        """The columns predict adds to each row."""
        return {"ood_score": self.score, "ood_percentile": self.percentile,
                "ood_flag": self.ood_flag, "size_flag": self.size_flag,
                "unlike_training": self.unlike_training if self.has_statistics else None}


def assess(stats: OodStats | None, features, sizes) -> list[Assessment]:
    """One Assessment per row of `features` (N, 512), with each image's native (width, height)
    or None in `sizes`; without `stats` (a run trained before them), each says so."""
    if stats is None:
        return [Assessment() for _ in sizes]
    scores = stats.score(features)
    return [Assessment(float(s), float(p), bool(f), stats.size_note(size), True)
            for s, p, f, size in zip(scores, stats.percentile(scores), stats.flagged(scores),
                                     sizes)]


def assess_files(stats: OodStats | None, features, paths) -> list[Assessment]:
    """assess() for a batch of files, each one's native size read from its header (only when
    the run has statistics to compare it with)."""
    return assess(stats, features, [header_size(path) for path in paths] if stats is not None
                  else [None] * len(paths))


class CapturedFeatures:
    """The backbone's pooled 512 features of every forward pass of `model` in the `with` block,
    taken from model.avgpool's output by a forward hook: the verdict's own pass, no second one.
    `pop()` returns (and forgets) the last pass's (N, 512) features, detached. Not `enabled`:
    no hook at all (a caller that needs no features)."""

    def __init__(self, model, enabled: bool = True):
        self.model, self.enabled, self.last, self.handle = model, enabled, None, None

    def _hook(self, module, inputs, output):
        self.last = output.detach().flatten(1)

    def __enter__(self) -> CapturedFeatures:
        if self.enabled:
            self.handle = self.model.avgpool.register_forward_hook(self._hook)
        return self

    def __exit__(self, *exc_info) -> None:
        if self.handle is not None:
            self.handle.remove()
            self.handle = None

    def pop(self):
        last, self.last = self.last, None
        return last


def fit_for_run(path: str | os.PathLike, train_features, train_labels, val_features,
                train_paths, log=print) -> OodStats | None:
    """At training: the statistics of the train split's un-augmented features (and the native
    long side of its images), the validation features' scores, written to `path`. None, and a
    line in the log, for a run that extracted no un-augmented features (--no-feature-cache with
    --no-standardize --no-probe): it has no OOD score."""
    if train_features is None or val_features is None:
        log("no OOD statistics: this run extracted no un-augmented features, so its verdicts "
            "carry no OOD score")
        return None
    stats = fit_ood(train_features, train_labels, val_features, native_long_side(train_paths))
    stats.save(path)
    side = stats.long_side.get("median")
    log(f"OOD statistics: Ledoit-Wolf shrinkage {stats.shrinkage:.3f} on {stats.n_train} train "
        f"images; flagged beyond score {stats.threshold:.4g} (the {FLAG_PERCENTILE:g}th "
        f"percentile of {len(stats.val_scores)} val images)"
        + (f"; training images {side:g} px on the long side (median)" if side else ""))
    return stats
