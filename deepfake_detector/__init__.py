"""deepfake-detector: tell real images from generated or manipulated ones with a frozen ResNet-18,
and show why with Grad-CAM. The notebook in notebooks/ teaches; this package does the work."""

import os

__version__ = "0.1.0"

# Large CPU tensors (a batch's activations: ~600 MB per ResNet-18 pass at batch 64, 224 px) on 2 MB
# transparent huge pages instead of 4 kB ones: 512x fewer page faults each time the allocator hands
# the memory back and asks again. PyTorch's own switch (off by default), read once, at the first
# large allocation, so it is set here, before this package makes any; Linux only (elsewhere it is
# ignored). Measured on 2 cores: the backbone's forward 1.15-1.16x as fast, the kernel's share of
# its CPU time down from 20-22% to 8-9% (benchmarks/huge_pages.py). THP_MEM_ALLOC_ENABLE=0 in the
# environment turns it off.
os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")

# Positive class is "fake": every probability in this project is P(fake) = sigmoid(logit).
CLASS_NAMES = ("real", "fake")
CLASS_TO_IDX = {"real": 0, "fake": 1}
