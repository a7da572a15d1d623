"""`make lab` starts JupyterLab with the kernel sockets the headless runner uses
(jupyter_lab_config.py, notebook.kernel_manager_config): CurveZMQ where pyzmq has it, else IPC
files in Jupyter's private runtime folder, else TCP with one plain line saying so. Settings only,
no kernel started: test_demo_run.py checks the headless kernel's stderr, and a JupyterLab
server was checked by hand (README, "make lab")."""
from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
import zmq
from traitlets.config.loader import PyFileConfigLoader

from deepfake_detector.notebook import kernel_manager_config, kernel_transport_note

ROOT = Path(__file__).resolve().parent.parent


def lab_config() -> dict:
    """What `jupyter lab --config=jupyter_lab_config.py` reads from the file."""
    return PyFileConfigLoader("jupyter_lab_config.py", path=str(ROOT)).load_config()


def without(monkeypatch, *capabilities: str) -> None:
    """pyzmq as if built without these capabilities ("curve", "ipc")."""
    has = zmq.has
    monkeypatch.setattr(zmq, "has", lambda name: False if name in capabilities else has(name))


def test_make_lab_passes_the_config_file_the_headless_runner_shares():
    recipe = (ROOT / "Makefile").read_text().split("\nlab:")[1].split("\n\n")[0]
    assert re.search(r"\$\(BIN\)/jupyter lab --config=jupyter_lab_config\.py ", recipe)
    assert lab_config()["KernelManager"] == kernel_manager_config(server=True)["KernelManager"]
    if zmq.has("curve"):  # pip's wheels: the same encryption in both
        assert kernel_manager_config() == kernel_manager_config(server=True) == \
            {"KernelManager": {"transport_encryption": "auto"}}
        assert kernel_transport_note() is None


@pytest.mark.skipif(os.name != "posix" or not zmq.has("ipc"), reason="IPC sockets: Linux, macOS")
def test_without_curve_kernels_use_private_ipc_sockets(monkeypatch, tmp_path):
    without(monkeypatch, "curve")
    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(tmp_path / "runtime"))
    assert lab_config()["KernelManager"] == {"transport": "ipc"}  # beside the connection files
    headless = kernel_manager_config()["KernelManager"]
    assert headless["transport"] == "ipc" and "transport_encryption" not in headless
    # an absolute name in the runtime folder (only its owner may enter), fresh for each run
    assert Path(headless["ip"]).parent == tmp_path / "runtime"
    assert (tmp_path / "runtime").stat().st_mode & 0o077 == 0
    assert kernel_manager_config()["KernelManager"]["ip"] != headless["ip"]
    assert kernel_transport_note() is None


def test_with_neither_one_plain_line_says_what_the_warning_means(monkeypatch, capsys):
    without(monkeypatch, "curve", "ipc")
    assert kernel_manager_config() == kernel_manager_config(server=True) == {}
    lab_config()
    said = capsys.readouterr().err.splitlines()
    assert len(said) == 1 and said[0].startswith("note: ") and "without encryption" in said[0]
