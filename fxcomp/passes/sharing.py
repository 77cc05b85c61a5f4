"""Weight sharing: a weight computed from a small codebook of centroids and a fixed assignment.

:class:`SharedWeights` is a ``torch.nn.utils.parametrize`` parametrization like
:class:`fxcomp.passes.Mask`: the module's ``weight`` is computed on every access
as ``centroids[assignment]``, with zeros where the assignment is −1 (pruned
entries stay exactly zero). The centroids are a parameter, so training moves
them; the gradient of a centroid is the sum of the gradients of the entries
assigned to it (Deep Compression's centroid fine-tuning), and the assignment
never changes. :func:`fxcomp.strip_masks` bakes shared weights into plain ones.
"""

from __future__ import annotations

import torch
import torch.nn as nn
from torch.nn.utils import parametrize

from fxcomp.passes.masks import give_own_class


class SharedWeights(nn.Module):
    """A parametrization returning ``centroids[assignment]`` where its input is nonzero, zero elsewhere.

    Entries assigned −1 are zero too. Reading the zeros from the input keeps a pruning
    :class:`~fxcomp.passes.Mask` working before or after it in the chain.
    """

    fxcomp_parametrization = True  # fxcomp.strip_masks bakes it
    freezes_original = True  # share_weights stops the stored tensor's gradients; baking restores them

    def __init__(self, centroids: torch.Tensor, assignment: torch.Tensor) -> None:
        super().__init__()
        if assignment.numel() and (assignment.max() >= len(centroids) or assignment.min() < -1):
            raise ValueError("the assignment refers to centroids that do not exist")
        self.centroids = nn.Parameter(centroids.detach().clone())
        index_type = torch.int16 if len(centroids) < 2**15 else torch.int32
        self.register_buffer("assignment", assignment.detach().to(index_type))

    def forward(self, tensor: torch.Tensor) -> torch.Tensor:
        """The shared weight, shaped like ``tensor``."""
        index = self.assignment.long()
        shared = self.centroids[index.clamp(min=0)].to(tensor.dtype)
        return torch.where((index >= 0) & (tensor != 0), shared, 0)

    def right_inverse(self, tensor: torch.Tensor) -> torch.Tensor:
        """What to store when the weight is assigned: the value (the weight stays the codebook's)."""
        return tensor


def share_weights(module: nn.Module, name: str, centroids: torch.Tensor, assignment: torch.Tensor) -> None:
    """Make ``module``'s tensor ``name`` the codebook ``centroids`` indexed by ``assignment`` (−1: zero).

    A mask the tensor has stays in force. The stored tensor stops taking gradients: the
    centroids are what trains. Raises ``ValueError`` if ``assignment`` is not shaped like it.
    """
    current = getattr(module, name)
    if assignment.shape != current.shape:
        raise ValueError(f"an assignment of shape {tuple(assignment.shape)} cannot share '{name}' of shape {tuple(current.shape)}")
    stored = module.parametrizations[name].original if parametrize.is_parametrized(module, name) else current
    stored.requires_grad_(False)
    give_own_class(module)
    parametrize.register_parametrization(module, name, SharedWeights(centroids.to(current.dtype), assignment))
