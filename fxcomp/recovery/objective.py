"""Training objectives built from a ``distill`` spec: cross-entropy plus distillation terms.

A spec is a dict (or a list of them) with a ``kind`` and its options:

* ``{kind: kd, T: 4, alpha: 0.9}``: :class:`KDLoss` on the logits (it includes the
  cross-entropy, weighted ``1 − alpha``);
* ``{kind: fitnet, student: NODE, teacher: NODE, weight: 1}``: :class:`HintLoss`;
* ``{kind: attention, student: [NODE, …], teacher: [NODE, …], weight: 1000}``:
  :class:`AttentionTransferLoss` per pair;
* ``{kind: rkd, student: NODE, teacher: NODE, distance_weight: 25, angle_weight: 50}``:
  :class:`RelationalKDLoss` on an embedding (e.g. the pooled features before the
  classifier; with the paper's weights, relations between logits swamp the cross-entropy);
* ``{kind: sp, student: NODE, teacher: NODE, weight: 3000}``: similarity-preserving.

``NODE`` is a qualified node name, or ``output`` for the logits. Without ``kd`` the
objective adds plain cross-entropy.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from fxcomp.arguments import described
from fxcomp.errors import RecipeError, TrainingError
from fxcomp.passes.options import number
from fxcomp.recovery.losses import AttentionTransferLoss, HintLoss, KDLoss, RelationalKDLoss, SimilarityPreservingLoss

OUTPUT = "output"
"""The node name that stands for the model's output (its logits)."""

_KINDS: dict[str, dict[str, Any]] = {
    "kd": {"T": 4.0, "alpha": 0.9},
    "fitnet": {"student": None, "teacher": None, "weight": 1.0},
    "attention": {"student": None, "teacher": None, "weight": 1000.0},
    "rkd": {"student": None, "teacher": None, "distance_weight": 25.0, "angle_weight": 50.0},
    "sp": {"student": None, "teacher": None, "weight": 3000.0},
}


@dataclass
class _Term:
    kind: str
    loss: nn.Module | None  # a FitNet adapter is built once the feature sizes are known
    student: list[str]
    teacher: list[str]
    weight: float = 1.0


@dataclass
class Objective:
    """Cross-entropy and distillation terms, and which features each side must expose."""

    terms: list[_Term] = field(default_factory=list)

    @property
    def needs_teacher(self) -> bool:
        """Whether any distillation term reads the teacher."""
        return bool(self.terms)

    @property
    def has_kd(self) -> bool:
        """Whether a term distills the output logits (KD)."""
        return any(term.kind == "kd" for term in self.terms)

    def feature_names(self, side: str) -> list[str]:
        """The node names (besides the output) whose values ``side`` ('student' / 'teacher') must return."""
        names = [name for term in self.terms for name in getattr(term, side) if name != OUTPUT]
        return list(dict.fromkeys(names))

    def build(self, student: dict[str, torch.Tensor], teacher: dict[str, torch.Tensor]) -> None:
        """Check that each term's pairs fit and create the FitNet adapters from one batch's features
        (their channel counts; the student feature's dtype and device); a :class:`fxcomp.TrainingError`
        names a pair that does not fit."""
        for term in self.terms:
            for s_name, t_name in zip(term.student, term.teacher):
                problem = _pair_problem(term.kind, student[s_name], teacher[t_name])
                if problem is not None:
                    side = "output" if s_name == OUTPUT else f"'{s_name}' and the teacher's '{t_name}'"
                    raise TrainingError(f"distill {term.kind}: the student's {side}: {problem}")
            if term.loss is None:
                s, t = student[term.student[0]], teacher[term.teacher[0]]
                term.loss = HintLoss(s.shape[1], t.shape[1], spatial=s.dim() == 4).to(s.device, s.dtype)

    def parameters(self) -> list[nn.Parameter]:
        """Trainable parameters of the terms (FitNet adapters)."""
        return [p for term in self.terms if term.loss is not None for p in term.loss.parameters()]

    def __call__(
        self, student: dict[str, torch.Tensor], teacher: dict[str, torch.Tensor] | None, target: torch.Tensor
    ) -> torch.Tensor:
        """The loss for one batch; ``student``/``teacher`` map node names (and ``output``) to values."""
        logits = student[OUTPUT]
        loss = logits.new_zeros(()) if self.has_kd else F.cross_entropy(logits, target)
        for term in self.terms:
            if teacher is None or term.loss is None:
                raise RuntimeError("distillation terms need the teacher's outputs and built adapters")
            if term.kind == "kd":
                loss = loss + term.loss(logits, teacher[OUTPUT], target)
                continue
            for s_name, t_name in zip(term.student, term.teacher):
                loss = loss + term.weight * term.loss(student[s_name], teacher[t_name])
        return loss


def _pair_problem(kind: str, student: torch.Tensor, teacher: torch.Tensor) -> str | None:
    """Why a distillation term of ``kind`` cannot compare these two values, or None."""
    shapes = f"{described(student.shape)} against {described(teacher.shape)}"
    if kind == "kd" and student.shape != teacher.shape:
        return f"{shapes}; distill from a teacher with the same outputs"
    if kind == "fitnet" and (student.dim() != teacher.dim() or student.dim() not in (2, 4)):
        return f"{shapes}; FitNet pairs two feature maps (N×C×H×W) or two feature vectors (N×C)"
    if kind == "attention" and (student.dim() != 4 or teacher.dim() != 4):
        return f"{shapes}; attention transfer pairs two feature maps (N×C×H×W)"
    if student.shape[0] != teacher.shape[0]:
        return f"{shapes}; both must keep the batch dimension first"
    return None


def _names(value: Any, kind: str, side: str) -> list[str]:
    names = [value] if isinstance(value, str) else list(value) if isinstance(value, (list, tuple)) else None
    if not names or not all(isinstance(n, str) for n in names):
        raise RecipeError(f"distill {kind}: '{side}' must name a node (or a list of nodes), e.g. {side}: layer3")
    return names


def objective(spec: Any) -> Objective:
    """Build the :class:`Objective` for a ``distill`` spec (None: cross-entropy alone)."""
    if spec is None:
        return Objective()
    specs: Sequence[Any] = spec if isinstance(spec, (list, tuple)) else [spec]
    terms = []
    for entry in specs:
        if not isinstance(entry, dict) or not isinstance(entry.get("kind"), str) or entry["kind"] not in _KINDS:
            raise RecipeError(f"distill: each entry needs a kind, one of {', '.join(_KINDS)}; got {entry!r}")
        kind = entry["kind"]
        unknown = set(entry) - {"kind", *_KINDS[kind]}
        if unknown:
            raise RecipeError(f"distill {kind}: unknown option(s) {', '.join(sorted(unknown))}; known: {', '.join(_KINDS[kind])}")
        options = {**_KINDS[kind], **{k: v for k, v in entry.items() if k != "kind"}}
        for key, value in options.items():
            if key not in ("student", "teacher"):
                low = 0 if key.endswith("weight") else None  # a negative weight would reward moving away
                options[key] = number(low)(value, f"distill {kind}.{key}")
        if kind == "kd":
            try:
                terms.append(_Term(kind, KDLoss(options["T"], options["alpha"]), [OUTPUT], [OUTPUT]))
            except RecipeError as error:  # KDLoss's range check
                raise RecipeError(f"distill kd: {error}") from None
            continue
        student, teacher = _names(options["student"], kind, "student"), _names(options["teacher"], kind, "teacher")
        if len(student) != len(teacher):
            raise RecipeError(f"distill {kind}: give as many student nodes as teacher nodes")
        if kind == "fitnet":
            if len(student) != 1:
                raise RecipeError("distill fitnet: one student node and one teacher node (add more fitnet entries for more)")
            terms.append(_Term(kind, None, student, teacher, options["weight"]))
        elif kind == "attention":
            terms.append(_Term(kind, AttentionTransferLoss(), student, teacher, options["weight"]))
        elif kind == "rkd":
            loss = RelationalKDLoss(options["distance_weight"], options["angle_weight"])
            terms.append(_Term(kind, loss, student, teacher))
        else:
            terms.append(_Term(kind, SimilarityPreservingLoss(), student, teacher, options["weight"]))
    return Objective(terms)
