"""Screenshots of the notebook's widgets in JupyterLab, as a user sees them after Run All.

    .venv/bin/python tests/notebook_screenshots.py --out docs [-p NAME VALUE ...]

A copy of the notebook runs in a scratch project under outputs/ (an empty dataset_raw/: the
synthetic set; never this checkout's data/ or the committed notebook): JupyterLab on 127.0.0.1
(a free port, no token), Debian's headless Chromium driven by selenium (the browser's and the
driver's paths given, so nothing is downloaded; as tests/test_app_browser.py does), Run > Run All
Cells through JupyterLab's own command, on a 1280 x 900 screen. Then one PNG per widget into
--out: notebook-browser-widget.png (the image browser), notebook-upload-widget.png (the upload
box, after a validation fake is uploaded) and notebook-threshold-widget.png (the slider). `-p`
sets parameters in the copy (e.g. `-p SYNTHETIC_N_PER_CLASS 60` for a quicker run); none: the
defaults, offline or not. JupyterLab's autosave leaves the executed copy beside the project.
The server is stopped by its pid at the end, whatever happened.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import nbformat

PROJECT_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_app_browser import chromium, free_port, on_screen, stop, why_no_browser  # noqa: E402

NOTEBOOK = PROJECT_ROOT / "notebooks" / "deepfake_detector.ipynb"
QUIET_LAB = {  # no news or update toasts over the screenshots
    "@jupyterlab/apputils-extension/notification.jupyterlab-settings":
        {"fetchNews": "false", "checkForUpdates": False}}


def scratch_project(root: Path, parameters: dict) -> Path:
    """root/project: an empty dataset_raw/ and the notebook, its parameters set (as literals)."""
    project = root / "project"
    (project / "dataset_raw").mkdir(parents=True)
    (project / "notebooks").mkdir()
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    cell = next(c for c in notebook.cells if "parameters" in c.metadata.get("tags", []))
    for name, value in parameters.items():
        lines = cell.source.splitlines()
        index = next(i for i, line in enumerate(lines) if line.startswith(f"{name} = "))
        lines[index] = f"{name} = {value}  # set by tests/notebook_screenshots.py"
        cell.source = "\n".join(lines)
    nbformat.write(notebook, project / "notebooks" / NOTEBOOK.name)
    return project


def start_lab(project: Path, root: Path) -> tuple[subprocess.Popen, str]:
    settings = root / "lab-settings"
    for name, values in QUIET_LAB.items():
        path = settings / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(values))
    port = free_port()
    env = {**os.environ, "JUPYTERLAB_SETTINGS_DIR": str(settings),
           "JUPYTERLAB_WORKSPACES_DIR": str(root / "lab-workspaces"),
           "JUPYTER_RUNTIME_DIR": str(root / "jupyter-runtime")}  # nothing written into ~
    env.pop("MPLBACKEND", None)
    log = open(root / "lab.log", "w")
    process = subprocess.Popen(
        [sys.executable, "-m", "jupyterlab", f"--config={PROJECT_ROOT / 'jupyter_lab_config.py'}",
         "--no-browser", "--ServerApp.ip=127.0.0.1",  # the config: `make lab`'s kernel sockets
         f"--ServerApp.port={port}", "--IdentityProvider.token=", "--ServerApp.password=",
         f"--ServerApp.root_dir={project}", "--LabApp.expose_app_in_browser=True",
         "--ServerApp.terminals_enabled=False"] + (["--allow-root"] if os.geteuid() == 0 else []),
        stdout=log, stderr=subprocess.STDOUT, cwd=project, env=env)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"JupyterLab exited: {(root / 'lab.log').read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(f"{url}/api/status", timeout=2):
                return process, url
        except OSError:
            time.sleep(0.5)
    raise RuntimeError(f"JupyterLab did not answer at {url}")


RUNNING = """
const panel = window.jupyterapp && window.jupyterapp.shell.currentWidget;
if (!panel || !panel.content || !panel.sessionContext || !panel.sessionContext.session) return "starting";
const kernel = panel.sessionContext.session.kernel;
const cells = panel.content.widgets.filter(c => c.model.type === "code");
const busy = cells.some(c => c.promptNode && c.promptNode.textContent.includes("*"));
const done = cells.every(c => c.model.executionCount !== null);
return kernel.status + (busy ? " busy" : "") + (done ? " done" : "");
"""


def run_all(driver, url: str, timeout: float) -> None:
    from selenium.webdriver.support.ui import WebDriverWait
    driver.get(f"{url}/lab/tree/notebooks/{NOTEBOOK.name}")
    wait = WebDriverWait(driver, 120, poll_frequency=1)
    wait.until(lambda d: d.execute_script(RUNNING).startswith("idle"))
    driver.execute_script("window.jupyterapp.commands.execute('application:toggle-left-area')")
    driver.execute_script("window.jupyterapp.commands.execute('notebook:run-all-cells')")
    WebDriverWait(driver, timeout, poll_frequency=2).until(
        lambda d: d.execute_script(RUNNING) == "idle done")
    errors = driver.execute_script(
        "return [...document.querySelectorAll('[data-mime-type=\"application/vnd.jupyter.error\"]')]"
        ".map(e => e.textContent.slice(0, 300))")
    if errors:
        raise RuntimeError(f"Run All ended in an error: {errors}")


def output_of(driver, text: str):
    """The output area of the cell whose widget shows `text` (scrolled into view)."""
    from selenium.webdriver.common.by import By
    found = driver.find_element(
        By.XPATH, f"//div[contains(@class, 'jp-OutputArea-output')][.//*[contains(text(), {text!r})]]")
    driver.execute_script("arguments[0].scrollIntoView({block: 'center'})", found)
    time.sleep(1)
    return found


def pictures_loaded(element) -> bool:
    from selenium.webdriver.common.by import By
    images = element.find_elements(By.TAG_NAME, "img")
    return bool(images) and all(element.parent.execute_script(
        "return arguments[0].complete && arguments[0].naturalWidth > 0", image) for image in images)


UPLOAD = """
import datetime as _time, pathlib as _path
_bytes = _path.Path({path!r}).read_bytes()
upload.upload.value = ({{"name": _path.Path({path!r}).name, "type": "image/png", "size": len(_bytes),
                        "content": memoryview(_bytes),
                        "last_modified": _time.datetime.now(_time.timezone.utc)}},)
"""


def shoot(driver, out: Path, project: Path) -> list[Path]:
    from selenium.webdriver.support.ui import WebDriverWait
    wait = WebDriverWait(driver, 60)
    shots = []
    browser = output_of(driver, "Validation images by outcome")
    wait.until(lambda d: pictures_loaded(browser))
    shots.append(out / "notebook-browser-widget.png")
    browser.screenshot(str(shots[-1]))

    upload = output_of(driver, "Upload an image")
    fake = sorted((project / "data" / "synthetic" / "split" / "val" / "fake").glob("*.png"))[0]
    # ipywidgets 8 keeps the file chooser out of the page (it opens a system dialog), so the file
    # arrives as the browser would send it: the widget's value, set in the kernel.
    driver.execute_script(
        "window.jupyterapp.shell.currentWidget.sessionContext.session.kernel"
        ".requestExecute({code: arguments[0], silent: true, store_history: false})",
        UPLOAD.format(path=str(fake.resolve())))
    wait.until(lambda d: pictures_loaded(upload) and "P(fake)" in upload.text)
    time.sleep(1)
    shots.append(out / "notebook-upload-widget.png")
    upload.screenshot(str(shots[-1]))

    slider = output_of(driver, "Numbers on the")
    wait.until(lambda d: pictures_loaded(slider))
    shots.append(out / "notebook-threshold-widget.png")
    slider.screenshot(str(shots[-1]))
    return shots


def look_around(driver, folder: Path) -> None:
    """For the person checking: the training cell's output (its progress bars) and the
    evaluation figures, as shown, into `folder` (beside the executed copy, not docs/)."""
    from selenium.webdriver.common.by import By
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in (("training", "training took"), ("evaluation", "At the run's threshold")):
        found = output_of(driver, text)
        cell = found.find_element(By.XPATH, "ancestor::div[contains(@class, 'jp-Cell-outputWrapper')]")
        cell.screenshot(str(folder / f"{name}.png"))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=PROJECT_ROOT / "docs", help="where the PNGs go")
    parser.add_argument("-p", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"),
                        help="a parameter of the notebook's copy (a Python literal)")
    parser.add_argument("--timeout", type=float, default=1200, help="seconds for Run All")
    args = parser.parse_args(argv)
    if why_no_browser():
        print(f"no screenshots: {why_no_browser()}")
        return 1
    root = PROJECT_ROOT / "outputs" / f"notebook-screens-{time.strftime('%Y%m%d-%H%M%S')}"
    project = scratch_project(root, dict(args.p))
    server, url = start_lab(project, root)
    driver = None
    try:
        driver = chromium(Path(tempfile.mkdtemp(prefix="chromium-")), window_size="1280,900")
        on_screen(driver)
        started = time.monotonic()
        run_all(driver, url, args.timeout)
        print(f"Run All in JupyterLab: {time.monotonic() - started:.0f} s")
        args.out.mkdir(parents=True, exist_ok=True)
        for shot in shoot(driver, args.out, project):
            print(f"wrote {shot}")
        look_around(driver, root / "views")
        driver.execute_script("window.jupyterapp.commands.execute('docmanager:save')")
        time.sleep(2)
    finally:
        if driver is not None:
            driver.quit()
        stop(server)
    print(f"executed copy: {project / 'notebooks' / NOTEBOOK.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
