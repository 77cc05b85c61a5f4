"""The ``fxcomp`` command: demo, inspect, compress, plugins.

A user error prints one line, ``error: <what to change>``, and exits with
status 2; ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import importlib
import itertools
import json
import os
import sys
from collections.abc import Sequence

import torch
import torch.nn as nn
from tabulate import tabulate
from torch.utils.data import DataLoader

from fxcomp.data import Splits, digits, fashion_mnist, mnist
from fxcomp.dynamic import EarlyExitModel
from fxcomp.errors import CalibrationError, FxcompError, UsageError, first_line
from fxcomp.export import check_writable, load, save, to_dot
from fxcomp.passes.pipeline import compress
from fxcomp.plugin.host import load_plugins
from fxcomp.analysis import analyze
from fxcomp.report import exit_table, group_table, layer_table
from fxcomp.tracing import propagate, trace


def _input_shape(text: str) -> tuple[int, ...]:
    try:
        shape = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated sizes like 1,3,224,224, got {text!r}") from None
    if not shape or any(size <= 0 for size in shape):
        raise argparse.ArgumentTypeError(f"sizes must be positive, got {text!r}")
    return shape


def load_model(reference: str) -> nn.Module:
    """Build the model named by ``MODULE:CALLABLE`` (e.g. ``torchvision.models:resnet18``).

    The callable is called without arguments; an ``nn.Module`` instance is used as it is.
    """
    module_name, sep, attribute = reference.partition(":")
    if not sep or not module_name or not attribute:
        raise UsageError(f"model reference {reference!r} must look like MODULE:CALLABLE, e.g. torchvision.models:resnet18")
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise UsageError(f"cannot import module '{module_name}': {error}; is it installed?") from error
    except FxcompError:
        raise
    except Exception as error:  # noqa: BLE001 - the user's module failed while importing
        raise UsageError(
            f"importing module '{module_name}' raised {type(error).__name__}: {first_line(error)}; fix that module"
        ) from error
    target = module
    for part in attribute.split("."):
        if not hasattr(target, part):
            raise UsageError(f"module '{module_name}' has no attribute '{attribute}'; check the name after ':'")
        target = getattr(target, part)
    model = target if isinstance(target, nn.Module) else _build(reference, target) if callable(target) else None
    if not isinstance(model, nn.Module):
        raise UsageError(f"'{reference}' did not give a torch.nn.Module; point it at a model class or factory")
    return model.eval()


def _build(reference: str, factory: object) -> object:
    try:
        return factory()
    except FxcompError:
        raise
    except Exception as error:  # noqa: BLE001 - the user's constructor failed
        fix = "point it at a model class or factory that needs no arguments" if isinstance(error, TypeError) else "fix the factory"
        raise UsageError(
            f"calling '{reference}' with no arguments raised {type(error).__name__}: {first_line(error)}; {fix}"
        ) from error


def _example_inputs(shapes: Sequence[tuple[int, ...]]) -> tuple[torch.Tensor, ...]:
    generator = torch.Generator().manual_seed(0)
    return tuple(torch.randn(shape, generator=generator) for shape in shapes)


def _cmd_demo(args: argparse.Namespace) -> None:
    from fxcomp.demo import run_demo

    if args.out:
        check_writable(args.out)
    text, result = run_demo(seconds=args.seconds, seed=args.seed)
    print(text)
    if args.out:
        save(result.model, args.out)
        print(f"\nsaved the compressed model to {args.out}")


def _cmd_inspect(args: argparse.Namespace) -> None:
    if args.dot:
        check_writable(args.dot)
    if os.path.isfile(args.model) or (":" not in args.model and not args.input_shape):
        loaded = load(args.model)
        gm = loaded.model if isinstance(loaded, EarlyExitModel) else loaded
        if args.input_shape:  # show the saved model at other input shapes
            propagate(gm, _example_inputs(args.input_shape))
    elif not args.input_shape:
        raise UsageError("inspecting MODULE:CALLABLE needs --input-shape (a saved .fxc file does not)")
    else:
        loaded = gm = trace(load_model(args.model), _example_inputs(args.input_shape))
    print(layer_table(gm))
    if args.groups:
        print(f"\nchannel groups\n{group_table(analyze(gm, plugins=load_plugins()))}")
    if isinstance(loaded, EarlyExitModel):
        print(f"\nearly exits (criterion: {loaded.criterion})\n{exit_table(loaded.exit_plan())}")
    if args.dot:
        to_dot(gm, args.dot)
        print(f"\nwrote {args.dot}")


def training_data(reference: str) -> Splits:
    """The data set named on the command line: ``digits``, ``fashion-mnist[:DIR]`` or ``mnist:DIR``."""
    name, _, root = reference.partition(":")
    if name == "digits" and not root:
        return digits()
    if name == "fashion-mnist":
        return fashion_mnist(root or None)
    if name == "mnist" and root:
        return mnist(root)
    raise UsageError(f"training data {reference!r} is not one of: digits, fashion-mnist, fashion-mnist:DIR, mnist:DIR")


CALIBRATION_BATCHES, CALIBRATION_BATCH_SIZE = 16, 64
"""``--train-data`` also calibrates (``quantize``'s int8 ranges, data-driven importance): its first batches."""


def _cmd_compress(args: argparse.Namespace) -> None:
    for path in (args.plan, None if args.dry_run else args.out):
        if path:
            check_writable(path)
    data = training_data(args.train_data) if args.train_data else None
    try:
        result = compress(
            load_model(args.model),
            _example_inputs(args.input_shape),
            args.recipe,
            train_data=data.train if data else None,
            val_data=data.val if data else None,
            calib_data=list(itertools.islice(DataLoader(data.train, batch_size=CALIBRATION_BATCH_SIZE), CALIBRATION_BATCHES)) if data else None,
            dry_run=args.dry_run,
        )
    except CalibrationError as error:
        if data is not None:
            raise
        raise CalibrationError(f"{error}; on the command line, give --train-data") from error
    print(result.report)
    if result.lowered is not None:
        print(f"\n{result.lowered.report}")
    if args.plan:
        with open(args.plan, "w", encoding="utf-8") as handle:
            json.dump(result.plan, handle, indent=2)
        print(f"\nwrote the plan to {args.plan}")
    if args.out and not args.dry_run:
        codec_report = result.save(args.out)
        if codec_report is not None:
            print(f"\n{codec_report}")
        print(f"\nsaved the compressed model to {args.out}")


def _short(kind: str, keys: list[str]) -> list[str]:
    """Registry keys as the plugins table shows them: allow-listed classes by their bare names."""
    return [key.rsplit(".", 1)[-1] for key in keys] if kind == "serializables" else keys


def _cmd_plugins(args: argparse.Namespace) -> None:
    plugins = load_plugins()
    rows = []
    for info in sorted(plugins.infos, key=lambda i: i.name):
        registered = "; ".join(f"{kind}: {', '.join(_short(kind, keys))}" for kind, keys in info.registered.items())
        rows.append([info.name, info.distribution or "-", info.version or "-", registered or "(nothing)"])
    print(tabulate(rows, headers=["plugin", "distribution", "version", "registers"]))
    if plugins.blocked:
        print(f"\nblocked by FXCOMP_DISABLE_PLUGINS: {', '.join(plugins.blocked)}")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``fxcomp`` command."""
    parser = argparse.ArgumentParser(prog="fxcomp", description="Compress neural networks with torch.fx rewrites.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    commands = parser.add_subparsers(dest="command", required=True)

    demo = commands.add_parser("demo", help="train a small CNN on scikit-learn digits and compress it")
    demo.add_argument("--seconds", type=float, default=5.0, help="training time budget (default 5)")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--out", help="save the compressed model to this file")
    demo.set_defaults(run=_cmd_demo)

    shape_help = "input shape like 1,3,224,224; repeat for models with several inputs"
    inspect = commands.add_parser("inspect", help="print the per-layer table of a model (and its exit plan, channel groups)")
    inspect.add_argument("model", help="MODULE:CALLABLE, e.g. torchvision.models:resnet18, or a file from fxcomp.save")
    inspect.add_argument("--input-shape", type=_input_shape, action="append", help=shape_help + " (for a file: instead of the saved shapes)")
    inspect.add_argument("--dot", help="also write the graph as a Graphviz DOT file")
    inspect.add_argument(
        "--groups", action="store_true", help="also print the coupled channel groups pruning works on, and why any is pinned"
    )
    inspect.set_defaults(run=_cmd_inspect)

    comp = commands.add_parser("compress", help="run a recipe on a model")
    comp.add_argument("model", help="MODULE:CALLABLE, e.g. torchvision.models:resnet18")
    comp.add_argument("--recipe", required=True, help="recipe YAML file")
    comp.add_argument("--input-shape", type=_input_shape, action="append", required=True, help=shape_help)
    comp.add_argument("--out", help="save the compressed model to this file (.fxc)")
    comp.add_argument("--plan", help="write the plan as JSON to this file")
    comp.add_argument("--dry-run", action="store_true", help="plan every step without saving: steps before the last are applied to a scratch copy (so recover steps train), the last is only planned")
    comp.add_argument(
        "--train-data",
        help="labelled data for recover steps and calibration (its first 1,024 training examples): "
        "digits, fashion-mnist, fashion-mnist:DIR or mnist:DIR (IDX files)",
    )
    comp.set_defaults(run=_cmd_compress)

    plugins = commands.add_parser("plugins", help="list plugins and what they register")
    plugins.set_defaults(run=_cmd_plugins)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``fxcomp`` command; return its exit status."""
    args = build_parser().parse_args(argv)
    try:
        args.run(args)
    except FxcompError as error:
        if args.debug:
            raise
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
