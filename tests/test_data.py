"""Offline data sets: digits and IDX-file MNIST / Fashion-MNIST, with deterministic splits."""

from __future__ import annotations

import gzip

import numpy as np
import pytest
import torch

from fxcomp import DataError
from fxcomp.data import FASHION_MNIST_DIR, digits, fashion_mnist, mnist, read_idx


def _write_idx(path, array: np.ndarray) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(n).to_bytes(4, "big") for n in array.shape)
    payload = header + array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(payload) if path.suffix == ".gz" else payload)


def _mnist_dir(tmp_path, train: int = 30, test: int = 12):
    rng = np.random.default_rng(0)
    _write_idx(tmp_path / "train-images-idx3-ubyte.gz", rng.integers(0, 256, (train, 28, 28)))
    _write_idx(tmp_path / "train-labels-idx1-ubyte.gz", np.arange(train) % 10)
    _write_idx(tmp_path / "t10k-images-idx3-ubyte", rng.integers(0, 256, (test, 28, 28)))  # uncompressed works too
    _write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", np.arange(test) % 10)
    return tmp_path


def test_digits_splits_are_disjoint_complete_and_deterministic() -> None:
    first, again, other = digits(), digits(), digits(seed=1)
    assert (len(first.train), len(first.val), len(first.test)) == (1257, 180, 360)
    assert first.classes == 10 and first.train.tensors[0].shape[1:] == (1, 8, 8)
    assert 0 <= float(first.train.tensors[0].min()) and float(first.train.tensors[0].max()) <= 1
    assert torch.equal(first.val.tensors[0], again.val.tensors[0])
    assert not torch.equal(first.val.tensors[0], other.val.tensors[0])
    # The three parts partition the data set: together they are every image exactly once.
    parts = [torch.cat([s.tensors[0].flatten(1) for s in (d.train, d.val, d.test)]) for d in (first, other)]
    assert torch.equal(torch.unique(parts[0], dim=0), torch.unique(parts[1], dim=0))
    assert len(parts[0]) == 1797


def test_idx_files_read_back_exactly(tmp_path) -> None:
    array = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    _write_idx(tmp_path / "a.gz", array)
    assert np.array_equal(read_idx(tmp_path / "a.gz"), array)
    (tmp_path / "bad").write_bytes(b"\x01\x02\x03\x04")
    with pytest.raises(DataError, match="not an IDX file .*; download or install it again$"):
        read_idx(tmp_path / "bad")


def _damaged_gzip() -> bytes:
    """A gzip stream whose compressed body has bytes flipped (zlib, not gzip, notices)."""
    damaged = bytearray(gzip.compress(bytes(range(256)) * 40))
    damaged[20:40] = bytes(b ^ 0xFF for b in damaged[20:40])
    return bytes(damaged)


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("unpacked.gz", bytes([0, 0, 8, 1, 0, 0, 0, 2, 7, 9]), r"cannot be decompressed \(Not a gzipped file"),
        ("truncated.gz", gzip.compress(bytes([0, 0, 8, 1, 0, 0, 0, 2, 7, 9]))[:-12], "cannot be decompressed"),
        ("damaged.gz", _damaged_gzip(), r"cannot be decompressed \(Error -3 while decompressing data"),
        ("short_header", bytes([0, 0, 8, 3, 0, 0, 0, 2]), r"is cut short \(its header or last value is incomplete\)"),
        ("half_value", bytes([0, 0, 0x0B, 1, 0, 0, 0, 2, 1, 2, 3]), "is cut short"),
        ("few_values", bytes([0, 0, 8, 1, 0, 0, 0, 3, 7, 9]), r"holds 2 values where its header says \(3,\)"),
    ],
    ids=["unpacked", "truncated", "damaged", "short_header", "half_value", "few_values"],
)
def test_damaged_idx_files_say_to_fetch_them_again(tmp_path, name, content, message) -> None:
    (tmp_path / name).write_bytes(content)
    with pytest.raises(DataError, match=f"{message}.*; download or install it again$"):
        read_idx(tmp_path / name)


def test_an_unreadable_idx_path_says_to_check_it(tmp_path) -> None:
    with pytest.raises(DataError, match=r"cannot read .*missing.gz \(\[Errno 2\] No such file.*\); check the path$"):
        read_idx(tmp_path / "missing.gz")


def test_mnist_from_a_directory_holds_out_validation_from_train(tmp_path) -> None:
    splits = mnist(_mnist_dir(tmp_path), val=5)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (25, 5, 12)
    images, labels = splits.test.tensors
    assert images.shape == (12, 1, 28, 28) and images.dtype == torch.float32 and float(images.max()) <= 1
    assert labels.tolist() == [i % 10 for i in range(12)]  # the test set keeps its file order
    train, _, _ = splits.loaders(batch_size=10)
    assert [len(y) for _, y in train] == [10, 10, 5]


def test_split_sizes_are_whole_numbers_of_examples_and_zero_holds_nothing_out(tmp_path) -> None:
    everything = digits(val=0, test=0)
    assert (len(everything.train), len(everything.val), len(everything.test)) == (1797, 0, 0)
    root = _mnist_dir(tmp_path)
    unvalidated = mnist(root, val=0)
    assert (len(unvalidated.train), len(unvalidated.val), len(unvalidated.test)) == (30, 0, 12)
    for wrong in (-5, 1.5, True):
        with pytest.raises(DataError, match=rf"^digits: val is a number of examples, a whole number >= 0; got {wrong!r}$"):
            digits(val=wrong)
    with pytest.raises(DataError, match=r"^digits: test is a number of examples, a whole number >= 0; got -1$"):
        digits(test=-1)
    with pytest.raises(DataError, match=r"^digits: cannot hold out 2360 of 1797 examples and train on the rest; lower val or test$"):
        digits(val=2000)
    with pytest.raises(DataError, match=r"^mnist: cannot hold out 30 of 30 examples and train on the rest; lower val$"):
        mnist(root, val=30)


def test_image_and_label_files_of_different_lengths_are_refused(tmp_path) -> None:
    root = _mnist_dir(tmp_path)
    _write_idx(root / "t10k-labels-idx1-ubyte.gz", np.arange(11) % 10)
    with pytest.raises(DataError, match=r"^mnist: .*t10k-images-idx3-ubyte holds 12 images but .*t10k-labels-idx1-ubyte.gz holds 11 labels; download or install them again$"):
        mnist(root, val=5)


def test_missing_files_name_themselves_and_how_to_get_them(tmp_path) -> None:
    (tmp_path / "train-images-idx3-ubyte.gz").write_bytes(b"")
    with pytest.raises(DataError) as caught:
        fashion_mnist(tmp_path)
    message = str(caught.value)
    assert "train-labels-idx1-ubyte.gz" in message and "t10k-images-idx3-ubyte.gz" in message
    assert "train-images" not in message.split("not found")[0]
    assert "apt-get install dataset-fashion-mnist" in message


@pytest.mark.skipif(not FASHION_MNIST_DIR.is_dir(), reason="Debian's dataset-fashion-mnist is not installed")
def test_fashion_mnist_from_debian() -> None:
    splits = fashion_mnist()
    assert (len(splits.train), len(splits.val), len(splits.test), splits.classes) == (55000, 5000, 10000, 10)
