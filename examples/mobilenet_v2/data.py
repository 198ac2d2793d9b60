"""Inputs for the MobileNetV2-shaped network: seeded random 224x224 images (no dataset ships with it, and its
weights are seeded random too), labelled with the fp32 model's own top-1. Its "accuracy" is therefore the
agreement of a build with fp32 PyTorch: what quantization and the NPU keep of the network's decisions, not
how well it recognises anything.

Fixed split: 32 train / 128 calibration / 64 evaluation images.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

SEED = 1
SIZES = {"train": 32, "calib": 128, "eval": 64}


def load_splits() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    import torch

    sys.path.insert(0, str(Path(__file__).parent))
    try:
        from model import mobilenet_v2
    finally:
        sys.path.pop(0)
    rng = np.random.default_rng(SEED)
    model = mobilenet_v2()
    out = {}
    for name, n in SIZES.items():
        x = rng.standard_normal((n, 3, 224, 224), dtype=np.float32)
        with torch.no_grad():
            y = model(torch.from_numpy(x)).argmax(1).numpy().astype(np.int64)
        out[name] = (x, y)
    return out
