"""The Streamlit page through Streamlit's AppTest: upload, bad file, target switch, model card,
the verdict card (FAKE / REAL / UNSURE — NOT LIKE THE TRAINING DATA), banners once, newest first.

AppTest runs app.py in this process, with uploads given as bytes (st.file_uploader support in
AppTest came with Streamlit 1.56). The real browser is in test_app_browser.py.
"""
from __future__ import annotations

import html
import io
import re
from pathlib import Path

import numpy as np
import pytest
from conftest import watch_file_writes
from PIL import Image

pytest.importorskip("streamlit", minversion="1.56",
                    reason="the app's tests need Streamlit >= 1.56 (AppTest drives "
                           "st.file_uploader from then on): pip install -e '.[app]'")
from streamlit.testing.v1 import AppTest  # noqa: E402

import deepfake_detector  # noqa: E402
from deepfake_detector import uploads  # noqa: E402
from deepfake_detector.demo_data import make_fake_example  # noqa: E402
from deepfake_detector.inference import load_run  # noqa: E402

APP = Path(deepfake_detector.__file__).resolve().parent / "app.py"


def png(array) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.asarray(array, dtype=np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


FAKE = png(make_fake_example(seed=0, index=5, image_size=96)[1])


def start(run_dir, monkeypatch) -> AppTest:
    monkeypatch.setenv("DEEPFAKE_DETECTOR_RUN", str(run_dir))
    app = AppTest.from_file(str(APP), default_timeout=120)
    app.run()
    assert not app.exception, app.exception
    return app


def upload(app: AppTest, *files) -> AppTest:
    app.file_uploader(key="uploads").set_value(list(files))
    app.run()
    assert not app.exception, app.exception
    return app


def texts(elements) -> str:
    return "\n".join(element.value for element in elements)


def overlay_images(app: AppTest) -> list:
    return [image for image in app.image if any("Grad-CAM" in c for c in image.captions)]


def cards(app: AppTest) -> list[str]:
    """The verdict cards' HTML, top to bottom."""
    return [m.value for m in app.main.markdown if 'class="verdict-card"' in m.value]


def card_text(card: str) -> str:
    """A card's words, as a browser shows them: tags dropped, entities (&#x27;) read back."""
    return html.unescape(re.sub(r"<[^>]+>", " ", card))


def results_order(app: AppTest) -> list[str]:
    """The file each result belongs to, top to bottom: a verdict card's name, or the file a
    bad upload's message names."""
    names = []
    for node in app.main:
        value = getattr(node, "value", None)
        if node.type == "markdown" and 'class="verdict-card"' in value:
            names.append(re.search(r">([^<>]+) · \d+ x \d+ px<", value).group(1))
        elif node.type == "error" and not value.startswith("**"):  # not a banner
            names.append(value.split(":")[0])
    return names


def test_model_card_and_banners_of_a_synthetic_random_init_run(demo_run, monkeypatch):
    app = start(demo_run, monkeypatch)
    _, checkpoint = load_run(demo_run, device="cpu")
    sidebar = texts(app.sidebar.markdown)
    assert "Model card" in texts(app.sidebar.header)
    assert f"**Threshold** {checkpoint['val_threshold']:.3f}" in sidebar
    assert "**Image size** 32 x 32 px" in sidebar and "train: 13 real, 13 fake" in sidebar
    # The banners once, on the page; the sidebar has no copy of them.
    assert not app.sidebar.error
    banners = texts(app.main.error)
    assert banners.count("RANDOM INIT") == 1 and banners.count("SYNTHETIC DATA") == 1
    assert "images like the training data" in texts(app.sidebar.warning)
    # The Weights note speaks to a web user: what random init means for the verdicts, and what
    # the person who started the app can do; no command-line option to "pass".
    [note] = [m.value for m in app.sidebar.markdown if "What it means" in m.value]
    assert "--weights none" not in note and "close to guesses" in note
    assert "--weights imagenet" in note and "restart the app" in note
    assert "ROC-AUC" in str(app.sidebar.table[0].value)
    page = texts(app.main.markdown) + texts(app.main.caption)
    assert f"(**{checkpoint['val_threshold']:.3f}**" in page and "under 0.2" in page and "20 MB" in page
    assert app.file_uploader(key="uploads").allowed_type == \
        [f".{t}" for t in uploads.UPLOAD_TYPES]


def test_an_upload_gets_verdict_p_fake_band_overlay_and_downloads(trained_run, monkeypatch):
    app = upload(start(trained_run, monkeypatch), ("suspect.png", FAKE, "image/png"))
    model, checkpoint = load_run(trained_run, device="cpu")
    [expected] = uploads.explain_uploads(model, checkpoint, [("suspect.png", FAKE)])
    [card] = cards(app)
    words = card_text(card)
    assert f"P(fake) = {expected.probability:.3f}" in words
    assert f"confidence: <b>{expected.band}</b>" in card and "suspect.png · 96 x 96 px" in words
    assert expected.threshold is not None and f"threshold {expected.threshold:.3f}" in words
    if expected.unlike_training:  # this toy run may find its own kind of picture unusual
        assert "UNSURE — NOT LIKE THE TRAINING DATA" in words
    else:
        assert f">{expected.verdict.upper()}<" in card and "this run chose on" in words
        assert expected.trust_note in words  # how far from the training data, in small print
    # The card comes before the pictures: the first thing of the result on the page.
    order = [node for node in app.main if node.type in ("markdown", "image")]
    first_card = next(i for i, n in enumerate(order) if n.type == "markdown" and n.value == card)
    assert first_card < next(i for i, n in enumerate(order) if n.type == "image")
    assert len(overlay_images(app)) == 1 and len(app.image) == 2
    assert "shown 6x (nearest neighbour)" in app.image[0].captions[0]  # 96 px: enlarged to 576
    assert any('class="colour-scale"' in m.value and "high" in m.value for m in app.main.markdown)
    assert app.radio[0].value == expected.verdict  # the map explains the predicted class first
    labels = sorted(button.label for button in app.get("download_button"))
    assert labels == ["Download overlay (PNG)", "Download prediction row (JSON)"]
    assert "suspect.png" not in texts(app.main.error)  # the only error: the RANDOM INIT banner


def test_a_bad_file_gets_a_message_and_the_others_are_still_shown(trained_run, monkeypatch):
    app = upload(start(trained_run, monkeypatch),
                 ("first.png", FAKE, "image/png"),
                 ("notes.png", b"not a picture at all", "image/png"),
                 ("empty.jpg", b"", "image/jpeg"),
                 ("second.png", FAKE, "image/png"))
    errors = texts(app.main.error)
    assert "notes.png: not an image" in errors and "empty.jpg: empty file (0 bytes)" in errors
    assert len(cards(app)) == 2
    assert len(overlay_images(app)) == 2
    # Newest first: files chosen together are newest at the end of the upload list.
    assert results_order(app) == ["second.png", "empty.jpg", "notes.png", "first.png"]


def test_the_newest_upload_comes_first(trained_run, monkeypatch):
    app = upload(start(trained_run, monkeypatch), ("older.png", FAKE, "image/png"))
    upload(app, ("older.png", FAKE, "image/png"), ("newer.png", FAKE, "image/png"))
    assert results_order(app) == ["newer.png", "older.png"]
    assert len(app.main.get("divider")) == 1  # between the results; none above the first


def noise(side: int = 32) -> bytes:
    return png(np.random.default_rng(0).integers(0, 256, (side, side, 3)))


def photo_like(width: int, height: int) -> bytes:
    """Smooth colour gradients with a soft disc and mild grain, as JPEG: nothing like noise."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    image = np.stack([90 + 80 * y / height, 120 + 60 * np.sin(x / 50), 200 - 90 * y / height], -1)
    disc = np.clip(1 - np.hypot(x - width / 3, y - height / 2) / (height / 3), 0, 1)[..., None]
    image = image * (1 - disc) + np.float32([200, 60, 40]) * disc
    image += np.random.default_rng(1).normal(0, 4, (height, width, 1))
    buffer = io.BytesIO()
    Image.fromarray(np.uint8(np.clip(image, 0, 255))).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def test_images_unlike_the_training_data_get_an_unsure_card_never_confident(trained_run,
                                                                            monkeypatch):
    """Noise (the OOD score) and a photo 12x the training images' size (the header's size):
    the card says UNSURE — NOT LIKE THE TRAINING DATA and why, in amber, and never "confident"."""
    app = upload(start(trained_run, monkeypatch), ("noise.png", noise(), "image/png"),
                 ("holiday.jpg", photo_like(400, 300), "image/jpeg"))
    model, checkpoint = load_run(trained_run, device="cpu")
    expected = uploads.explain_uploads(model, checkpoint, [("noise.png", noise()),
                                                           ("holiday.jpg", photo_like(400, 300))])
    assert all(r.unlike_training for r in expected), [r.trust_note for r in expected]
    assert results_order(app) == ["holiday.jpg", "noise.png"]
    for card, result in zip(cards(app), expected[::-1]):
        words = card_text(card)
        assert 'data-verdict="unsure"' in card and "#fff3dc" in card  # the amber card
        assert ">UNSURE — NOT LIKE THE TRAINING DATA<" in card
        assert "confident" not in words and "has not seen images like it" in words
        assert f"P(fake) = {result.probability:.3f}" in words and f"leans {result.verdict}" in words
    assert "much larger than the training images (400 px vs 32 px" in card_text(cards(app)[0])
    assert "OOD score at percentile" in card_text(cards(app)[1])


@pytest.fixture(scope="module")
def run_at_96px(trained_run, tmp_path_factory) -> Path:
    """trained_run's model with a 96 px input: a 3x3 layer4 grid, so maps have a shape (at 32 px
    the grid is 1x1 and every map is flat). The network is convolutional up to a global average
    pool, so the same weights run at any size."""
    import shutil

    import torch
    run = tmp_path_factory.mktemp("run96")
    for name in ("config.json", "metrics_val.json", "data_counts.json"):
        shutil.copy(trained_run / name, run / name)
    checkpoint = torch.load(trained_run / "checkpoint.pt", weights_only=True)
    torch.save(dict(checkpoint, img_size=96), run / "checkpoint.pt")
    return run


def test_switching_target_and_opacity_reuses_the_one_pass(run_at_96px, monkeypatch):
    passes = []
    one_pass = uploads.raw_grad_cam_both
    monkeypatch.setattr(uploads, "raw_grad_cam_both",
                        lambda model, images: passes.append(len(images)) or one_pass(model, images))
    app = upload(start(run_at_96px, monkeypatch), ("suspect.png", FAKE, "image/png"))
    assert passes == [1]
    [before] = overlay_images(app)
    predicted = app.radio[0].value
    other = "real" if predicted == "fake" else "fake"

    app.radio[0].set_value(other).run()
    [after] = overlay_images(app)
    assert f"evidence for “{other}”" in after.captions[0]
    assert after.proto.imgs[0].alt == f"suspect.png: Grad-CAM overlay, target {other}"
    app.slider[0].set_value(0.9).run()
    [stronger] = overlay_images(app)
    assert len({before.value[0], after.value[0], stronger.value[0]}) == 3  # three pictures
    assert passes == [1]  # ... from one forward pass

    upload(app, ("suspect.png", FAKE, "image/png"), ("another.png", FAKE, "image/png"))
    assert passes == [1, 2] and len(overlay_images(app)) == 2  # a batch of uploads: one pass


def test_no_upload_is_written_to_disk(trained_run, monkeypatch):
    app = start(trained_run, monkeypatch)
    writes = watch_file_writes(monkeypatch)
    upload(app, ("suspect.png", FAKE, "image/png"), ("bad.png", b"xx", "image/png"))
    assert len(cards(app)) == 1 and "bad.png: not an image" in texts(app.main.error)
    assert writes == []


def test_without_a_run_the_page_says_how_to_start(monkeypatch):
    monkeypatch.delenv("DEEPFAKE_DETECTOR_RUN", raising=False)
    app = AppTest.from_file(str(APP), default_timeout=60)
    app.run()
    assert "python -m deepfake_detector app --run RUN" in texts(app.error)
