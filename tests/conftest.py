"""Shared fixtures: a tiny, instantly learnable raw dataset, and its split.

Real images are smooth noise; fakes carry a strong checkerboard, the crudest up-sampling artefact.
Even a randomly initialised frozen ResNet-18 separates them, so tests can train in seconds.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

# Under pytest-xdist (`make test` runs two workers, one per core) each worker computes on one
# thread: two threads each would only wait for each other.
IN_XDIST_WORKER = "PYTEST_XDIST_WORKER" in os.environ
torch.set_num_threads(1 if IN_XDIST_WORKER else max(1, min(2, os.cpu_count() or 1)))

# The CIFAKE sample beside the checkout, or the folder (holding real/ and fake/) that the
# environment variable DEEPFAKE_DETECTOR_CIFAKE_DIR names (as the benchmarks read it).
CIFAKE_BESIDE = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifake-dev"
CIFAKE_DIR = Path(os.environ.get("DEEPFAKE_DETECTOR_CIFAKE_DIR") or CIFAKE_BESIDE).expanduser()


def smooth_noise(rng: np.random.Generator, size: int) -> np.ndarray:
    coarse = rng.uniform(40, 215, (size // 8 + 1, size // 8 + 1, 3))
    image = np.kron(coarse, np.ones((8, 8, 1)))[:size, :size]
    return image + rng.normal(0, 4, image.shape)


def checkerboard_fake(rng: np.random.Generator, size: int) -> np.ndarray:
    pattern = (np.indices((size, size)).sum(0) % 2)[..., None] * 60 - 30
    return smooth_noise(rng, size) + pattern


def write_images(folder: Path, arrays, prefix: str) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, array in enumerate(arrays):
        path = folder / f"{prefix} ({i}).png"
        Image.fromarray(np.clip(array, 0, 255).astype(np.uint8)).save(path)
        paths.append(path)
    return paths


def make_raw_dataset(root: Path, n_real: int = 30, n_fake: int = 30, size: int = 32,
                     seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    write_images(root / "real", [smooth_noise(rng, size) for _ in range(n_real)], "real")
    write_images(root / "fake", [checkerboard_fake(rng, size) for _ in range(n_fake)], "fake")
    return root


@pytest.fixture
def raw_dataset(tmp_path) -> Path:
    return make_raw_dataset(tmp_path / "dataset_raw")


def make_split(root: Path, n_per_class: int) -> Path:
    """root/raw with n_per_class images per class, split 80/20 (seed 0) into root/data."""
    from deepfake_detector.split import split_dataset
    raw = make_raw_dataset(root / "raw", n_real=n_per_class, n_fake=n_per_class)
    split_dataset(raw, root / "data", seed=0)
    return root / "data"


@pytest.fixture(scope="session")
def split_data(tmp_path_factory) -> Path:
    """A split of 40 real + 40 fake images (32 + 32 train, 8 + 8 val), shared by read-only tests."""
    return make_split(tmp_path_factory.mktemp("split"), 40)


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory, split_data) -> Path:
    """One small trained run (random init, 32 px), shared by the tests that only read it. The
    toy classes are linearly separable, so the val loss falls by more than min_delta an epoch for
    hundreds of epochs at the default rate; at 1e-2 early stopping ends training in seconds."""
    from deepfake_detector.train import TrainConfig, train
    out = tmp_path_factory.mktemp("runs") / "run"
    config = TrainConfig(data_dir=str(split_data), out_dir=str(out), weights="none", img_size=32,
                         lr=1e-2, cache_dir="", num_workers=0)
    return train(config, log_to_console=False)


@pytest.fixture
def run_to_change(trained_run, tmp_path) -> Path:
    """A copy of the shared trained run, at tmp_path / "run", for a test that writes into it or
    replaces it: copying takes milliseconds, training seconds."""
    return Path(shutil.copytree(trained_run, tmp_path / "run", symlinks=True))


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory) -> Path:
    """A small run on the synthetic demo set (random init, 32 px): the SYNTHETIC DATA case."""
    from deepfake_detector.demo_data import generate_demo_data
    from deepfake_detector.split import split_dataset
    from deepfake_detector.train import TrainConfig, train
    root = tmp_path_factory.mktemp("demo")
    raw = generate_demo_data(root / "raw", n_per_class=16, image_size=32, seed=0)
    split_dataset(raw, root / "split", seed=0)
    config = TrainConfig(data_dir=str(root / "split"), out_dir=str(root / "run"), weights="none",
                         img_size=32, epochs=30, lr=1e-2, patience=5, cache_dir="", num_workers=0)
    return train(config, log_to_console=False)


def watch_file_writes(monkeypatch) -> list:
    """From now on, every file opened for writing (open, io.open, os.open) is appended to the
    returned list: the tests that check uploads never touch the disk."""
    import builtins
    import io
    writes = []
    real_open, real_os_open = builtins.open, os.open

    def watching_open(file, mode="r", *args, **kwargs):
        if any(flag in mode for flag in "wax+"):
            writes.append(file)
        return real_open(file, mode, *args, **kwargs)

    def watching_os_open(path, flags, *args, **kwargs):
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
            writes.append(path)
        return real_os_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", watching_open)
    monkeypatch.setattr(io, "open", watching_open)
    monkeypatch.setattr(os, "open", watching_os_open)
    return writes


# --- the notebook: executed once per session, in the background -----------------------------------

NOTEBOOK_RUN_SCRIPT = Path(__file__).with_name("notebook_run_twice.py")
NOTEBOOK_RUN_TIMEOUT = 1800  # seconds in all; each cell has its own timeout of 600 s as well
_notebook_run = {}  # the one background execution of this session: its process and folder


def start_notebook_run() -> dict:
    """Start notebook_run_twice.py in a process of its own (once per session)."""
    if not _notebook_run:
        root = Path(tempfile.mkdtemp(prefix="notebook-run-twice-"))
        log = open(root / "log.txt", "wb")
        process = subprocess.Popen([sys.executable, str(NOTEBOOK_RUN_SCRIPT), str(root)],
                                   stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        _notebook_run.update(root=root, log=log, process=process)
    return _notebook_run


def pytest_collection_finish(session):
    """As soon as the tests are known, start the shared notebook execution if one of them needs
    it: its kernel computes on about one core for a minute, while the tests before
    test_notebook.py run beside it (on two cores, the suite alone leaves one mostly idle)."""
    if session.config.option.collectonly:
        return
    if IN_XDIST_WORKER:  # every worker collects every test: the one that runs test_notebook.py
        return           # starts the execution when its first test asks for it (--dist loadfile)
    if any("notebook_run_twice" in getattr(item, "fixturenames", ()) for item in session.items):
        start_notebook_run()


def pytest_sessionfinish(session):
    """Stop the notebook execution if no test waited for it (an interrupted or -x session), and
    remove its files when it succeeded (a failed one is kept, and its folder named)."""
    if not _notebook_run:
        return
    process = _notebook_run["process"]
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    _notebook_run["log"].close()
    if process.returncode == 0:
        shutil.rmtree(_notebook_run["root"], ignore_errors=True)


@pytest.fixture(scope="session")
def notebook_run_twice() -> SimpleNamespace:
    """The notebook executed once for the whole session (see notebook_run_twice.py): the notebook
    after the first pass, the second and the re-run with VAL_FRACTION = 0.5 (`first`, `second`,
    `changed`), what the kernel said (`first_run`, `n_images_after_change`), the project as the
    last step left it (`project`, its output folder `out`) and as the first pass left it
    (`one_pass`). Read-only: every test that uses it reads the same files."""
    import nbformat
    run = start_notebook_run()  # already running since the collection, unless that was skipped
    process, root = run["process"], run["root"]
    try:
        process.wait(timeout=NOTEBOOK_RUN_TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        pytest.fail(f"the shared notebook execution did not end in {NOTEBOOK_RUN_TIMEOUT} s: "
                    f"{root}")
    if process.returncode != 0:
        log = (root / "log.txt").read_text(encoding="utf-8", errors="replace")
        pytest.fail(f"the shared notebook execution failed (exit code {process.returncode}); its "
                    f"files are in {root}:\n{log[-5000:]}")
    project = root / "project"
    return SimpleNamespace(
        project=project, out=project / "outputs" / "nb", one_pass=root / "one-pass" / "project",
        **{name: nbformat.read(root / f"{name}.ipynb", as_version=4)
           for name in ("first", "second", "changed")},
        **json.loads((root / "seen.json").read_text(encoding="utf-8")))
