"""Built-in plugin ``recover``: fine-tune the compressed model, distilling from the original when ``distill`` is given.

A recipe step such as ``{pass: recover, epochs: 3, lr: 0.01, distill: {kind: kd, T: 4,
alpha: 0.9}}`` trains the graph on ``compress(..., train_data=..., val_data=...)`` with
:func:`fxcomp.recover`; the teacher is the model as it was before the recipe. Feature
distillation names nodes; in the compressed graph they are looked up through the
``renamed`` tables of earlier passes' plans (``fold_bn`` folds a BatchNorm into its conv).
The plan records the settings; the statistics give every epoch's figures.

On a graph with early exits (after ``early_exit``) the step trains them with the joint
loss of :mod:`fxcomp.recovery.exits`: ``exits: {train: heads}`` freezes the backbone
(Shallow-Deep Networks), ``train: joint`` (the default) fine-tunes everything,
``weights`` weigh the exits' losses and ``distill`` teaches each exit from the final output.
"""

from __future__ import annotations

from typing import Any

import torch.fx as fx

from fxcomp import DataError, EarlyExitModel, RecipeError, hookimpl, recover
from fxcomp.data import known_length, validation_part
from fxcomp.dynamic import EXITS, has_exits
from fxcomp.passes import Option, Pass, PassContext, PassResult, choice, integer, number, optional
from fxcomp.recovery import SGD_MOMENTUM, exit_training, objective, rename_through


def _distill(value: Any, path: str) -> Any:
    if value is None:
        return None
    try:
        objective(value)
    except RecipeError as error:
        raise RecipeError(f"{path}: {error}") from None
    return value


def _exits(value: Any, path: str) -> Any:
    try:
        exit_training(value)
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
        "momentum": Option(optional(number(0, 1)), default=None, doc=f"SGD momentum (default {SGD_MOMENTUM}); not with adam"),
        "weight_decay": Option(number(0, None), default=0.0, doc="L2 weight decay"),
        "schedule": Option(choice("cosine", "constant"), default="cosine", doc="learning-rate schedule"),
        "batch_size": Option(integer(1), default=128, doc="batch size when the data is a Dataset"),
        "patience": Option(optional(integer(1)), default=None, doc="stop after this many epochs without improving (needs val_data)"),
        "seed": Option(integer(0), default=0, doc="seeds shuffling and random state"),
        "distill": Option(_distill, default=None, doc="distillation spec (kd, fitnet, attention, rkd, sp) or a list"),
        "exits": Option(_exits, default=None, doc="how to train early exits: {weights, train: joint|heads, distill}"),
    }

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        if self.options["optimizer"] == "adam" and self.options["momentum"] is not None:
            raise RecipeError("recover: momentum applies to optimizer sgd; drop it with adam, which keeps its own moment estimates")

    def plan(self, gm: fx.GraphModule, context: PassContext) -> dict[str, Any]:
        if context.train_data is None:
            raise DataError("recover needs labelled training data: pass train_data= to fxcomp.compress (--train-data on the CLI)")
        if self.options["exits"] is not None and not has_exits(gm):
            raise RecipeError("recover: 'exits' trains early exits, but the model has none; put early_exit before it")
        self._check_fit(gm, context)
        count = known_length(context.train_data)
        return {"train_batches_or_examples": count, "validation": validation_part(context.train_data, context.val_data) is not None, "exits": has_exits(gm)}

    def _check_fit(self, gm: fx.GraphModule, context: PassContext) -> None:
        """Refuse, naming the field, a ``patience`` without validation data and exit weights that do not fit ``gm``."""
        path = f"passes[{len(context.records)}]"  # the records are the earlier passes'
        if self.options["patience"] is not None and validation_part(context.train_data, context.val_data) is None:
            raise RecipeError(
                f"{path}.patience: counts epochs without a better validation result, but there is no validation data; "
                "pass val_data= to fxcomp.compress or drop patience"
            )
        if self.options["exits"] is not None:
            try:
                exit_training(self.options["exits"]).check_outputs(len(gm.meta[EXITS]["at"]) + 1)
            except RecipeError as error:
                raise RecipeError(f"{path}.{error}") from None

    def apply(self, gm: fx.GraphModule, plan: dict[str, Any], context: PassContext) -> PassResult:
        options = {**self.options, "distill": _renamed(self.options["distill"], context.records)}
        staged = EarlyExitModel(gm) if has_exits(gm) else gm
        result = recover(
            staged, context.train_data, val_data=context.val_data, teacher=context.original, progress=False, **options
        )
        trained = result.model.model if isinstance(result.model, EarlyExitModel) else result.model
        gm.load_state_dict(trained.state_dict())
        history = [record.as_dict() for record in result.history]
        return PassResult(gm, modified=True, stats={"best_epoch": result.best_epoch, "history": history})


@hookimpl
def fxcomp_register_passes(register: Any) -> None:
    """Register the ``recover`` pass."""
    register(Recover)
