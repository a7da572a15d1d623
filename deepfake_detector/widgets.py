"""The notebook's interactive parts (ipywidgets): a threshold slider, a browser of validation images
with their Grad-CAM, and an upload box for one's own image.

Each is a small class that builds its widgets, draws its first state at once (so a headless run
shows it), and redraws on change. Pictures are PNG bytes in `widgets.Image`, text is
`widgets.HTML`: nothing depends on a live front end, so a test can set a value from code and read
what is shown (`.shown` holds the numbers behind the last drawing). Display one in a notebook by
putting it last in a cell, or with `display(x)`.

One threshold everywhere: `ImageBrowser.from_run` and `UploadBox.from_run` classify at the run's
threshold (the one chosen on the validation split), as the notebook's slider starts at it; any
other threshold given is labelled as not the run's wherever it is shown. Pictures are drawn at
most PICTURE_WIDTH pixels wide (never stretched), with the verdict beside them; where there is no
picture (no upload yet, an unreadable file, an outcome with no image) a line of text says so.
"""
from __future__ import annotations

import html
import io
import tempfile
from pathlib import Path

import ipywidgets as widgets
import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from . import CLASS_NAMES
from .data import ImageLoadError, eval_transform, open_image
from .figures import plt
from .gradcam import OUTCOMES, grad_cam_with_logits, heatmap, outcome_of, overlay
from .images import decode_image
from .ood import CapturedFeatures, assess
from .preprocessing import Preprocessing

OPTIMISM_NOTE = ("A threshold tuned on a split and reported on the same split is optimistic: "
                 "the numbers flatter it. Choose the threshold on val, then report it on the test "
                 "split (set TEST_FRACTION &gt; 0), which this slider then shows.")


PICTURE_WIDTH = 480  # px: a widget's picture, drawn at this size and shown unscaled
PANEL_SIDE = 200     # px: the longest side of the image and of its overlay in that picture
CAPTION = '<div style="line-height: 1.4">{}</div>'  # text lines, not widget-high rows


def figure_png(fig) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return buffer.getvalue()


def array_png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.asarray(array, dtype=np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def screen_sized(image: Image.Image, longest_side: int) -> np.ndarray:
    """`image` with its longest side `longest_side` px: small images enlarged with nearest
    neighbours (their pixels stay visible), large ones reduced smoothly."""
    scale = longest_side / max(image.size)
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    return np.asarray(image.resize(size, Image.NEAREST if scale > 1 else Image.BILINEAR))


def cam_picture_png(image: Image.Image, cam: np.ndarray, target: str) -> bytes:
    """The image, its Grad-CAM overlay for `target` and the map's colour scale (the overlay's own
    colours, from "none" to "most"), side by side in one PNG at most PICTURE_WIDTH px wide: shown
    unscaled, sharp, and never taller than a screen. Drawn with PIL (a few ms, not matplotlib's
    ~100), since a browser redraws it at every click."""
    picture = screen_sized(image, PANEL_SIDE)
    height, width = picture.shape[:2]
    gap, top, scale_room = 10, 22, 70  # px: between the panels, above them, the colour scale
    canvas = Image.new("RGB", (2 * width + gap + scale_room, height + top), "white")
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default(size=12)
    for left, shown, name in ((0, picture, "the image"),
                              (width + gap, overlay(picture, cam), f"evidence for {target}")):
        canvas.paste(Image.fromarray(shown), (left, top))
        draw.text((left + width / 2, top / 2), name, fill="black", font=font, anchor="mm")
    bar_left, bar_top, bar_height = 2 * width + gap + 12, top + height // 10, height * 8 // 10
    ramp = np.linspace(1, 0, max(bar_height, 2))[:, None].repeat(12, axis=1)  # most at the top
    canvas.paste(Image.fromarray(heatmap(ramp)), (bar_left, bar_top))
    draw.rectangle([bar_left - 1, bar_top - 1, bar_left + 12, bar_top + max(bar_height, 2)],
                   outline="black")
    for y, word in ((bar_top, "most"), (bar_top + max(bar_height, 2) - 1, "none")):
        draw.text((bar_left + 17, y), word, fill="black", font=font, anchor="lm")
    return array_png(np.asarray(canvas))


class PictureView:
    """A picture (PNG bytes) or, where there is none, a line of text in its place: never an empty
    image, which a browser draws as a broken-image icon. `.widget` is what is displayed;
    `.showing` says which ("picture" or "text")."""

    def __init__(self, text: str):
        self.image = widgets.Image(format="png", layout=widgets.Layout(flex="0 0 auto"))
        self.text = widgets.HTML(layout=widgets.Layout(width=f"{PICTURE_WIDTH}px"))
        self.widget = widgets.Box([self.text], layout=widgets.Layout(flex="0 0 auto"))
        self.show_text(text)

    def show_png(self, png: bytes) -> None:
        width, height = Image.open(io.BytesIO(png)).size
        self.image.value = png
        self.image.width, self.image.height = str(width), str(height)  # no stretching
        self.image.layout.width, self.image.layout.height = f"{width}px", f"{height}px"
        self.widget.children, self.showing = (self.image,), "picture"

    def show_text(self, text: str) -> None:
        self.text.value = f'<p style="color: #555; margin: 1em 0">{text}</p>'
        self.widget.children, self.showing = (self.text,), "text"


def threshold_words(threshold: float, run_threshold: float | None) -> str:
    """How a threshold is named where it is shown: the run's (chosen on val), or another one,
    labelled as not the run's."""
    if run_threshold is None:
        return f"threshold {threshold:.3f} (no run's threshold given)"
    if abs(threshold - run_threshold) < 5e-4:
        return f"the run's threshold {threshold:.3f} (chosen on val)"
    return f"threshold {threshold:.3f} (not the run's threshold, {run_threshold:.3f})"


class _Displayable:
    widget: widgets.Widget

    def _repr_mimebundle_(self, **kwargs):
        return self.widget._repr_mimebundle_(**kwargs)


class ThresholdExplorer(_Displayable):
    """A slider over the decision threshold; redraws the confusion matrix, precision and recall.

    labels: 0 real / 1 fake; probabilities: P(fake), on the split named `split`. The slider
    starts at `threshold`, by default the run's (`val_threshold`, chosen on val). A ratio with
    nothing to count (precision of "real" when no image is called real) is shown as undefined,
    with the reason, and is None in `.shown`."""

    def __init__(self, labels, probabilities, split: str = "val", threshold: float | None = None,
                 val_threshold: float | None = None):
        self.labels = np.asarray(labels).astype(int)
        self.probabilities = np.asarray(probabilities, dtype=float)
        self.split, self.val_threshold = split, val_threshold
        if threshold is None:
            threshold = 0.5 if val_threshold is None else val_threshold
        self.slider = widgets.FloatSlider(value=threshold, min=0.0, max=1.0, step=0.01,
                                          description="threshold", continuous_update=False,
                                          readout_format=".3f")
        self.numbers = widgets.HTML()
        self.figure = widgets.Image(format="png")
        chosen = (f" The threshold chosen on val is {val_threshold:.3f}."
                  if val_threshold is not None else "")
        self.note = widgets.HTML(CAPTION.format(
            f"<p><b>Numbers on the {html.escape(split)} split ({len(self.labels)} images).</b>"
            f"{chosen} {OPTIMISM_NOTE}</p>"))
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
            return a / b if b else None  # 0 / 0: undefined, and said so below
        self.shown = {"threshold": float(threshold), "split": self.split,
                      "tp": tp, "fp": fp, "fn": fn, "tn": tn,
                      "accuracy": ratio(tp + tn, len(self.labels)),
                      "precision_fake": ratio(tp, tp + fp), "recall_fake": ratio(tp, tp + fn),
                      "precision_real": ratio(tn, tn + fn), "recall_real": ratio(tn, tn + fp)}
        why = {"precision_fake": "no image is called fake", "recall_fake": "the split has no fake",
               "precision_real": "no image is called real", "recall_real": "the split has no real"}
        undefined = [key for key in why if self.shown[key] is None]

        def cell(key):
            value = self.shown[key]
            return "<td>undefined*</td>" if value is None else f"<td>{value:.3f}</td>"
        rows = "".join(f"<tr><td>{name}</td>{cell(f'precision_{name}')}"
                       f"{cell(f'recall_{name}')}</tr>" for name in CLASS_NAMES)
        note = ("<br>* undefined (0 / 0): " + "; ".join(why[key] for key in undefined)
                + " at this threshold.") if undefined else ""
        accuracy = "undefined" if self.shown["accuracy"] is None else f"{self.shown['accuracy']:.3f}"
        self.numbers.value = CAPTION.format(
            '<table style="border-spacing: 12px 2px"><tr><th>class</th><th>precision</th>'
            f"<th>recall</th></tr>{rows}</table>"
            f"<p>accuracy {accuracy} at {threshold_words(threshold, self.val_threshold)}<br>"
            f"fake called fake (tp) {tp}, real called fake (fp) {fp},<br>"
            f"fake called real (fn) {fn}, real called real (tn) {tn}{note}</p>")
        from .plots import plot_confusion_matrix
        self.figure.value = figure_png(plot_confusion_matrix(
            self.labels, self.probabilities, threshold=threshold, title=self.split))
        width = Image.open(io.BytesIO(self.figure.value)).width
        self.figure.width, self.figure.layout.width = str(width), f"{width}px"  # not stretched
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


CAPTION_LAYOUT = dict(width="300px", margin="0 0 0 12px")  # the verdict, beside the picture


class ImageBrowser(_Displayable, _CamView):
    """Validation images filtered by outcome (tp/tn/fp/fn at `threshold`), each with P(fake) and
    its Grad-CAM for the target fake or real. `prep`: the model's input as the run was trained
    (Preprocessing.from_config or from_checkpoint); `ood`: the run's OOD statistics (_CamView).
    `run_threshold`: the run's own threshold (chosen on val), the default for `threshold`; a
    different `threshold` is labelled as not the run's. `from_run` builds one from a live run."""

    def __init__(self, model, paths, labels, probabilities, prep: Preprocessing,
                 threshold: float | None = None, layer=None, ood=None,
                 run_threshold: float | None = None):
        _CamView.__init__(self, model, prep, layer, ood)
        self.paths = [Path(p) for p in paths]
        self.labels = [int(y) for y in labels]
        self.probabilities = [float(p) for p in probabilities]
        self.threshold = threshold = _threshold(threshold, run_threshold)
        self.threshold_words = threshold_words(threshold, run_threshold)
        self.outcomes = [outcome_of(y, p >= threshold)
                         for y, p in zip(self.labels, self.probabilities)]
        counts = {o: self.outcomes.count(o) for o in OUTCOMES}
        first = next((o for o in OUTCOMES if counts[o]), OUTCOMES[0])
        self.note = widgets.HTML(f"<p>Validation images by outcome at {self.threshold_words}: "
                                 "tp fake called fake, tn real called real, fp real called fake, "
                                 "fn fake called real.</p>")
        self.outcome = widgets.ToggleButtons(
            options=[(f"{o} ({counts[o]})", o) for o in OUTCOMES], value=first,
            tooltips=["fake called fake", "real called real", "real called fake",
                      "fake called real"])
        self.target = widgets.ToggleButtons(options=["fake", "real"], value="fake",
                                            description="Grad-CAM for")
        self.image = widgets.Dropdown(description="image", layout=widgets.Layout(width="480px"))
        self.view = PictureView("")
        self.caption = widgets.HTML(layout=widgets.Layout(**CAPTION_LAYOUT))
        self.widget = widgets.VBox([self.note, self.outcome, self.image, self.target,
                                    widgets.HBox([self.view.widget, self.caption])])
        self._filling = False
        self._fill_images()
        self.outcome.observe(lambda _: self._fill_images(), names="value")
        self.image.observe(lambda _: None if self._filling else self.show(), names="value")
        self.target.observe(lambda _: self.show(), names="value")

    @classmethod
    def from_run(cls, run, layer=None, ood=None, threshold: float | None = None):
        """The browser over a live run's validation images (train's TrainedRun: its model,
        predictions and preprocessing), at the run's threshold unless `threshold` is given."""
        return cls(run.model, run.val_paths, run.val_labels, run.val_probabilities,
                   Preprocessing.from_config(run.config), threshold=threshold, layer=layer,
                   ood=ood, run_threshold=run.val_threshold)

    @property
    def picture(self) -> widgets.Image:
        return self.view.image

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
            self.view.show_text(f"No validation image is {self.outcome.value} "
                                f"({OUTCOME_WORDS[self.outcome.value]}) at {self.threshold_words}: "
                                "nothing to show here. Pick another outcome above.")
            self.caption.value = ""
            self.shown = None
            return None
        image, model_image = self.pictures(self.paths[index])
        probability, cam = self.explain(model_image, self.target.value, image.size)
        self.view.show_png(cam_picture_png(image, cam, self.target.value))
        label = CLASS_NAMES[self.labels[index]]
        self.shown = {"path": self.paths[index], "label": label, "probability": probability,
                      "outcome": self.outcomes[index], "target": self.target.value, "cam": cam,
                      "threshold": self.threshold, **self.trust_shown()}
        self.caption.value = CAPTION.format(
            f"<p><b>{html.escape(self.paths[index].name)}</b><br>labelled {label}<br>"
            f"P(fake) = <b>{probability:.3f}</b><br><b>{self.outcomes[index]}</b> "
            f"({OUTCOME_WORDS[self.outcomes[index]]}) at {self.threshold_words}</p>"
            f"<p>Left: the image; right: where the model saw evidence for "
            f"<b>{self.target.value}</b> (the scale: none to most).</p><p>{self.trust_html()}</p>")
        return self.shown


OUTCOME_WORDS = {"tp": "fake called fake", "tn": "real called real", "fp": "real called fake",
                 "fn": "fake called real"}


def _threshold(threshold: float | None, run_threshold: float | None) -> float:
    """`threshold` when given, else the run's; 0.5 where neither is known (from_run always
    knows the run's)."""
    if threshold is not None:
        return float(threshold)
    return 0.5 if run_threshold is None else float(run_threshold)


class UploadBox(_Displayable, _CamView):
    """Try one's own image: P(fake), the verdict at `threshold` and its Grad-CAM for the verdict.
    `prep`, `ood`, `run_threshold` and `from_run`: as ImageBrowser's. An image unlike the training
    data (ood.py) is flagged: the model has not seen images like it, so its verdict means little."""

    def __init__(self, model, prep: Preprocessing, threshold: float | None = None, layer=None,
                 ood=None, run_threshold: float | None = None):
        _CamView.__init__(self, model, prep, layer, ood)
        self.threshold = threshold = _threshold(threshold, run_threshold)
        self.threshold_words = threshold_words(threshold, run_threshold)
        self.upload = widgets.FileUpload(accept="image/*", multiple=False,
                                         description="Your image")
        self.view = PictureView("No image yet: choose one with the button above.")
        self.caption = widgets.HTML(CAPTION.format(
            f"<p>Upload an image: it gets P(fake), the verdict at {self.threshold_words} and its "
            "Grad-CAM. It stays on this machine.</p>"), layout=widgets.Layout(**CAPTION_LAYOUT))
        self.widget = widgets.VBox([self.upload, widgets.HBox([self.view.widget, self.caption])])
        self.shown = None
        self.upload.observe(self._on_upload, names="value")

    @classmethod
    def from_run(cls, run, layer=None, ood=None, threshold: float | None = None):
        """The upload box for a live run (train's TrainedRun), at the run's threshold unless
        `threshold` is given."""
        return cls(run.model, Preprocessing.from_config(run.config), threshold=threshold,
                   layer=layer, ood=ood, run_threshold=run.val_threshold)

    @property
    def picture(self) -> widgets.Image:
        return self.view.image

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
                self.view.show_text(f"No picture: {html.escape(safe_name)} is not an image this "
                                    "model can read.")
                self.caption.value = CAPTION.format(
                    f"<p><b>{html.escape(safe_name)}</b> could not be read as an image: "
                    f"{html.escape(str(error))}. Try a JPEG or PNG file.</p>")
                self.shown = None
                return None
        with torch.no_grad():
            probability, _ = self.explain(model_image, "fake", image.size)
        verdict = "fake" if probability >= self.threshold else "real"
        _, cam = self.explain(model_image, verdict, image.size)
        self.view.show_png(cam_picture_png(image, cam, verdict))
        self.shown = {"name": safe_name, "probability": probability, "verdict": verdict,
                      "threshold": self.threshold, "cam": cam, **self.trust_shown()}
        unlike = "<br><b>NOT LIKE THE TRAINING DATA</b>: see below." \
            if self.trust.unlike_training else ""
        self.caption.value = CAPTION.format(
            f"<p><b>{html.escape(safe_name)}</b><br>P(fake) = <b>{probability:.3f}</b></p>"
            f'<p style="font-size: 1.5em; margin: 0.3em 0"><b>{verdict}</b></p>'
            f"<p>verdict at {self.threshold_words}{unlike}</p>"
            f"<p>Right: where the model saw evidence for {verdict} (the scale: none to most)."
            f"</p><p>{self.trust_html()}</p>")
        return self.shown
