"""The app end to end in a real browser: `python -m deepfake_detector app` on a free localhost port,
Debian's headless Chromium driven by selenium (given the browser's and the driver's paths, so
nothing is downloaded). Skips, saying why, where Chromium, its driver or selenium is missing;
CI installs them (.ci/run).
"""
from __future__ import annotations

import io
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
                  "--disable-component-update", "--disable-sync", "--window-size=1400,1600")


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


def chromium(user_data_dir: Path):
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service
    options = Options()
    options.binary_location = CHROMIUM
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={user_data_dir}")
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
    driver.find_element(By.CSS_SELECTOR, "input[type='file']").send_keys(str(path))


def test_upload_a_fake_then_a_text_file_in_a_real_browser(trained_run, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait
    fake = tmp_path / "suspect_fake.png"
    Image.fromarray(make_fake_example(seed=0, index=1, image_size=128)[1]).save(fake)
    not_an_image = tmp_path / "shopping_list.png"
    not_an_image.write_text("milk, eggs, bread\n")

    process, url, log = start_app(trained_run, tmp_path)
    driver = None
    try:
        cmdline = Path(f"/proc/{process.pid}/cmdline")
        if cmdline.exists():  # exec, not a child: the pid we started is the Streamlit server
            assert b"streamlit" in cmdline.read_bytes()
        assert f"server pid {process.pid}" in log.read_text()
        driver = chromium(tmp_path / "chromium-profile")
        driver.get(url)
        wait = WebDriverWait(driver, 90)
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "input[type='file']"))
        assert "RANDOM INIT" in body_text(driver)

        upload(driver, fake)
        wait.until(lambda d: "P(fake) =" in body_text(d))
        overlay = wait.until(lambda d: loaded_image(d, "Grad-CAM overlay"))
        assert "suspect_fake.png" in overlay.get_attribute("alt")
        page = body_text(driver)
        assert "Verdict:" in page and "Confidence:" in page
        p_fake = float(page.split("P(fake) = ")[1].split()[0])
        assert 0.0 <= p_fake <= 1.0

        upload(driver, not_an_image)
        wait.until(lambda d: "shopping_list.png: not an image" in body_text(d))
        assert "P(fake) =" in body_text(driver)  # the first image is still there
    finally:
        if driver is not None:
            driver.quit()
        stop(process)
    assert process.returncode is not None
