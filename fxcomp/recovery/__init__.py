"""Recovering accuracy after compression: the ``recover`` loop, distillation losses and schemes.

* :func:`recover` fine-tunes a copy of a model, optionally distilling from a teacher;
* the losses (:class:`KDLoss`, :class:`HintLoss`, :class:`AttentionTransferLoss`,
  :class:`RelationalKDLoss`, :class:`SimilarityPreservingLoss`) work in any loop;
* :func:`mutual_learning`, :func:`teacher_assistant_chain` and :func:`born_again` are
  multi-model schemes built on the same loop;
* :class:`ExitTraining` (from an ``exits`` spec) is the joint loss of an early-exit model's exits;
* :func:`with_features` exposes intermediate values of an fx graph by node name;
* :func:`recalibrate_batchnorm` re-estimates BatchNorm statistics after a rewrite, untrained;
* :func:`short_finetune` trains a copy for a few steps, to compare pruned candidates.
"""

from fxcomp.recovery.batchnorm import recalibrate_batchnorm
from fxcomp.recovery.exits import ExitTraining, exit_training
from fxcomp.recovery.features import rename_through, with_features
from fxcomp.recovery.loop import (
    SGD_MOMENTUM,
    EpochRecord,
    RecoveryResult,
    born_again,
    evaluate,
    evaluate_outputs,
    mutual_learning,
    recover,
    teacher_assistant_chain,
)
from fxcomp.recovery.losses import (
    AttentionTransferLoss,
    HintLoss,
    KDLoss,
    RelationalKDLoss,
    SimilarityPreservingLoss,
    attention_map,
    mutual_loss,
)
from fxcomp.recovery.objective import Objective, objective
from fxcomp.recovery.short import short_finetune

__all__ = [
    "SGD_MOMENTUM",
    "AttentionTransferLoss",
    "EpochRecord",
    "ExitTraining",
    "HintLoss",
    "KDLoss",
    "Objective",
    "RecoveryResult",
    "RelationalKDLoss",
    "SimilarityPreservingLoss",
    "attention_map",
    "born_again",
    "evaluate",
    "evaluate_outputs",
    "exit_training",
    "mutual_learning",
    "mutual_loss",
    "objective",
    "recalibrate_batchnorm",
    "recover",
    "rename_through",
    "short_finetune",
    "teacher_assistant_chain",
    "with_features",
]
