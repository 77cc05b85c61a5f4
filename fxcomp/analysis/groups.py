"""Channel groups: the sets of places whose channels must be pruned together."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch


class LabelSets:
    """Union-find over channel labels (dense integers from 0), with whole arrays of labels per call.

    Every set is a tree whose parent pointers go to smaller labels, so the root of a set
    is its smallest label.
    """

    def __init__(self) -> None:
        self._parent = np.zeros(0, dtype=np.int64)
        self._size = 0

    def new(self, count: int) -> int:
        """Allocate ``count`` fresh labels; return the first."""
        start, end = self._size, self._size + count
        if end > len(self._parent):
            grown = np.empty(max(end, 2 * len(self._parent)), dtype=np.int64)
            grown[:start] = self._parent[:start]
            self._parent = grown
        self._parent[start:end] = np.arange(start, end)
        self._size = end
        return start

    def find(self, labels: torch.Tensor) -> torch.Tensor:
        """The root of every label in ``labels`` (-1 stays -1), in its shape."""
        flat = labels.reshape(-1).numpy()
        found = flat.copy()
        valid = flat >= 0
        found[valid] = self._roots(self._allocated(flat[valid]))
        return torch.from_numpy(found).reshape(labels.shape)

    def _allocated(self, labels: np.ndarray) -> np.ndarray:
        if len(labels) and int(labels.max()) >= self._size:
            raise IndexError(f"label {int(labels.max())} was never allocated (there are {self._size})")
        return labels

    def _roots(self, labels: np.ndarray) -> np.ndarray:
        """Roots of valid ``labels``, shortening the paths walked to one step."""
        parent, roots = self._parent, labels
        while True:
            up = parent[roots]
            if np.array_equal(up, roots):
                break
            roots = up
        parent[labels] = roots
        return roots

    def union(self, left: torch.Tensor, right: torch.Tensor) -> None:
        """Merge ``left[i]`` with ``right[i]`` wherever both are labels (≥ 0)."""
        left, right = left.reshape(-1).numpy(), right.reshape(-1).numpy()
        both = (left >= 0) & (right >= 0)
        left, right = self._allocated(left[both]), self._allocated(right[both])
        while len(left):
            left_root, right_root = self._roots(left), self._roots(right)
            apart = left_root != right_root
            left, right = left[apart], right[apart]
            high = np.maximum(left_root[apart], right_root[apart])
            low = np.minimum(left_root[apart], right_root[apart])
            # Each root hangs under the smallest root paired with it; pairs still apart go round again.
            np.minimum.at(self._parent, high, low)

    def roots(self) -> torch.Tensor:
        """The root of every label at once."""
        return torch.from_numpy(self._roots(np.arange(self._size)).copy())

    def __len__(self) -> int:
        return self._size


@dataclass(frozen=True)
class Member:
    """One axis of one tensor whose entries belong to a group's channels.

    ``name`` is the qualified name of a parameter or buffer in the graph module
    (``layer1.0.conv1.weight``) or, for ``kind="split"``, of the graph node whose
    split sizes follow the channels, or, for ``kind="shape"``, of the view /
    reshape / expand node whose literal size for output axis ``axis`` (the layer_norm
    node, or norm module without parameters or buffers, whose size) must
    become the number of entries kept. Of the ``size`` entries along ``axis``,
    entry ``positions[i]`` belongs to group channel ``group_channels[i]``
    (``positions`` ascending, a ``range`` where they are contiguous); the other entries belong to other groups.
    """

    name: str
    axis: int
    size: int
    positions: Sequence[int]
    group_channels: tuple[int, ...]
    kind: str = "parameter"

    def __post_init__(self) -> None:
        positions = self.positions
        if type(positions) is not range:  # one form per set of positions, so equal members compare equal
            positions = tuple(positions)
            if positions and positions[-1] - positions[0] == len(positions) - 1:
                positions = range(positions[0], positions[-1] + 1)
            object.__setattr__(self, "positions", positions)
        if type(self.group_channels) is not tuple:
            object.__setattr__(self, "group_channels", tuple(self.group_channels))
        if len(self.positions) != len(self.group_channels):
            raise ValueError(f"member '{self.name}': {len(self.positions)} positions but {len(self.group_channels)} channels")

    @functools.cached_property
    def channels(self) -> tuple[int, ...]:
        """For every entry along ``axis``, the group channel it belongs to, or -1 for another group's."""
        dense = [-1] * self.size
        for position, channel in zip(self.positions, self.group_channels):
            dense[position] = channel
        return tuple(dense)

    @property
    def whole(self) -> bool:
        """Whether every entry along ``axis`` belongs to this group."""
        return len(self.positions) == self.size


@dataclass
class ChannelGroup:
    """Channels that must be pruned together, where they live, and what constrains them.

    Pruning group channel ``c`` removes, from every member, the entries whose
    ``channels`` value is ``c``. A group with ``pinned`` reasons must not be pruned.
    ``segments`` > 1 means the channels form that many equal contiguous segments
    (grouped convolution, GroupNorm) and every segment must lose the same number.
    Pruning must keep at least ``min_channels`` (2 where a ``squeeze`` without a dim
    would drop an axis left with one channel).
    """

    channels: int
    producers: list[str]
    members: list[Member] = field(default_factory=list)
    pinned: list[str] = field(default_factory=list)
    segments: int = 1
    min_channels: int = 1

    @property
    def prunable(self) -> bool:
        """Whether the group may be pruned (it is not pinned)."""
        return not self.pinned
