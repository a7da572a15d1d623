"""ResNet-18 with a frozen backbone and a single-logit head; where its weights come from.

The model stays a plain torchvision ResNet-18 (so `model.layer4[-1]` is where Grad-CAM expects
it); only `fc` changes, from 1000 ImageNet classes to one logit: P(fake) = sigmoid(logit).
"""
from __future__ import annotations

import hashlib
import os
import pickle
import warnings
from pathlib import Path

import torch
from torch import nn
from torchvision.models import ResNet18_Weights, resnet18

from .files import sha256_of_file

# torchvision's ImageNet checkpoint: the only file `--weights imagenet` accepts.
IMAGENET_FILE = "resnet18-f37072fd.pth"
IMAGENET_SHA256 = "f37072fd47e89c5e827621c5baffa7500819f7896bbacec160b1a16c560e07ec"
IMAGENET_BYTES = 46_830_571

# The choices a user makes explicitly; "imagenet-or-none" is for the demo only.
WEIGHT_CHOICES = ("imagenet", "none")
DEMO_WEIGHTS = "imagenet-or-none"


class WeightsUnavailableError(OSError):
    """ImageNet weights could be neither downloaded nor read from disk (an I/O failure, so the
    command line reports it as one clear message)."""


def torch_checkpoint_dir() -> Path:
    """Where torchvision looks for (and downloads) weights: $TORCH_HOME/hub/checkpoints."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def _how_to_get_weights() -> str:
    return (
        f"To use ImageNet weights offline, put torchvision's '{IMAGENET_FILE}' "
        f"({IMAGENET_BYTES:,} bytes, SHA-256 {IMAGENET_SHA256}) into {torch_checkpoint_dir()}/ "
        "(set $TORCH_HOME to move that folder), or pass its path: --weights /path/to/"
        f"{IMAGENET_FILE}. On a machine with internet it downloads by itself. "
        "To train from random init instead, say so explicitly: --weights none "
        "(expect far lower accuracy on real data)."
    )


def load_imagenet_state_dict() -> dict[str, torch.Tensor]:
    """torchvision's own way: the torch cache first, a download otherwise; hash-checked."""
    try:
        return ResNet18_Weights.IMAGENET1K_V1.get_state_dict(progress=False, check_hash=True)
    except Exception as error:  # URLError, hash mismatch, truncated file, ...
        raise WeightsUnavailableError(
            f"Could not load ImageNet weights for ResNet-18 ({type(error).__name__}: {error}). "
            + _how_to_get_weights()
        ) from error


def load_weights_file(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], str]:
    """A local ResNet-18 state dict; returns it with the file's SHA-256.

    torchvision's ImageNet file is recognised by its hash. Any other file is accepted if it is a
    ResNet-18 state dict, with a warning, because users also start from their own checkpoints;
    but a file named like torchvision's whose hash differs is a broken download and is refused.
    """
    path = Path(path)
    if not path.is_file():
        raise WeightsUnavailableError(f"Weights file not found: {path}. " + _how_to_get_weights())
    digest = sha256_of_file(path)
    if path.name == IMAGENET_FILE and digest != IMAGENET_SHA256:
        raise WeightsUnavailableError(
            f"{path} has SHA-256 {digest}, not {IMAGENET_SHA256}: the file is incomplete or "
            f"corrupt ({path.stat().st_size:,} bytes, expected {IMAGENET_BYTES:,}). "
            "Download it again. " + _how_to_get_weights()
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:  # torch's message would advise weights_only=False: never here
        raise WeightsUnavailableError(
            f"{path} holds Python objects other than tensors and plain values, so it is not "
            "loaded (loading could run code). Use a plain state dict (torch.save(model."
            "state_dict(), ...)), a checkpoint.pt of this project, or --weights none.") from None
    except Exception as error:
        raise WeightsUnavailableError(f"{path} is damaged or not a PyTorch weights file "
                                      f"({type(error).__name__}). Download or save it again, or "
                                      "pass another file.") from None
    if isinstance(state, dict) and "model_state" in state:  # a checkpoint of this project
        state = state["model_state"]
    if not isinstance(state, dict) or "layer4.1.conv2.weight" not in state:
        raise WeightsUnavailableError(f"{path} does not hold a ResNet-18 state dict.")
    if digest != IMAGENET_SHA256:
        warnings.warn(f"{path} is not torchvision's ImageNet file (SHA-256 {digest[:16]}...); "
                      "using it as given.", stacklevel=2)
    return state, digest


def resolve_weights(weights: str) -> tuple[dict[str, torch.Tensor] | None, dict]:
    """Turn the user's choice into (state dict or None for random init, a record of what was used).

    Random init is only ever taken when asked for: "none", or the demo's "imagenet-or-none",
    which records the reason so that the notebook, log and metrics can say it loudly.
    """
    if weights == "none":
        return None, {"weights": "none", "pretrained": False, "sha256": None,
                      "note": "random init, chosen explicitly"}
    if weights == "imagenet":
        return load_imagenet_state_dict(), {"weights": "imagenet", "pretrained": True,
                                            "sha256": IMAGENET_SHA256, "note": "torchvision"}
    if weights == DEMO_WEIGHTS:
        try:
            state, record = resolve_weights("imagenet")
            return state, record
        except WeightsUnavailableError as error:
            return None, {"weights": "none", "pretrained": False, "sha256": None,
                          "note": f"ImageNet weights unavailable, demo fell back to random init: {error}"}
    state, digest = load_weights_file(weights)
    return state, {"weights": str(weights), "pretrained": True, "sha256": digest,
                   "note": "torchvision ImageNet file" if digest == IMAGENET_SHA256 else "user file"}


def build_model(weights: str = "imagenet", seed: int | None = 0) -> tuple[nn.Module, dict]:
    """ResNet-18, weights loaded, backbone frozen, `fc` a fresh single-logit head, in eval mode.

    Returns (model, weights record). The seed makes random init (of the backbone when
    weights="none", and always of the head) reproducible.
    """
    state, record = resolve_weights(weights)
    if seed is not None:
        torch.manual_seed(seed)
    model = resnet18(weights=None)
    if state is not None:
        state = {k: v for k, v in state.items() if not k.startswith("fc.")}
        missing, unexpected = model.load_state_dict(state, strict=False)
        if unexpected or set(missing) - {"fc.weight", "fc.bias"}:
            raise WeightsUnavailableError(
                f"Weights do not fit ResNet-18: missing {missing}, unexpected {unexpected}")
    model.fc = nn.Linear(model.fc.in_features, 1)
    freeze_backbone(model)
    return model.eval(), record


def freeze_backbone(model: nn.Module) -> None:
    """Only the head learns: the ImageNet features stay as they are, and so do BatchNorm's statistics
    as long as the model stays in eval mode (the training loop never calls model.train())."""
    for name, parameter in model.named_parameters():
        parameter.requires_grad = name.startswith("fc.")


def backbone_features(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Everything before the head: (N, 3, H, W) images -> (N, 512) pooled features."""
    x = model.maxpool(model.relu(model.bn1(model.conv1(images))))
    x = model.layer4(model.layer3(model.layer2(model.layer1(x))))
    return torch.flatten(model.avgpool(x), 1)


def backbone_fingerprint(model: nn.Module) -> str:
    """SHA-256 over every backbone tensor: a feature cache is valid only for these exact weights."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        if not name.startswith("fc."):
            digest.update(name.encode())
            digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def mps_available() -> bool:
    return getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()


def device_choices() -> list[str]:
    """What --device accepts on this machine: auto, cpu, and the GPUs it has."""
    n_gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    return (["auto", "cpu"] + (["cuda"] if n_gpus else []) + [f"cuda:{i}" for i in range(n_gpus)]
            + (["mps"] if mps_available() else []))


def pick_device(device: str | torch.device = "auto") -> torch.device:
    """CUDA, then Apple's MPS, then the CPU, unless the user names one. A named device is checked
    here, the one place, before anything runs or is written: a ValueError in one line naming
    --device and this machine's choices, for a name torch does not know ("bogus", ""), a kind
    this project does not run on, or a GPU this machine does not have ("cuda:7" on a CPU)."""
    if isinstance(device, torch.device):
        device = str(device)
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps") if mps_available() else torch.device("cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        resolved = None
    n_gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    usable = resolved is not None and (
        resolved.type == "cpu"
        or (resolved.type == "cuda" and n_gpus > (resolved.index or 0))
        or (resolved.type == "mps" and mps_available() and resolved.index in (None, 0)))
    if not usable:
        raise ValueError(f"--device {device!r} is not a device of this machine; choose one of: "
                         f"{', '.join(device_choices())}.")
    return resolved
