"""The same numbers on every run: torch's and cuDNN's deterministic switches, for one block.

On the CPU this project's passes are already repeatable. On a GPU they are not by default: cuDNN
autotuning may pick a different convolution kernel in each process, some kernels sum with atomic
adds in whatever order threads finish, and cuBLAS splits work by its workspace. Measured on an
H100: one evaluation, run twice, gave ROC-AUC 0.75903 and then 0.75861. `deterministic()` turns
all of that off for a block (evaluate does by default, train/predict/gradcam with
`--deterministic`) and restores the settings afterwards, so a notebook's later cells run as fast
as before.

Grad-CAM's one backward runs through `adaptive_avg_pool2d`, whose CUDA backward has a
deterministic kernel only for channels-last tensors: gradcam.CutAtLayer hands the rest of the
network a channels-last copy of layer4's output, so Grad-CAM needs no exemption.
"""
from __future__ import annotations

import contextlib
import os

import torch

# cuBLAS is deterministic only with a fixed workspace per stream; this is the setting NVIDIA and
# PyTorch document (":16:8" also works, slower). It must be in place before cuBLAS first runs in
# the process: the command line sets it before it touches CUDA.
CUBLAS_WORKSPACE = ":4096:8"


@contextlib.contextmanager
def deterministic(enabled: bool = True):
    """Within the block: torch.use_deterministic_algorithms (warn_only: an operation without a
    deterministic kernel warns, naming itself, instead of stopping a long run), cuDNN's
    deterministic kernels without autotuning (features.cudnn_autotune yields to this), and
    CUBLAS_WORKSPACE_CONFIG (if not set already). Everything is restored afterwards.
    `enabled=False` changes nothing."""
    if not enabled:
        yield
        return
    before = (torch.are_deterministic_algorithms_enabled(),
              torch.is_deterministic_algorithms_warn_only_enabled(),
              torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark,
              os.environ.get("CUBLAS_WORKSPACE_CONFIG"))
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_WORKSPACE)
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before[0], warn_only=before[1])
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = before[2], before[3]
        if before[4] is None:
            os.environ.pop("CUBLAS_WORKSPACE_CONFIG", None)
