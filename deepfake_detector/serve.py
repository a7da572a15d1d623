"""`python -m deepfake_detector app`: check, (with --demo) train the demo run, then become the server.

The command replaces itself with `python -m streamlit run app.py` (os.execve, not Streamlit's
in-process bootstrap), so the pid it prints is the server's: `kill PID` stops the app.
Streamlit is an optional extra (`pip install -e '.[app]'`); without it, one line says so.
"""
from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

from .extras import MissingExtraError

APP_PAGE = Path(__file__).resolve().parent / "app.py"
MIN_STREAMLIT = "1.56"  # the first whose AppTest can drive st.file_uploader (the app's tests)
INSTALL_HINT = f"pip install -e '.[app]'  (or: pip install 'streamlit>={MIN_STREAMLIT}')"
DEMO_RAW = "data/synthetic/raw"    # the same generated set as the notebook's demo
DEMO_ROOT = "outputs/app-demo"     # its split and run for the app


def check_streamlit() -> None:
    if importlib.util.find_spec("streamlit") is None:
        raise MissingExtraError(f"the app needs Streamlit, which is not installed: {INSTALL_HINT}")


def check_run(run_dir: str | os.PathLike) -> Path:
    from .run_dir import CHECKPOINT  # here, not at the top: the command line's help stays light
    run_dir = Path(run_dir)
    if not (run_dir / CHECKPOINT).is_file():
        raise FileNotFoundError(f"No {CHECKPOINT} in {run_dir}: give --run a run directory made "
                                "by `python -m deepfake_detector train` (or use --demo).")
    return run_dir.resolve()


def streamlit_command(run_dir: str | os.PathLike, host: str = "127.0.0.1",
                      port: int = 8501) -> list[str]:
    """argv of the server: localhost unless told otherwise, no usage statistics, no file
    watcher, the upload limit, no browser opened, no deploy button; the run after `--`, for
    app.py."""
    from .uploads import MAX_UPLOAD_MB, MAX_VIDEO_MB  # each uploader has its own, lower or equal
    return [sys.executable, "-m", "streamlit", "run", str(APP_PAGE),
            "--server.address", host, "--server.port", str(port),
            "--server.headless", "true", "--browser.gatherUsageStats", "false",
            "--server.maxUploadSize", str(max(MAX_UPLOAD_MB, MAX_VIDEO_MB)),
            "--server.fileWatcherType", "none",
            "--client.toolbarMode", "minimal",  # no "Deploy" button: this is a local tool
            "--", "--run", str(run_dir)]


def server_environment() -> dict:
    """Our environment, with this package importable from app.py wherever it is installed (or
    not: a checkout run as `python -m deepfake_detector` from its root)."""
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join([root] + [p for p in [env.get("PYTHONPATH")] if p])
    env["STREAMLIT_BROWSER_GATHER_USAGE_STATS"] = "false"
    return env


def demo_run(root: str | os.PathLike = DEMO_ROOT, raw: str | os.PathLike = DEMO_RAW,
             n_per_class: int | None = None, image_size: int | None = None, log=print) -> Path:
    """The synthetic demo run, trained as `make demo` trains it (ImageNet weights when on disk,
    random init otherwise, and the run says which); a complete one from before is reused.
    n_per_class and image_size default to the demo's (demo_data.DEMO_*)."""
    from .demo_data import DEMO_IMAGE_SIZE, DEMO_N_PER_CLASS, generate_demo_data
    from .split import split_dataset
    from .run_dir import CHECKPOINT, CONFIG_JSON, REPORT_MD
    from .train import TrainConfig, train
    root = Path(root)
    run_dir = root / "run"
    if (run_dir / REPORT_MD).is_file() and (run_dir / CHECKPOINT).is_file():
        log(f"using the demo run trained before: {run_dir} (delete it to train again)")
        return run_dir
    image_size = image_size or DEMO_IMAGE_SIZE
    raw = generate_demo_data(raw, n_per_class=n_per_class or DEMO_N_PER_CLASS,
                             image_size=image_size, seed=0)
    split_dataset(raw, root / "split", seed=0)
    log(f"training the demo run on the synthetic set in {raw} (about a minute on 2 cores) ...")
    # As `make demo`: the head's 3e-3 suits random-init features; early stopping ends it.
    config = TrainConfig(data_dir=str(root / "split"), out_dir=str(run_dir),
                         weights="imagenet-or-none", img_size=image_size, lr=3e-3,
                         epochs=200, patience=5, seed=0,
                         cache_dir=str(root.parent / "cache"),  # outputs/cache for the default root
                         overwrite=(run_dir / CONFIG_JSON).is_file())  # an interrupted demo run
    return train(config, log_to_console=log is print)


def serve_app(run_dir=None, host: str = "127.0.0.1", port: int = 8501, demo: bool = False,
              exec_=os.execve) -> None:
    """Check everything that can be checked here, then exec the Streamlit server."""
    check_streamlit()
    if run_dir is None and not demo:
        raise ValueError("app needs --run RUN (a run directory), or --demo to train the "
                         "synthetic demo run first.")
    if demo and run_dir is None:
        run_dir = demo_run()
    run_dir = check_run(run_dir)
    command = streamlit_command(run_dir, host, port)
    print(f"deepfake-detector app: http://{host}:{port}  run {run_dir}  server pid {os.getpid()}"
          " (Ctrl+C or `kill PID` stops it)", flush=True)
    if host not in ("127.0.0.1", "localhost", "::1"):
        print(f"note: bound to {host}, so other machines that can reach this one can use the app",
              flush=True)
    sys.stdout.flush()
    sys.stderr.flush()
    exec_(command[0], command, server_environment())
