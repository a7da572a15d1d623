"""torchrun: several processes (gloo on the CPU) give the bytes one process gives.

Each launch test starts `python -m torch.distributed.run` (the torchrun script) on localhost and
compares what rank 0 wrote with a single-process run of the same command in this process. Both
run on one thread per process: the same work per batch, the same kernels, the same floats. The
`launches` fixture holds them all; each starts when its test looks it up.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path
from types import SimpleNamespace

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
    test which fails or times out can stop torchrun and every worker it started). Its stdout and
    stderr go to files, not pipes: a launch running in the background never waits on a full pipe."""
    argv = [sys.executable, "-m", "torch.distributed.run", *torchrun_options,
            "-m", "deepfake_detector", "--", *command]
    out, err = tempfile.TemporaryFile(), tempfile.TemporaryFile()
    process = subprocess.Popen(argv, cwd=cwd, env=launch_environment(), stdout=out, stderr=err,
                               start_new_session=True)
    process.output_files = (out, err)
    return process


def stop(process: subprocess.Popen) -> None:
    """torchrun and every worker it started, if still running."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def ended(process: subprocess.Popen) -> tuple[str, str]:
    """(stdout, stderr) of a launch once it has ended; stopped, workers and all, on timeout."""
    def read(file) -> str:
        file.seek(0)
        return file.read().decode(errors="replace")
    try:
        process.wait(timeout=LAUNCH_TIMEOUT)
    except subprocess.TimeoutExpired:
        stop(process)
        pytest.fail(f"torchrun did not finish in {LAUNCH_TIMEOUT} s:\n"
                    f"{read(process.output_files[1])[-3000:]}")
    finally:
        stop(process)
    return read(process.output_files[0]), read(process.output_files[1])


def finish(process: subprocess.Popen) -> tuple[str, str]:
    """(stdout, stderr) of a launch that must succeed."""
    out, err = ended(process)
    assert process.returncode == 0, f"torchrun failed ({process.returncode}):\n{err[-3000:]}"
    return out, err


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


@pytest.fixture(scope="module")
def bigger_split(tmp_path_factory) -> Path:
    """144 train images: 3 extraction batches of 64 (64, 64, 16), so both ranks extract."""
    from deepfake_detector.split import split_dataset
    root = tmp_path_factory.mktemp("bigger")
    raw = make_raw_dataset(root / "raw", n_real=90, n_fake=90, size=16, seed=1)
    split_dataset(raw, root / "data", seed=0)
    return root / "data"


@pytest.fixture(scope="module")
def unreadable_split(tmp_path_factory) -> SimpleNamespace:
    """A folder holding `data`: a split of 180 images (3 extraction batches of 64) with one file
    that is not an image, in rank 1's batch."""
    from deepfake_detector.split import split_dataset
    from deepfake_detector.split_read import list_split
    root = tmp_path_factory.mktemp("unreadable")
    raw = make_raw_dataset(root / "raw", n_real=90, n_fake=90, size=16, seed=2)
    split_dataset(raw, root / "data", seed=0)
    broken = list_split(root / "data", "train")[100][0]  # batch 1 of 3: rank 1's
    broken.write_bytes(b"not an image")
    return SimpleNamespace(root=root, broken=broken)


class Launch:
    """A torchrun launch of this module: the `command` a test also runs in one process (without the
    argument naming its output), the folder the launch runs in (`cwd`: what it wrote), and its
    `processes`, started by `start()`."""

    def __init__(self, command: list[str], cwd: Path, starts):
        self.command, self.cwd, self.starts, self.processes = command, cwd, starts, []

    def start(self) -> "Launch":
        if not self.processes:
            self.processes = self.starts()
        return self


class Launches(dict):
    """name -> Launch, which starts when a test looks it up: it then runs beside that test's
    single-process run. (All six at once were no faster on two cores than one after another,
    ~47 s either way: each launch keeps ~1.5 cores busy, mostly three processes importing torch.
    The six check six commands or ways to launch, so no launch can serve two tests.)"""

    def __getitem__(self, name: str) -> Launch:
        return super().__getitem__(name).start()


@pytest.fixture(scope="module")
def launches(trained_run, split_data, images_with_a_broken_one, bigger_split, unreadable_split,
             tmp_path_factory) -> Launches:
    """Every torchrun launch of this module, each in its own folder; a test starts its own, runs
    the same command in one process, waits for the launch and compares. Launches still running
    at the end (a failed test's) are stopped."""
    root = tmp_path_factory.mktemp("launches")
    two_processes = ["--standalone", "--nproc_per_node=2"]
    launches = Launches()

    def launch(name, command, output_args=(), starts=None, cwd=None):
        if cwd is None:
            cwd = root / name
            cwd.mkdir()
        launches[name] = Launch(command, cwd, lambda: starts(cwd) if starts else
                                [start(two_processes, [*command, *output_args], cwd)])

    images = images_with_a_broken_one
    launch("predict", ["predict", "--run", str(trained_run), str(images / "real"),
                       str(images / "fake"), "--batch-size", "8", "--out"], ["two.csv"])
    launch("evaluate", ["evaluate", "--run", str(trained_run), "--data", str(split_data),
                        "--split", "train", "--batch-size", "8", "--json", "--out"],
           [str(root / "evaluate" / "two")])
    launch("extract", ["extract", "--data", str(bigger_split), "--weights", "none",
                       "--img-size", "32", "--cache-dir"], ["two"])
    launch("train", ["train", "--data", str(bigger_split), "--weights", "none", "--img-size", "32",
                     "--epochs", "15", "--lr", "1e-2", "--no-probe", "--out"],
           ["two", "--cache-dir", "cache-two"])
    nodes = ["predict", "--run", str(trained_run), str(split_data / "val"), "--batch-size", "4"]

    def two_nodes(cwd):
        port = free_port()  # free a moment ago; the first node binds it at once
        return [start(["--nnodes", "2", "--nproc_per_node", "1", "--node_rank", str(node),
                       "--rdzv-backend", "c10d", "--rdzv-endpoint", f"localhost:{port}",
                       "--rdzv-id", "two-nodes-test"], nodes, cwd) for node in (0, 1)]
    launch("two-nodes", nodes, starts=two_nodes)
    launch("unreadable", ["extract", "--data", "data", "--weights", "none", "--img-size", "32",
                          "--cache-dir", "cache"], cwd=unreadable_split.root)
    yield launches
    for launched in launches.values():  # values(): no lookup, so nothing starts here
        for process in launched.processes:
            stop(process)
            for file in process.output_files:
                file.close()


def test_torchrun_predict_writes_the_file_one_process_writes(launches, tmp_path, capsys):
    launch = launches["predict"]
    _, single_err = one_process(launch.command + [str(tmp_path / "one.csv")], capsys)
    _, err = finish(*launch.processes)
    one, two = (tmp_path / "one.csv").read_bytes(), (launch.cwd / "two.csv").read_bytes()
    assert two == one
    assert len(one.splitlines()) == 1 + 41
    # The unreadable file is reported once (by rank 0), in the single process's words.
    assert "41 predictions written to two.csv" in err and err.count("41 predictions") == 1
    assert err.count("1 file(s) could not be read and were skipped") == 1
    assert "broken.png" in err and "broken.png" in single_err


def test_torchrun_evaluate_writes_the_metrics_and_predictions_one_process_writes(
        launches, tmp_path, capsys):
    launch = launches["evaluate"]
    single_out, _ = one_process(launch.command + [str(tmp_path / "one")], capsys)
    out, _ = finish(*launch.processes)
    assert out == single_out  # the metrics as JSON, printed once
    for name in ("metrics.json", "predictions.csv"):
        assert (launch.cwd / "two" / name).read_bytes() == (tmp_path / "one" / name).read_bytes()
    assert len((launch.cwd / "two" / "predictions.csv").read_text().splitlines()) == 1 + 64


def stored_features(cache_dir: Path) -> dict[str, torch.Tensor]:
    return {path.name: torch.load(path, weights_only=True)["features"]
            for path in sorted(cache_dir.glob("features-*.pt"))}


def test_torchrun_extract_fills_the_cache_one_process_fills(launches, tmp_path, capsys):
    launch = launches["extract"]
    single_out, _ = one_process(launch.command + [str(tmp_path / "one")], capsys)
    out, _ = finish(*launch.processes)
    one, two = stored_features(tmp_path / "one"), stored_features(launch.cwd / "two")
    assert len(one) == 2 and two.keys() == one.keys()  # train and val, under the same keys
    for name in one:
        assert torch.equal(two[name], one[name])
    assert sorted(len(f) for f in one.values()) == [36, 144]
    # The OOD layers' statistics, taken in the same pass, gathered from both ranks as well.
    layers = [{path.name: torch.load(path, weights_only=True)["layers"]
               for path in sorted(cache.glob("features-*.pt"))}
              for cache in (tmp_path / "one", launch.cwd / "two")]
    for name, stored in layers[0].items():
        assert len(stored["indices"]) == len(one[name]) and stored.keys() == layers[1][name].keys()
        assert all(torch.equal(stored[key], layers[1][name][key]) for key in stored)
    # It prints where each split's features are, and the folder.
    names = sorted(line.split("/")[-1] for line in out.splitlines() if line.startswith(("train", "val")))
    assert names == sorted(one)
    assert f"feature cache: {(launch.cwd / 'two').resolve()}" in out
    assert single_out.replace(str(tmp_path / "one"), "two").splitlines()[:2] == \
        out.splitlines()[:2]


def test_torchrun_train_extracts_in_parallel_and_trains_the_same_head(launches, tmp_path, capsys):
    launch = launches["train"]
    one_process(launch.command + [str(tmp_path / "one"), "--cache-dir", str(tmp_path / "cache-one")],
                capsys)
    finish(*launch.processes)
    # The features came from both ranks through the cache; rank 0 alone wrote the run.
    assert stored_features(launch.cwd / "cache-two").keys() == \
        stored_features(tmp_path / "cache-one").keys()
    log = (launch.cwd / "two" / "train.log").read_text()
    assert "train features: 144 images from the feature cache" in log
    one = (tmp_path / "one" / "predictions_val.csv").read_text()
    two = (launch.cwd / "two" / "predictions_val.csv").read_text()
    assert two == one.replace(str(tmp_path / "one"), "two")
    history = [json.loads((run / "history.json").read_text())
               for run in (tmp_path / "one", launch.cwd / "two")]
    assert [e["val_loss"] for e in history[1]] == [e["val_loss"] for e in history[0]]


def test_two_nodes_of_one_process_print_what_one_process_prints(launches, capsys):
    launch = launches["two-nodes"]
    single_out, _ = one_process(launch.command, capsys)
    outs = [finish(node)[0] for node in launch.processes]
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


def test_a_file_one_rank_cannot_read_stops_the_launch_with_its_name(launches, unreadable_split):
    """Extraction refuses unreadable files (as in one process). The rank that meets one names it
    and exits; its partner, left waiting in the gather, says so in one line; nothing is written."""
    launch = launches["unreadable"]
    process, = launch.processes
    _, err = ended(process)
    assert process.returncode != 0
    assert f"error: Cannot read image {unreadable_split.broken.relative_to(launch.cwd)}" in err
    # Its partner says why it stopped too (or, if torchrun's stop came first, that it was stopped).
    assert "error: another process of this torchrun launch failed; its message is above" in err \
        or "interrupted:" in err
    assert not (launch.cwd / "cache").exists()
