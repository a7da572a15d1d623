"""Videos in (issue 24, sections 1 and 4): `frames` turns videos into a dataset_raw-shaped tree of
face crops or frames; bad videos are one line and a skip; a re-run changes nothing; sampling seeks
exactly, applies rotation and costs O(--per-video); the demo videos and the composed face videos
(skimage.data.astronaut() moved and zoomed over a background) give data to build and test on."""
from __future__ import annotations

import contextlib
import csv
import importlib.util
import io
import struct
import sys
import types
import warnings
import wave
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from deepfake_detector import frames as frames_module
from deepfake_detector import video as video_module
from deepfake_detector.cli import main
from deepfake_detector.demo_videos import (compose_face_video, demo_video_frames,
                                           generate_demo_videos, write_video)
from deepfake_detector.faces import MissingFacesExtra, face_box, load_detector, square_box
from deepfake_detector.frames import make_frames
from deepfake_detector.frames_manifest import FrameSettings, read_frames_manifest
from deepfake_detector.video import VideoError, probe_video, sample_frames

real_find_spec = importlib.util.find_spec

# The astronaut's face in skimage.data.astronaut() (512 x 512): dlib's box on the photograph,
# checked by eye (brows to below the mouth, cheek to cheek).
ASTRONAUT_FACE = (179, 83, 266, 170)


def run_cli(argv) -> tuple[int, str, str]:
    """(exit code, stdout, stderr with each warning as the `warning: ...` line people see)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), \
            warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        code = main(argv)
    lines = "".join(f"warning: {w.message}\n" for w in caught)
    return code, out.getvalue(), lines + err.getvalue()


def files_of(folder: Path) -> dict[str, tuple[int, int]]:
    return {p.relative_to(folder).as_posix(): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in folder.rglob("*") if p.is_file()}


def write_wav(path: Path) -> None:
    with wave.open(str(path), "wb") as sound:  # a second of silence: audio, no picture
        sound.setnchannels(1)
        sound.setsampwidth(2)
        sound.setframerate(8000)
        sound.writeframes(b"\0\0" * 8000)


def noise_frames(n: int, size: int = 64):
    return [frame for frame, _ in demo_video_frames(0, "real", 0, size, n)]


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> tuple[Path, dict]:
    """real/ and fake/ with two composed face videos, one without a face and every bad video."""
    skimage_data = pytest.importorskip("skimage.data", reason="scikit-image (the [test] extra)")
    pytest.importorskip("dlib", reason="dlib (the [faces] extra)")
    root = tmp_path_factory.mktemp("videos")
    (root / "real").mkdir()
    (root / "fake" / "clips").mkdir(parents=True)
    astronaut = skimage_data.astronaut()
    boxes = {"real/person.mp4": compose_face_video(root / "real" / "person.mp4", astronaut,
                                                   ASTRONAUT_FACE, n_frames=8, seed=1),
             "fake/clips/person.mp4": compose_face_video(root / "fake" / "clips" / "person.mp4",
                                                         astronaut, ASTRONAUT_FACE, n_frames=8,
                                                         zoom=(1.4, 1.1), seed=2)}
    write_video(root / "fake" / "scene.mkv", noise_frames(6), 6.0)  # no face in any frame
    write_video(root / "fake" / "long.avi", noise_frames(40, 32), 8.0)
    whole = (root / "fake" / "long.avi").read_bytes()
    (root / "fake" / "cut.avi").write_bytes(whole[:len(whole) // 2])  # frames missing at the end
    (root / "fake" / "long.avi").unlink()
    (root / "real" / "cut.mp4").write_bytes((root / "real" / "person.mp4").read_bytes()[:3000])
    (root / "real" / "empty.mp4").write_bytes(b"")
    (root / "real" / "notes.mp4").write_text("not a video\n")
    write_wav(root / "real" / "voice.mp4")
    return root, boxes, files_of(root)


@pytest.fixture(scope="module")
def frames_out(videos, tmp_path_factory):
    """`frames` run once on `videos` (4 frames per video)."""
    out = tmp_path_factory.mktemp("frames") / "out"
    result = run_cli(["frames", "--videos", str(videos[0]), "--out", str(out), "--per-video", "4",
                      "--workers", "1"])  # in this process: dlib is imported once (a second)
    return out, result


def test_frames_crops_the_known_face_and_skips_each_bad_video_in_one_line(videos, frames_out):
    root, boxes, _ = videos
    out, (code, stdout, stderr) = frames_out
    assert code == 0, stderr
    lines = [line for line in stderr.splitlines() if line.startswith("warning:")]
    for name, why in (("real/empty.mp4", "empty file (0 bytes)"), ("real/notes.mp4", "not a video"),
                      ("real/cut.mp4", "truncated"), ("real/voice.mp4", "audio only"),
                      ("fake/cut.avi", "truncated or damaged: frame")):
        mine = [line for line in lines if str(root / name) in line]
        assert len(mine) == 1 and why in mine[0] and mine[0].endswith("skipped"), (name, lines)
    faceless = [line for line in lines if "no face in any sampled frame" in line]
    assert len(faceless) == 1 and "fake/scene.mkv" in faceless[0]
    assert "5 videos skipped" in stdout and "8 frames of 3 videos" in stdout

    settings, rows = read_frames_manifest(out)
    assert settings == FrameSettings(per_video=4)
    with_face = [row for row in rows if row["path"]]
    assert {row["video"] for row in with_face} == set(boxes) and len(with_face) == 8
    for row in with_face:
        x0, y0, x1, y1 = (int(row[k]) for k in ("x0", "y0", "x1", "y1"))
        assert x1 - x0 == y1 - y0 and 0 <= x0 and 0 <= y0 and x1 <= 160 and y1 <= 160  # square, in
        face = boxes[row["video"]][int(row["frame_index"])]
        assert x0 <= face[0] + 2 and y0 <= face[1] + 2 and x1 >= face[2] - 2 and y1 >= face[3] - 2
        image = out / row["path"]
        assert image.parent.parent.name == row["label"] and image.suffix == ".png"
        assert Image.open(image).size == (x1 - x0, y1 - y0)
    assert sum(1 for row in rows if row["video"] == "fake/scene.mkv" and not row["path"]) == 4


def test_a_rerun_changes_nothing_and_other_settings_or_files_are_refused(videos, frames_out,
                                                                         tmp_path):
    root, _, untouched = videos
    out, _ = frames_out
    before = files_of(out)
    code, stdout, stderr = run_cli(["frames", "--videos", str(root), "--out", str(out),
                                    "--per-video", "4"])
    assert code == 0 and "(0 videos read now, 8 done before)" in stdout, stderr
    assert files_of(out) == before
    assert files_of(root) == untouched  # the videos: only ever read
    # The same --out with other settings, or a folder of someone else's files: one line, refused.
    code, _, stderr = run_cli(["frames", "--videos", str(root), "--out", str(out),
                               "--per-video", "5"])
    assert code == 2 and "--per-video 4 -> 5" in stderr and len(stderr.strip().splitlines()) == 1
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("mine")
    code, _, stderr = run_cli(["frames", "--videos", str(root), "--out", str(tmp_path / "mine")])
    assert code == 2 and "did not write" in stderr
    assert (tmp_path / "mine" / "notes.txt").read_text() == "mine"


def test_an_interrupted_run_carries_on(videos, tmp_path, monkeypatch):
    root, _, _ = videos
    real = frames_module.process_video
    calls = []

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)
    monkeypatch.setattr(frames_module, "process_video", interrupted)
    settings = FrameSettings(per_video=2, faces="none")
    with pytest.raises(KeyboardInterrupt):
        make_frames(root, tmp_path / "out", settings, workers=1, progress=False)
    monkeypatch.setattr(frames_module, "process_video", real)
    with pytest.warns(UserWarning):
        summary = make_frames(root, tmp_path / "out", settings, workers=1, progress=False)
    assert (summary.done_before, summary.done_now) == (2, 6)
    assert summary.frames == 2 * 3  # --faces none: every sampled frame of the 3 good videos


def test_face_box_is_square_clipped_and_dlib_is_named_when_missing(monkeypatch, tmp_path):
    for face, size in (((0, 0, 40, 30), (160, 120)), ((140, 100, 170, 125), (160, 120)),
                       ((-20, 50, 120, 190), (160, 120)), ((10, 10, 20, 20), (160, 120))):
        x0, y0, x1, y1 = square_box(face, *size, scale=1.3)
        assert x1 - x0 == y1 - y0 > 0 and x0 >= 0 and y0 >= 0 and x1 <= size[0] and y1 <= size[1]
    assert square_box((50, 40, 90, 80), 160, 120) == (44, 34, 96, 86)  # 52 px around (70, 60)
    assert face_box(np.zeros((12, 20, 3), np.uint8), None)[0] == (0, 0, 20, 12)
    pytest.importorskip("dlib", reason="dlib (the [faces] extra)")
    assert face_box(np.zeros((120, 160, 3), np.uint8), load_detector("dlib"))[0] is None
    monkeypatch.setitem(sys.modules, "dlib", None)  # as if the [faces] extra were not installed
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "dlib"
                        else real_find_spec(name, *a))
    with pytest.raises(MissingFacesExtra, match=r"\[faces\]"):
        load_detector("dlib")
    videos, out = tmp_path / "videos", tmp_path / "out"
    (videos / "real").mkdir(parents=True)
    code, _, stderr = run_cli(["frames", "--videos", str(videos), "--out", str(out)])
    assert code == 2 and "no videos" in stderr and len(stderr.strip().splitlines()) == 1
    write_video(videos / "real" / "a.mkv", noise_frames(2, 16), 2.0)
    code, _, stderr = run_cli(["frames", "--videos", str(videos), "--out", str(out)])
    assert code == 2 and "[faces]" in stderr and len(stderr.strip().splitlines()) == 1
    assert not out.exists()


def index_frames(n: int, width: int = 64):
    """Frames that show their own index as 8 black/white bars (survives lossy compression)."""
    for k in range(n):
        bits = [(k >> b) & 1 for b in range(8)]
        yield np.repeat(np.repeat(np.array(bits, np.uint8)[None, :, None] * 255, 16, 0),
                        width // 8, 1).repeat(3, 2)


def shown_index(rgb: np.ndarray) -> int:
    bars = rgb[8, rgb.shape[1] // 16::rgb.shape[1] // 8, 0] > 127
    return sum(int(bit) << b for b, bit in enumerate(bars))


def test_sampling_seeks_exactly_falls_back_in_order_and_costs_per_video(tmp_path, monkeypatch):
    path = tmp_path / "counter.mp4"
    write_video(path, index_frames(240), 24.0, codec="mp4v")
    stats = {}
    frames = list(sample_frames(path, 6, stats=stats))
    assert [f.index for f in frames] == [0, 40, 80, 120, 160, 200]
    assert [shown_index(f.rgb) for f in frames] == [0, 40, 80, 120, 160, 200]  # landed exactly
    assert stats == {"seeks": 5, "reads": 6}  # decoded in order: 6 of 240, not the whole video
    assert frames[2].timestamp_s == pytest.approx(80 / 24)

    real_open = video_module.open_capture

    class LandsElsewhere:  # a container whose seeking is inexact: OpenCV's position says so
        def __init__(self, capture):
            self.capture = capture

        def __getattr__(self, name):
            return getattr(self.capture, name)

        def get(self, prop):
            value = self.capture.get(prop)
            return value + 3 if prop == 1 and value > 1 else value  # 1: CAP_PROP_POS_FRAMES
    monkeypatch.setattr(video_module, "open_capture",
                        lambda *a, **k: LandsElsewhere(real_open(*a, **k)))
    stats = {}
    frames = list(sample_frames(path, 6, stats=stats))
    assert [shown_index(f.rgb) for f in frames] == [0, 40, 80, 120, 160, 200]
    assert stats["reads"] > 200  # read in order from the start instead


def test_rotation_metadata_is_applied(tmp_path):
    frames = [np.zeros((48, 64, 3), np.uint8) for _ in range(3)]
    for frame in frames:
        frame[:16, :16] = 255  # a mark in the top-left corner
    path = tmp_path / "phone.mp4"
    write_video(path, frames, 8.0, codec="mp4v")
    data = bytearray(path.read_bytes())
    matrix = data.find(b"tkhd") + 4 + 4 + 20 + 8 + 8  # version/flags, times/ids, reserved, layer..
    data[matrix:matrix + 36] = struct.pack(">9i", 0, 65536, 0, -65536, 0, 0, 0, 0, 1 << 30)
    path.write_bytes(bytes(data))  # the display matrix of a 90-degree clockwise rotation
    info = probe_video(path)
    assert (info.rotation, info.width, info.height, info.frame_count) == (90, 48, 64, 3)
    rgb = next(sample_frames(path, 1)).rgb
    assert rgb.shape == (64, 48, 3) and rgb[:16, -16:].mean() > 200 and rgb[:16, :16].mean() < 50
    (tmp_path / "e.mp4").write_bytes(b"")
    with pytest.raises(VideoError, match=r"e\.mp4: empty file"):
        probe_video(tmp_path / "e.mp4")


def test_demo_videos_are_masked_fakes_whose_frames_split_by_video(tmp_path, monkeypatch):
    # As after the app's tests: Streamlit leaves its page installed as __main__ for good. Spawned
    # workers that re-ran it would die and be restarted for ever (a hang that once cost 10 min).
    page = tmp_path / "page.py"
    page.write_text("raise SystemExit('a spawned worker ran the host page')\n")
    host_main = types.ModuleType("__main__")
    host_main.__file__ = str(page)
    monkeypatch.setitem(sys.modules, "__main__", host_main)
    demo = generate_demo_videos(tmp_path / "demo", n_per_class=3, size=32, n_frames=6)
    record = (demo / "generation.json").read_text()
    assert generate_demo_videos(demo, n_per_class=3, size=32, n_frames=6) == demo  # untouched
    assert (demo / "generation.json").read_text() == record
    masks = sorted((demo / "masks" / "fake_0000").glob("*.png"))
    assert masks and not (demo / "masks" / "real_0000").exists()
    made = list(demo_video_frames(0, "fake", 0, 32, 6))
    assert len(made) == 6 and len(masks) == sum(m is not None for _, m in made) >= 3
    code, stdout, stderr = run_cli(["frames", "--videos", str(demo), "--out",
                                    str(tmp_path / "frames"), "--faces", "none",
                                    "--per-video", "3", "--workers", "2"])  # a pool of two
    assert code == 0 and "18 frames of 6 videos" in stdout, stderr
    code, _, stderr = run_cli(["split", "--raw", str(tmp_path / "frames"), "--out",
                               str(tmp_path / "data"), "--group-by", "folder",
                               "--val-fraction", "0.34"])
    assert code == 0, stderr
    with open(tmp_path / "data" / "split.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    sides = {}
    for row in rows:
        sides.setdefault(Path(row["source"]).parent.name, set()).add(row["split"])
    assert len(sides) == 6 and all(len(s) == 1 for s in sides.values())
    assert {"train", "val"} == set().union(*sides.values())
    # A video gone from --videos: its frames stay (ours, but not deleted unasked), and it is named.
    (demo / "fake" / "fake_0002.mkv").rename(tmp_path / "fake_0002.mkv")
    with pytest.warns(UserWarning, match="no longer under --videos.*fake/fake_0002"):
        summary = make_frames(demo, tmp_path / "frames", FrameSettings(per_video=3, faces="none"),
                              workers=1, progress=False)
    assert summary.frames == 15 and (tmp_path / "frames" / "fake" / "fake_0002").is_dir()
