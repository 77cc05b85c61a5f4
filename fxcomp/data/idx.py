"""MNIST and Fashion-MNIST from the standard IDX files (``.gz`` or uncompressed) in a directory."""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import numpy as np
import torch

from fxcomp.data.splits import Splits, split
from fxcomp.errors import DataError, first_line

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
"""Where Debian's ``dataset-fashion-mnist`` package puts the files."""

_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
_TYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: np.dtype(">i2"), 0x0C: np.dtype(">i4"), 0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}


def read_idx(path: str | Path) -> np.ndarray:
    """Read one IDX file (gzip-compressed when its name ends in ``.gz``) into an array of its shape."""
    path = Path(path)
    fix = "download or install it again"
    try:
        raw = path.read_bytes()
    except OSError as error:
        raise DataError(f"cannot read {path} ({first_line(error)}); check the path") from error
    if path.suffix == ".gz":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as error:  # not gzip data (a browser may have unpacked it), cut short, damaged
            raise DataError(f"{path} cannot be decompressed ({first_line(error)}); {fix}") from error
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _TYPES:
        raise DataError(f"{path} is not an IDX file (bad magic number); {fix}")
    ndim = raw[3]
    dtype = np.dtype(_TYPES[raw[2]])
    start = 4 + 4 * ndim
    if len(raw) < start or (len(raw) - start) % dtype.itemsize:
        raise DataError(f"{path} is cut short (its header or last value is incomplete); {fix}")
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    body = np.frombuffer(raw, dtype=dtype, offset=start)
    if body.size != int(np.prod(shape)):
        raise DataError(f"{path} holds {body.size} values where its header says {shape}; {fix}")
    return body.reshape(shape)


def _find(root: Path, stem: str) -> Path | None:
    for name in (stem + ".gz", stem):
        if (root / name).is_file():
            return root / name
    return None


def _check_counts(name: str, part: str, found: dict[str, Path], arrays: dict[str, np.ndarray]) -> None:
    """A :class:`DataError` when the ``part`` (train or test) image and label files hold different counts."""
    images, labels = f"{part}_images", f"{part}_labels"
    if len(arrays[images]) != len(arrays[labels]):
        raise DataError(
            f"{name}: {found[images]} holds {len(arrays[images])} images but {found[labels]} holds "
            f"{len(arrays[labels])} labels; download or install them again"
        )


def _load(name: str, root: Path, how_to_get: str, val: int, seed: int) -> Splits:
    found = {key: _find(root, stem) for key, stem in _FILES.items()}
    missing = [_FILES[key] + ".gz" for key, path in found.items() if path is None]
    if missing:
        raise DataError(f"{name}: {', '.join(missing)} not found in {root}; {how_to_get}")
    arrays = {key: read_idx(path) for key, path in found.items()}
    for part in ("train", "test"):
        _check_counts(name, part, found, arrays)

    def images(key: str) -> torch.Tensor:
        return torch.from_numpy(arrays[key].astype(np.float32) / 255.0).unsqueeze(1)

    def labels(key: str) -> torch.Tensor:
        return torch.from_numpy(arrays[key].astype(np.int64))

    test = (images("test_images"), labels("test_labels"))
    return split(name, images("train_images"), labels("train_labels"), val=val, test=test, seed=seed)


def fashion_mnist(root: str | Path | None = None, *, val: int = 5000, seed: int = 0) -> Splits:
    """Fashion-MNIST: 60,000 training (``val`` of them held out for validation) and 10,000 test images, 28×28.

    ``root`` defaults to :data:`FASHION_MNIST_DIR`.
    """
    how = "install them with: apt-get install dataset-fashion-mnist, or pass root= a directory holding them"
    return _load("fashion-mnist", Path(root) if root is not None else FASHION_MNIST_DIR, how, val, seed)


def mnist(root: str | Path, *, val: int = 5000, seed: int = 0) -> Splits:
    """MNIST from the IDX files in ``root``: 60,000 training (``val`` held out) and 10,000 test images."""
    return _load("mnist", Path(root), "pass root= a directory holding the four MNIST IDX files", val, seed)
