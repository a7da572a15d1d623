"""`python -m deepfake_detector app`: its checks, the server command it execs, the demo run.
(Runs without Streamlit too: the missing-Streamlit message is one of the things tested.)"""
from __future__ import annotations

import importlib.util
import json

import pytest

from deepfake_detector import serve
from deepfake_detector.cli import main


def test_without_streamlit_one_line_says_how_to_install_it(trained_run, monkeypatch, capsys):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "streamlit" else real_find_spec(name, *a))
    assert main(["app", "--run", str(trained_run)]) == 2
    error = capsys.readouterr().err.strip()
    assert error.count("\n") == 0 and "Streamlit" in error and "pip install -e '.[app]'" in error


def test_run_is_required_unless_demo_and_must_be_a_run(tmp_path, capsys):
    pytest.importorskip("streamlit")
    assert main(["app"]) == 2
    assert "--run RUN" in capsys.readouterr().err
    assert main(["app", "--run", str(tmp_path)]) == 2
    assert "No checkpoint.pt in" in capsys.readouterr().err


def test_the_command_execs_streamlit_on_localhost_without_usage_statistics(trained_run, capsys):
    pytest.importorskip("streamlit")
    calls = []
    serve.serve_app(trained_run, port=8765, exec_=lambda *call: calls.append(call))
    [(program, argv, env)] = calls
    assert argv[:5] == [program, "-m", "streamlit", "run", str(serve.APP_PAGE)]
    options = dict(zip(argv[5:argv.index("--"):2], argv[6:argv.index("--"):2]))
    assert options == {"--server.address": "127.0.0.1", "--server.port": "8765",
                       "--server.headless": "true", "--browser.gatherUsageStats": "false",
                       "--server.maxUploadSize": "100", "--server.fileWatcherType": "none",
                       "--client.toolbarMode": "minimal"}
    assert argv[argv.index("--") + 1:] == ["--run", str(trained_run.resolve())]
    assert env["STREAMLIT_BROWSER_GATHER_USAGE_STATS"] == "false"
    assert str(serve.APP_PAGE.parent.parent) in env["PYTHONPATH"].split(":")
    out = capsys.readouterr().out
    assert "http://127.0.0.1:8765" in out and "server pid" in out and "note: bound" not in out
    serve.serve_app(trained_run, host="0.0.0.0", exec_=lambda *call: None)
    assert "note: bound to 0.0.0.0" in capsys.readouterr().out


def test_demo_trains_the_synthetic_run_once_then_reuses_it(tmp_path):
    messages = []
    run = serve.demo_run(tmp_path / "app-demo", tmp_path / "synthetic" / "raw", n_per_class=12,
                         image_size=32, log=messages.append)
    config = json.loads((run / "config.json").read_text())
    assert config["synthetic_data"]["raw_dir"] == str(tmp_path / "synthetic" / "raw")
    assert config["weights"] == "imagenet-or-none" and (run / "report.md").is_file()
    assert config["cache_dir"] == str(tmp_path / "cache")  # beside the demo root, not in the checkout
    stamp = (run / "checkpoint.pt").stat().st_mtime_ns
    again = serve.demo_run(tmp_path / "app-demo", tmp_path / "synthetic" / "raw", n_per_class=12,
                           image_size=32, log=messages.append)
    assert again == run and (run / "checkpoint.pt").stat().st_mtime_ns == stamp
    assert "using the demo run trained before" in messages[-1]
