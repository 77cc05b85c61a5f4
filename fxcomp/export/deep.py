"""The Deep Compression weight codec (Han et al., 2016): sparse, shared, Huffman-coded weights.

Each weight tensor (floating point, two or more dimensions) is stored as

* its nonzero entries in row-major order (CSR over the flattened tensor), each
  position as the *difference* from the previous one in ``index_bits`` bits; a
  gap longer than ``2**index_bits`` gets filler zeros, entries of value zero
  placed every ``2**index_bits`` positions;
* each entry's value as an index into a codebook of the tensor's distinct
  values (the cluster centroids after weight sharing), code 0 being the filler
  zero; the codebook is stored in float. A tensor with more than
  :data:`MAX_CODEBOOK` distinct values keeps its values as raw floats;
* the value indices and the position differences Huffman-coded, each stream
  with its own canonical code (:mod:`fxcomp.export.huffman`).

Values are compared and stored by bit pattern, so decoding gives back exactly
the saved tensor (``-0.0`` and NaN included) with its strides (a transposed or
channels-last weight stays so, and computes bitwise as before; a view that is
not dense gets the dense strides of its dimension order), and a CRC-32 of every
tensor catches a corrupted file. Other tensors (biases, normalization
parameters, buffers) are stored as they are and count at full size in the report.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from tabulate import tabulate

from fxcomp.export.huffman import HuffmanError, code_lengths, decode, encode

MAX_CODEBOOK = 1 << 16
_BITS = {torch.float32: torch.int32, torch.float64: torch.int64, torch.float16: torch.int16, torch.bfloat16: torch.int16}


class CodecError(ValueError):
    """Encoded data that is inconsistent or corrupted."""


def codable(tensor: torch.Tensor) -> bool:
    """Whether the codec compresses ``tensor`` (a floating-point tensor of two or more dimensions)."""
    return tensor.dim() >= 2 and tensor.dtype in _BITS and tensor.numel() > 0


@dataclass(frozen=True)
class TensorSize:
    """What coding one tensor gives: entries kept, bits per value index, and sizes in bytes."""

    name: str
    numel: int
    nonzero: int
    value_bits: int | None  # None: values stored raw (too many distinct values)
    index_bits: int
    dense_bytes: float
    coded_bytes: float  # fixed-width indices and differences, plus the codebook
    huffman_bytes: float  # Huffman-coded streams, code tables and codebook

    @property
    def kept(self) -> float:
        """The fraction of the tensor's entries that are nonzero."""
        return self.nonzero / self.numel if self.numel else 0.0


def _bit_patterns(tensor: torch.Tensor) -> np.ndarray:
    """The entries' bit patterns as integers of the float's width (numpy cannot hold bfloat16)."""
    return tensor.detach().cpu().view(_BITS[tensor.dtype]).contiguous().reshape(-1).numpy()


def _crc(tensor: torch.Tensor) -> int:
    return zlib.crc32(_bit_patterns(tensor).tobytes())


def encode_tensor(tensor: torch.Tensor, index_bits: int) -> tuple[dict[str, Any], dict[str, torch.Tensor], TensorSize]:
    """Code ``tensor``: a JSON-serializable description, the payload arrays, and its sizes."""
    patterns = _bit_patterns(tensor)
    positions = np.flatnonzero(patterns != 0)
    step = 1 << index_bits
    gaps = np.diff(positions, prepend=-1)  # ≥ 1
    fillers = (gaps - 1) // step  # filler zeros needed before each entry
    entry_count = len(positions) + int(fillers.sum())
    # Differences of the entries, fillers included: each filler advances `step`, the entry the remainder.
    differences = np.full(entry_count, step, dtype=np.int64)
    entry_index = np.arange(len(positions)) + np.cumsum(fillers)
    differences[entry_index] = gaps - fillers * step
    values = patterns[positions]
    distinct = np.unique(values)
    width = patterns.itemsize * 8
    payload: dict[str, torch.Tensor] = {}
    value_lengths = None
    if len(distinct) <= MAX_CODEBOOK:
        symbols = np.zeros(entry_count, dtype=np.int64)  # 0: a filler zero
        symbols[entry_index] = np.searchsorted(distinct, values) + 1
        value_lengths = code_lengths(np.bincount(symbols, minlength=len(distinct) + 1))
        stream, value_bit_count = encode(symbols, value_lengths)
        payload["values"] = torch.from_numpy(stream)
        payload["value_lengths"] = torch.from_numpy(value_lengths)
        payload["codebook"] = torch.from_numpy(distinct)
        value_bits = max(1, math.ceil(math.log2(len(distinct) + 1)))
        coded_value_bits = entry_count * value_bits
        huffman_value_bits = value_bit_count + 8 * len(value_lengths)
        codebook_bits = len(distinct) * width
    else:
        raw = np.zeros(entry_count, dtype=patterns.dtype)
        raw[entry_index] = values
        payload["raw"] = torch.from_numpy(raw)
        value_bits, value_bit_count = None, 0
        coded_value_bits = huffman_value_bits = entry_count * width
        codebook_bits = 0
    difference_lengths = code_lengths(np.bincount(differences - 1, minlength=step))
    difference_stream, difference_bit_count = encode(differences - 1, difference_lengths)
    payload["differences"] = torch.from_numpy(difference_stream)
    payload["difference_lengths"] = torch.from_numpy(difference_lengths)
    meta = {
        "shape": list(tensor.shape),
        "stride": list(torch.empty_like(tensor, device="meta").stride()),  # dense, in the tensor's dimension order
        "dtype": str(tensor.dtype).removeprefix("torch."),
        "index_bits": index_bits,
        "entries": entry_count,
        "value_bit_count": value_bit_count,
        "difference_bit_count": difference_bit_count,
        "crc32": _crc(tensor),
    }
    size = TensorSize(
        name="",
        numel=tensor.numel(),
        nonzero=len(positions),
        value_bits=value_bits,
        index_bits=index_bits,
        dense_bytes=tensor.numel() * width / 8,
        coded_bytes=(coded_value_bits + entry_count * index_bits + codebook_bits) / 8,
        huffman_bytes=(huffman_value_bits + difference_bit_count + 8 * len(difference_lengths) + codebook_bits) / 8,
    )
    return meta, payload, size


def _dense_stride(shape: list[int], stride: Any) -> list[int]:
    """``stride`` (contiguous if None), checked to lay ``shape`` out densely without overlap; raises :class:`CodecError`."""
    if stride is None:
        return list(torch.empty(shape, device="meta").stride())
    if not (
        isinstance(stride, list)
        and len(stride) == len(shape)
        and all(type(step) is int and 0 <= step < 1 << 63 for step in stride)
    ):
        raise CodecError("strides that do not fit the shape")
    expected = 1
    for size, step in sorted(zip(shape, stride), key=lambda pair: pair[1]):
        if size > 1:  # the step of a dimension of size 0 or 1 is never taken
            if step != expected:
                raise CodecError("strides of an overlapping or sparse layout")
            expected *= size
    return stride


def decode_tensor(meta: dict[str, Any], payload: dict[str, torch.Tensor]) -> torch.Tensor:
    """The tensor :func:`encode_tensor` coded; raises :class:`CodecError` for inconsistent or corrupted data."""
    try:
        dtype = getattr(torch, meta["dtype"])
        shape = [int(s) for s in meta["shape"]]
        index_bits = int(meta["index_bits"])
        entries = int(meta["entries"])
        if dtype not in _BITS or any(s < 0 for s in shape) or entries < 0 or not 0 <= index_bits <= 30:
            raise CodecError("bad tensor description")
        stride = _dense_stride(shape, meta.get("stride"))
        differences = decode(
            payload["differences"].numpy(), int(meta["difference_bit_count"]), payload["difference_lengths"].numpy(), entries
        ) + 1
        numel = math.prod(shape)
        positions = np.cumsum(differences) - 1
        if entries and positions[-1] >= numel:
            raise CodecError("an entry lies outside the tensor")
        flat = torch.zeros(numel, dtype=_BITS[dtype]).numpy()
        if "raw" in payload:
            values = payload["raw"].numpy()
            if len(values) != entries or values.dtype != flat.dtype:
                raise CodecError("raw values do not match the entries")
        else:
            codebook = payload["codebook"].numpy()
            if codebook.dtype != flat.dtype:
                raise CodecError("codebook of the wrong type")
            symbols = decode(payload["values"].numpy(), int(meta["value_bit_count"]), payload["value_lengths"].numpy(), entries)
            if symbols.max(initial=0) > len(codebook):
                raise CodecError("a value index lies outside the codebook")
            values = np.concatenate([np.zeros(1, dtype=flat.dtype), codebook])[symbols]
        flat[positions] = values
    except (KeyError, TypeError, ValueError, AttributeError, OverflowError, MemoryError, RuntimeError, HuffmanError) as error:
        raise CodecError(str(error).strip().partition("\n")[0] or type(error).__name__) from error
    bits = torch.empty_strided(shape, stride, dtype=_BITS[dtype]).copy_(torch.from_numpy(flat).reshape(shape))
    tensor = bits.view(dtype)
    if _crc(tensor) != meta.get("crc32"):
        raise CodecError("checksum mismatch: the weights are corrupted")
    return tensor


@dataclass
class CodecReport:
    """Per coded tensor and in total: entries kept, bits, bytes and compression vs float, before and after Huffman.

    ``other_bytes`` counts the tensors stored as they are (biases, norms, buffers).
    """

    layers: list[TensorSize]
    other_bytes: float

    def totals(self) -> tuple[float, float, float]:
        """Dense, fixed-width-coded and Huffman-coded bytes of every tensor (others at full size)."""
        dense = sum(layer.dense_bytes for layer in self.layers) + self.other_bytes
        coded = sum(layer.coded_bytes for layer in self.layers) + self.other_bytes
        huffman = sum(layer.huffman_bytes for layer in self.layers) + self.other_bytes
        return dense, coded, huffman

    @property
    def ratio(self) -> float:
        """Compression vs storing every tensor in float, after Huffman coding."""
        dense, _, huffman = self.totals()
        return dense / huffman if huffman else math.inf

    @property
    def ratio_before_huffman(self) -> float:
        """Compression vs storing every tensor in float, with fixed-width codes (before Huffman coding)."""
        dense, coded, _ = self.totals()
        return dense / coded if coded else math.inf

    def __str__(self) -> str:
        rows = [
            [
                layer.name,
                f"{layer.numel:,}",
                f"{100 * layer.kept:.1f}%",
                "raw" if layer.value_bits is None else layer.value_bits,
                layer.index_bits,
                f"{layer.coded_bytes:,.0f}",
                f"{layer.huffman_bytes:,.0f}",
                f"{layer.dense_bytes / layer.coded_bytes:.1f}×" if layer.coded_bytes else "-",
                f"{layer.dense_bytes / layer.huffman_bytes:.1f}×" if layer.huffman_bytes else "-",
            ]
            for layer in self.layers
        ]
        dense, coded, huffman = self.totals()
        rows.append(["other tensors (raw)", "", "", "", "", f"{self.other_bytes:,.0f}", f"{self.other_bytes:,.0f}", "", ""])
        rows.append(["total", "", "", "", "", f"{coded:,.0f}", f"{huffman:,.0f}", f"{dense / coded:.1f}×", f"{dense / huffman:.1f}×"])
        headers = ["tensor", "weights", "kept", "value bits", "index bits", "bytes", "bytes (Huffman)", "ratio", "ratio (Huffman)"]
        return tabulate(rows, headers=headers)
