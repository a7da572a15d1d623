"""Video-level results (issue 24, section 2): a split of the frames command's output, grouped by
folder (one folder per video), gives metrics and a report that lead with the video-level ROC-AUC
and accuracy (mean P(fake) over a video's frames), the video threshold chosen on the validation
videos; frame-level numbers follow. Everything on one tiny run (32 px, random init)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from conftest import checkerboard_fake, smooth_noise, write_images
from deepfake_detector.video_metrics import video_level, video_scores


def write_frames_tree(root: Path, n_videos: int = 10, per_video: int = 3, size: int = 32) -> Path:
    """A folder shaped as the frames command writes it: OUT/{real,fake}/<video id>/<frame>.png
    and frames.json (the settings it records)."""
    from deepfake_detector.frames_manifest import FRAMES_JSON, WRITTEN_BY, FrameSettings
    rng = np.random.default_rng(0)
    for label, make in (("real", smooth_noise), ("fake", checkerboard_fake)):
        for v in range(n_videos):
            write_images(root / label / f"{label}_{v:03d}", [make(rng, size) for _ in
                                                              range(per_video)], "frame")
    settings = FrameSettings(per_video=per_video, faces="none")
    (root / FRAMES_JSON).write_text(json.dumps({"written_by": WRITTEN_BY,
                                                "settings": settings.as_dict()}))
    return root


@pytest.fixture(scope="module")
def video_run(tmp_path_factory):
    """A run trained on a split of frames of 10 + 10 'videos' (3 frames each), grouped by
    folder, and its evaluation on the val split again."""
    from deepfake_detector.inference import evaluate_run
    from deepfake_detector.split import split_dataset
    from deepfake_detector.train import TrainConfig, train
    root = tmp_path_factory.mktemp("video_split")
    raw = write_frames_tree(root / "frames")
    split_dataset(raw, root / "data", seed=0, group_by="folder", val_fraction=0.3)
    config = TrainConfig(data_dir=str(root / "data"), out_dir=str(root / "run"), weights="none",
                         img_size=32, epochs=8, lr=1e-2, cache_dir="", num_workers=0,
                         probe=False)
    run = Path(train(config, log_to_console=False))
    evaluated = evaluate_run(run, root / "data", "val", out_dir=root / "eval", n_bootstrap=50,
                             log=lambda m: None)
    return run, evaluated, root


def test_video_metrics_lead_the_metrics_report_and_checkpoint(video_run):
    import torch
    run, evaluated, root = video_run
    metrics = json.loads((run / "metrics_val.json").read_text())
    assert list(metrics)[0] == "video"  # the video block leads the file
    video = metrics["video"]
    n_val = len({row["group"] for row in __import__("csv").DictReader(
        open(root / "data" / "split.csv")) if row["split"] == "val"})
    assert video["n_videos"] == n_val and video["n_real"] >= 1 and video["n_fake"] >= 1
    assert video["frames_per_video"] == {"min": 3, "median": 3.0, "max": 3}
    assert video["roc_auc"] is not None and 0 <= video["val_threshold"] <= 1
    # the frame-level numbers are still there, after it
    assert metrics["n_images"] == 3 * n_val and metrics["roc_auc"] is not None
    # the video threshold goes with the weights; config.json says how the frames were made
    checkpoint = torch.load(run / "checkpoint.pt", weights_only=True)
    assert checkpoint["video_threshold"] == pytest.approx(video["val_threshold"])
    config = json.loads((run / "config.json").read_text())
    assert config["video_frames"]["settings"]["faces"] == "none"
    assert config["video_frames"]["settings"]["per_video"] == 3
    # report.md: the video level before the frame level, in the val section
    report = (run / "report.md").read_text()
    assert report.index("#### Video level") < report.index("#### Frame level") \
        < report.index("| Images |")
    assert "| Videos |" in report and "chosen on the validation videos" in report
    # evaluate: the video block first again, at the run's video threshold
    assert list(evaluated)[0] == "video"
    assert evaluated["video"]["val_threshold"] == pytest.approx(video["val_threshold"])
    assert evaluated["video"]["roc_auc"] == pytest.approx(video["roc_auc"])
    written = json.loads((root / "eval" / "metrics.json").read_text())
    assert list(written)[0] == "video"
    # one row per video beside the frames' predictions, verdicts at the video threshold
    import csv
    for rows_file in (run / "predictions_videos_val.csv", root / "eval" / "predictions_videos.csv"):
        rows = list(csv.DictReader(open(rows_file)))
        assert len(rows) == n_val and {row["frames"] for row in rows} == {"3"}
        assert all((float(r["prediction"]) >= video["val_threshold"]) == (r["predicted_label"] ==
                                                                         "fake") for r in rows)


def test_terminal_summary_leads_with_videos(video_run):
    from deepfake_detector.terminal import metrics_summary
    _, evaluated, _ = video_run
    lines = metrics_summary(evaluated, "val", "somewhere").splitlines()
    assert lines[1].startswith("  videos") and "ROC-AUC" in lines[1]
    assert "video threshold" in lines[1]


def test_a_split_not_of_videos_has_no_video_block(trained_run):
    metrics = json.loads((Path(trained_run) / "metrics_val.json").read_text())
    assert "video" not in metrics
    assert json.loads((Path(trained_run) / "config.json").read_text())["video_frames"] is None


def test_video_scores_are_means_and_the_threshold_is_chosen_on_videos():
    # two real videos, two fake ones; frames are noisy, videos are not
    labels = [0, 0, 0, 0, 1, 1, 1, 1]
    p = [0.1, 0.7, 0.2, 0.3, 0.6, 0.4, 0.9, 0.5]
    videos = ["r1", "r1", "r2", "r2", "f1", "f1", "f2", "f2"]
    scores = video_scores(labels, p, videos)
    assert scores["video"] == ["f1", "f2", "r1", "r2"]
    assert np.allclose(scores["p_fake"], [0.5, 0.7, 0.4, 0.25])
    block = video_level(labels, p, videos, choose=True, n_bootstrap=0)
    assert block["roc_auc"] == 1.0 and block["accuracy_at_val_threshold"] == 1.0
    assert 0.4 < block["val_threshold"] <= 0.5
    elsewhere = video_level(labels, p, videos, val_threshold=None, n_bootstrap=0)
    assert elsewhere["val_threshold"] is None  # never chosen on the data evaluated
    assert any("no video threshold" in note for note in elsewhere["notes"])


# ----------------------------------------------------------------------------- one clip (section 3)

def write_clip(path: Path, n_frames: int = 12, size: int = 48, fake: bool = True) -> Path:
    """A short MP4 (mp4v) of moving noise, with the fakes' checkerboard when `fake`."""
    import cv2
    rng = np.random.default_rng(1)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 6.0, (size, size))
    for _ in range(n_frames):
        frame = checkerboard_fake(rng, size) if fake else smooth_noise(rng, size)
        writer.write(np.clip(frame, 0, 255).astype(np.uint8)[..., ::-1].copy())
    writer.release()
    return path


def test_predict_and_gradcam_on_a_clip(video_run, tmp_path, capsys):
    import csv
    import cv2
    from deepfake_detector.cli import main
    from deepfake_detector.inference import predict_paths
    from deepfake_detector.video import sample_frames
    run, evaluated, _ = video_run
    clip = write_clip(tmp_path / "clip.mp4")
    assert main(["predict", "--run", str(run), str(clip), "--out", str(tmp_path / "rows.csv"),
                 "--frames-out", str(tmp_path / "frames.json"),
                 "--timeline", str(tmp_path / "tl")]) == 0
    err = capsys.readouterr().err
    assert "clip.mp4: " in err and "chosen on the validation videos" in err
    (row,) = list(csv.DictReader(open(tmp_path / "rows.csv")))
    # the run's frames were 3 per video, whole frames: so are the clip's
    assert (row["frames_used"], row["frames_with_face"], row["frames_sampled"]) == ("3", "3", "3")
    assert row["verdict"] in ("fake", "real")
    assert float(row["threshold"]) == pytest.approx(evaluated["video"]["val_threshold"])
    frames = json.loads((tmp_path / "frames.json").read_text())
    assert [f["frame_index"] for f in frames] == [0, 4, 8]
    assert np.mean([f["prediction"] for f in frames]) == pytest.approx(float(row["prediction"]))
    # P(fake) per frame is predict's on the same frames stored as PNG files, as frames writes them
    for sampled in sample_frames(clip, 3):
        from PIL import Image
        Image.fromarray(sampled.rgb).save(tmp_path / f"{sampled.index:06d}.png")
    by_file = predict_paths(run, sorted(tmp_path.glob("0*.png")), ood_columns=False)
    assert [r["prediction"] for r in by_file] == pytest.approx(
        [f["prediction"] for f in frames], abs=1e-5)
    assert (tmp_path / "tl" / "clip.timeline.png").is_file()
    # gradcam: a playable MP4 (OpenCV reads its 3 frames back) and a contact sheet
    assert main(["gradcam", "--run", str(run), "--images", str(clip),
                 "--out", str(tmp_path / "cam")]) == 0
    capture = cv2.VideoCapture(str(tmp_path / "cam" / "clip" / "gradcam.mp4"))
    assert int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) == 3
    ok, picture = capture.read()
    assert ok and picture.shape[1] == 2 * picture.shape[0]  # the frame | its crop's overlay
    capture.release()
    assert (tmp_path / "cam" / "clip" / "contact_sheet.png").is_file()
    # videos and images in one call: one line, nothing done
    assert main(["predict", "--run", str(run), str(clip), str(tmp_path / "000000.png")]) == 2
    assert "give videos and images in separate calls" in capsys.readouterr().err


def test_an_uploaded_clip_is_checked_read_from_a_private_copy_and_deleted(video_run, tmp_path,
                                                                          monkeypatch):
    import stat
    import tempfile
    from deepfake_detector import video_uploads
    from deepfake_detector.inference import load_run
    from deepfake_detector.video_predict import run_sampling
    run, _, _ = video_run
    data = write_clip(tmp_path / "clip.mp4").read_bytes()
    model, checkpoint = load_run(run, "cpu")
    made, real_mkdtemp = [], tempfile.mkdtemp

    def watched(**kwargs):
        made.append(Path(real_mkdtemp(**kwargs)))
        return str(made[-1])
    monkeypatch.setattr(tempfile, "mkdtemp", watched)
    seen = {}
    real_read = video_uploads.read_clip

    def reading(path, *args, **kwargs):  # while the frames are read: private folder and file
        seen["folder"] = stat.S_IMODE(path.parent.stat().st_mode)
        seen["file"] = stat.S_IMODE(path.stat().st_mode)
        return real_read(path, *args, **kwargs)
    monkeypatch.setattr(video_uploads, "read_clip", reading)
    result = video_uploads.explain_video_upload(model, checkpoint, "clip.mp4", data,
                                                run_sampling(run))
    assert result.ok and result.cams.result.verdict in ("fake", "real")
    assert seen == {"folder": 0o700, "file": 0o600} and not made[0].exists()
    # the limits, before any frame is decoded (the clip is 2 s long)
    too_big = video_uploads.explain_video_upload(model, checkpoint, "clip.mp4", data,
                                                 max_bytes=100)
    assert "over the" in too_big.error and "MB video limit" in too_big.error
    too_long = video_uploads.explain_video_upload(model, checkpoint, "clip.mp4", data,
                                                  max_seconds=1)
    assert "2 s long, over this app's limit" in too_long.error
    assert len(made) == 2 and not made[1].exists()  # too big: no copy made at all
    text = video_uploads.explain_video_upload(model, checkpoint, "notes.mp4", b"milk, eggs")
    assert text.error.startswith("notes.mp4: ") and "\n" not in text.error


def test_the_app_shows_a_clips_card_timeline_and_top_frames(video_run, tmp_path, monkeypatch):
    pytest.importorskip("streamlit", minversion="1.56")
    from streamlit.testing.v1 import AppTest
    import deepfake_detector
    run, _, _ = video_run
    monkeypatch.setenv("DEEPFAKE_DETECTOR_RUN", str(run))
    app = AppTest.from_file(str(Path(deepfake_detector.__file__).parent / "app.py"),
                            default_timeout=120)
    app.run()
    app.file_uploader(key="video").set_value(
        ("clip.mp4", write_clip(tmp_path / "clip.mp4").read_bytes(), "video/mp4"))
    app.run()
    assert not app.exception, app.exception
    [card] = [m.value for m in app.main.markdown if 'class="video-verdict-card"' in m.value]
    assert "clip.mp4" in card and "P(fake) = " in card and "validation videos" in card
    captions = [c for image in app.image for c in image.captions]
    assert any("over time" in c for c in captions)
    assert sum("P(fake) = " in c for c in captions) == 3  # the 3 sampled frames, most fake first
    assert "deleted as soon as they are read" in "\n".join(c.value for c in app.main.caption)
    assert "Video threshold" in "\n".join(m.value for m in app.sidebar.markdown)


def test_a_clip_is_cropped_and_stored_as_the_frames_command_did(tmp_path):
    """read_clip with the settings frames recorded gives, frame for frame, the very pixels of
    the crops frames wrote (dlib's face, 1.3x box, JPEG at quality 80: its artefacts too; PNG
    is lossless, and test_predict_and_gradcam_on_a_clip checks P(fake) on PNG frames)."""
    fmt = "jpg"
    pytest.importorskip("dlib")
    skimage_data = pytest.importorskip("skimage.data")
    from PIL import Image
    from deepfake_detector.demo_videos import compose_face_video
    from deepfake_detector.frames import make_frames
    from deepfake_detector.frames_manifest import FrameSettings, read_frames_manifest
    from deepfake_detector.video_metrics import frames_record
    from deepfake_detector.video_predict import Sampling, read_clip
    video = tmp_path / "videos" / "real" / "person.mp4"
    video.parent.mkdir(parents=True)
    compose_face_video(video, skimage_data.astronaut(), (179, 83, 266, 170), size=(192, 144),
                       n_frames=4)
    make_frames(tmp_path / "videos", tmp_path / "frames",
                FrameSettings(per_video=3, faces="dlib", format=fmt, quality=80), workers=1,
                progress=False)
    sampling = Sampling.from_record(frames_record(tmp_path / "frames"))
    assert (sampling.settings.faces, sampling.settings.format) == ("dlib", fmt)
    clip = read_clip(video, sampling)
    _, rows = read_frames_manifest(tmp_path / "frames")
    written = {int(row["frame_index"]): row["path"] for row in rows if row["path"]}
    assert len(clip.with_face) == len(written) >= 2
    for frame in clip.with_face:
        on_disk = np.asarray(Image.open(tmp_path / "frames" / written[frame.index]).convert("RGB"))
        assert np.array_equal(np.asarray(frame.image), on_disk)


def test_a_clip_cut_short_keeps_the_frames_before_the_cut(tmp_path):
    from deepfake_detector.demo_videos import write_video
    from deepfake_detector.frames_manifest import FrameSettings
    from deepfake_detector.video_predict import Sampling, read_clip
    rng = np.random.default_rng(0)
    whole = tmp_path / "whole.mkv"
    write_video(whole, [np.uint8(smooth_noise(rng, 48)) for _ in range(24)], 8.0, "ffv1")
    cut = tmp_path / "cut.mkv"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size * 2 // 3])
    clip = read_clip(cut, Sampling(FrameSettings(per_video=8, faces="none")))
    assert 0 < len(clip.frames) < 8 and clip.with_face == clip.frames
    [note] = clip.notes
    assert str(cut) in note and f"its first {len(clip.frames)} sampled frames are used" in note
