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
pre-processing (a gradient step on the image: a backward pass).

The layers (Lee et al.'s feature ensemble). The same distance on cheaply pooled statistics of the
earlier layers (LAYERS: the stem's (maxpool) and layer1-2's per-channel means and standard
deviations over the image, layer3's means), taken by forward hooks from the verdict's own pass
(CapturedFeatures); one Gaussian fit per layer on at most LAYER_SAMPLE
train images (evenly spaced; and as many val images), their statistics taken at training by the
same hooks in the pass that extracts the features and kept beside them in the feature cache
(features.extract_features; a cache entry of an earlier version, without them: one more pass
over those images, as before). The paper weighs the layers' scores with a regression
fitted on OOD examples; without any, the scores combine as a typicality test across layers: the
vector v of an image's log distances, one per layer, against the mean m and the (Ledoit-Wolf)
covariance C of the val images' vectors: the score is (v - m)^T C^-1 (v - m) (the val images'
own scores, which the percentile counts against, are cross-fitted: cross_fitted). It is two-sided:
an image too close to the training means in the deep layers while far in the stem (smooth,
low-variance pictures, which a random-init backbone maps near the centre) is atypical too. The
512 features are left out of it: with them, AUROC 0.982 / 0.953 at 64 px and 0.979 / 0.921 at
32 px, up to all of the run's own train images flagged (below), and their 512 x 512 product
was half of the score's time at predict.
Measured on the synthetic set against CIFAKE both ways, random-init weights
(benchmarks/ood_separation.py, README there): AUROC 0.985 / 0.962 at 64 px, 0.982 / 0.923 at
32 px, where the 512 features' score alone gave 0.94 / 0.17 at 64 px.

Its price, also measured there: an image the layers were fitted on lies closer to the means
than a new image, and the two-sided test can call that atypical too when the fit had few images
for its dimensions (up to 256): of train splits of 420 and 700 images, 4.5 % and 0.7 % are
flagged at 64 px, 1.9 % and 1.7 % at 32 px (with the 512 features in the combination: 100 % and
44 % at 64 px). Of a train split larger than LAYER_SAMPLE, the rest are new to the fit. Held-out images of the training domain (val, test, new
ones) are flagged at the rate the percentile says. A run with fewer than ENSEMBLE_MIN_VAL val
images, or trained before the layers' statistics, keeps the 512 features' score alone, and says
so (REDUCED).

What it means. The score of every validation image is kept, sorted: an image's score is shown as
its percentile among them (the share of validation images that score lower), and an image beyond
the 99th percentile is flagged: the model has not seen images like it, so its verdict means
little. So about 1 % of images like the validation images are flagged, by construction.

The size. The model sees every image at img_size, but a 3000 px photo shrunk to 32 px, or a 32 px
thumbnail blown up to 224 px, is not what it was trained on. The training images' native long
side (median and range) is kept; an image more than SIZE_FACTOR times larger or smaller than the
median is flagged: at training from the headers alone (PIL opens lazily: no pixel is decoded),
at predict as the image's decode read its header (data.ImageDataset's with_size: no second read).

Features come in as arrays or tensors (the 512 features alone) or as CapturedFeatures' dict of
every layer's; the products run in torch (imported where they run).
"""
from __future__ import annotations

import contextlib
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
LAYER_SAMPLE = 1000      # train images (and val images) the layers' statistics come from, at most
ENSEMBLE_MIN_VAL = 50    # fewer val images: too few for the combination's covariance (5 x 5)
PENULTIMATE = "avgpool"  # the backbone's pooled 512 features (the head's input), in the dicts
# The earlier layers' pooled statistics: module of torchvision's ResNet-18 -> with the standard
# deviations (True) or the means alone. Deeper maps are 2 x 2 and 1 x 1 at 32 px: means only.
LAYERS = {"maxpool": True, "layer1": True, "layer2": True, "layer3": False}
REDUCED = "OOD score from the last layer's features alone"
NO_LAYERS = ("this run has no per-layer statistics (trained before them, or on fewer than "
             f"{ENSEMBLE_MIN_VAL} val images)")
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
    ensemble: LayerEnsemble | None = None  # the layers' statistics (None: a run from before them)

    @property
    def precision(self) -> np.ndarray:
        """The inverse of the shrunk shared covariance, L L^T."""
        return self.whitening @ self.whitening.T

    @cached_property
    def _whitened(self):
        # (f - mu)^T L L^T (f - mu) = ||f L - mu L||^2: one product per image for both classes.
        # In torch, on its threads: NumPy's OpenBLAS would start threads of its own beside the
        # model's, which spin after each product (measured: +20 % CPU time for predict at 64 px).
        return whitened(self.means, self.whitening)

    def score(self, features) -> np.ndarray:
        """The OOD score d(f) of the 512 features alone, for each row of `features` (N, 512;
        array or tensor; or CapturedFeatures' dict): larger is further."""
        if isinstance(features, dict):
            features = features[PENULTIMATE]
        return nearest_distance(features, *self._whitened).numpy()

    @property
    def threshold(self) -> float:
        """The FLAG_PERCENTILE-th percentile of the validation scores (as an order statistic, so
        that no more than 1 % of the validation images lie beyond it)."""
        return threshold_of(self.val_scores)

    def percentile(self, scores) -> np.ndarray:
        """100 x the share of validation images scoring lower: ~uniform on [0, 100] for images
        like them, 100 beyond all of them."""
        return percentile_among(self.val_scores, scores)

    def flagged(self, scores) -> np.ndarray:
        """Beyond the FLAG_PERCENTILE-th percentile of the validation images."""
        return np.asarray(scores, dtype=np.float64) > self.threshold

    def judge(self, features) -> tuple[np.ndarray, np.ndarray, np.ndarray, str | None]:
        """(scores, percentiles, flags, why reduced) of `features`: the layers' ensemble score
        for CapturedFeatures' dict when the run has the layers' statistics; else the 512
        features' score alone, and why (None: the whole score)."""
        ensemble = self.ensemble
        if ensemble is not None and isinstance(features, dict) \
                and set(ensemble.layers) <= set(features):
            scores = ensemble.score(features)
            return (scores, percentile_among(ensemble.val_scores, scores),
                    scores > threshold_of(ensemble.val_scores), None)
        scores = self.score(features)
        why = NO_LAYERS if ensemble is None else "the earlier layers' statistics were not captured"
        return scores, self.percentile(scores), self.flagged(scores), f"{REDUCED}: {why}"

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
        if self.ensemble is None:
            return (f"OOD score: squared Mahalanobis distance to the training features (Lee et "
                    f"al. 2018), flagged beyond the {FLAG_PERCENTILE:g}th percentile of "
                    f"{len(self.val_scores)} validation images (score {self.threshold:.4g}); "
                    f"{REDUCED}: {NO_LAYERS}{sizes}")
        val = self.ensemble.val_scores
        return (f"OOD score: Mahalanobis distances to the training features of "
                f"{len(self.ensemble.layers)} layers (Lee et al. 2018), combined as a "
                f"typicality test, flagged beyond the {FLAG_PERCENTILE:g}th percentile of "
                f"{len(val)} validation images (score {threshold_of(val):.4g}){sizes}")

    # ------------------------------------------------------------------------- on disk

    def save(self, path: str | os.PathLike) -> None:
        """An .npz of plain arrays (read back with allow_pickle=False), written whole or not."""
        arrays = {"format": np.array(OOD_FORMAT), "means": self.means,
                  "whitening": self.whitening, "val_scores": self.val_scores,
                  "shrinkage": np.array(self.shrinkage), "n_train": np.array(self.n_train),
                  **{f"long_side_{k}": np.array(v) for k, v in self.long_side.items()
                     if v is not None}, **(self.ensemble.arrays() if self.ensemble else {})}
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
                       long_side=long_side, ensemble=LayerEnsemble.from_arrays(stored))


@dataclass(frozen=True, eq=False)
class LayerEnsemble:
    """The earlier layers' fits, and how the layers' distances combine (the module docstring)."""
    layers: dict             # LAYERS' module -> (class means (2, d), whitening (d, d))
    centre: np.ndarray       # (k,) the val images' mean log distances, one per layer
    whitening: np.ndarray    # (k, k) Cholesky factor of the inverse of their shrunk covariance
    val_scores: np.ndarray   # the val images' combined scores, sorted

    @cached_property
    def _whitened(self):
        return {name: whitened(means, whitening)
                for name, (means, whitening) in self.layers.items()}

    def log_distances(self, features: dict):
        """(N, k) log distances of each image to the nearer class mean, layer by layer."""
        import torch
        return torch.stack([nearest_distance(features[name], *self._whitened[name])
                            for name in self.layers], 1).clamp_min(1e-12).log()

    def score(self, features: dict) -> np.ndarray:
        """The combined score of each image: (v - m)^T C^-1 (v - m), v its log distances."""
        import torch
        v = self.log_distances(features) - torch.from_numpy(self.centre)
        return ((v @ torch.from_numpy(self.whitening)) ** 2).sum(1).numpy()

    def arrays(self) -> dict:
        return {"ensemble_layers": np.array(list(self.layers)), "ensemble_centre": self.centre,
                "ensemble_whitening": self.whitening, "ensemble_val_scores": self.val_scores,
                **{f"ensemble_{name}_{what}": array for name, pair in self.layers.items()
                   for what, array in zip(("means", "whitening"), pair)}}

    @classmethod
    def from_arrays(cls, stored) -> LayerEnsemble | None:
        """None for a file written before the layers' statistics."""
        if "ensemble_layers" not in stored.files:
            return None
        layers = {str(name): (stored[f"ensemble_{name}_means"],
                              stored[f"ensemble_{name}_whitening"])
                  for name in stored["ensemble_layers"]}
        return cls(layers, stored["ensemble_centre"], stored["ensemble_whitening"],
                   np.sort(stored["ensemble_val_scores"]))


def whitened(means, whitening):
    """(L, mu L) as float32 tensors: (f - mu)^T L L^T (f - mu) = ||f L - mu L||^2. float32:
    half the time of float64 (measured: the 512 x 512 product of a batch of 64, 1.1 ms against
    a 37 ms forward at 32 px), and the distances of a few hundred agree to ~1e-6."""
    import torch
    whitening64 = torch.from_numpy(np.asarray(whitening, dtype=np.float64))
    centres = torch.from_numpy(np.asarray(means, dtype=np.float64)) @ whitening64
    return whitening64.float(), centres.float()


def nearest_distance(features, whitening, centres):
    """Squared Mahalanobis distance of each row of `features` to the nearer centre (a tensor)."""
    import torch
    features = torch.as_tensor(features).detach().to("cpu", torch.float32)
    z = features.reshape(len(features), -1) @ whitening
    return ((z[:, None, :] - centres[None]) ** 2).sum(-1).min(1).values


def threshold_of(val_scores) -> float:
    """The FLAG_PERCENTILE-th percentile of `val_scores` (an order statistic)."""
    return float(np.quantile(val_scores, FLAG_PERCENTILE / 100, method="higher"))


def percentile_among(val_scores, scores) -> np.ndarray:
    """100 x the share of `val_scores` (sorted) below each of `scores`."""
    below = np.searchsorted(val_scores, np.asarray(scores, dtype=np.float64), "left")
    return 100.0 * below / len(val_scores)


def class_gaussians(features, labels) -> tuple[np.ndarray, np.ndarray, float]:
    """(class means, whitening L with L L^T the inverse of the Ledoit-Wolf-shrunk shared
    covariance, the shrinkage) of `features` (N, d) with labels 0 real / 1 fake."""
    from sklearn.covariance import LedoitWolf
    features = np.asarray(features, dtype=np.float64)
    labels = np.asarray(labels).astype(int)
    classes = [c for c in (0, 1) if np.any(labels == c)]
    means = np.stack([features[labels == c].mean(0) for c in classes])
    shrunk = LedoitWolf(assume_centered=True).fit(
        features - means[np.searchsorted(classes, labels)])
    return means, shrunk_whitening(shrunk), float(shrunk.shrinkage_)


def shrunk_whitening(shrunk) -> np.ndarray:
    """The Cholesky factor of a fitted LedoitWolf's precision, made exactly symmetric first."""
    return np.linalg.cholesky((shrunk.precision_ + shrunk.precision_.T) / 2)


def fit_ood(train_features, train_labels, val_features, long_side: dict | None = None) -> OodStats:
    """Class means and the Ledoit-Wolf-shrunk shared covariance of the train features (N, 512)
    with labels 0 real / 1 fake; the validation features' scores, sorted."""
    means, whitening, shrinkage = class_gaussians(train_features, train_labels)
    stats = OodStats(means=means, whitening=whitening, val_scores=np.empty(0),
                     shrinkage=shrinkage, n_train=len(train_features), long_side=long_side or {})
    val_scores = np.sort(stats.score(np.asarray(val_features, dtype=np.float64)))
    return OodStats(means, stats.whitening, val_scores, stats.shrinkage, stats.n_train,
                    stats.long_side)


def fit_ensemble(stats: OodStats, train_layers: dict, train_labels, val_layers: dict) -> OodStats:
    """`stats` with the layers' ensemble: a Gaussian fit per layer of LAYERS on `train_layers`
    (CapturedFeatures' dicts of arrays); the val images' log distances give the combination's
    mean and shrunk covariance, and their (cross-fitted) combined scores."""
    from dataclasses import replace

    from sklearn.covariance import LedoitWolf
    layers = {name: class_gaussians(train_layers[name], train_labels)[:2]
              for name in LAYERS if name in train_layers}
    partial = LayerEnsemble(layers, np.zeros(len(layers)), np.eye(len(layers)), np.empty(0))
    v = partial.log_distances(val_layers).numpy().astype(np.float64)
    shrunk = LedoitWolf().fit(v)
    ensemble = LayerEnsemble(layers, shrunk.location_, shrunk_whitening(shrunk), np.empty(0))
    return replace(stats, ensemble=replace(ensemble, val_scores=np.sort(cross_fitted(v))))


def cross_fitted(v: np.ndarray, folds: int = 5) -> np.ndarray:
    """Each val image's combined score (v - m)^T C^-1 (v - m) with m and C fitted on the other
    folds: out of sample, as a new image's is (scored in sample, the val images' own scores ran
    low, and 5-7 % of held-out test images were flagged instead of ~1 %)."""
    from sklearn.covariance import LedoitWolf
    scores, fold = np.empty(len(v)), np.arange(len(v)) % folds
    for k in range(folds):
        fit = LedoitWolf().fit(v[fold != k])
        scores[fold == k] = (((v[fold == k] - fit.location_) @ shrunk_whitening(fit)) ** 2).sum(1)
    return scores


def header_size(path: str | os.PathLike) -> tuple[int, int] | None:
    """(width, height) from the file's header alone, or None when it cannot be read."""
    from .images import open_supported  # supported formats only: no other decoder runs
    try:
        with open_supported(path) as image:
            return image.size
    except Exception:  # not an image, a damaged header: no size to judge (predict says why)
        return None


def evenly_spaced(n: int, at_most: int = LAYER_SAMPLE) -> np.ndarray:
    """At most `at_most` of range(n), evenly spaced (all of them when n is no more)."""
    return np.unique(np.linspace(0, n - 1, min(n, at_most)).round().astype(int))


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
    reduced: str | None = None        # why the score is the 512 features' alone (None: whole)

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
        reduced = f" {self.reduced}." if self.reduced else ""
        if reasons:
            return f"Not like the training data ({'; '.join(reasons)}): {NOT_SEEN}.{reduced}"
        return f"Like the training data: {where} (flagged beyond {FLAG_PERCENTILE:g}).{reduced}"

    def row(self) -> dict:
        """The columns predict adds to each row."""
        return {"ood_score": self.score, "ood_percentile": self.percentile,
                "ood_flag": self.ood_flag, "size_flag": self.size_flag,
                "unlike_training": self.unlike_training if self.has_statistics else None}


def assess(stats: OodStats | None, features, sizes) -> list[Assessment]:
    """One Assessment per image of `features` (CapturedFeatures' dict of every layer's, or the
    512 features alone (N, 512): the reduced score), with each image's native (width, height)
    or None in `sizes`; without `stats` (a run trained before them), each says so."""
    if stats is None:
        return [Assessment() for _ in sizes]
    scores, percentiles, flags, reduced = stats.judge(features)
    sizes = [None if size is None else tuple(int(side) for side in size) for size in sizes]
    return [Assessment(float(s), float(p), bool(f), stats.size_note(size), True, reduced)
            for s, p, f, size in zip(scores, percentiles, flags, sizes)]


class CapturedFeatures:
    """What the OOD score needs from every forward pass of `model` in the `with` block, taken by
    forward hooks: the verdict's own pass, no second one. `pop()` returns (and forgets) the last
    pass's {PENULTIMATE: the pooled 512 features (N, 512), and each of LAYERS' modules: its
    output's per-channel means (and standard deviations) over the image}, detached, float32.
    Not `enabled`: no hook at all (a caller that needs no features). `rows` (set before a pass;
    None: all): the batch's rows to take, the others skipped (features.extract_features keeps the
    statistics of a sample of its images only)."""

    def __init__(self, model, enabled: bool = True):
        self.model, self.enabled, self.last, self.handles = model, enabled, {}, []
        self.rows = None

    def _hook(self, name: str, with_std: bool | None):
        def hook(module, inputs, output):
            if self.rows is not None:
                if not len(self.rows):
                    return
                output = output[self.rows.to(output.device)]
            output = output.detach().float()
            if with_std is None:  # the pooled features themselves
                self.last[name] = output.flatten(1)
            elif with_std:
                self.last[name] = mean_and_std(output)
            else:
                self.last[name] = output.mean((2, 3))
        return hook

    def __enter__(self) -> CapturedFeatures:
        if self.enabled:
            modules = {PENULTIMATE: None, **LAYERS}
            self.handles = [getattr(self.model, name).register_forward_hook(self._hook(name, std))
                            for name, std in modules.items() if hasattr(self.model, name)]
        return self

    def __exit__(self, *exc_info) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles = []

    def pop(self) -> dict:
        last, self.last = self.last, {}
        return last


def mean_and_std(output):
    """(N, 2C): each channel's mean, then its (population) standard deviation over the image, of
    (N, C, H, W) `output`, as E[x^2] - E[x]^2 on the channels-last layout the model runs in.
    Measured on one thread, a batch of 64: torch.std_mean over (2, 3) 1.7 ms at 32 px (the
    forward: 37 ms), this 0.1 ms; at 224 px, 64 x 56 x 56 maps, 65 ms against 25 ms (the
    forward: ~1.7 s)."""
    import torch
    flat = output.permute(0, 2, 3, 1).reshape(len(output), -1, output.shape[1])
    mean = flat.mean(1)
    return torch.cat([mean, ((flat * flat).mean(1) - mean * mean).clamp_min_(0).sqrt_()], 1)


# Inside one_fit_per_data() (a seed group: its runs share the backbone, the images and the
# features), fit_for_run fits once per (train images, val images) and writes that fit into every
# later run: none of the statistics depends on the head.
SHARED_FITS: list[dict] = []


@contextlib.contextmanager
def one_fit_per_data():
    SHARED_FITS.append({})
    try:
        yield
    finally:
        SHARED_FITS.pop()


def fit_for_run(path: str | os.PathLike, train_features, train_labels, val_features,
                train_paths, log=print, val_paths=None, layer_pass=None,
                captured: tuple = (None, None)) -> OodStats | None:
    """At training: the statistics of the train split's un-augmented features (and the native
    long side of its images), the validation features' scores, written to `path`. None, and a
    line in the log, for a run that extracted no un-augmented features (--no-feature-cache with
    --no-standardize --no-probe): it has no OOD score. With `val_paths`: the layers' ensemble too,
    from at most LAYER_SAMPLE train and LAYER_SAMPLE val images, evenly spaced: `captured`
    (train's, val's) when their extraction took them in its own pass (features.extract_features'
    `layers`: {"indices": evenly_spaced(N), module: (k, d)}), else from `layer_pass` (paths -> their
    CapturedFeatures dict of arrays, one more forward pass)."""
    if train_features is None or val_features is None:
        log("no OOD statistics: this run extracted no un-augmented features, so its verdicts "
            "carry no OOD score")
        return None
    shared = SHARED_FITS[-1] if SHARED_FITS else {}
    key = (tuple(map(str, train_paths)), tuple(map(str, val_paths or ())))
    if key in shared:
        shared[key].save(path)
        log("OOD statistics: the seed group's, fitted by its first run on the same images")
        return shared[key]
    stats = fit_ood(train_features, train_labels, val_features, native_long_side(train_paths))
    if len(val_paths or ()) < ENSEMBLE_MIN_VAL:
        log(f"OOD score of the last layer alone: the per-layer statistics need at least "
            f"{ENSEMBLE_MIN_VAL} val images, this run has {len(val_paths or ())}")
    elif layer_pass is not None or all(captured_rows(taken, len(split_paths)) for taken,
                                       split_paths in zip(captured, (train_paths, val_paths))):
        stats = fit_layers(stats, train_labels, (train_paths, val_paths), layer_pass, captured,
                           log)
    stats.save(path)
    if SHARED_FITS:
        shared[key] = stats
    side = stats.long_side.get("median")
    val = stats.ensemble.val_scores if stats.ensemble else stats.val_scores
    log(f"OOD statistics: Ledoit-Wolf shrinkage {stats.shrinkage:.3f} on {stats.n_train} train "
        f"images; flagged beyond score {threshold_of(val):.4g} (the {FLAG_PERCENTILE:g}th "
        f"percentile of {len(val)} val images)"
        + (f"; training images {side:g} px on the long side (median)" if side else ""))
    return stats


def fit_layers(stats: OodStats, train_labels, paths: tuple, layer_pass, captured: tuple,
               log) -> OodStats:
    """`stats` with the layers' ensemble (fit_ensemble), on the evenly spaced train and val
    images: each split's `captured` statistics when they are of those rows (captured_rows), else
    `layer_pass`'s of them (one more forward pass); one log line says which, and its time."""
    import time
    start, layers, words, passed = time.perf_counter(), [], [], []
    for split, split_paths, taken in zip(("train", "val"), paths, captured):
        at = evenly_spaced(len(split_paths))
        words.append(f"{len(at):,} {split}")
        if captured_rows(taken, len(split_paths)):
            layers.append({name: np.asarray(value) for name, value in taken.items()
                           if name != "indices"})
        else:
            layers.append(layer_pass([split_paths[i] for i in at]))
            passed.append(words[-1])
    train_at = evenly_spaced(len(paths[0]))
    stats = fit_ensemble(stats, layers[0], np.asarray(train_labels)[train_at], layers[1])
    seconds = time.perf_counter() - start
    if not passed:
        how = (f"taken in the pass that extracted the features ({' and '.join(words)} images, "
               f"evenly spaced), no second pass; fitted in {seconds:.1f} s")
    else:  # in train, from a feature cache entry of an earlier version (features.stored_layers)
        how = (f"one more pass over {' and '.join(passed)} images (their features came without "
               f"them: a feature cache entry written before they were kept there), "
               f"{seconds:.1f} s")
    log(f"OOD statistics of {len(stats.ensemble.layers)} layers: {how}")
    return stats


def captured_rows(taken: dict | None, n: int) -> bool:
    """Whether `taken` (features.extract_features' `layers`) holds the statistics of the rows
    evenly_spaced(n) of every one of LAYERS: what fit_layers fits on."""
    return taken is not None and set(LAYERS) <= set(taken) and \
        np.array_equal(np.asarray(taken["indices"]), evenly_spaced(n))
