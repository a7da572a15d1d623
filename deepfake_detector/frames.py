"""The `frames` command: videos in, a dataset_raw-shaped tree of frames (or face crops) out.

    VIDEOS/{real,fake}/**/*.mp4|avi|mov|mkv|webm  ->  OUT/{real,fake}/<video id>/000123.png
                                                       OUT/frames.csv, OUT/frames.json

`split --raw OUT --group-by folder` then keeps each video's frames on one side of the split.

- Each video: frames evenly spaced (video.sample_frames: seeking, so the time depends on
  --per-video, not on the video's length; one decoded frame in memory at a time), the largest
  face's FaceForensics++ box (faces.py) or the whole frame (--faces none), written as PNG (or JPEG).
- One worker process per core (a spawned multiprocessing.Pool), one video per task.
- Idempotent and resumable: a video's record (OUT/.frames/<label>/<video id>.json: the frames
  written, the video's size and time) is written last, whole or not at all; a re-run skips the
  videos recorded with an unchanged file, so a re-run with the same settings writes nothing and
  one after Ctrl-C carries on. frames.csv is rebuilt from the records at the end.
- The videos are only read. OUT must be new, empty, or an earlier `frames` output of the same
  settings (frames.json says so); nothing else is ever overwritten.
- A bad video (zero bytes, truncated, not a video, audio only, frames above the pixel limit) is
  one line and a skip; a video with no face in any sampled frame is named in one warning.

No torch here.
"""
from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import re
import signal
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from .discovery import class_of_folder
from .faces import check_faces_extra, crop, face_box, load_detector
from .files import atomic_write, check_output_folder, fitting_name, read_json_object, write_json
from .folder_lock import LOCK_FILE, folder_lock
from .frames_manifest import (FRAMES_COLUMNS, FRAMES_CSV, FRAMES_JSON, WRITTEN_BY, FrameSettings,
                              frame_name, read_frames_json)
from .progress import tqdm
from .terminal import program_name
from .video import VIDEO_SUFFIXES, VideoError, is_video_name, quiet_decoder, sample_frames

STATE_DIR = ".frames"  # OUT/.frames/<label>/<video id>.json: one record per video done
RECORD_VERSION = 1
STAGES = ("decode", "detect", "crop", "write")  # the timed steps of a frame


@dataclass(frozen=True)
class VideoJob:
    """One video to turn into frames: its class, its file, its path relative to --videos (POSIX)
    and its folder name under OUT/<label>/."""
    label: str
    path: Path
    relative: str
    video_id: str


@dataclass
class FramesSummary:
    """What a `frames` run did: videos done now and before, frames written, frames without a
    face, the bad videos (one line each) and the videos without any face."""
    out_dir: Path
    videos: int = 0
    done_before: int = 0
    done_now: int = 0
    frames: int = 0
    frames_without_face: int = 0
    bad: list[str] = field(default_factory=list)
    faceless: list[str] = field(default_factory=list)
    seconds: dict = field(default_factory=lambda: dict.fromkeys(STAGES, 0.0))
    cpu_seconds: dict = field(default_factory=lambda: dict.fromkeys(STAGES, 0.0))

    def __str__(self) -> str:
        lines = [f"{self.frames} frames of {self.videos - len(self.bad)} videos in {self.out_dir} "
                 f"({self.done_now} videos read now, {self.done_before} done before); manifest: "
                 f"{self.out_dir / FRAMES_CSV}"]
        if self.frames_without_face:
            lines.append(f"{self.frames_without_face} sampled frames had no face: skipped")
        if self.bad:
            lines.append(f"{len(self.bad)} video{'s' if len(self.bad) > 1 else ''} skipped "
                         "(listed above)")
        lines.append(f"next: {program_name()} split --raw {self.out_dir} --out data_frames "
                     "--group-by folder")
        return "\n".join(lines)


# --------------------------------------------------------------------------- finding the videos

def find_videos(videos_dir: str | os.PathLike) -> list[VideoJob]:
    """Every video under the class folders of `videos_dir` (real/, fake/, named as `split`
    accepts them), sorted; a ValueError of one line when there is no class folder or no video."""
    videos_dir = Path(videos_dir)
    if not videos_dir.is_dir():
        what = "is a file, not a folder" if videos_dir.exists() else "does not exist"
        raise ValueError(f"--videos {videos_dir} {what}: give the folder holding real/ and fake/ "
                         "with the videos")
    jobs = []
    for folder in sorted(p for p in videos_dir.iterdir() if p.is_dir()
                         and not p.name.startswith(".")):
        label = class_of_folder(folder.name)
        if label is not None:
            jobs += jobs_of_class(folder, label, videos_dir)
    if not jobs:
        raise ValueError(f"--videos {videos_dir}: no videos ({' '.join(VIDEO_SUFFIXES)}) in "
                         "real/ or fake/ folders under it: expected VIDEOS/real/*.mp4 and "
                         "VIDEOS/fake/*.mp4")
    return jobs


def jobs_of_class(folder: Path, label: str, videos_dir: Path) -> list[VideoJob]:
    """The videos of one class folder (sub-folders included, hidden ones not), each with a folder
    name of its own: its path inside the class folder with '__' for '/', without the suffix
    (with it, '_mp4', where two videos would otherwise share a name)."""
    paths = sorted(p for p in folder.rglob("*") if is_video_name(p.name) and p.is_file()
                   and not any(part.startswith(".") for part in p.relative_to(folder).parts))
    stems = ["__".join(p.relative_to(folder).with_suffix("").parts) for p in paths]
    jobs = []
    for path, stem in zip(paths, stems):
        video_id = stem if stems.count(stem) == 1 else f"{stem}_{path.suffix[1:].lower()}"
        video_id = fitting_name(video_id, path.relative_to(folder).as_posix())
        jobs.append(VideoJob(label, path, path.relative_to(videos_dir).as_posix(), video_id))
    return jobs


# --------------------------------------------------------------------------- the output folder

def check_out(out_dir: Path, videos_dir: Path, settings: FrameSettings) -> None:
    """OUT must be new, empty, or an earlier frames output of the same settings, and apart from
    the videos; a ValueError of one line otherwise (nothing is written before this passes)."""
    check_output_folder(out_dir, "--out")
    out, videos = out_dir.resolve(), videos_dir.resolve()
    if out == videos or videos in out.parents or out in videos.parents:
        raise ValueError(f"--out {out_dir} and --videos {videos_dir} overlap: the videos are "
                         "only read; choose an --out outside them")
    if not out_dir.is_dir() or not [p for p in out_dir.iterdir() if p.name != LOCK_FILE]:
        return
    record = read_frames_json(out_dir)
    if record is None:
        raise ValueError(f"--out {out_dir} holds files the frames command did not write: "
                         "choose a new or empty --out")
    before = FrameSettings.from_dict(record.get("settings", {}))
    if before != settings:
        changed = ", ".join(f"--{name.replace('_', '-')} {was} -> {getattr(settings, name)}"
                            for name, was in before.as_dict().items()
                            if was != getattr(settings, name))
        raise ValueError(f"--out {out_dir} holds frames made with other settings ({changed}): "
                         "choose a new --out, or re-run with the same settings to carry on")


def record_path(out_dir: Path, job: VideoJob) -> Path:
    return out_dir / STATE_DIR / job.label / f"{job.video_id}.json"


def fingerprint(path: Path) -> dict:
    """The video's size and modification time: a changed file is done again."""
    stat = path.stat()
    return {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def read_record(out_dir: Path, job: VideoJob) -> dict | None:
    """The record of a video done before with the same file, or None (not done, or changed)."""
    record = read_json_object(record_path(out_dir, job))
    same = (record is not None and record.get("version") == RECORD_VERSION
            and record.get("video") == job.relative and record.get("file") == fingerprint(job.path))
    return record if same else None


# --------------------------------------------------------------------------- one video

class StageClock:
    """The wall seconds and this thread's CPU seconds spent in each of STAGES (a worker decodes
    in its own thread: one decoder thread per worker)."""

    def __init__(self):
        self.seconds = dict.fromkeys(STAGES, 0.0)
        self.cpu_seconds = dict.fromkeys(STAGES, 0.0)

    @contextlib.contextmanager
    def stage(self, name: str):
        wall, cpu = time.perf_counter(), time.thread_time()
        try:
            yield
        finally:
            self.seconds[name] += time.perf_counter() - wall
            self.cpu_seconds[name] += time.thread_time() - cpu


TEMPORARY = re.compile(r"^\.\d{6,}\.(png|jpg)\.\d+\.tmp$")  # files.atomic_write's, of a frame


def process_video(job: VideoJob, out_dir: Path, settings: FrameSettings, detector=None,
                  threads: int | None = 1) -> dict:
    """Sample, crop and write one video's frames; its record (rows, timings, or the one-line
    problem of a bad video), written last into OUT/.frames/. `detector`: faces.load_detector's
    (loaded here when None and --faces dlib)."""
    if detector is None and settings.faces != "none":
        detector = load_detector(settings.faces)
    folder = out_dir / job.label / job.video_id
    clear_video_folder(out_dir, job, folder)
    clock = StageClock()
    rows, written = [], []
    try:
        frames = sample_frames(job.path, settings.per_video, threads=threads)
        while True:
            with clock.stage("decode"):
                frame = next(frames, None)
            if frame is None:
                break
            rows.append(frame_row(job, frame, folder, out_dir, settings, detector, clock))
            written += [out_dir / rows[-1]["path"]] if rows[-1]["path"] else []
    except VideoError as error:
        for path in written:  # this attempt's own frames: a bad video leaves none behind
            path.unlink(missing_ok=True)
        rows, problem = [], str(error)
    else:
        problem = None
    record = {"version": RECORD_VERSION, "video": job.relative, "file": fingerprint(job.path),
              "problem": problem, "rows": rows, "seconds": clock.seconds,
              "cpu_seconds": clock.cpu_seconds}
    path = record_path(out_dir, job)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda f: json.dump(record, f))
    return record


def clear_video_folder(out_dir: Path, job: VideoJob, folder: Path) -> None:
    """Before (re)doing a video: remove what an earlier attempt at it wrote (the frames its
    record lists, temporary files of an interrupted write); nothing else."""
    try:
        before = json.loads(record_path(out_dir, job).read_text(encoding="utf-8"))
        listed = [row["path"] for row in before.get("rows", []) if row.get("path")]
    except (OSError, ValueError, AttributeError, TypeError, KeyError):
        listed = []
    for relative in listed:
        (out_dir / relative).unlink(missing_ok=True)
    if folder.is_dir():
        for path in folder.iterdir():
            if TEMPORARY.match(path.name):
                path.unlink(missing_ok=True)
    record_path(out_dir, job).unlink(missing_ok=True)


def frame_row(job: VideoJob, frame, folder: Path, out_dir: Path, settings: FrameSettings,
              detector, clock: StageClock) -> dict:
    """Find the face of one sampled frame, crop it and write it: the frame's manifest row."""
    import cv2
    with clock.stage("detect"):
        box, score = face_box(frame.rgb, detector, settings.scale, settings.detect_width)
    height, width = frame.rgb.shape[:2]
    row = {"label": job.label, "video": job.relative, "video_id": job.video_id,
           "frame_index": frame.index, "timestamp_s": frame.timestamp_s, "path": "",
           "x0": "", "y0": "", "x1": "", "y1": "", "score": "" if score != score else score,
           "frame_width": width, "frame_height": height, **settings.as_dict()}
    if box is None:
        return row
    with clock.stage("crop"):
        bgr = cv2.cvtColor(crop(frame.rgb, box), cv2.COLOR_RGB2BGR)
    path = folder / frame_name(frame.index, settings)
    with clock.stage("write"):  # encoding (PNG's deflate, or JPEG) and the file
        params = ([cv2.IMWRITE_JPEG_QUALITY, settings.quality] if settings.format == "jpg"
                  else [cv2.IMWRITE_PNG_COMPRESSION, 3])
        ok, encoded = cv2.imencode(settings.suffix, bgr, params)
        if not ok:
            raise OSError(f"{path}: OpenCV could not encode this frame as {settings.format}")
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write(path, lambda f: f.write(encoded.tobytes()), binary=True)
    row.update(path=path.relative_to(out_dir).as_posix(), x0=box[0], y0=box[1], x1=box[2],
               y1=box[3])
    return row


# --------------------------------------------------------------------------- the pool

_WORKER = {}  # in each worker process: its detector, loaded once


def init_worker(settings: FrameSettings) -> None:
    """A pool worker: Ctrl-C is the parent's to handle; one thread (one worker per core); quiet
    decoder; the face detector loaded once."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    import cv2
    cv2.setNumThreads(1)
    quiet_decoder()
    _WORKER["detector"] = load_detector(settings.faces)


def work(task: tuple) -> dict:
    job, out_dir, settings = task
    return process_video(job, out_dir, settings, _WORKER.get("detector"), threads=1)


def default_workers() -> int:
    """One worker per core this process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:
        return max(1, os.cpu_count() or 1)


def spawn_pool(workers: int, settings: FrameSettings):
    """`workers` spawned processes (not forked: a forked child inherits OpenCV's thread pool
    locked mid-use and hangs). A spawned worker first re-runs the parent's __main__ when that is
    a script: a host that installed its own script there (Streamlit puts the app's page there,
    for good) would have every worker run that page, die, and be restarted for ever. The workers
    need only this module, so they start from a bare __main__."""
    import multiprocessing
    import types
    main = sys.modules["__main__"]
    sys.modules["__main__"] = types.ModuleType("__main__")
    try:
        return multiprocessing.get_context("spawn").Pool(
            workers, initializer=init_worker, initargs=(settings,))
    finally:
        sys.modules["__main__"] = main


def run_jobs(jobs: list[VideoJob], out_dir: Path, settings: FrameSettings, workers: int):
    """Yield each job's record as it is done: in this process for one worker (or one video),
    else in a pool of `workers` processes; Ctrl-C stops the pool at once (what is done is kept)."""
    if not jobs:
        return
    if workers <= 1 or len(jobs) <= 1:
        quiet_decoder()
        detector = load_detector(settings.faces)
        for job in jobs:  # one decoding thread, as in the pool: a worker is a core
            yield process_video(job, out_dir, settings, detector, threads=1)
        return
    pool = spawn_pool(min(workers, len(jobs)), settings)
    try:
        yield from pool.imap_unordered(work, [(job, out_dir, settings) for job in jobs])
        pool.close()
    except BaseException:
        pool.terminate()
        raise
    finally:
        pool.join()


# --------------------------------------------------------------------------- the command

def make_frames(videos_dir: str | os.PathLike, out_dir: str | os.PathLike,
                settings: FrameSettings = FrameSettings(), workers: int | None = None,
                progress: bool = True) -> FramesSummary:
    """Turn the videos under `videos_dir` into frames under `out_dir` (the module's docstring);
    the summary. Bad videos are warned about, one line each, and skipped."""
    videos_dir, out_dir = Path(videos_dir), Path(out_dir)
    jobs = find_videos(videos_dir)
    check_out(out_dir, videos_dir, settings)
    check_faces_extra(settings.faces)  # a missing [faces] extra fails now, before any writing
    with folder_lock(out_dir):
        check_out(out_dir, videos_dir, settings)  # again, now that nobody else writes it
        record = {"written_by": WRITTEN_BY, "settings": settings.as_dict(),
                  "videos": str(videos_dir.resolve())}
        if read_frames_json(out_dir) != record:  # a re-run changes nothing, its time included
            write_json(out_dir / FRAMES_JSON, record)
        records = {job: read_record(out_dir, job) for job in jobs}
        summary = FramesSummary(out_dir, videos=len(jobs),
                                done_before=sum(r is not None for r in records.values()))
        pending = [job for job in jobs if records[job] is None]
        summary.done_now = len(pending)
        by_video = {job.relative: job for job in pending}
        bar = tqdm(total=len(pending), desc="frames", unit="video", disable=not progress)
        for record in run_jobs(pending, out_dir, settings, workers or default_workers()):
            records[by_video[record["video"]]] = record
            bar.update(1)
        bar.close()
        write_manifest(out_dir, [records[job] for job in jobs])
        warn_gone(out_dir, jobs)
    return summarise(summary, [records[job] for job in jobs])


def warn_gone(out_dir: Path, jobs: list[VideoJob]) -> None:
    """One warning naming the videos an earlier run did that are no longer under --videos: their
    frames are kept (and left out of frames.csv), but split would still find them."""
    state = out_dir / STATE_DIR
    expected = {record_path(out_dir, job) for job in jobs}
    gone = sorted(p.relative_to(state).with_suffix("").as_posix()
                  for p in state.glob("*/*.json") if p not in expected)
    if gone:
        warnings.warn(f"{len(gone)} videos done by an earlier run are no longer under --videos; "
                      f"their frames are kept and left out of {FRAMES_CSV}, but split would "
                      f"still use them: delete {out_dir}/<label>/<video id> for "
                      f"{', '.join(gone)}", stacklevel=3)


def write_manifest(out_dir: Path, records: list[dict]) -> None:
    """frames.csv: every frame row of the videos' records, in the order of the videos; left as it
    is when it already says exactly that."""
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, fieldnames=FRAMES_COLUMNS)
    writer.writeheader()
    for record in records:
        writer.writerows(record["rows"])
    path = out_dir / FRAMES_CSV
    try:
        with open(path, encoding="utf-8", newline="") as f:
            if f.read() == text.getvalue():
                return
    except OSError:
        pass
    atomic_write(path, lambda f: f.write(text.getvalue()))


def summarise(summary: FramesSummary, records: list[dict]) -> FramesSummary:
    """Count the frames, warn about each bad video (one line each) and, in one warning, the videos
    without a face in any sampled frame."""
    for record in records:
        if record["problem"]:
            summary.bad.append(f"{record['problem']}: skipped")
            warnings.warn(summary.bad[-1], stacklevel=2)
            continue
        faces = sum(bool(row["path"]) for row in record["rows"])
        summary.frames += faces
        summary.frames_without_face += len(record["rows"]) - faces
        if not faces:
            summary.faceless.append(record["video"])
        for stage in STAGES:
            summary.seconds[stage] += record["seconds"].get(stage, 0.0)
            summary.cpu_seconds[stage] += record.get("cpu_seconds", {}).get(stage, 0.0)
    if summary.faceless:
        n = len(summary.faceless)
        warnings.warn(f"{n} video{'s' if n > 1 else ''} had no face in any sampled frame, so no "
                      f"frames of {'theirs' if n > 1 else 'its'} were written: "
                      f"{', '.join(summary.faceless)}", stacklevel=2)
    return summary
