"""Channel groups: the sets of places whose channels must be pruned together."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


class LabelSets:
    """Union-find over channel labels (dense integers from 0)."""

    def __init__(self) -> None:
        self._parent: list[int] = []

    def new(self, count: int) -> int:
        """Allocate ``count`` fresh labels; return the first."""
        start = len(self._parent)
        self._parent.extend(range(start, start + count))
        return start

    def find(self, label: int) -> int:
        """The root of ``label``'s set."""
        parent = self._parent
        root = label
        while parent[root] != root:
            root = parent[root]
        while parent[label] != root:
            parent[label], label = root, parent[label]
        return root

    def union(self, left: torch.Tensor, right: torch.Tensor) -> None:
        """Merge ``left[i]`` with ``right[i]`` wherever both are labels (≥ 0)."""
        both = (left >= 0) & (right >= 0)
        if not bool(both.any()):
            return
        # Distinct pairs through one 1-D key: unique over rows is far slower.
        keys = (left[both] * len(self._parent) + right[both]).unique()
        for key in keys.tolist():
            a, b = divmod(key, len(self._parent))
            root_a, root_b = self.find(a), self.find(b)
            if root_a != root_b:
                self._parent[max(root_a, root_b)] = min(root_a, root_b)

    def roots(self) -> torch.Tensor:
        """The root of every label at once. A root is the smallest label of its set."""
        parent = torch.tensor(self._parent, dtype=torch.int64)
        while True:
            jumped = parent[parent]
            if torch.equal(jumped, parent):
                return parent
            parent = jumped

    def __len__(self) -> int:
        return len(self._parent)


@dataclass(frozen=True)
class Member:
    """One axis of one tensor whose entries belong to a group's channels.

    ``name`` is the qualified name of a parameter or buffer in the graph module
    (``layer1.0.conv1.weight``) or, for ``kind="split"``, of the graph node whose
    split sizes follow the channels, or, for ``kind="shape"``, of the view /
    reshape / expand node whose literal size for output axis ``axis`` must
    become the number of entries kept. ``channels[i]`` is the group channel that
    entry ``i`` along ``axis`` belongs to, or -1 when it belongs to another group.
    """

    name: str
    axis: int
    channels: tuple[int, ...]
    kind: str = "parameter"


@dataclass
class ChannelGroup:
    """Channels that must be pruned together, where they live, and what constrains them.

    Pruning group channel ``c`` removes, from every member, the entries whose
    ``channels`` value is ``c``. A group with ``pinned`` reasons must not be pruned.
    ``segments`` > 1 means the channels form that many equal contiguous segments
    (grouped convolution, GroupNorm) and every segment must lose the same number.
    """

    channels: int
    producers: list[str]
    members: list[Member] = field(default_factory=list)
    pinned: list[str] = field(default_factory=list)
    segments: int = 1

    @property
    def prunable(self) -> bool:
        """Whether the group may be pruned (it is not pinned)."""
        return not self.pinned
