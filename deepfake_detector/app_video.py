"""The web page's video part (app.py calls `video_section`): upload one short clip, see its verdict
card, P(fake) over time with the threshold, and the frames that look most fake with their
Grad-CAM. The work is in video_uploads.py; this file only lays it out, with Streamlit.

A clip goes through the model once (its result is kept in the session, keyed by the upload);
moving the target switch or the opacity slider only re-blends the stored maps.
"""
from __future__ import annotations

import html

import streamlit as st

from .figures import plt
from .uploads import MAX_VIDEO_MB, png_bytes
from .video_gradcam import crop_overlay
from .video_predict import plot_timeline, run_sampling
from .video_uploads import (PRIVATE_COPY_NOTE, VIDEO_TYPES, explain_video_upload,
                            max_video_words, top_frames)

CARD_COLOURS = {"fake": ("#9b1c1c", "#fdecec", "#d32f2f"),   # as app.py's verdict cards
                "real": ("#1b5e20", "#e8f5e9", "#2e7d32")}
TOP_SHOWN = 4
VIEW_SIDE = 256  # smaller crops are enlarged to this, nearest neighbour (sharp pixels)


def video_section(model, checkpoint: dict, run_dir: str) -> None:
    """The uploader for one clip, and its result under it."""
    st.subheader("Or a short video")
    st.caption(f"One clip, {max_video_words()} (checked before any frame is decoded). "
               + PRIVATE_COPY_NOTE)
    upload = st.file_uploader("Video (MP4, AVI, MOV, MKV, WebM)", type=list(VIDEO_TYPES),
                              accept_multiple_files=False, max_upload_size=MAX_VIDEO_MB,
                              key="video")
    if upload is None:
        return
    explained = st.session_state.setdefault("explained_videos", {})
    if upload.file_id not in explained:
        explained.clear()  # one clip at a time: the previous one's frames are let go
        sampling = run_sampling(run_dir)
        with st.spinner(f"Reading {sampling.settings.per_video} frames of {upload.name} ..."):
            explained[upload.file_id] = explain_video_upload(model, checkpoint, upload.name,
                                                             upload.getvalue(), sampling)
    show_video(explained[upload.file_id], upload.file_id)


def video_card(result) -> None:
    """The clip's verdict, large and coloured, with P(fake) and the frames it rests on."""
    clip_result = result.cams.result
    text, background, edge = CARD_COLOURS[clip_result.verdict]
    row = clip_result.row()
    why = ("at least" if clip_result.verdict == "fake" else "under")
    frames = (f"Whole frames, {row['frames_sampled']} sampled." if
              clip_result.clip.sampling.settings.faces == "none" else
              f"{row['frames_with_face']} of {row['frames_sampled']} sampled frames show a face.")
    st.markdown(
        f'<div class="video-verdict-card" data-verdict="{clip_result.verdict}" '
        f'style="color:{text};background:{background};border-left:0.7rem solid {edge};'
        f'border-radius:0.5rem;padding:0.6rem 1rem;margin-bottom:0.6rem">'
        f'<div style="font-size:0.95rem">{html.escape(result.name)} · video · '
        f'{clip_result.clip.duration_s:.1f} s</div>'
        f'<div style="font-size:2.1rem;font-weight:800;line-height:1.2">'
        f'{clip_result.verdict.upper()}</div>'
        f'<div style="font-size:1.15rem"><b>P(fake) = {clip_result.probability:.3f}</b> '
        f'(mean of {row["frames_used"]} frames) · threshold {clip_result.threshold:.3f}</div>'
        f'<div style="font-size:1rem">The mean P(fake) is {why} the threshold this run chose on '
        f'its {html.escape(clip_result.threshold_source)}. {frames}</div></div>',
        unsafe_allow_html=True)


def show_video(result, key: str) -> None:
    """The card, the timeline, and the top frames with their Grad-CAM."""
    if not result.ok:
        st.error(result.error)
        return
    video_card(result)
    for note in result.notes:
        st.info(note)
    st.caption(f"Sampled as the run's training frames were: "
               f"{result.cams.result.clip.sampling.describe()}.")
    fig = plot_timeline(result.cams.result)
    st.image(png_bytes(figure_pixels(fig)), caption="P(fake) of each sampled frame over time, "
             "with the threshold (dashed) and the video's mean (dotted)")
    plt.close(fig)
    target = st.radio("Grad-CAM explains", ("fake", "real"), horizontal=True,
                      index=0 if result.cams.result.verdict == "fake" else 1,
                      key=f"video-target-{key}")
    opacity = st.slider("Heat-map opacity", 0.0, 1.0, 0.5, 0.05, key=f"video-opacity-{key}")
    faced = result.cams.result.clip.with_face
    st.markdown(f"**The frames that look most fake**, highest P(fake) first: each face crop as "
                f"the model saw it, with its Grad-CAM for “{target}”.")
    columns = st.columns(TOP_SHOWN)
    for column, k in zip(columns, top_frames(result.cams, TOP_SHOWN)):
        column.image(png_bytes(enlarged(crop_overlay(result.cams, target, k, opacity))),
                     width="stretch",
                     alt=f"{result.name}: Grad-CAM of the frame at {faced[k].timestamp_s:.2f} s",
                     caption=f"t = {faced[k].timestamp_s:.2f} s · P(fake) = "
                             f"{result.cams.result.probabilities[k]:.3f}")


def enlarged(pixels):
    """A small picture blown up to VIEW_SIDE, nearest neighbour: a browser would blur it."""
    import cv2
    side = max(pixels.shape[:2])
    if side >= VIEW_SIDE:
        return pixels
    factor = -(-VIEW_SIDE // side)
    return cv2.resize(pixels, None, fx=factor, fy=factor, interpolation=cv2.INTER_NEAREST)


def figure_pixels(fig):
    """A matplotlib figure as uint8 RGB pixels (to send as PNG bytes made once)."""
    import numpy as np
    fig.canvas.draw()
    return np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()
