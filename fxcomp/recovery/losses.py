"""Distillation losses as ``nn.Module`` s: usable in any training loop.

Every loss takes the student's tensor first and the teacher's second, and detaches
the teacher's, so gradients reach only the student (and the loss's own adapter).
The losses that normalize (attention transfer, relational KD, similarity-preserving)
compute in float32 when the features are float16 or bfloat16, whose smallest
numbers cannot hold the normalization's guard against dividing by zero.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from fxcomp.errors import RecipeError


class KDLoss(nn.Module):
    """Knowledge distillation (Hinton et al., 2015) on logits.

    ``alpha · T² · KL(softmax(t/T) ‖ softmax(s/T)) + (1 − alpha) · CE(s, target)``. The T²
    factor keeps the soft term's gradients at the same scale for every temperature. Without
    a target only the soft term (times T²) is returned.
    """

    def __init__(self, temperature: float = 4.0, alpha: float = 0.9) -> None:
        super().__init__()
        if temperature <= 0 or not 0 <= alpha <= 1:
            raise RecipeError(f"KDLoss needs T (temperature) > 0 and alpha in [0, 1]; got T={temperature}, alpha={alpha}")
        self.temperature, self.alpha = temperature, alpha

    def forward(self, student: torch.Tensor, teacher: torch.Tensor, target: torch.Tensor | None = None) -> torch.Tensor:
        t = self.temperature
        soft = F.kl_div(
            F.log_softmax(student / t, dim=-1), F.log_softmax(teacher.detach() / t, dim=-1), reduction="batchmean", log_target=True
        ) * (t * t)
        if target is None:
            return soft
        return self.alpha * soft + (1 - self.alpha) * F.cross_entropy(student, target)


def _match_spatial(student: torch.Tensor, teacher: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Average-pool the larger feature map to the smaller one's height and width."""
    if student.dim() < 3 or student.shape[2:] == teacher.shape[2:]:
        return student, teacher
    size = tuple(min(a, b) for a, b in zip(student.shape[2:], teacher.shape[2:]))
    return F.adaptive_avg_pool2d(student, size), F.adaptive_avg_pool2d(teacher, size)


class HintLoss(nn.Module):
    """FitNet hints (Romero et al., 2015): a learned adapter maps the student feature onto the teacher's.

    The adapter is a 1×1 convolution for ``(N, C, H, W)`` features and a linear layer for
    ``(N, C)`` ones; its parameters must be trained with the student's. The loss is the mean
    squared error to the teacher feature (pooled to the student's spatial size if larger).
    """

    def __init__(self, student_channels: int, teacher_channels: int, *, spatial: bool = True) -> None:
        super().__init__()
        if spatial:
            self.adapter: nn.Module = nn.Conv2d(student_channels, teacher_channels, 1, bias=False)
        else:
            self.adapter = nn.Linear(student_channels, teacher_channels, bias=False)

    def forward(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        student, teacher = _match_spatial(self.adapter(student), teacher.detach())
        return F.mse_loss(student, teacher)


def _wide(x: torch.Tensor) -> torch.Tensor:
    """``x`` in float32 if it is in a narrower float type: normalizing divides by a norm clamped
    to 1e-12, which is 0 in float16 (an all-zero row, or an angle's zero difference, gives NaN)."""
    return x.float() if x.is_floating_point() and torch.finfo(x.dtype).bits < 32 else x


def attention_map(feature: torch.Tensor, p: float = 2.0) -> torch.Tensor:
    """Spatial attention of a ``(N, C, H, W)`` feature: the mean over channels of ``|f|^p``, flattened, unit L2 norm.

    Computed in float32 at least (a half-precision feature gives a float32 map).
    """
    return F.normalize(_wide(feature).abs().pow(p).mean(dim=1).flatten(1), dim=1)


class AttentionTransferLoss(nn.Module):
    """Attention transfer (Zagoruyko & Komodakis, 2017): match the students' spatial attention maps.

    Channel counts may differ; feature maps of different sizes are pooled to the smaller.
    The loss is the mean squared difference of the normalized maps.
    """

    def __init__(self, p: float = 2.0) -> None:
        super().__init__()
        self.p = p

    def forward(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        student, teacher = _match_spatial(student, teacher.detach())
        return (attention_map(student, self.p) - attention_map(teacher, self.p)).pow(2).mean()


def _pairwise_distances(x: torch.Tensor) -> torch.Tensor:
    squared = x.pow(2).sum(1)
    return (squared.unsqueeze(0) + squared.unsqueeze(1) - 2 * x @ x.t()).clamp(min=1e-12).sqrt()


class RelationalKDLoss(nn.Module):
    """Relational KD (Park et al., 2019): match distances between examples and angles among triples.

    Features are flattened per example. Distances are divided by their mean over the batch;
    both terms use the Huber loss, weighted by ``distance_weight`` and ``angle_weight``
    (the paper's 25 and 50). A batch with too few examples for a term (two for distances,
    three for angles; the last batch of an epoch may hold one) gives that term 0.
    """

    def __init__(self, distance_weight: float = 25.0, angle_weight: float = 50.0) -> None:
        super().__init__()
        self.distance_weight, self.angle_weight = distance_weight, angle_weight

    @staticmethod
    def _distances(x: torch.Tensor) -> torch.Tensor:
        d = _pairwise_distances(x)
        off_diagonal = ~torch.eye(len(x), dtype=torch.bool, device=x.device)
        d = d * off_diagonal
        return d / d[off_diagonal].mean().clamp(min=1e-12)

    @staticmethod
    def _angles(x: torch.Tensor) -> torch.Tensor:
        unit = F.normalize(x.unsqueeze(0) - x.unsqueeze(1), dim=2)  # unit[i, j] = (x_j - x_i) / |…|
        return torch.bmm(unit, unit.transpose(1, 2)).flatten()

    def forward(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        s, t = _wide(student.flatten(1)), _wide(teacher.detach().flatten(1))
        loss = s.new_zeros(())
        if self.distance_weight and len(s) >= 2:
            loss = loss + self.distance_weight * F.smooth_l1_loss(self._distances(s), self._distances(t))
        if self.angle_weight and len(s) >= 3:
            loss = loss + self.angle_weight * F.smooth_l1_loss(self._angles(s), self._angles(t))
        return loss


def _unit_rows(matrix: torch.Tensor) -> torch.Tensor:
    """Each row divided by its L2 norm; an all-zero row (an example whose features are all zero) stays
    zero with the gradient it would have unnormalized (``F.normalize`` divides it by 1e-12 instead,
    which multiplies its gradient by 1e12: infinite in float16)."""
    norm = torch.linalg.vector_norm(matrix, dim=1, keepdim=True)
    return matrix / torch.where(norm > 0, norm, torch.ones_like(norm))


class SimilarityPreservingLoss(nn.Module):
    """Similarity-preserving KD (Tung & Mori, 2019): match the batch's example-by-example similarity.

    ``G = normalize_rows(f fᵀ)`` for the flattened features of student and teacher (the row
    of an example whose features are all zero stays zero); the loss is ``‖G_s − G_t‖²_F / N²``.
    """

    def forward(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        s, t = _wide(student.flatten(1)), _wide(teacher.detach().flatten(1))
        g_s, g_t = _unit_rows(s @ s.t()), _unit_rows(t @ t.t())
        return (g_s - g_t).pow(2).sum() / (len(s) ** 2)


def mutual_loss(logits: torch.Tensor, peers: list[torch.Tensor]) -> torch.Tensor:
    """Deep mutual learning's mimicry term: mean KL(p_peer ‖ p) over the (detached) peers."""
    log_p = F.log_softmax(logits, dim=-1)
    terms = [F.kl_div(log_p, F.log_softmax(peer.detach(), dim=-1), reduction="batchmean", log_target=True) for peer in peers]
    return torch.stack(terms).mean()
