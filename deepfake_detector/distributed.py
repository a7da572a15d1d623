"""Predict, evaluate and extract features on several processes: the GPUs of a machine, or machines.

    torchrun --nproc_per_node=4 -m deepfake_detector -- predict --run R folder/ --out preds.csv

torchrun starts the processes (one per GPU, or a share of the CPU's cores each) and tells each one
who it is (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT); nothing here starts a process.
Without torchrun every function below answers "one process" and the package runs as it always did.

How the work is split: the images are cut into batches of the single-process batch size, and the
batches are dealt out like cards: batch i goes to rank i % WORLD_SIZE. Each rank decodes its
batches and runs them on its own device (cuda:LOCAL_RANK on a GPU machine; the CPU otherwise),
then sends its results to rank 0, which alone writes the output, in input order. A batch holds the
same images whichever rank runs it, and a network's output for an image can depend on the other
images of its batch (the kernels chosen for a batch's shape) but never on the process that ran it:
so the output is byte-identical to a single-process run at the same number of threads per process.

GPUs talk over NCCL; the CPU (and the results gathered as Python objects, even between GPUs) over
gloo. Rank 0 holds one result per image until the end (a float for predict, 512 for features),
as a single-process evaluate or extraction does.

Which images: rank 0 alone lists the inputs (a folder, a split's manifest) and sends the list to
every rank (`listed_by_main`), with each file's size and modification time as it listed them: a
folder that changes during the run cannot give two ranks two lists (an image's index would name
another image on each). A file that changed or vanished after it was listed is not read as if it
were the one listed: predict and evaluate skip it and name it with the unreadable files;
extraction, whose features must cover every listed file, stops naming it (data.ImageDataset).
"""
from __future__ import annotations

import os
import pickle
from pathlib import Path

import torch
import torch.distributed as dist


def launched_by_torchrun() -> bool:
    """True in a process that torchrun started among several (WORLD_SIZE > 1)."""
    return "RANK" in os.environ and int(os.environ.get("WORLD_SIZE", "1")) > 1


def is_active() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_active() else 0


def world_size() -> int:
    return dist.get_world_size() if is_active() else 1


def is_main() -> bool:
    """Rank 0, the one process that writes files and prints results (the only one without torchrun)."""
    return rank() == 0


def rank_device(device: str) -> str:
    """This process's device: with CUDA, one GPU per process of the machine (cuda:LOCAL_RANK);
    a GPU named with its index (cuda:1) stays as named."""
    from .model import pick_device
    resolved = pick_device(device)
    if resolved.type != "cuda" or resolved.index is not None:
        return str(resolved)
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if local_rank >= torch.cuda.device_count():
        raise ValueError(f"torchrun started more processes on this machine than it has GPUs "
                         f"(LOCAL_RANK {local_rank}, {torch.cuda.device_count()} GPU(s)): give "
                         f"--nproc_per_node at most {torch.cuda.device_count()}.")
    return f"cuda:{local_rank}"


def start(device: str = "auto") -> str:
    """Join torchrun's process group when torchrun started this process; returns the device this
    process must use (`device` unchanged without torchrun)."""
    if not launched_by_torchrun() or is_active():
        return device
    device = rank_device(device)
    if torch.device(device).type == "cuda":
        torch.cuda.set_device(device)
        # NCCL moves tensors between GPUs; gloo carries the results gathered as Python objects,
        # which live in the CPU's memory.
        dist.init_process_group("cpu:gloo,cuda:nccl")
    else:
        dist.init_process_group("gloo")
    return device


def stop() -> None:
    if is_active():
        dist.destroy_process_group()


def share_of(rank: int, world_size: int, n_items: int, batch_size: int) -> list[int]:
    """The indices of the items rank `rank` of `world_size` runs, in order: the whole batches i
    (of `batch_size`, cut as one process would cut them) with i % world_size == rank."""
    n_batches = -(-n_items // batch_size)
    return [index for batch in range(rank, n_batches, world_size)
            for index in range(batch * batch_size, min(n_items, (batch + 1) * batch_size))]


def my_share(n_items: int, batch_size: int) -> list[int] | None:
    """This process's share of n_items (a loader's sampler); None without torchrun (all of them,
    as listed). Its batches of `batch_size` are the single-process batches it was dealt."""
    return share_of(rank(), world_size(), n_items, batch_size) if is_active() else None


def barrier() -> None:
    """Wait until every rank is here (one process: at once)."""
    if is_active():
        dist.barrier()


def decided_by_main(value):
    """Rank 0's `value`, on every rank (one process: `value`). For decisions only rank 0 can
    make, such as whether the feature cache on its disk already holds the features."""
    if not is_active():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def computed_by_main(function):
    """function() run by rank 0 alone, its value returned on every rank; if it raises, every rank
    raises its exception (so all stop with the same message). One process: function()."""
    if not is_active():
        return function()
    box = [None]
    if is_main():
        try:
            box = [(function(), None)]
        except Exception as error:
            box = [(None, shareable(error))]
            dist.broadcast_object_list(box, src=0)
            raise
    dist.broadcast_object_list(box, src=0)
    value, error = box[0]
    if error is not None:
        raise error
    return value


def shareable(error: Exception) -> Exception:
    """`error`, or a ValueError with its message when it does not survive pickling."""
    try:
        return pickle.loads(pickle.dumps(error))
    except Exception:
        return ValueError(str(error))


def file_stamp(path) -> tuple[int, int] | None:
    """(size in bytes, modification time in ns) of the file at `path`; None if it has none."""
    try:
        facts = os.stat(path)
    except (OSError, ValueError):
        return None
    return facts.st_size, facts.st_mtime_ns


def item_path(item) -> Path:
    """The file of an input: a path, or the path of a (path, label) item."""
    return Path(item[0] if isinstance(item, (tuple, list)) else item)


class Listing(list):
    """Inputs (paths, or (path, label) items) as they were listed, with `stamps`: each file's
    file_stamp at that moment. A loader given a Listing (data.ImageDataset) reads a file only if
    it is still the one listed."""

    def __init__(self, items=(), stamps=None):
        super().__init__(items)
        self.stamps = list(stamps) if stamps is not None else \
            [file_stamp(item_path(item)) for item in self]

    def relabelled(self, function) -> "Listing":
        """function(item) of each item, with the same stamps."""
        return Listing(map(function, self), self.stamps)


def listed_by_main(list_inputs) -> Listing:
    """The inputs as rank 0 lists them (list_inputs(), called on rank 0 alone), with their stamps,
    on every rank: every rank works from one list, whatever each would see in the folder now. An
    error of the listing (a missing folder) is raised on every rank. One process: its own list."""
    def listed() -> tuple[list, list]:
        listing = Listing(list_inputs())
        return list(listing), listing.stamps
    items, stamps = computed_by_main(listed)
    return Listing(items, stamps)


def changed_since_listed(path, stamp: tuple[int, int] | None) -> str | None:
    """Why the file at `path` is no longer the one listed with `stamp` (None: it is, or it was
    listed without a stamp)."""
    if stamp is None:
        return None
    now = file_stamp(path)
    if now is None:
        return "vanished after the inputs were listed"
    if tuple(now) != tuple(stamp):
        return ("changed after the inputs were listed (its size or modification time differs), "
                "so it was not read; run again to include it")
    return None


def gather_to_main(local) -> list | None:
    """Every rank's `local`, in rank order, on rank 0; None on the other ranks."""
    if not is_active():
        return [local]
    gathered = [None] * world_size() if is_main() else None
    dist.gather_object(local, gathered, dst=0)
    return gathered


def in_input_order(batches, failures: list | None = None):
    """Yield the (indices, values) batches of every rank, on rank 0, in input order.

    Without torchrun: `batches` as they come (streamed). Under torchrun each rank runs its own
    batches to the end, sends them to rank 0, and yields nothing; rank 0 yields them all, sorted by
    their first index. `failures` [(index, reason)] of unreadable files is merged the same way.
    Batches must hold CPU values (tensors or arrays): they travel pickled.
    """
    if not is_active():
        yield from batches
        return
    mine = list(batches)
    everyone = gather_to_main((mine, list(failures or [])))
    if not is_main():
        return
    if failures is not None:
        failures[:] = sorted(failure for _, theirs in everyone for failure in theirs)
    yield from sorted((batch for theirs, _ in everyone for batch in theirs),
                      key=lambda batch: int(batch[0][0]))
