"""Canonical Huffman coding of non-negative integer symbols, with numpy bit streams.

A code is described by one length per symbol (0: the symbol does not occur);
codes are assigned canonically (shorter first, then by symbol), so the lengths
alone rebuild it. Lengths are limited to :data:`MAX_LENGTH` bits so that the
decoder can read one table entry per symbol.
"""

from __future__ import annotations

import heapq

import numpy as np

MAX_LENGTH = 24
_CHUNK = 1 << 20  # symbols encoded at a time (bounds the temporary bit matrix)
_CHUNK_BITS = 1 << 20  # stream bits decoded at a time (bounds the table of code windows)


class HuffmanError(ValueError):
    """A bit stream or a code table that cannot be decoded."""


def code_lengths(frequencies: np.ndarray) -> np.ndarray:
    """Huffman code lengths (uint8) for symbol ``frequencies``, at most :data:`MAX_LENGTH` bits.

    A lone symbol gets length 1. When the optimal code is too long, the frequencies
    are flattened (halved, rounding up) until it fits.
    """
    frequencies = np.asarray(frequencies, dtype=np.int64)
    lengths = np.zeros(len(frequencies), dtype=np.uint8)
    present = np.flatnonzero(frequencies)
    if len(present) == 1:
        lengths[present] = 1
    if len(present) <= 1:
        return lengths
    weights = frequencies[present]
    while True:
        depth = _tree_depths(weights)
        if depth.max() <= MAX_LENGTH:
            lengths[present] = depth
            return lengths
        weights = (weights + 1) // 2


def _tree_depths(weights: np.ndarray) -> np.ndarray:
    """Depth of each leaf in a Huffman tree over ``weights`` (ties broken by insertion order)."""
    heap = [(int(w), index, [index]) for index, w in enumerate(weights)]
    heapq.heapify(heap)
    depths = np.zeros(len(weights), dtype=np.int64)
    counter = len(weights)
    while len(heap) > 1:
        w1, _, leaves1 = heapq.heappop(heap)
        w2, _, leaves2 = heapq.heappop(heap)
        merged = leaves1 + leaves2
        depths[merged] += 1
        heapq.heappush(heap, (w1 + w2, counter, merged))
        counter += 1
    return depths


def _canonical_codes(lengths: np.ndarray) -> np.ndarray:
    """The canonical code of every symbol (as an integer of ``lengths[symbol]`` bits)."""
    codes = np.zeros(len(lengths), dtype=np.int64)
    order = sorted((int(length), symbol) for symbol, length in enumerate(lengths) if length)
    code, previous = 0, order[0][0] if order else 0
    for index, (length, symbol) in enumerate(order):
        if index:
            code = (code + 1) << (length - previous)
        codes[symbol] = code
        previous = length
    return codes


def encode(symbols: np.ndarray, lengths: np.ndarray) -> tuple[np.ndarray, int]:
    """``symbols`` as a packed bit stream (uint8, most significant bit first) and its length in bits."""
    symbols = np.asarray(symbols, dtype=np.int64)
    if len(symbols) == 0:
        return np.zeros(0, dtype=np.uint8), 0
    table = _canonical_codes(lengths)
    sizes = lengths.astype(np.int64)[symbols]
    if (sizes == 0).any():
        raise HuffmanError("a symbol to encode has no code")
    width = int(sizes.max())
    shifts = np.arange(width - 1, -1, -1)
    pieces = []
    for start in range(0, len(symbols), _CHUNK):
        chunk, size = table[symbols[start : start + _CHUNK]], sizes[start : start + _CHUNK]
        bits = (chunk[:, None] >> shifts) & 1  # each code right-aligned in `width` columns
        pieces.append(bits[np.arange(width)[None, :] >= (width - size)[:, None]].astype(np.uint8))
    stream = np.concatenate(pieces)
    return np.packbits(stream), len(stream)


def decode(data: np.ndarray, bit_count: int, lengths: np.ndarray, count: int) -> np.ndarray:
    """Read ``count`` symbols from the first ``bit_count`` bits of ``data`` coded with ``lengths``.

    Raises :class:`HuffmanError` when the table is not a valid prefix code or the stream
    ends early, holds bits that are no code, or has bits left over.
    """
    if count == 0:
        if bit_count:
            raise HuffmanError("bits left over after the last symbol")
        return np.zeros(0, dtype=np.int64)
    lengths = np.asarray(lengths, dtype=np.int64)
    if not lengths.any() or lengths.max() > MAX_LENGTH or bit_count > 8 * len(data):
        raise HuffmanError("invalid code table or stream length")
    width = int(lengths.max())
    if sum(2.0 ** -length for length in lengths if length) > 1:
        raise HuffmanError("the code lengths do not form a prefix code")
    table_symbol = np.full(1 << width, -1, dtype=np.int64)
    table_length = np.zeros(1 << width, dtype=np.int64)
    codes = _canonical_codes(lengths)
    for symbol in np.flatnonzero(lengths):
        start = int(codes[symbol]) << (width - int(lengths[symbol]))
        span = 1 << (width - int(lengths[symbol]))
        table_symbol[start : start + span] = symbol
        table_length[start : start + span] = lengths[symbol]
    bits = np.unpackbits(np.asarray(data, dtype=np.uint8))[:bit_count]
    padded = np.concatenate([bits, np.zeros(width, dtype=np.uint8)])
    symbol_list, length_list = table_symbol.tolist(), table_length.tolist()
    symbols = np.empty(count, dtype=np.int64)
    index = position = 0
    while index < count:  # a chunk of the stream at a time, so memory stays bounded for large weights
        if position >= bit_count:
            raise HuffmanError("the stream ends before the last symbol")
        start, stop = position, min(bit_count, position + _CHUNK_BITS)
        windows = np.zeros(stop - start, dtype=np.int64)  # the `width` bits starting at each position
        for offset in range(width):
            windows = (windows << 1) | padded[start + offset : stop + offset]
        window_list = windows.tolist()
        while index < count and position < stop:
            entry = window_list[position - start]
            symbol = symbol_list[entry]
            if symbol < 0:
                raise HuffmanError("the stream holds bits that are no code")
            symbols[index] = symbol
            position += length_list[entry]
            index += 1
    if position != bit_count:
        raise HuffmanError("the stream ends inside a code" if position > bit_count else "bits left over after the last symbol")
    return symbols
