"""Built-in plugin ``recover``: fine-tune the compressed model, by default distilling from the original.

A recipe step such as ``{pass: recover, epochs: 3, lr: 0.01, distill: {kind: kd, T: 4,
alpha: 0.9}}`` trains the graph on ``compress(..., train_data=..., val_data=...)`` with
:func:`fxcomp.recover`; the teacher is the model as it was before the recipe. Feature
distillation names nodes; in the compressed graph they are looked up through the
``renamed`` tables of earlier passes' plans (``fold_bn`` folds a BatchNorm into its conv).
The plan records the settings; the statistics give every epoch's figures.
"""

from __future__ import annotations

from typing import Any

import torch.fx as fx

from fxcomp import RecipeError, hookimpl, recover
from fxcomp.errors import DataError
from fxcomp.passes import Option, Pass, PassContext, PassResult, choice, integer, number, optional
from fxcomp.recovery import objective, rename_through


def _distill(value: Any, path: str) -> Any:
    if value is None:
        return None
    try:
        objective(value)
    except RecipeError as error:
        raise RecipeError(f"{path}: {error}") from None
    return value


def _renamed(spec: Any, records: list[dict[str, Any]]) -> Any:
    """The spec with its student node names followed through earlier passes (the teacher is the original)."""
    if spec is None:
        return None
    entries = spec if isinstance(spec, list) else [spec]
    moved = []
    for entry in entries:
        student = entry.get("student")
        if isinstance(student, str):
            entry = {**entry, "student": rename_through([student], records)[0]}
        elif isinstance(student, list):
            entry = {**entry, "student": rename_through(student, records)}
        moved.append(entry)
    return moved if isinstance(spec, list) else moved[0]


class Recover(Pass):
    """Train the compressed graph on labelled data, optionally distilling from the original model."""

    name = "recover"
    uses_original = True
    schema = {
        "epochs": Option(integer(1), default=3, doc="training epochs"),
        "lr": Option(number(0, None, low_open=True), default=0.01, doc="peak learning rate"),
        "optimizer": Option(choice("sgd", "adam"), default="sgd", doc="SGD with Nesterov momentum, or Adam"),
        "momentum": Option(number(0, 1), default=0.9, doc="SGD momentum"),
        "weight_decay": Option(number(0, None), default=0.0, doc="L2 weight decay"),
        "schedule": Option(choice("cosine", "constant"), default="cosine", doc="learning-rate schedule"),
        "batch_size": Option(integer(1), default=128, doc="batch size when the data is a Dataset"),
        "patience": Option(optional(integer(1)), default=None, doc="stop after this many epochs without improving"),
        "seed": Option(integer(0), default=0, doc="seeds shuffling and random state"),
        "distill": Option(_distill, default=None, doc="distillation spec (kd, fitnet, attention, rkd, sp) or a list"),
    }

    def plan(self, gm: fx.GraphModule, context: PassContext) -> dict[str, Any]:
        if context.train_data is None:
            raise DataError("recover needs labelled training data: pass train_data= to fxcomp.compress (--train-data on the CLI)")
        count = len(context.train_data) if hasattr(context.train_data, "__len__") else None
        return {"train_batches_or_examples": count, "validation": context.val_data is not None}

    def apply(self, gm: fx.GraphModule, plan: dict[str, Any], context: PassContext) -> PassResult:
        options = {**self.options, "distill": _renamed(self.options["distill"], context.records)}
        result = recover(
            gm, context.train_data, val_data=context.val_data, teacher=context.original, progress=False, **options
        )
        gm.load_state_dict(result.model.state_dict())
        history = [record.as_dict() for record in result.history]
        return PassResult(gm, modified=True, stats={"best_epoch": result.best_epoch, "history": history})


@hookimpl
def fxcomp_register_passes(register: Any) -> None:
    """Register the ``recover`` pass."""
    register(Recover)
