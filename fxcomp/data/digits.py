"""scikit-learn's digits: 1,797 8×8 grey images of handwritten digits, shipped inside scikit-learn."""

from __future__ import annotations

import torch

from fxcomp.data.splits import Splits, split
from fxcomp.errors import DataError


def digits(*, val: int = 180, test: int = 360, seed: int = 0) -> Splits:
    """The digits as ``(N, 1, 8, 8)`` images in [0, 1]: ``val`` and ``test`` held out, the rest for training."""
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise DataError("the digits data set ships with scikit-learn; install it: pip install scikit-learn") from None
    data = load_digits()
    images = torch.tensor(data.images, dtype=torch.float32).unsqueeze(1) / 16.0
    labels = torch.tensor(data.target, dtype=torch.long)
    return split("digits", images, labels, val=val, test=test, seed=seed)
