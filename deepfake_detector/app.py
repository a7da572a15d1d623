"""The web page: upload images, see verdict, P(fake), confidence and Grad-CAM. Thin on purpose.

Start it with `python -m deepfake_detector app --run RUN` (serve.py); Streamlit runs this file
top to bottom on every interaction. The work is in uploads.py; this file only lays it out:
the model is loaded once per process (st.cache_resource), each upload goes through the model once
(its result is kept in the session, keyed by the upload), and moving the target switch or the
opacity slider only re-blends the stored map.

Each result opens with a verdict card (FAKE / REAL / UNSURE — NOT LIKE THE TRAINING DATA, P(fake),
the band, one line of why), then the image, its Grad-CAM overlay with a colour scale, and the
controls; the newest upload comes first. The RANDOM INIT / SYNTHETIC DATA banners are on the page
once (not repeated in the sidebar).
"""
from __future__ import annotations

import argparse
import html
import os
import sys

import numpy as np
import streamlit as st
import torch
from PIL import Image

from deepfake_detector import app_video, uploads
from deepfake_detector.gradcam import heatmap
from deepfake_detector.inference import load_run
from deepfake_detector.model import IMAGENET_FILE, torch_checkpoint_dir
from deepfake_detector.serve import DEMO_ROOT

RUN_ENV = "DEEPFAKE_DETECTOR_RUN"  # where tests (and anyone) may name the run instead of --run
# The verdict card's (text, background, edge) colours: dark text on a light tint, every pair
# above WCAG's 4.5:1 contrast; the words carry the verdict too, so red/green is never the only cue.
CARD_COLOURS = {"fake": ("#9b1c1c", "#fdecec", "#d32f2f"),
                "real": ("#1b5e20", "#e8f5e9", "#2e7d32"),
                "unsure": ("#6d3a00", "#fff3dc", "#ef8f00")}
UNSURE_TITLE = "UNSURE — NOT LIKE THE TRAINING DATA"
# Pictures smaller than this (on their longer side) are enlarged for viewing, nearest neighbour
# (each pixel a sharp block), to at least VIEW_SIDE: a browser stretching a 32 px image to a
# column's width blurs it into mush. The stored image and raw maps are untouched.
VIEW_BELOW, VIEW_SIDE = 128, 512


def run_dir_from_command_line() -> str | None:
    """`streamlit run app.py -- --run RUN`, else $DEEPFAKE_DETECTOR_RUN."""
    parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    parser.add_argument("--run")
    args, _ = parser.parse_known_args(sys.argv[1:])
    return args.run or os.environ.get(RUN_ENV)


@st.cache_resource(show_spinner="Loading the model ...")
def load(run_dir: str):
    """(model, checkpoint, model card): once per process and run, shared by every session."""
    model, checkpoint = load_run(run_dir)
    if next(model.parameters()).device.type == "cpu" and "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(uploads.interactive_cpu_threads())
    return model, checkpoint, uploads.model_card(run_dir, checkpoint)


def banners(card: dict) -> None:
    """RANDOM INIT and SYNTHETIC DATA, once, on the page (in one box when both apply)."""
    lines = []
    if card["random_init"]:
        lines.append("**RANDOM INIT — NOT IMAGENET-PRETRAINED.** This model's backbone never saw "
                     "ImageNet; its verdicts show how the app works, not whether an image is "
                     "fake. (Why, and how to change it: *Weights note* in the model card.)")
    if card["synthetic"]:
        lines.append("**SYNTHETIC DATA.** This model was trained on the generated demo set "
                     f"({card['synthetic'].get('raw_dir')}), not on photographs or real "
                     "deepfakes: its scores say nothing about real images.")
    if lines:
        st.error("\n\n".join(lines))


def weights_note(card: dict) -> str | None:
    """The model card's Weights note in words a web user can act on: what the weights mean for
    trusting a verdict, and what the person who started the app can do about it (the training
    log's own note speaks to someone at a command line: `--weights none` and the like)."""
    weights = card["weights"]
    if not card["random_init"]:
        return f"Pretrained weights: {weights.get('note')}." if weights.get("note") else None
    note = str(weights.get("note") or "")
    why = ("whoever trained it chose random init" if "chosen explicitly" in note else
           "the ImageNet weights could not be loaded when it was trained")
    detail = note.split(": ", 1)[1].split(" To use ImageNet weights offline")[0] \
        if "fell back to random init: " in note else ""
    return (
        f"**What it means.** This model's backbone started from random numbers instead of "
        f"ImageNet-pretrained weights ({why}). Trained that way on a small set, its verdicts "
        f"on real photos are close to guesses: use this page to see how the app works, not to "
        f"decide whether an image is fake.\n\n"
        f"**To get pretrained weights** (for whoever started the app, on the server): put "
        f"torchvision's `{IMAGENET_FILE}` into `{torch_checkpoint_dir()}` (or let the server "
        f"reach the internet once), then train a run with "
        f"`python -m deepfake_detector train --data DATA --out outputs/runs/r1 --weights "
        f"imagenet` and restart the app with `--run outputs/runs/r1`; for the demo, delete "
        f"`{DEMO_ROOT}/run` and start `python -m deepfake_detector app --demo` again."
        + (f"\n\n*Loading error when the run was trained:* {detail}" if detail else ""))


def fmt(value, digits: int = 3) -> str:
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def sidebar(card: dict) -> None:
    side = st.sidebar
    side.header("Model card")
    weights = card["weights"]
    side.markdown(f"**Run** `{card['run_dir']}`  \n"
                  f"**Weights** {weights.get('weights', '?')} "
                  f"({'pretrained' if weights.get('pretrained') else 'random init'})  \n"
                  f"**Threshold** {card['threshold']:.3f}, {card['threshold_source']}  \n"
                  + (f"**Video threshold** {card['video_threshold']:.3f}, chosen on the "
                     "validation videos  \n" if card.get("video_threshold") is not None else "")
                  + f"**Image size** {card['img_size']} x {card['img_size']} px  \n"
                  f"**Trained** {card['trained_at'] or 'unknown'}"
                  + (f", best epoch {card['best_epoch']}" if card["best_epoch"] else ""))
    note = weights_note(card)
    if note:
        side.expander("Weights note").markdown(note)
    counts = card["data_counts"]
    if isinstance(counts, dict) and "unreadable" not in counts:
        side.markdown("**Training data** (" + (card["data_dir"] or "?") + ")  \n" + "  \n".join(
            f"{split}: {c.get('real', 0)} real, {c.get('fake', 0)} fake"
            for split, c in counts.items() if isinstance(c, dict)))
    if card["val_metrics"]:
        side.markdown("**Validation metrics** (95% bootstrap CI)")
        side.table([{"metric": r["metric"], "value": fmt(r["value"]),
                     "95% CI": "" if not r["95% CI"] else
                     f"{r['95% CI'][0]:.3f} – {r['95% CI'][1]:.3f}"} for r in card["val_metrics"]])
    if card["cross_dataset"]:
        side.markdown("**Cross-dataset** (trained on one set, tested on another)")
        side.table([{"test set": r.get("test set"), "n": r.get("n_images"),
                     "ROC-AUC": fmt(r.get("roc_auc")), "accuracy": fmt(r.get("accuracy"))}
                    for r in card["cross_dataset"]])
    side.warning("Scores mean something only for images like the training data: other cameras, "
                 "generators, sizes or compression can fool the model either way.")


def card_title(result: uploads.ExplainedUpload) -> tuple[str, str]:
    """(the card's title, its colour key): UNSURE for an image unlike the training data (the
    model's lean is then no verdict to act on), else the verdict."""
    if getattr(result, "unlike_training", False):
        return UNSURE_TITLE, "unsure"
    return result.verdict.upper(), result.verdict


def card_reason(result: uploads.ExplainedUpload) -> str:
    """The card's one line of why: the flag(s) for an image unlike the training data (uploads'
    trust_note says which and why), else where P(fake) lies against the threshold."""
    if getattr(result, "unlike_training", False):
        return (getattr(result, "trust_note", "") or "The model has not seen images like this "
                "one: its verdict means little.") + f" (It leans {result.verdict}.)"
    side = "at least" if result.verdict == "fake" else "under"
    reason = (f"P(fake) is {side} the threshold {result.threshold:.3f} this run chose on its "
              f"validation split")
    if result.band == "confident":
        return reason + ", and far from it."
    return reason + ", but close to it: a weak verdict."


def verdict_card(result: uploads.ExplainedUpload) -> None:
    """The result's first lines: large and coloured, readable at a glance."""
    title, kind = card_title(result)
    text, background, edge = CARD_COLOURS[kind]
    width, height = result.original_size
    # Not flagged: how far from the training data, in small print (the percentile, or that the
    # run has no OOD score); flagged, that line is the reason itself.
    trust = "" if kind == "unsure" else getattr(result, "trust_note", "")
    st.markdown(
        f'<div class="verdict-card" data-verdict="{kind}" style="color:{text};'
        f'background:{background};border-left:0.7rem solid {edge};border-radius:0.5rem;'
        f'padding:0.6rem 1rem;margin-bottom:0.6rem">'
        f'<div style="font-size:0.95rem">{html.escape(result.name)} · {width} x {height} px</div>'
        f'<div style="font-size:2.1rem;font-weight:800;line-height:1.2">{html.escape(title)}</div>'
        f'<div style="font-size:1.15rem"><b>P(fake) = {result.probability:.3f}</b> · '
        f'confidence: <b>{html.escape(str(result.band))}</b> · threshold '
        f'{result.threshold:.3f}</div>'
        f'<div style="font-size:1rem">{html.escape(card_reason(result))}</div>'
        f'<div style="font-size:0.85rem;margin-top:0.2rem">{html.escape(trust)}</div></div>',
        unsafe_allow_html=True)


def colour_scale() -> str:
    """An HTML legend of the heat map's colours (the overlay's own colour map, sampled)."""
    stops = heatmap(np.linspace(0, 1, 11, dtype=np.float32)[None])[0]
    gradient = ", ".join(f"rgb({r},{g},{b})" for r, g, b in stops)
    return ('<div class="colour-scale" style="font-size:0.8rem">'
            f'<div style="height:0.7rem;border-radius:0.2rem;background:linear-gradient(to right, '
            f'{gradient})"></div><div style="display:flex;justify-content:space-between">'
            '<span>low</span><span>attention, relative to this map’s peak</span>'
            '<span>high</span></div></div>')


def for_viewing(image: Image.Image) -> tuple[Image.Image, int]:
    """(the picture to show, its enlargement): small pictures blown up, nearest neighbour."""
    side = max(image.size)
    if side >= VIEW_BELOW:
        return image, 1
    factor = -(-VIEW_SIDE // side)
    return image.resize((image.width * factor, image.height * factor),
                        Image.Resampling.NEAREST), factor


def show(result: uploads.ExplainedUpload, key: str) -> None:
    if not result.ok:
        st.error(result.error)
        return
    verdict_card(result)
    for note in result.notes:
        st.info(note)
    left, middle, right = st.columns([4, 4, 3])
    width, height = result.original_size
    preview, factor = for_viewing(result.preview)
    enlarged = f", shown {factor}x (nearest neighbour)" if factor > 1 else ""
    # PNG bytes made by us (encoded once, or quickly): st.image would re-encode a picture on
    # every rerun, and a switch of target is a rerun.
    # Both as wide as their column: side by side at one scale.
    left.image(result.preview_png if factor == 1 else uploads.png_bytes(preview), width="stretch",
               alt=f"{result.name}: the uploaded image",
               caption=f"uploaded: {width} x {height} px{enlarged}")
    target = right.radio("Grad-CAM explains", uploads.TARGETS, horizontal=True,
                         index=uploads.TARGETS.index(result.verdict), key=f"target-{key}",
                         help="The predicted class is chosen first; switch to see the "
                              "evidence for the other.")
    opacity = right.slider("Heat-map opacity", 0.0, 1.0, 0.5, 0.05, key=f"opacity-{key}")
    shown, _ = for_viewing(Image.fromarray(
        uploads.overlay_image(result, target, opacity, preview=True)))
    middle.image(uploads.png_bytes(shown), width="stretch",
                 alt=f"{result.name}: Grad-CAM overlay, target {target}",
                 caption=f"Grad-CAM: where the model saw evidence for “{target}”")
    middle.markdown(colour_scale(), unsafe_allow_html=True)
    # Under the pictures they belong to: the right-hand column is too narrow for their labels.
    middle.download_button(
        "Download overlay (PNG)", data=lambda: uploads.overlay_png(result, target, opacity),
        file_name=uploads.overlay_file_name(result, target), mime="image/png",
        key=f"overlay-{key}", on_click="ignore")
    left.download_button(
        "Download prediction row (JSON)", data=uploads.prediction_row_json(result),
        file_name=f"{os.path.splitext(result.image_id)[0]}.prediction.json",
        mime="application/json", key=f"row-{key}", on_click="ignore")


def main() -> None:
    st.set_page_config(page_title="Real or fake? deepfake-detector", layout="wide")
    run_dir = run_dir_from_command_line()
    if not run_dir:
        st.error("No run given: start the app with `python -m deepfake_detector app --run RUN` "
                 "(or `--demo` to train the synthetic demo run first).")
        st.stop()
    try:
        model, checkpoint, card = load(run_dir)
    except (OSError, ValueError, KeyError, RuntimeError) as error:
        st.error(f"Cannot load the run {run_dir}: {error}")
        st.stop()
    sidebar(card)

    st.title("Real or fake?")
    banners(card)
    st.caption(f"Up to {uploads.MAX_UPLOAD_MB} MB and {uploads.MAX_PIXELS / 1e6:g} megapixels per "
               "file. Images stay in this server's memory, are never written to disk, and are "
               "forgotten when you remove them or close the page. The app makes no network call.")
    files = st.file_uploader("Images (JPEG, PNG, WebP, BMP, TIFF, GIF)", type=uploads.UPLOAD_TYPES,
                             accept_multiple_files=True, max_upload_size=uploads.MAX_UPLOAD_MB,
                             key="uploads") or []
    st.expander("How to read a result").markdown(
        f"Each image gets a **verdict** at the threshold this run chose on its validation split "
        f"(**{card['threshold']:.3f}**: fake when P(fake) is at least that), **P(fake)**, a "
        f"**confidence** band ({uploads.band_edges_text()}) and a **Grad-CAM** map of where the "
        f"model saw the evidence. The model sees each image resized to {card['img_size']} x "
        f"{card['img_size']} px. An image unlike the training data (content, or a size far from "
        f"the training images') is marked **{UNSURE_TITLE}**: the model has not seen images like "
        f"it, and its verdict means little.")

    # One pass for the files not seen before in this session, all of them in one batch.
    explained = st.session_state.setdefault("explained", {})
    new = [f for f in files if f.file_id not in explained]
    if new:
        with st.spinner(f"Looking at {len(new)} image(s) ..."):
            results = uploads.explain_uploads(model, checkpoint, [(f.name, f.getvalue()) for f in new])
        explained.update({f.file_id: r for f, r in zip(new, results)})
    for gone in set(explained) - {f.file_id for f in files}:
        del explained[gone]
    # Newest first (rather than one result at a time with a picker): the image just added is
    # right under the upload box, while every earlier result and every bad file's message stays
    # on the page to compare with, none hidden behind a list.
    for n, f in enumerate(reversed(files)):
        if n:  # the first result starts right under the upload box, to be seen without scrolling
            st.divider()
        show(explained[f.file_id], f.file_id)
    # One short clip, under the images' results (app_video.py)
    app_video.video_section(model, checkpoint, run_dir)


main()
