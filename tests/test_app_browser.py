"""The app end to end in a real browser: `python -m deepfake_detector app` on a free localhost port,
Debian's headless Chromium driven by selenium (given the browser's and the driver's paths, so
nothing is downloaded). Skips, saying why, where Chromium, its driver or selenium is missing;
CI installs them (.ci/run).

The screenshots in docs/ come from the same steps, on a 1280 x 900 screen:

    .venv/bin/python tests/test_app_browser.py --run outputs/app-demo/run --out docs

(docs/app.png: one ordinary result; docs/app-unlike-training.png: an image far from the training
size and noise, each marked UNSURE — NOT LIKE THE TRAINING DATA.)
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from deepfake_detector.demo_data import make_fake_example

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                  "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync")


def why_no_browser() -> str | None:
    missing = [f"{what} ({path})" for what, path in (("chromium", CHROMIUM),
                                                       ("chromedriver", CHROMEDRIVER))
               if not os.access(path, os.X_OK)]
    if missing:
        return (f"no {' and no '.join(missing)}: install Debian's chromium and chromium-driver "
                "(apt-get install chromium chromium-driver; .ci/run does it in CI)")
    for module, extra in (("selenium", "test"), ("streamlit", "app")):
        try:
            __import__(module)
        except ImportError:
            return f"{module} is not installed (pip install -e '.[{extra}]')"
    return None


pytestmark = [pytest.mark.slow, pytest.mark.skipif(why_no_browser() is not None,
                                                   reason=str(why_no_browser()))]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until_serving(url: str, process: subprocess.Popen, log: Path, timeout: float = 90):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"the app exited with {process.returncode}:\n{log.read_text()}")
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.3)
    pytest.fail(f"the app did not answer at {url} within {timeout} s:\n{log.read_text()}")


def start_app(run_dir: Path, folder: Path) -> tuple[subprocess.Popen, str, Path]:
    """The command a user types, on a free port; its pid is the server's (the command execs)."""
    port, log = free_port(), folder / "app.log"
    with open(log, "w") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "deepfake_detector", "app", "--run", str(run_dir),
             "--port", str(port)], stdout=out, stderr=subprocess.STDOUT, cwd=folder)
    url = f"http://127.0.0.1:{port}"
    wait_until_serving(url, process, log)
    return process, url, log


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        os.kill(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.kill(process.pid, signal.SIGKILL)
            process.wait(timeout=10)


def chromium(user_data_dir: Path, window_size: str = "1400,1600"):
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service
    options = Options()
    options.binary_location = CHROMIUM
    for flag in (*CHROMIUM_FLAGS, f"--window-size={window_size}",
                 f"--user-data-dir={user_data_dir}"):
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)


def body_text(driver) -> str:
    from selenium.webdriver.common.by import By
    return driver.find_element(By.TAG_NAME, "body").text


def loaded_image(driver, alt_part: str):
    """The <img> whose alt text contains alt_part, once its picture has arrived, else False."""
    from selenium.webdriver.common.by import By
    for image in driver.find_elements(By.CSS_SELECTOR, f"img[alt*='{alt_part}']"):
        if driver.execute_script("return arguments[0].complete && arguments[0].naturalWidth > 0",
                                 image):
            return image
    return False


def upload(driver, path: Path) -> None:
    from selenium.webdriver.common.by import By
    chooser = driver.find_element(By.CSS_SELECTOR, "input[type='file']")
    # chromedriver adds to what a multiple-file input already holds: without this, the files
    # sent before would be uploaded again with this one.
    driver.execute_script("arguments[0].value = ''", chooser)
    chooser.send_keys(str(Path(path).resolve()))  # chromedriver takes absolute paths only


SCREEN = (1280, 900)  # a laptop's browser window: the first result's verdict must fit in it


def on_screen(driver, size: tuple[int, int] = SCREEN) -> None:
    """The page's viewport exactly width x height CSS pixels (a headless window's size includes
    no toolbars, but --window-size and the viewport differ by version: this is exact)."""
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", {
        "width": size[0], "height": size[1], "deviceScaleFactor": 1, "mobile": False})


def verdict_cards(driver) -> list:
    from selenium.webdriver.common.by import By
    return driver.find_elements(By.CSS_SELECTOR, ".verdict-card")


def wait_for_cards(wait, n: int) -> list:
    """The n verdict cards once they are all there and every overlay picture has loaded."""
    from selenium.webdriver.common.by import By

    def ready(driver):
        cards = verdict_cards(driver)
        overlays = driver.find_elements(By.CSS_SELECTOR, "img[alt*='Grad-CAM overlay']")
        loaded = all(driver.execute_script(
            "return arguments[0].complete && arguments[0].naturalWidth > 0", image)
            for image in overlays)
        return cards if len(cards) == n and len(overlays) == n and loaded else False
    return wait.until(ready)


def fully_visible(driver, element) -> bool:
    """Within the viewport without scrolling (Streamlit scrolls its main section, not the body:
    the rectangle is relative to the viewport either way)."""
    top, bottom, height = driver.execute_script(
        "const r = arguments[0].getBoundingClientRect(); "
        "return [r.top, r.bottom, window.innerHeight]", element)
    return 0 <= top and bottom <= height


def photo_like(path: Path, size: tuple[int, int] = (3000, 2000)) -> Path:
    """A large photo-like JPEG (smooth colours, a soft disc, fine grain), made small and
    enlarged (cheap): by its size alone far from any 32 px training set."""
    width, height = size[0] // 4, size[1] // 4
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    image = np.stack([90 + 80 * y / height, 120 + 60 * np.sin(x / 60), 200 - 90 * y / height], -1)
    disc = np.clip(1 - np.hypot(x - width / 3, y - height / 2) / (height / 3), 0, 1)[..., None]
    image = image * (1 - disc) + np.float32([200, 60, 40]) * disc
    picture = Image.fromarray(np.uint8(np.clip(image, 0, 255))).resize(size, Image.BICUBIC)
    grain = np.random.default_rng(1).normal(0, 4, (size[1], size[0], 1)).astype(np.float32)
    pixels = np.uint8(np.clip(np.asarray(picture, np.float32) + grain, 0, 255))
    Image.fromarray(pixels).save(path, quality=90)
    return path


def noise(path: Path, side: int = 32) -> Path:
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (side, side, 3), np.uint8)).save(
        path)
    return path


def glance(driver, url: str, ordinary: Path, unlike: list[Path], shots: Path) -> dict:
    """What a user sees on a 1280 x 900 screen: upload `ordinary`, then the `unlike` files one
    by one; screenshots shots/app.png (the first result) and shots/app-unlike-training.png (the
    last). Returns the cards' texts (newest first), the banners' count, and whether the first
    card was in view without scrolling each time."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait
    on_screen(driver)
    try:
        driver.get(url)
        wait = WebDriverWait(driver, 120)
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "input[type='file']"))
        seen = {"in view": []}
        for n, path in enumerate([ordinary] + unlike, start=1):
            upload(driver, path)
            cards = wait_for_cards(wait, n)
            assert path.name in cards[0].text  # newest first
            seen["in view"].append(fully_visible(driver, cards[0]))
            time.sleep(0.5)  # the last paint
            if n == 1 or n == len(unlike) + 1:
                shots.mkdir(parents=True, exist_ok=True)
                driver.save_screenshot(str(shots / ("app.png" if n == 1 else
                                                    "app-unlike-training.png")))
        seen["cards"] = [card.text for card in verdict_cards(driver)]
        seen["banners"] = body_text(driver).count("RANDOM INIT")
        return seen
    finally:
        driver.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})


@pytest.fixture(scope="module")
def served(trained_run, tmp_path_factory):
    """(server process, url, its log, a headless Chromium): the app on trained_run, started
    once for this module's tests; each test opens the page afresh (a new session, no uploads)."""
    folder = tmp_path_factory.mktemp("app")
    process, url, log = start_app(trained_run, folder)
    driver = None
    try:
        driver = chromium(folder / "chromium-profile")
        yield process, url, log, driver
    finally:
        if driver is not None:
            driver.quit()
        stop(process)


def test_upload_a_fake_then_a_text_file_in_a_real_browser(served, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait
    fake = tmp_path / "suspect_fake.png"
    Image.fromarray(make_fake_example(seed=0, index=1, image_size=128)[1]).save(fake)
    not_an_image = tmp_path / "shopping_list.png"
    not_an_image.write_text("milk, eggs, bread\n")

    process, url, log, driver = served
    cmdline = Path(f"/proc/{process.pid}/cmdline")
    if cmdline.exists():  # exec, not a child: the pid we started is the Streamlit server
        assert b"streamlit" in cmdline.read_bytes()
    assert f"server pid {process.pid}" in log.read_text()
    driver.get(url)
    wait = WebDriverWait(driver, 90)
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "input[type='file']"))
    assert "RANDOM INIT" in body_text(driver)

    upload(driver, fake)
    wait.until(lambda d: "P(fake) =" in body_text(d))
    overlay = wait.until(lambda d: loaded_image(d, "Grad-CAM overlay"))
    assert "suspect_fake.png" in overlay.get_attribute("alt")
    [card] = verdict_cards(driver)
    assert "suspect_fake.png" in card.text and "confidence:" in card.text
    p_fake = float(card.text.split("P(fake) = ")[1].split()[0])
    assert 0.0 <= p_fake <= 1.0

    upload(driver, not_an_image)
    wait.until(lambda d: "shopping_list.png: not an image" in body_text(d))
    assert "P(fake) =" in body_text(driver)  # the first image is still there


def test_at_a_glance_and_images_unlike_the_training_data(served, split_data, tmp_path):
    """On a 1280 x 900 screen: an image like the training data, then noise (flagged by the OOD
    score) and a 3000 x 2000 photo (by its size): each newest result's card is in view without
    scrolling, the flagged ones say UNSURE — NOT LIKE THE TRAINING DATA and never "confident",
    and the banner is on the page once."""
    ordinary = sorted((split_data / "val" / "fake").iterdir())[0]
    unlike = [noise(tmp_path / "noise.png"), photo_like(tmp_path / "holiday_3000x2000.jpg")]
    _, url, _, driver = served
    seen = glance(driver, url, ordinary, unlike, tmp_path / "shots")
    assert seen["in view"] == [True, True, True] and seen["banners"] == 1
    big, noisy, like = seen["cards"]
    for text in (big, noisy):
        assert "UNSURE — NOT LIKE THE TRAINING DATA" in text
        assert "has not seen images like it" in text and "confident" not in text.lower()
    assert "holiday_3000x2000.jpg" in big and "much larger than the training images" in big
    assert "noise.png" in noisy and "OOD score at percentile" in noisy
    assert ordinary.name in like and "NOT LIKE" not in like and "Like the training data" in like
    for shot in ("app.png", "app-unlike-training.png"):
        assert Image.open(tmp_path / "shots" / shot).size == SCREEN


def test_upload_a_short_clip_in_a_real_browser(served, tmp_path):
    """The video uploader (under the images'): a 2-second clip gets its verdict card, the
    timeline and the top frames with Grad-CAM; the page says the copy is deleted."""
    import cv2
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait
    clip = tmp_path / "short_clip.mp4"
    writer = cv2.VideoWriter(str(clip), cv2.VideoWriter_fourcc(*"mp4v"), 4.0, (48, 48))
    for k in range(8):
        writer.write(np.uint8(make_fake_example(seed=0, index=k, image_size=48)[1][..., ::-1]))
    writer.release()
    _, url, _, driver = served
    driver.get(url)
    wait = WebDriverWait(driver, 120)
    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "input[type='file']")) == 2)
    chooser = driver.find_elements(By.CSS_SELECTOR, "input[type='file']")[1]
    chooser.send_keys(str(clip.resolve()))
    [card] = wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, ".video-verdict-card"))
    assert "short_clip.mp4" in card.text and "P(fake) = " in card.text
    assert wait.until(lambda d: loaded_image(d, "Grad-CAM of the frame"))
    assert "deleted as soon as they are read" in body_text(driver)


def main(argv=None) -> None:
    """The screenshots for docs/, from any run (see the module's docstring)."""
    import argparse
    import json
    import tempfile
    parser = argparse.ArgumentParser(description="Screenshots of the app on a 1280 x 900 screen: "
                                     "OUT/app.png and OUT/app-unlike-training.png.")
    parser.add_argument("--run", required=True, help="the run the app serves")
    parser.add_argument("--out", default="docs", help="where the two PNGs go (default: docs)")
    parser.add_argument("--image", default=None,
                        help="the ordinary upload (default: the first fake test image of the "
                             "run's data, else the first fake val image)")
    args = parser.parse_args(argv)
    if why_no_browser():
        sys.exit(f"no screenshots: {why_no_browser()}")
    run = Path(args.run).resolve()
    data = Path(json.loads((run / "config.json").read_text())["data_dir"])
    ordinary = Path(args.image) if args.image else next(
        sorted((data / split / "fake").iterdir())[0] for split in ("test", "val")
        if (data / split / "fake").is_dir())
    with tempfile.TemporaryDirectory(prefix="app-screenshots-") as tmp:
        folder = Path(tmp)
        unlike = [noise(folder / "noise.png", 64), photo_like(folder / "holiday_3000x2000.jpg")]
        process, url, _ = start_app(run, folder)
        driver = None
        try:
            driver = chromium(folder / "chromium-profile")
            seen = glance(driver, url, ordinary, unlike, Path(args.out))
        finally:
            if driver is not None:
                driver.quit()
            stop(process)
    print(json.dumps(seen, indent=1, ensure_ascii=False))


if __name__ == "__main__":
    main()
