"""The Streamlit page through Streamlit's AppTest: upload, bad file, target switch, model card.

AppTest runs app.py in this process, with uploads given as bytes (st.file_uploader support in
AppTest came with Streamlit 1.56). The real browser is in test_app_browser.py.
"""
from __future__ import annotations

import io
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


def test_model_card_and_banners_of_a_synthetic_random_init_run(demo_run, monkeypatch):
    app = start(demo_run, monkeypatch)
    _, checkpoint = load_run(demo_run, device="cpu")
    sidebar = texts(app.sidebar.markdown)
    assert "Model card" in texts(app.sidebar.header)
    assert f"**Threshold** {checkpoint['val_threshold']:.3f}" in sidebar
    assert "**Image size** 32 x 32 px" in sidebar and "train: 13 real, 13 fake" in sidebar
    banners = texts(app.sidebar.error)
    assert "RANDOM INIT" in banners and "SYNTHETIC DATA" in banners
    assert "RANDOM INIT" in texts(app.main.error) and "SYNTHETIC DATA" in texts(app.main.error)
    assert "images like the training data" in texts(app.sidebar.warning)
    assert "ROC-AUC" in str(app.sidebar.table[0].value)
    page = texts(app.main.markdown) + texts(app.main.caption)
    assert f"(**{checkpoint['val_threshold']:.3f}**" in page and "under 0.2" in page and "20 MB" in page
    assert app.file_uploader(key="uploads").allowed_type == \
        [f".{t}" for t in uploads.UPLOAD_TYPES]


def test_an_upload_gets_verdict_p_fake_band_overlay_and_downloads(trained_run, monkeypatch):
    app = upload(start(trained_run, monkeypatch), ("suspect.png", FAKE, "image/png"))
    model, checkpoint = load_run(trained_run, device="cpu")
    [expected] = uploads.explain_uploads(model, checkpoint, [("suspect.png", FAKE)])
    page = texts(app.main.markdown)
    assert f"**P(fake) = {expected.probability:.3f}**" in page
    assert f"**Verdict: {expected.verdict.upper()}**" in page
    assert f"Confidence: **{expected.band}**" in page
    assert "suspect.png" in texts(app.main.subheader)
    assert len(overlay_images(app)) == 1 and len(app.image) == 2
    assert app.radio[0].value == expected.verdict  # the map explains the predicted class first
    labels = [button.label for button in app.get("download_button")]
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
    assert texts(app.main.markdown).count("**P(fake) = ") == 2
    assert len(overlay_images(app)) == 2
    assert [h.value for h in app.main.subheader] == ["first.png", "notes.png", "empty.jpg",
                                                     "second.png"]


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
    assert texts(app.main.markdown).count("**P(fake) = ") == 1
    assert writes == []


def test_without_a_run_the_page_says_how_to_start(monkeypatch):
    monkeypatch.delenv("DEEPFAKE_DETECTOR_RUN", raising=False)
    app = AppTest.from_file(str(APP), default_timeout=60)
    app.run()
    assert "python -m deepfake_detector app --run RUN" in texts(app.error)
