"""The notebook's interactive parts (ipywidgets): a threshold slider, a browser of validation images
with their Grad-CAM, and an upload box for one's own image.

Each is a small class that builds its widgets, draws its first state at once (so a headless run
shows it), and redraws on change. Pictures are PNG bytes in `widgets.Image`, text is
`widgets.HTML`: nothing depends on a live front end, so a test can set a value from code and read
what is shown (`.shown` holds the numbers behind the last drawing). Display one in a notebook by
putting it last in a cell, or with `display(x)`.
"""
from __future__ import annotations

import html
import io
import tempfile
from pathlib import Path

import ipywidgets as widgets
import numpy as np
import torch
from PIL import Image

from . import CLASS_NAMES
from .data import ImageLoadError, eval_transform, open_image
from .figures import plt
from .gradcam import OUTCOMES, grad_cam_with_logits, outcome_of, overlay
from .images import decode_image
from .ood import CapturedFeatures, assess
from .preprocessing import Preprocessing

OPTIMISM_NOTE = ("A threshold tuned on a split and reported on the same split is optimistic: "
                 "the numbers flatter it. Choose the threshold on val, then report it on the test "
                 "split (set TEST_FRACTION &gt; 0), which this slider then shows.")


def figure_png(fig) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return buffer.getvalue()


def array_png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.asarray(array, dtype=np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def side_by_side(image: Image.Image, cam: np.ndarray, longest_side: int = 256) -> np.ndarray:
    """The image and its Grad-CAM overlay, next to each other, scaled for the screen (small images
    are enlarged with nearest neighbours, so their pixels stay visible)."""
    scale = longest_side / max(image.size)
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    shown = image.resize(size, Image.NEAREST if scale > 1 else Image.BILINEAR)
    picture = np.asarray(shown)
    gap = np.full((picture.shape[0], 8, 3), 255, np.uint8)
    return np.hstack([picture, gap, overlay(picture, cam)])


class _Displayable:
    widget: widgets.Widget

    def _repr_mimebundle_(self, **kwargs):
        return self.widget._repr_mimebundle_(**kwargs)


class ThresholdExplorer(_Displayable):
    """A slider over the decision threshold; redraws the confusion matrix, precision and recall.

    labels: 0 real / 1 fake; probabilities: P(fake), on the split named `split`."""

    def __init__(self, labels, probabilities, split: str = "val", threshold: float = 0.5,
                 val_threshold: float | None = None):
        self.labels = np.asarray(labels).astype(int)
        self.probabilities = np.asarray(probabilities, dtype=float)
        self.split, self.val_threshold = split, val_threshold
        self.slider = widgets.FloatSlider(value=threshold, min=0.0, max=1.0, step=0.01,
                                          description="threshold", continuous_update=False,
                                          readout_format=".2f")
        self.numbers = widgets.HTML()
        self.figure = widgets.Image(format="png")
        chosen = (f" The threshold chosen on val is {val_threshold:.3f}."
                  if val_threshold is not None else "")
        self.note = widgets.HTML(f"<p><b>Numbers on the {html.escape(split)} split "
                                 f"({len(self.labels)} images).</b>{chosen} {OPTIMISM_NOTE}</p>")
        self.widget = widgets.VBox([self.note, self.slider,
                                    widgets.HBox([self.figure, self.numbers])])
        self.slider.observe(lambda change: self.show(change["new"]), names="value")
        self.show(threshold)

    def show(self, threshold: float) -> dict:
        predicted_fake = self.probabilities >= threshold
        fake = self.labels == 1
        tp, fp = int(np.sum(predicted_fake & fake)), int(np.sum(predicted_fake & ~fake))
        fn, tn = int(np.sum(~predicted_fake & fake)), int(np.sum(~predicted_fake & ~fake))

        def ratio(a, b):
            return a / b if b else float("nan")
        self.shown = {"threshold": float(threshold), "split": self.split,
                      "tp": tp, "fp": fp, "fn": fn, "tn": tn,
                      "accuracy": ratio(tp + tn, len(self.labels)),
                      "precision_fake": ratio(tp, tp + fp), "recall_fake": ratio(tp, tp + fn),
                      "precision_real": ratio(tn, tn + fn), "recall_real": ratio(tn, tn + fp)}
        rows = "".join(f"<tr><td>{name}</td><td>{self.shown[f'precision_{name}']:.3f}</td>"
                       f"<td>{self.shown[f'recall_{name}']:.3f}</td></tr>" for name in CLASS_NAMES)
        self.numbers.value = (
            f"<table><tr><th>class</th><th>precision</th><th>recall</th></tr>{rows}</table>"
            f"<p>accuracy {self.shown['accuracy']:.3f} at threshold {threshold:.2f}<br>"
            f"fake called fake (tp) {tp}, real called fake (fp) {fp},<br>"
            f"fake called real (fn) {fn}, real called real (tn) {tn}</p>")
        from .plots import plot_confusion_matrix
        self.figure.value = figure_png(plot_confusion_matrix(
            self.labels, self.probabilities, threshold=threshold, title=self.split))
        return self.shown


class _CamView:
    """Shared by the browser and the upload box: P(fake) and the Grad-CAM of one image, and how
    far it is from the training data (`ood`: the run's ood.OodStats, run_dir.read_ood_stats;
    None: no OOD score), from the features of the same pass."""

    def __init__(self, model, prep: Preprocessing, layer=None, ood=None):
        self.model, self.layer, self.precision = model, layer, prep.precision
        self.ood, self.trust = ood, None
        self.transform = eval_transform(prep.img_size, prep.mean, prep.std)
        # The model's input is decoded as the run trained (a large JPEG at reduced size with
        # "draft"); the picture beside the map is the image itself.
        self.target_size = prep.decode_size

    def pictures(self, source) -> tuple[Image.Image, Image.Image]:
        """(the picture to show, the model's input) of `source` (a path): one decode, and a
        second, full one only where the run's reduced decode applied."""
        model_input, facts = decode_image(source, target_size=self.target_size)
        shown = model_input if facts["draft_scale"] == 1 else open_image(source)
        return shown, model_input

    def explain(self, image: Image.Image, target: str, native_size=None):
        """(P(fake), the map for `target`); self.trust: the image's ood.Assessment, its size
        judged by `native_size` (width, height) when given, else the image's."""
        batch = self.transform(image)[None].to(next(self.model.parameters()).device)
        with CapturedFeatures(self.model) as captured:
            result = grad_cam_with_logits(self.model, batch, target=target, layer=self.layer,
                                          precision=self.precision)
        self.trust = assess(self.ood, captured.pop(), [native_size or image.size])[0]
        return float(result.probabilities[0]), result.cams[0]

    def trust_html(self) -> str:
        """The trust line, in bold when the image is flagged as unlike the training data."""
        note = html.escape(self.trust.note)
        return f"<b>{note}</b>" if self.trust.unlike_training else note

    def trust_shown(self) -> dict:
        return {"ood_percentile": self.trust.percentile,
                "unlike_training": self.trust.unlike_training,
                "size_note": self.trust.size_note, "trust_note": self.trust.note}


class ImageBrowser(_Displayable, _CamView):
    """Validation images filtered by outcome (tp/tn/fp/fn at `threshold`), each with P(fake) and
    its Grad-CAM for the target fake or real. `prep`: the model's input as the run was trained
    (Preprocessing.from_config or from_checkpoint); `ood`: the run's OOD statistics (_CamView)."""

    def __init__(self, model, paths, labels, probabilities, prep: Preprocessing,
                 threshold: float = 0.5, layer=None, ood=None):
        _CamView.__init__(self, model, prep, layer, ood)
        self.paths = [Path(p) for p in paths]
        self.labels = [int(y) for y in labels]
        self.probabilities = [float(p) for p in probabilities]
        self.threshold = threshold
        self.outcomes = [outcome_of(y, p >= threshold)
                         for y, p in zip(self.labels, self.probabilities)]
        counts = {o: self.outcomes.count(o) for o in OUTCOMES}
        first = next((o for o in OUTCOMES if counts[o]), OUTCOMES[0])
        self.outcome = widgets.ToggleButtons(
            options=[(f"{o} ({counts[o]})", o) for o in OUTCOMES], value=first,
            tooltips=["fake called fake", "real called real", "real called fake",
                      "fake called real"])
        self.target = widgets.ToggleButtons(options=["fake", "real"], value="fake",
                                            description="Grad-CAM for")
        self.image = widgets.Dropdown(description="image")
        self.picture = widgets.Image(format="png")
        self.caption = widgets.HTML()
        self.widget = widgets.VBox([self.outcome, self.image, self.target, self.picture,
                                    self.caption])
        self._filling = False
        self._fill_images()
        self.outcome.observe(lambda _: self._fill_images(), names="value")
        self.image.observe(lambda _: None if self._filling else self.show(), names="value")
        self.target.observe(lambda _: self.show(), names="value")

    def _fill_images(self) -> None:
        indices = [i for i, o in enumerate(self.outcomes) if o == self.outcome.value]
        # most confident first, as on the contact sheet
        indices.sort(key=lambda i: -max(self.probabilities[i], 1 - self.probabilities[i]))
        options = [(f"{self.paths[i].name}  P(fake)={self.probabilities[i]:.3f}", i)
                   for i in indices]
        self._filling = True  # new options select the first one: show it once, below
        try:
            self.image.options = options
            self.image.value = options[0][1] if options else None
        finally:
            self._filling = False
        self.show()

    def show(self) -> dict | None:
        index = self.image.value
        if index is None:
            self.picture.value = b""
            self.caption.value = f"<p>No validation image is {self.outcome.value}.</p>"
            self.shown = None
            return None
        image, model_image = self.pictures(self.paths[index])
        probability, cam = self.explain(model_image, self.target.value, image.size)
        self.picture.value = array_png(side_by_side(image, cam))
        label = CLASS_NAMES[self.labels[index]]
        self.shown = {"path": self.paths[index], "label": label, "probability": probability,
                      "outcome": self.outcomes[index], "target": self.target.value, "cam": cam,
                      **self.trust_shown()}
        self.caption.value = (f"<p><b>{html.escape(self.paths[index].name)}</b>: labelled {label}, "
                              f"P(fake) = {probability:.3f} ({self.outcomes[index]} at threshold "
                              f"{self.threshold:.2f}). Left: the image; right: where the model saw "
                              f"evidence for <b>{self.target.value}</b>.<br>{self.trust_html()}</p>")
        return self.shown


class UploadBox(_Displayable, _CamView):
    """Try one's own image: P(fake), the verdict at `threshold` (the one chosen on val) and its
    Grad-CAM for the verdict. `prep`, `ood`: as ImageBrowser's. An image unlike the training data
    (ood.py) is flagged: the model has not seen images like it, so its verdict means little."""

    def __init__(self, model, prep: Preprocessing, threshold: float, layer=None, ood=None):
        _CamView.__init__(self, model, prep, layer, ood)
        self.threshold = threshold
        self.upload = widgets.FileUpload(accept="image/*", multiple=False,
                                         description="Your image")
        self.picture = widgets.Image(format="png")
        self.caption = widgets.HTML(f"<p>Upload an image: it gets P(fake), the verdict at the "
                                    f"threshold chosen on val ({threshold:.3f}) and its "
                                    "Grad-CAM. It stays on this machine.</p>")
        self.widget = widgets.VBox([self.upload, self.picture, self.caption])
        self.shown = None
        self.upload.observe(self._on_upload, names="value")

    def _on_upload(self, change) -> None:
        files = change["new"]
        if files:
            self.show_bytes(bytes(files[-1]["content"]), files[-1]["name"])

    def show_bytes(self, data: bytes, name: str = "upload") -> dict | None:
        """What an upload shows, for any bytes (the test feeds them here or through .upload)."""
        safe_name = Path(name).name or "upload"
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / safe_name
            path.write_bytes(data)
            try:
                image, model_image = self.pictures(path)
            except ImageLoadError as error:  # the reason in the decoder's words (EPS: by name)
                self.picture.value = b""
                self.caption.value = (f"<p><b>{html.escape(safe_name)}</b> could not be read as an "
                                      f"image: {html.escape(str(error))}. Try a JPEG or PNG "
                                      "file.</p>")
                self.shown = None
                return None
        with torch.no_grad():
            probability, _ = self.explain(model_image, "fake", image.size)
        verdict = "fake" if probability >= self.threshold else "real"
        _, cam = self.explain(model_image, verdict, image.size)
        self.picture.value = array_png(side_by_side(image, cam))
        self.shown = {"name": safe_name, "probability": probability, "verdict": verdict,
                      "threshold": self.threshold, "cam": cam, **self.trust_shown()}
        unlike = " (NOT LIKE THE TRAINING DATA: see below)" \
            if self.trust.unlike_training else ""
        self.caption.value = (f"<p><b>{html.escape(safe_name)}</b>: P(fake) = {probability:.3f}; "
                              f"verdict at threshold {self.threshold:.3f}: <b>{verdict}</b>{unlike}. "
                              f"Right: where the model saw evidence for {verdict}.<br>"
                              f"{self.trust_html()}</p>")
        return self.shown
