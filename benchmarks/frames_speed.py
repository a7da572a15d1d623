"""What `frames` costs: milliseconds per frame for decode, detect, crop and write; the speed-up
from 1 to 2 worker processes (target >= 1.7x); the peak memory of one worker on an 8K clip
(target < 1 GB); sampling time against video length (it must follow --per-video, not the
length); and dlib's face-detection recall on composed face videos (skimage's astronaut moved and
zoomed over a background: the true face box of every frame is known).

    python benchmarks/frames_speed.py                  # about a minute on 2 quiet cores
    python benchmarks/frames_speed.py --videos 8 --per-video 16 --size 1280x720

Needs the [faces] extra (dlib) and scikit-image (the [test] extra). Wall-clock figures on a
shared machine are inflated by the other jobs: the script prints the load average beside them.
"""
from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without install

from deepfake_detector.demo_videos import compose_face_video, write_video  # noqa: E402
from deepfake_detector.faces import face_box, load_detector  # noqa: E402
from deepfake_detector.frames import STAGES, make_frames  # noqa: E402
from deepfake_detector.frames_manifest import FrameSettings  # noqa: E402
from deepfake_detector.video import quiet_decoder, sample_frames  # noqa: E402

ASTRONAUT_FACE = (179, 83, 266, 170)  # dlib's box on skimage.data.astronaut(), checked by eye


def astronaut():
    import skimage.data
    return skimage.data.astronaut()


def face_videos(folder: Path, n: int, size: tuple[int, int], n_frames: int) -> dict:
    """n composed face videos of `size` under folder/{real,fake}/; {relative path: boxes}."""
    boxes = {}
    face_zoom = size[1] / 480 * 2.0  # a face about 160 px tall in 480 px, as in talking heads
    for k in range(n):
        label = ("real", "fake")[k % 2]
        (folder / label).mkdir(parents=True, exist_ok=True)
        path = folder / label / f"clip_{k:02d}.mp4"
        boxes[path.relative_to(folder).as_posix()] = compose_face_video(
            path, astronaut(), ASTRONAUT_FACE, size=size, n_frames=n_frames,
            zoom=(face_zoom, face_zoom * 1.2), seed=k)
    return boxes


def stage_costs(videos: Path, work: Path, settings: FrameSettings) -> dict:
    """{stage: (wall ms, CPU ms) per frame}, one worker (one thread: OpenCV's too), and the CPU
    ms per frame of the whole command, over every video."""
    import cv2
    cv2.setNumThreads(1)  # as in a pool's worker: the CPU time of a stage is its thread's
    cpu = time.process_time()
    summary = make_frames(videos, work / "one", settings, workers=1, progress=False)
    cpu = time.process_time() - cpu
    frames = max(summary.frames + summary.frames_without_face, 1)
    per_frame = {stage: (1e3 * summary.seconds[stage] / frames,
                         1e3 * summary.cpu_seconds[stage] / frames) for stage in STAGES}
    return per_frame | {"frames": frames, "cpu": 1e3 * cpu / frames}


def cpu_seconds() -> float:
    """CPU seconds of this process and its finished children (the pool's workers)."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def scaling(videos: Path, work: Path, settings: FrameSettings) -> list[tuple[float, float]]:
    """(wall seconds, CPU seconds) of the whole command with 1 and 2 worker processes (the pool's
    start included). The single worker runs in this process, like the command's."""
    measured = []
    for workers in (1, 2):
        wall, cpu = time.perf_counter(), cpu_seconds()
        make_frames(videos, work / f"workers{workers}", settings, workers=workers, progress=False)
        measured.append((time.perf_counter() - wall, cpu_seconds() - cpu))
    return measured


# VmHWM (this process's own peak resident memory), not ru_maxrss, which Linux carries over from
# the parent across fork and exec.
PEAK_CODE = """
import sys, warnings
sys.path.insert(0, {root!r})
from deepfake_detector.frames import make_frames
from deepfake_detector.frames_manifest import FrameSettings
import cv2, dlib, numpy
def peak_kb():
    return next(int(line.split()[1]) for line in open("/proc/self/status")
                if line.startswith("VmHWM:"))
warnings.simplefilter("ignore")
dlib.get_frontal_face_detector()
before = peak_kb()
make_frames({videos!r}, {out!r}, FrameSettings(per_video=4), workers=1, progress=False)
print(before, peak_kb())
"""


def peak_memory_8k(work: Path) -> tuple[float, float, float]:
    """(MB after imports, peak MB of the worker, seconds) for an 8K (7680 x 4320) clip of 8 frames
    with a face, --per-video 4, in a fresh process."""
    folder = work / "8k"
    (folder / "real").mkdir(parents=True)
    compose_face_video(folder / "real" / "clip.mp4", astronaut(), ASTRONAUT_FACE,
                       size=(7680, 4320), n_frames=8, zoom=(16.0, 18.0), seed=0)
    start = time.perf_counter()
    code = PEAK_CODE.format(root=str(Path(__file__).resolve().parents[1]), videos=str(folder),
                            out=str(work / "8k_out"))
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True)
    seconds = time.perf_counter() - start
    before, after = (int(v) / 1024 for v in result.stdout.split())
    return before, after, seconds


def length_independence(work: Path) -> list[tuple[str, int, int, float]]:
    """Seconds to sample --per-video frames from a 1-minute and a 10-hour video (64 x 36 px;
    the 10-hour one at 1 frame per second: 36,000 frames)."""
    quiet_decoder()
    rows = []
    for name, frames, fps in (("1 min, 25 fps", 1500, 25.0), ("10 h, 1 fps", 36000, 1.0)):
        path = work / f"long_{frames}.mp4"
        write_video(path, (np.full((36, 64, 3), k % 256, np.uint8) for k in range(frames)), fps,
                    codec="mp4v")
        for per_video in (8, 32):
            start = time.perf_counter()
            n = sum(1 for _ in sample_frames(path, per_video))
            rows.append((name, frames, n, time.perf_counter() - start))
    return rows


def recall(work: Path, n_videos: int = 24, n_frames: int = 8) -> tuple[int, int, int]:
    """(frames whose crop holds the true face, frames with a face found, frames): composed videos
    of 320 x 240 px, the face from about 70 to 200 px wide, moving (the largest partly out of the
    frame: the part inside must be in the crop)."""
    detector = load_detector("dlib")
    hits = found = total = 0
    for k in range(n_videos):
        zoom = 0.9 + 1.6 * k / max(n_videos - 1, 1)
        path = work / f"recall_{k}.mp4"
        boxes = compose_face_video(path, astronaut(), ASTRONAUT_FACE, size=(320, 240),
                                   n_frames=n_frames, zoom=(zoom * 0.9, zoom), seed=100 + k)
        for frame in sample_frames(path, n_frames):
            box, _ = face_box(frame.rgb, detector)
            x0, y0, x1, y1 = boxes[frame.index]  # the true face, as much of it as is in the frame
            x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, 320), min(y1, 240)
            total += 1
            found += box is not None
            hits += box is not None and (box[0] <= x0 + 2 and box[1] <= y0 + 2
                                         and box[2] >= x1 - 2 and box[3] >= y1 - 2)
    return hits, found, total


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--videos", type=int, default=16, help="face videos for costs and scaling")
    parser.add_argument("--per-video", type=int, default=16, help="frames sampled per video")
    parser.add_argument("--frames", type=int, default=48, help="frames per composed video")
    parser.add_argument("--size", default="1280x720", help="WIDTHxHEIGHT of the composed videos")
    parser.add_argument("--only-scaling", action="store_true",
                        help="measure 1 against 2 workers only")
    args = parser.parse_args(argv)
    warnings.simplefilter("ignore")
    size = tuple(int(v) for v in args.size.split("x"))
    settings = FrameSettings(per_video=args.per_video)
    print(f"cores {os.cpu_count()}, load average {os.getloadavg()[0]:.1f} at the start")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        face_videos(work / "videos", args.videos, size, args.frames)
        if args.only_scaling:
            (one, one_cpu), (two, two_cpu) = scaling(work / "videos", work, settings)
            print(f"1 worker {one:.2f} s ({one_cpu:.2f} CPU s), 2 workers {two:.2f} s "
                  f"({two_cpu:.2f} CPU s): {one / two:.2f}x; load {os.getloadavg()[0]:.1f}")
            return
        costs = stage_costs(work / "videos", work, settings)
        print(f"\nper frame, one worker, {args.size} mp4v, dlib on a 640-wide copy, PNG "
              f"({costs['frames']} frames):")
        print("  stage     CPU ms   wall ms (wall: waiting for the CPU on a busy machine too)")
        for stage in STAGES:
            print(f"  {stage:7s} {costs[stage][1]:8.1f} {costs[stage][0]:9.1f}")
        print(f"  total   {sum(costs[s][1] for s in STAGES):8.1f} "
              f"{sum(costs[s][0] for s in STAGES):9.1f}   (the whole command: "
              f"{costs['cpu']:.1f} CPU ms per frame)")
        (one, one_cpu), (two, two_cpu) = scaling(work / "videos", work, settings)
        print(f"\n{args.videos} videos x {args.per_video} frames: 1 worker {one:.2f} s "
              f"({one_cpu:.2f} CPU s), 2 workers {two:.2f} s ({two_cpu:.2f} CPU s): "
              f"{one / two:.2f}x (target >= 1.7x); load average {os.getloadavg()[0]:.1f}")
        before, after, seconds = peak_memory_8k(work)
        print(f"\n8K clip (7680 x 4320, 4 of 8 frames): worker peak {after:.0f} MB, of which "
              f"{before:.0f} MB after imports (target < 1024 MB); {seconds:.1f} s")
        print("\nsampling time against length (64 x 36 px mp4v):")
        for name, frames, n, seconds in length_independence(work):
            print(f"  {name:14s} {frames:6d} frames: {n:2d} sampled in {seconds:.2f} s")
        hits, found, total = recall(work)
        print(f"\nface detection on composed videos (320 x 240, faces 70-200 px): found in "
              f"{found}/{total} frames, crop holds the true face in {hits}/{total} "
              f"(recall {hits / total:.3f})")
    print(f"peak memory of this process: "
          f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")


if __name__ == "__main__":
    main()
