"""The video commands' parsers and runners (registered in cli.COMMANDS):

    python -m deepfake_detector frames --videos videos --out frames_raw --per-video 32 --faces dlib
    python -m deepfake_detector demo-videos --out data/demo_videos

`frames` turns VIDEOS/{real,fake}/**/*.mp4 into a dataset_raw-shaped tree of frames or face crops
(frames.py); `demo-videos` writes the synthetic demo videos (demo_videos.py).
"""
from __future__ import annotations

import argparse

from .config import image_size, positive_int, seed_number
from .terminal import program_name


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r}: give a positive number")
    return value


def jpeg_quality(text: str) -> int:
    value = positive_int(text)
    if value > 100:
        raise argparse.ArgumentTypeError(f"{text!r}: a JPEG quality goes from 1 to 100")
    return value


def add_frames(commands):
    from .faces import DEFAULT_DETECT_WIDTH, DEFAULT_SCALE, FACE_MODES
    from .frames_manifest import DEFAULT_QUALITY, FRAME_FORMATS
    from .video import DEFAULT_PER_VIDEO, VIDEO_SUFFIXES
    p = commands.add_parser("frames", help="videos to a dataset_raw-shaped tree of frames or "
                                           "face crops, for split --group-by folder")
    p.add_argument("--videos", required=True,
                   help=f"folder holding real/ and fake/ with the videos "
                        f"({' '.join(VIDEO_SUFFIXES)}; sub-folders are fine); only read")
    p.add_argument("--out", required=True,
                   help="new or empty folder for real/<video>/<frame>.png, frames.csv and "
                        "frames.json (or this command's earlier output, to carry on)")
    p.add_argument("--per-video", type=positive_int, default=DEFAULT_PER_VIDEO,
                   help="frames per video, evenly spaced over the whole video (DeepfakeBench: 32)")
    p.add_argument("--faces", choices=FACE_MODES, default="dlib",
                   help="dlib: crop the largest face (needs the [faces] extra); none: keep whole "
                        "frames")
    p.add_argument("--scale", type=positive_float, default=DEFAULT_SCALE,
                   help="the square crop's side, in face sizes, around the face (FaceForensics++)")
    p.add_argument("--detect-width", type=positive_int, default=DEFAULT_DETECT_WIDTH,
                   help="faces are found on a copy this many pixels wide (speed); the crop is "
                        "taken from the full frame")
    p.add_argument("--format", choices=FRAME_FORMATS, default="png",
                   help="png (lossless: no compression artefacts of its own for the detector to "
                        "learn) or jpg")
    p.add_argument("--quality", type=jpeg_quality, default=DEFAULT_QUALITY,
                   help="JPEG quality, 1-100, with --format jpg")
    p.add_argument("--workers", type=positive_int, default=None,
                   help="videos decoded at once, one process each (default: one per core)")
    p.set_defaults(func=run_frames)


def run_frames(args):
    from .frames import make_frames
    from .frames_manifest import FrameSettings
    settings = FrameSettings(per_video=args.per_video, faces=args.faces, scale=args.scale,
                             detect_width=args.detect_width, format=args.format,
                             quality=args.quality)
    summary = make_frames(args.videos, args.out, settings, workers=args.workers)
    print(summary)
    return summary


def add_demo_videos(commands):
    from .demo_videos import (CODECS, DEMO_VIDEO_FRAMES, DEMO_VIDEO_SIZE,
                              DEMO_VIDEOS_PER_CLASS)
    p = commands.add_parser("demo-videos", help="generate synthetic real/fake demo videos "
                                                "(with masks) for frames --faces none")
    p.add_argument("--out", default="data/demo_videos",
                   help="new or empty folder for real/, fake/, masks/ and generation.json")
    p.add_argument("--n-per-class", type=positive_int, default=DEMO_VIDEOS_PER_CLASS,
                   help="videos per class")
    p.add_argument("--img-size", dest="image_size", metavar="IMG_SIZE", type=image_size,
                   default=DEMO_VIDEO_SIZE,
                   help="side of the square frames in px, even, at least 16")
    p.add_argument("--frames", dest="n_frames", type=positive_int, default=DEMO_VIDEO_FRAMES,
                   help="frames per video")
    p.add_argument("--codec", choices=tuple(CODECS), default="ffv1",
                   help="ffv1: lossless .mkv (the artefact reaches the frames as made); mp4v: "
                        "lossy MPEG-4 .mp4")
    p.add_argument("--seed", type=seed_number, default=0,
                   help="seed of the generator: the same seed gives the same videos")
    p.set_defaults(func=run_demo_videos)


def run_demo_videos(args):
    from .demo_videos import generate_demo_videos
    out = generate_demo_videos(args.out, n_per_class=args.n_per_class, size=args.image_size,
                               n_frames=args.n_frames, seed=args.seed, codec=args.codec)
    print(f"synthetic demo videos in {out}; next: {program_name()} frames --videos {out} "
          f"--out {out}_frames --faces none")
    return out
