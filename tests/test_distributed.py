"""torchrun: several processes (gloo on the CPU) give the bytes one process gives.

Each launch test starts `python -m torch.distributed.run` (the torchrun script) on localhost and
compares what rank 0 wrote with a single-process run of the same command in this process. Both
run on one thread per process: the same work per batch, the same kernels, the same floats.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

from conftest import make_raw_dataset
from deepfake_detector.cli import main
from deepfake_detector.distributed import share_of

REPO = Path(__file__).resolve().parents[1]
LAUNCH_TIMEOUT = 300  # seconds; torchrun's start (three Python processes importing torch) dominates


# --- the split of the work, without launching anything ----------------------------------------

@pytest.mark.parametrize("n_items, batch_size, world_size",
                         [(0, 8, 2), (5, 8, 2), (16, 8, 2), (41, 8, 2), (41, 8, 3), (130, 64, 4)])
def test_ranks_share_whole_batches_and_cover_every_item_once(n_items, batch_size, world_size):
    shares = [share_of(rank, world_size, n_items, batch_size) for rank in range(world_size)]
    assert sorted(i for share in shares for i in share) == list(range(n_items))
    single_process_batches = [list(range(n_items))[i:i + batch_size]
                              for i in range(0, n_items, batch_size)]
    for rank, share in enumerate(shares):
        # Cut into batches as a loader would, each rank's share is exactly the single-process
        # batches it was dealt, round-robin.
        assert [share[i:i + batch_size] for i in range(0, len(share), batch_size)] == \
            single_process_batches[rank::world_size]


def test_a_command_that_does_not_split_its_work_refuses_torchrun(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    assert main(["--", "audit", "--data", str(tmp_path)]) == 2
    error = capsys.readouterr().err
    assert "audit does not split its work among processes" in error
    assert "without torchrun" in error


# --- launching torchrun ---------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_environment() -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    if Path("/sys/class/net/lo").exists():  # Linux: gloo talks over the loopback device only
        env["GLOO_SOCKET_IFNAME"] = "lo"
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)
    return env


def start(torchrun_options: list[str], command: list[str], cwd: Path) -> subprocess.Popen:
    """torchrun [options] -m deepfake_detector -- command, in its own process group (so that a
    test which fails or times out can stop torchrun and every worker it started)."""
    argv = [sys.executable, "-m", "torch.distributed.run", *torchrun_options,
            "-m", "deepfake_detector", "--", *command]
    return subprocess.Popen(argv, cwd=cwd, env=launch_environment(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)


def finish(process: subprocess.Popen) -> tuple[str, str]:
    """(stdout, stderr) of a launch that must succeed; stopped, workers and all, on timeout."""
    try:
        out, err = process.communicate(timeout=LAUNCH_TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        out, err = process.communicate()
        pytest.fail(f"torchrun did not finish in {LAUNCH_TIMEOUT} s:\n{err[-3000:]}")
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    assert process.returncode == 0, f"torchrun failed ({process.returncode}):\n{err[-3000:]}"
    return out, err


def torchrun(command: list[str], cwd: Path, nproc: int = 2) -> tuple[str, str]:
    """One machine, `nproc` processes, a free port on localhost (--standalone)."""
    return finish(start(["--standalone", f"--nproc_per_node={nproc}"], command, cwd))


def one_process(command: list[str], capsys) -> tuple[str, str]:
    """(stdout, stderr and warnings) of the same command in this process, on one thread as each
    torchrun worker; `--` first, as torchrun's users type it."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            code = main(["--", *command])
    finally:
        torch.set_num_threads(threads)
    out, err = capsys.readouterr()
    assert code == 0, err
    return out, err + "".join(f"{w.message}\n" for w in caught)


@pytest.fixture(scope="module")
def images_with_a_broken_one(tmp_path_factory) -> Path:
    """41 PNGs (6 batches of 8: the two ranks get 3 each, the last one short) and a file that is
    not an image."""
    root = tmp_path_factory.mktemp("predict")
    make_raw_dataset(root, n_real=21, n_fake=20, seed=3)
    (root / "real" / "broken.png").write_bytes(b"not an image at all")
    return root


def test_torchrun_predict_writes_the_file_one_process_writes(trained_run, images_with_a_broken_one,
                                                            tmp_path, capsys):
    command = ["predict", "--run", str(trained_run), str(images_with_a_broken_one / "real"),
               str(images_with_a_broken_one / "fake"), "--batch-size", "8", "--out"]
    _, single_err = one_process(command + [str(tmp_path / "one.csv")], capsys)
    _, err = torchrun(command + ["two.csv"], tmp_path)
    one, two = (tmp_path / "one.csv").read_bytes(), (tmp_path / "two.csv").read_bytes()
    assert two == one
    assert len(one.splitlines()) == 1 + 41
    # The unreadable file is reported once (by rank 0), in the single process's words.
    assert "41 predictions written to two.csv" in err and err.count("41 predictions") == 1
    assert err.count("1 file(s) could not be read and were skipped") == 1
    assert "broken.png" in err and "broken.png" in single_err


def test_torchrun_evaluate_writes_the_metrics_and_predictions_one_process_writes(
        trained_run, split_data, tmp_path, capsys):
    command = ["evaluate", "--run", str(trained_run), "--data", str(split_data),
               "--split", "train", "--batch-size", "8", "--out"]
    single_out, _ = one_process(command + [str(tmp_path / "one")], capsys)
    out, _ = torchrun(command + [str(tmp_path / "two")], tmp_path)
    assert out == single_out  # the metrics as JSON, printed once
    for name in ("metrics.json", "predictions.csv"):
        assert (tmp_path / "two" / name).read_bytes() == (tmp_path / "one" / name).read_bytes()
    assert len((tmp_path / "two" / "predictions.csv").read_text().splitlines()) == 1 + 64


@pytest.fixture(scope="module")
def bigger_split(tmp_path_factory) -> Path:
    """144 train images: 3 extraction batches of 64 (64, 64, 16), so both ranks extract."""
    from deepfake_detector.split import split_dataset
    root = tmp_path_factory.mktemp("bigger")
    raw = make_raw_dataset(root / "raw", n_real=90, n_fake=90, size=16, seed=1)
    split_dataset(raw, root / "data", seed=0)
    return root / "data"


def stored_features(cache_dir: Path) -> dict[str, torch.Tensor]:
    return {path.name: torch.load(path, weights_only=True)["features"]
            for path in sorted(cache_dir.glob("features-*.pt"))}


def test_torchrun_extract_fills_the_cache_one_process_fills(bigger_split, tmp_path, capsys):
    command = ["extract", "--data", str(bigger_split), "--weights", "none", "--img-size", "32",
               "--cache-dir"]
    single_out, _ = one_process(command + [str(tmp_path / "one")], capsys)
    out, _ = torchrun(command + ["two"], tmp_path)
    one, two = stored_features(tmp_path / "one"), stored_features(tmp_path / "two")
    assert len(one) == 2 and two.keys() == one.keys()  # train and val, under the same keys
    for name in one:
        assert torch.equal(two[name], one[name])
    assert sorted(len(f) for f in one.values()) == [36, 144]
    # It prints where each split's features are, and the folder.
    names = sorted(line.split("/")[-1] for line in out.splitlines() if line.startswith(("train", "val")))
    assert names == sorted(one)
    assert f"feature cache: {(tmp_path / 'two').resolve()}" in out
    assert single_out.replace(str(tmp_path / "one"), "two").splitlines()[:2] == \
        out.splitlines()[:2]


def test_torchrun_train_extracts_in_parallel_and_trains_the_same_head(bigger_split, tmp_path,
                                                                      capsys):
    command = ["train", "--data", str(bigger_split), "--weights", "none", "--img-size", "32",
               "--epochs", "15", "--lr", "1e-2", "--no-probe", "--out"]
    one_process(command + [str(tmp_path / "one"), "--cache-dir", str(tmp_path / "cache-one")],
                capsys)
    torchrun(command + ["two", "--cache-dir", "cache-two"], tmp_path)
    # The features came from both ranks through the cache; rank 0 alone wrote the run.
    assert stored_features(tmp_path / "cache-two").keys() == \
        stored_features(tmp_path / "cache-one").keys()
    log = (tmp_path / "two" / "train.log").read_text()
    assert "train features: 144 images from the feature cache" in log
    one = (tmp_path / "one" / "predictions_val.csv").read_text()
    two = (tmp_path / "two" / "predictions_val.csv").read_text()
    assert two == one.replace(str(tmp_path / "one"), "two")
    history = [json.loads((tmp_path / run / "history.json").read_text()) for run in ("one", "two")]
    assert [e["val_loss"] for e in history[1]] == [e["val_loss"] for e in history[0]]


def test_two_nodes_of_one_process_print_what_one_process_prints(trained_run, split_data, tmp_path,
                                                                capsys):
    command = ["predict", "--run", str(trained_run), str(split_data / "val"), "--batch-size", "4"]
    single_out, _ = one_process(command, capsys)
    port = free_port()
    nodes = [start(["--nnodes", "2", "--nproc_per_node", "1", "--node_rank", str(node),
                    "--rdzv-backend", "c10d", "--rdzv-endpoint", f"localhost:{port}",
                    "--rdzv-id", "two-nodes-test"], command, tmp_path)
             for node in (0, 1)]
    try:
        outs = [finish(node)[0] for node in nodes]
    finally:
        for node in nodes:
            if node.poll() is None:
                os.killpg(node.pid, signal.SIGKILL)
    # The rendezvous decides which node holds rank 0: that one prints the JSON, the other nothing.
    assert sorted(outs) == ["", single_out]
    assert len(json.loads(single_out)) == 16


def test_the_processes_of_one_machine_share_its_cores_for_decoding(monkeypatch):
    from deepfake_detector.data import default_num_workers
    monkeypatch.setattr(os, "cpu_count", lambda: 16)
    assert default_num_workers("cuda") == 8  # one process: up to 8 workers beside a GPU
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    assert default_num_workers("cuda") == 7  # two ranks on the machine: 8 cores each, 7 workers
    assert default_num_workers("cpu") == 4
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    assert default_num_workers("cpu") == 0  # a core each: the model's thread decodes too


def test_a_file_one_rank_cannot_read_stops_the_launch_with_its_name(tmp_path):
    """Extraction refuses unreadable files (as in one process). The rank that meets one names it
    and exits; its partner, left waiting in the gather, says so in one line; nothing is written."""
    from deepfake_detector.split import list_split, split_dataset
    raw = make_raw_dataset(tmp_path / "raw", n_real=90, n_fake=90, size=16, seed=2)
    split_dataset(raw, tmp_path / "data", seed=0)
    broken = list_split(tmp_path / "data", "train")[100][0]  # batch 1 of 3: rank 1's
    broken.write_bytes(b"not an image")
    process = start(["--standalone", "--nproc_per_node=2"],
                    ["extract", "--data", "data", "--weights", "none", "--img-size", "32",
                     "--cache-dir", "cache"], tmp_path)
    try:
        _, err = process.communicate(timeout=LAUNCH_TIMEOUT)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    assert process.returncode != 0
    assert f"error: Cannot read image {broken.relative_to(tmp_path)}" in err
    # Its partner says why it stopped too (or, if torchrun's stop came first, that it was stopped).
    assert "error: another process of this torchrun launch failed; its message is above" in err \
        or "interrupted:" in err
    assert not (tmp_path / "cache").exists()
