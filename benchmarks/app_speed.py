"""How fast does the app answer? A 1-megapixel upload, timed in the page and in the process.

    python benchmarks/app_speed.py                          # throwaway 224 px run, 5 uploads each
    python benchmarks/app_speed.py --run outputs/runs/r1    # your run
    python benchmarks/app_speed.py --screenshot docs/app.png

Figures, side by side from one run:
  page, upload -> answer   the user's wait in headless Chromium: from handing the file to the
                           page's file input until P(fake) is on the page and the overlay
                           picture has loaded (upload over HTTP, script run, pictures fetched)
  page, switch target      from clicking the other target until its overlay has loaded
  server CPU s per upload  CPU time (user + system) the server process spent on one upload: what
                           the page costs the server whatever else the machine is doing
  explain_uploads          the process's share: decode, one forward+backward pass, keep copies
  overlay (preview)        re-blending the map at another target/opacity, as a switch does
  overlay PNG (download)   what the download button computes when clicked
Each upload is a new image (so nothing is cached but the model, as for a user); the page is
reloaded before each, so every upload starts a fresh session. Target: page answer <= 2 s.
The page times are taken inside the page (performance.now), not by polling from selenium.
Needs Streamlit, selenium and Debian's chromium + chromium-driver.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run from a checkout without install

from deepfake_detector.huge_pages import prefer_huge_pages  # noqa: E402
from deepfake_detector import uploads  # noqa: E402
from deepfake_detector.demo_data import make_fake, make_real  # noqa: E402
from deepfake_detector.run_dir import load_run  # noqa: E402

prefer_huge_pages()  # as the app, started by the command line, runs


def photo_like(index: int, side: int) -> np.ndarray:
    """A side x side image with natural statistics (and a manipulated region on odd indices)."""
    rng = np.random.default_rng([7, index])
    image = make_real(rng, side)
    return make_fake(image, rng)[0] if index % 2 else image


def encoded(array: np.ndarray, fmt: str) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format=fmt, **({"quality": 90} if fmt == "JPEG" else {}))
    return buffer.getvalue()


def throwaway_run(folder: Path, img_size: int) -> Path:
    """A random-init run at img_size on a small synthetic set: speed does not depend on weights."""
    from deepfake_detector.demo_data import generate_demo_data
    from deepfake_detector.split import split_dataset
    from deepfake_detector.train import TrainConfig, train
    raw = generate_demo_data(folder / "raw", n_per_class=16, image_size=64, seed=0)
    split_dataset(raw, folder / "split", seed=0)
    return train(TrainConfig(data_dir=str(folder / "split"), out_dir=str(folder / "run"),
                             weights="none", img_size=img_size, epochs=20, lr=3e-3,
                             cache_dir="", num_workers=0), log_to_console=False)


def timed(function, repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return times


def in_process(run_dir: Path, files: list[Path], repeats: int) -> dict:
    model, checkpoint = load_run(run_dir)
    uploads.explain_uploads(model, checkpoint, [(files[0].name, files[0].read_bytes())])  # warm
    explain = []
    for path in files[:repeats]:
        data = path.read_bytes()
        start = time.perf_counter()
        [result] = uploads.explain_uploads(model, checkpoint, [(path.name, data)])
        explain.append(time.perf_counter() - start)
    return {
        "explain_uploads": explain,
        "overlay (preview)": timed(lambda: uploads.overlay_image(result, "real", 0.7, preview=True),
                                   repeats),
        "overlay PNG (download)": timed(lambda: uploads.overlay_png(result, "real", 0.7), repeats),
    }


# Timed inside the page: performance.now() when the file is handed over, and again when a check
# every 5 ms (in the page, not a WebDriver round trip) finds the overlay loaded and P(fake) shown.
# Polling from selenium instead costs a round trip per look and competes for the same 2 cores.
WATCH = """
const [altPart, needText, action] = arguments;
window.__t0 = performance.now(); window.__done = null;
const check = () => {
  const img = [...document.querySelectorAll(`img[alt*='${altPart}']`)]
    .find(i => i.complete && i.naturalWidth > 0);
  if (img && (!needText || document.body.innerText.includes(needText))) {
    window.__done = performance.now();
  } else { setTimeout(check, 5); }
};
if (action) { action.click(); }
setTimeout(check, 5);
"""


def page_time(driver, wait, alt_part: str, need_text: str = "", click=None, file_path=None):
    """Seconds from handing over the file (or clicking) until the overlay is there."""
    from test_app_browser import upload
    driver.execute_script(WATCH, alt_part, need_text, click)
    if file_path is not None:
        upload(driver, file_path)
    done = wait.until(lambda d: d.execute_script("return window.__done"))
    return (done - driver.execute_script("return window.__t0")) / 1000


def cpu_seconds(pid: int) -> float:
    """user + system CPU time of a process so far (Linux), or NaN."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return float("nan")


def radio_label(driver, target: str):
    from selenium.webdriver.common.by import By
    return driver.find_element(
        By.XPATH, f"//div[@role='radiogroup']//label[.//*[normalize-space()='{target}']]")


def in_browser(run_dir: Path, files: list[Path], repeats: int, folder: Path,
               screenshot: Path | None) -> dict:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait
    from test_app_browser import chromium, loaded_image, start_app, stop
    process, url, _ = start_app(run_dir, folder)
    driver = chromium(folder / "chromium-profile")
    answers, switches, server_cpu = [], [], []
    try:
        wait = WebDriverWait(driver, 120, poll_frequency=0.1)
        for i, path in enumerate([files[0]] + files[:repeats]):  # the first one warms up
            driver.get(url)
            wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "input[type='file']"))
            cpu = cpu_seconds(process.pid)
            answer = page_time(driver, wait, "Grad-CAM overlay", "P(fake) =", file_path=path)
            cpu = cpu_seconds(process.pid) - cpu
            shown = loaded_image(driver, "overlay").get_attribute("alt").rsplit(" ", 1)[-1]
            other = "real" if shown == "fake" else "fake"
            switch = page_time(driver, wait, f"target {other}", click=radio_label(driver, other))
            if i:
                answers.append(answer)
                switches.append(switch)
                server_cpu.append(cpu)
            elif screenshot is not None:
                page_time(driver, wait, f"target {shown}", click=radio_label(driver, shown))
                time.sleep(0.5)
                screenshot.parent.mkdir(parents=True, exist_ok=True)
                driver.save_screenshot(str(screenshot))
    finally:
        driver.quit()
        stop(process)
    return {"page, upload -> answer": answers, "page, switch target": switches,
            "server CPU s per upload": server_cpu}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", default=None, help="default: a throwaway random-init run")
    parser.add_argument("--img-size", type=int, default=224, help="of the throwaway run")
    parser.add_argument("--side", type=int, default=1000, help="uploads are side x side pixels")
    parser.add_argument("--format", default="JPEG", choices=["JPEG", "PNG"])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads, here and in the server (default: the app's own "
                             "choice, uploads.interactive_cpu_threads)")
    parser.add_argument("--skip-browser", action="store_true")
    parser.add_argument("--screenshot", default=None, help="PNG of the page after an upload")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    if args.threads:  # the server reads it too (and the app then leaves its threads alone)
        os.environ["OMP_NUM_THREADS"] = str(args.threads)
    torch.set_num_threads(args.threads or uploads.interactive_cpu_threads())

    with tempfile.TemporaryDirectory(prefix="app_speed-") as tmp:
        folder = Path(tmp)
        threads = torch.get_num_threads()
        torch.set_num_threads(os.cpu_count() or 1)  # training the throwaway run: all cores
        run_dir = Path(args.run) if args.run else throwaway_run(folder / "demo", args.img_size)
        torch.set_num_threads(threads)
        suffix = ".jpg" if args.format == "JPEG" else ".png"
        files = []
        for i in range(args.repeats + 1):
            path = folder / f"upload_{i}{suffix}"
            path.write_bytes(encoded(photo_like(i, args.side), args.format))
            files.append(path)
        figures = in_process(run_dir, files, args.repeats)
        from test_app_browser import why_no_browser
        no_browser = why_no_browser()
        if no_browser and not args.skip_browser:
            print(f"page times left out: {no_browser}")
        if not args.skip_browser and not no_browser:
            figures.update(in_browser(run_dir, files, args.repeats, folder,
                                      Path(args.screenshot) if args.screenshot else None))
        _, checkpoint = load_run(run_dir, device="cpu")
        size_mb = statistics.mean(f.stat().st_size for f in files) / 1e6

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"\napp speed: {args.side} x {args.side} px {args.format} uploads "
          f"({args.side ** 2 / 1e6:.1f} MP, ~{size_mb:.1f} MB), model input "
          f"{checkpoint['img_size']} px, device {'cuda' if torch.cuda.is_available() else 'cpu'}, "
          f"{os.cpu_count()} cores (load average {load:.1f} at the end), torch threads "
          f"{torch.get_num_threads()}, {args.repeats} each")
    print(f"{'':28s}{'median s':>10s}{'min s':>10s}{'max s':>10s}")
    for name, values in figures.items():
        print(f"{name:28s}{statistics.median(values):10.3f}{min(values):10.3f}{max(values):10.3f}")
    answers = figures.get("page, upload -> answer")
    if answers:
        print(f"target: page answer within 2 s -> median {statistics.median(answers):.2f} s, "
              f"worst {max(answers):.2f} s: {'met' if max(answers) <= 2 else 'NOT met'}")
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
