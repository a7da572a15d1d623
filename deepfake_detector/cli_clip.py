"""The command line for video files given to predict and gradcam (issue 24, section 3). Not a
command of its own: `add_video_options`, in cli.COMMANDS after predict and gradcam, gives them
their video options and sends video files here, everything else to their own runners.

    predict --run RUN clip.mp4 [--out rows.csv] [--frames-out frames.csv] [--timeline DIR]
    gradcam --run RUN --images clip.mp4 --out DIR    -> DIR/clip/gradcam.mp4, contact_sheet.png

Heavy modules are imported inside the runners, as in cli.py.
"""
from __future__ import annotations

import functools
import json
import os
import sys
from pathlib import Path

from .video import VIDEO_SUFFIXES

VIDEO_WORDS = ", ".join(VIDEO_SUFFIXES)


def add_video_options(commands):
    """predict's --frames-out and --timeline, and video files among predict's paths and
    gradcam's --images (their runners wrapped: videos come here)."""
    predict = commands.choices["predict"]
    predict.add_argument("--frames-out", default=None,
                         help="videos only: also write one row per sampled frame (time, face "
                              "found, P(fake)) to this .csv or .json file")
    predict.add_argument("--timeline", default=None,
                         help="videos only: a folder for one PNG per video of P(fake) over time, "
                              "with the threshold line")
    describe(predict, "paths", f"image files, folders and/or video files ({VIDEO_WORDS}): one "
                               "row per video (verdict, P(fake) = the mean over its frames)")
    predict.set_defaults(func=functools.partial(run_predict_or_videos,
                                                predict.get_default("func")))
    gradcam = commands.choices["gradcam"]
    describe(gradcam, "images", "a split folder (with real/ fake/: overlays sorted tp/tn/fp/fn), "
                                f"files, or video files ({VIDEO_WORDS}): an MP4 of the frames "
                                "with their Grad-CAM and a contact sheet, per video")
    gradcam.set_defaults(func=functools.partial(run_gradcam_or_videos,
                                                gradcam.get_default("func")))


def describe(parser, dest: str, text: str) -> None:
    """A new help text for the option `dest` of `parser`."""
    for action in parser._actions:
        if action.dest == dest:
            action.help = text


def split_paths(paths, option: str) -> list[Path]:
    """The video files among `paths` (video_predict.list_videos); none, or a one-line error
    when they come mixed with images."""
    from .video_predict import list_videos
    videos, others = list_videos(paths)
    if videos and others:
        raise ValueError(f"{option}: {others[0]} is not a video but {videos[0]} is: give "
                         "videos and images in separate calls.")
    return videos


def check_outputs(args) -> None:
    """Every output named, checked before any video is read."""
    from .files import check_output_folder
    for option, value in (("--out", args.out), ("--frames-out", args.frames_out)):
        if value and Path(value).suffix.lower() not in (".csv", ".json"):
            raise ValueError(f"{option} {value}: give a .csv or .json file name.")
        if value and Path(value).is_dir():
            raise ValueError(f"{option} {value} is a folder: give a .csv or .json file name.")
    if args.timeline:
        check_output_folder(args.timeline, "--timeline")
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ValueError("predict on videos does not split its work among processes: run it "
                         "without torchrun.")


def run_predict_or_videos(run_images, args):
    """predict: the videos here, one row each; anything else as predict always did."""
    videos = split_paths(args.paths, "predict")
    if not videos:
        if args.frames_out or args.timeline:
            raise ValueError("--frames-out and --timeline are for videos: none of the paths "
                             f"is a video file ({VIDEO_WORDS}).")
        return run_images(args)
    check_outputs(args)
    return predict_video_files(args, videos)


def predict_video_files(args, videos: list[Path]) -> list[dict]:
    from .figures import plt
    from .video_metrics import write_rows
    from .video_predict import plot_timeline, predict_videos, timeline_name
    frame_rows, names = [], set()

    def on_clip(result):
        frame_rows.extend(result.frame_rows())
        print(verdict_line(result), file=sys.stderr)
        if args.timeline:
            fig = plot_timeline(result, Path(args.timeline) / timeline_name(result, names))
            plt.close(fig)

    rows = predict_videos(args.run, videos, args.device, args.precision, args.batch_size,
                          on_clip=on_clip, log=lambda line: print(line, file=sys.stderr),
                          roots=args.paths)
    if args.frames_out:
        write_rows(frame_rows, args.frames_out)
    if args.out:
        write_rows(rows, args.out)
        print(f"{len(rows)} video row(s) written to {args.out}", file=sys.stderr)
    else:
        print(json.dumps(rows, indent=2))
    if args.timeline:
        print(f"timelines written to {args.timeline}", file=sys.stderr)
    return rows


def verdict_line(result) -> str:
    """One line for people: the video, its verdict, P(fake), the frames it rests on."""
    row = result.row()
    if result.verdict is None:
        return f"{row['video_id']}: no verdict, no face in its {row['frames_sampled']} frames"
    frames = (f"its {row['frames_used']} sampled frames, whole" if
              result.clip.sampling.settings.faces == "none" else
              f"the {row['frames_used']} of {row['frames_sampled']} sampled frames with a face")
    return (f"{row['video_id']}: {result.verdict.upper()}, P(fake) {result.probability:.3f} "
            f"(mean of {frames}; threshold {result.threshold:.3f}, chosen on the "
            f"{result.threshold_source})")


def run_gradcam_or_videos(run_images, args):
    """gradcam: videos here (an MP4 and a contact sheet each), anything else as always."""
    videos = split_paths(args.images, "--images")
    if not videos:
        return run_images(args)
    if args.masks:
        raise ValueError("--masks is for images of the synthetic set, not for videos: leave it "
                         "out.")
    from .files import check_output_folder
    from .folder_lock import folder_lock
    from .inference import load_run
    from .video_gradcam import explain_clip_to
    from .video_predict import run_sampling
    out = check_output_folder(args.out, "--out")
    videos = videos[:args.max_images] if args.max_images else videos  # at most that many videos
    model, checkpoint = load_run(args.run, args.device)
    sampling = run_sampling(args.run)
    summaries = []
    with folder_lock(out):
        for path in videos:
            summaries.append(explain_clip_to(model, checkpoint, path, out, sampling,
                                             args.target, args.batch_size))
    print(json.dumps(summaries, indent=2, default=str))
    return summaries
