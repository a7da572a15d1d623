"""The web page: upload images, see verdict, P(fake), confidence and Grad-CAM. Thin on purpose.

Start it with `python -m deepfake_detector app --run RUN` (serve.py); Streamlit runs this file
top to bottom on every interaction. The work is in uploads.py; this file only lays it out:
the model is loaded once per process (st.cache_resource), each upload goes through the model once
(its result is kept in the session, keyed by the upload), and moving the target switch or the
opacity slider only re-blends the stored map.
"""
from __future__ import annotations

import argparse
import os
import sys

import streamlit as st
import torch

from deepfake_detector import uploads
from deepfake_detector.inference import load_run

RUN_ENV = "DEEPFAKE_DETECTOR_RUN"  # where tests (and anyone) may name the run instead of --run


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


def banners(card: dict, where) -> None:
    if card["random_init"]:
        where.error("**RANDOM INIT — NOT IMAGENET-PRETRAINED.** This model's backbone never saw "
                    "ImageNet; its verdicts show how the app works, not whether an image is "
                    "fake. (Why: see *Weights note* in the model card.)")
    if card["synthetic"]:
        where.error("**SYNTHETIC DATA.** This model was trained on the generated demo set "
                    f"({card['synthetic'].get('raw_dir')}), not on photographs or real "
                    "deepfakes: its scores say nothing about real images.")


def fmt(value, digits: int = 3) -> str:
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def sidebar(card: dict) -> None:
    side = st.sidebar
    side.header("Model card")
    banners(card, side)
    weights = card["weights"]
    side.markdown(f"**Run** `{card['run_dir']}`  \n"
                  f"**Weights** {weights.get('weights', '?')} "
                  f"({'pretrained' if weights.get('pretrained') else 'random init'})  \n"
                  f"**Threshold** {card['threshold']:.3f}, {card['threshold_source']}  \n"
                  f"**Image size** {card['img_size']} x {card['img_size']} px  \n"
                  f"**Trained** {card['trained_at'] or 'unknown'}"
                  + (f", best epoch {card['best_epoch']}" if card["best_epoch"] else ""))
    if weights.get("note"):
        side.expander("Weights note").write(weights["note"])
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


def show(result: uploads.ExplainedUpload, key: str) -> None:
    st.subheader(result.name)
    if not result.ok:
        st.error(result.error)
        return
    for note in result.notes:
        st.info(note)
    verdict = result.verdict.upper()
    st.markdown(f"**Verdict: {verdict}** (P(fake) {'≥' if result.verdict == 'fake' else '<'} "
                f"threshold {result.threshold:.3f})  \n"
                f"**P(fake) = {result.probability:.3f}**  \n"
                f"Confidence: **{result.band}**")
    controls, _ = st.columns([2, 1])
    target = controls.radio("Grad-CAM explains", uploads.TARGETS, horizontal=True,
                            index=uploads.TARGETS.index(result.verdict), key=f"target-{key}",
                            help="The predicted class is chosen first; switch to see the "
                                 "evidence for the other.")
    opacity = controls.slider("Heat-map opacity", 0.0, 1.0, 0.5, 0.05, key=f"opacity-{key}")
    left, right = st.columns(2)
    width, height = result.original_size
    # PNG bytes made by us (encoded once, or quickly): st.image would re-encode a picture on
    # every rerun, and a switch of target is a rerun.
    # Both as wide as their column: side by side at one scale, small images enlarged to be seen.
    left.image(result.preview_png, width="stretch", alt=f"{result.name}: the uploaded image",
               caption=f"uploaded: {width} x {height} px")
    right.image(uploads.png_bytes(uploads.overlay_image(result, target, opacity, preview=True)),
                width="stretch",
                alt=f"{result.name}: Grad-CAM overlay, target {target}",
                caption=f"Grad-CAM: where the model saw evidence for “{target}”")
    left_button, right_button = st.columns(2)
    left_button.download_button(
        "Download overlay (PNG)", data=lambda: uploads.overlay_png(result, target, opacity),
        file_name=uploads.overlay_file_name(result, target), mime="image/png",
        key=f"overlay-{key}", on_click="ignore")
    right_button.download_button(
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
    banners(card, st)
    st.markdown(
        f"Upload one image or several. Each gets a **verdict** at the threshold this run chose on "
        f"its validation split (**{card['threshold']:.3f}**: fake when P(fake) is at least that), "
        f"**P(fake)**, a **confidence** band ({uploads.band_edges_text()}) and a **Grad-CAM** map "
        f"of where the model saw the evidence. The model sees each image resized to "
        f"{card['img_size']} x {card['img_size']} px.")
    st.caption(f"Up to {uploads.MAX_UPLOAD_MB} MB and {uploads.MAX_PIXELS / 1e6:g} megapixels per "
               "file. Uploads stay in this server's memory, are never written to disk, and are "
               "forgotten when you remove them or close the page. The app makes no network call.")
    files = st.file_uploader("Images (JPEG, PNG, WebP, BMP, TIFF, GIF)", type=uploads.UPLOAD_TYPES,
                             accept_multiple_files=True, max_upload_size=uploads.MAX_UPLOAD_MB,
                             key="uploads") or []

    # One pass for the files not seen before in this session, all of them in one batch.
    explained = st.session_state.setdefault("explained", {})
    new = [f for f in files if f.file_id not in explained]
    if new:
        with st.spinner(f"Looking at {len(new)} image(s) ..."):
            results = uploads.explain_uploads(model, checkpoint, [(f.name, f.getvalue()) for f in new])
        explained.update({f.file_id: r for f, r in zip(new, results)})
    for gone in set(explained) - {f.file_id for f in files}:
        del explained[gone]
    for f in files:
        st.divider()
        show(explained[f.file_id], f.file_id)


main()
