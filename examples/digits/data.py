"""UCI handwritten digits (scikit-learn's copy, shipped with the package): 1,797 8x8 images.

Fixed, seeded split: 1,257 train / 180 calibration / 360 evaluation. Pixels are
scaled from 0..16 to 0..1 and shaped (N, 1, 8, 8) for a CNN.
"""

from __future__ import annotations

import numpy as np

SEED = 0
N_EVAL = 360
N_CALIB = 180


def load_splits() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = (digits.images / 16.0).astype(np.float32).reshape(-1, 1, 8, 8)
    y = digits.target.astype(np.int64)
    order = np.random.default_rng(SEED).permutation(len(x))
    ev, ca, tr = order[:N_EVAL], order[N_EVAL:N_EVAL + N_CALIB], order[N_EVAL + N_CALIB:]
    return {"train": (x[tr], y[tr]), "calib": (x[ca], y[ca]), "eval": (x[ev], y[ev])}
