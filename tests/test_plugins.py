"""Plugins: discovery through entry points, blocking, conflicts, validation and the `plugins` command."""

from __future__ import annotations

import copy
import functools
import types

import pytest
import torch

import fxcomp
from fxcomp.cli import main
from fxcomp.passes import Pass, PassResult

SCALE_PLUGIN = """
    import torch
    import fxcomp
    from fxcomp.passes import Option, Pass, PassResult, number

    class Scale(Pass):
        '''Multiply the model's output by a constant (a toy rewrite that adds one node).'''
        name = "scale_output"
        schema = {"factor": Option(number(0, 10), default=2.0)}

        def plan(self, gm, context):
            return {"factor": self.options["factor"]}

        def apply(self, gm, plan, context):
            output = next(n for n in gm.graph.nodes if n.op == "output")
            with gm.graph.inserting_before(output):
                scaled = gm.graph.call_function(torch.mul, (output.args[0], plan["factor"]))
            output.args = (scaled,)
            return PassResult(gm, modified=True, stats={"factor": plan["factor"]})

    @fxcomp.hookimpl
    def fxcomp_register_passes(register):
        register(Scale)

    @fxcomp.hookimpl
    def fxcomp_register_importance(register):
        register("toy_norm", lambda group, context: None)
"""


def test_builtin_plugin_is_found_through_its_entry_point() -> None:
    plugins = fxcomp.load_plugins(disable=())
    info = {i.name: i for i in plugins.infos}["fold_bn"]
    assert info.distribution == "fxcomp"
    assert info.version == fxcomp.__version__
    assert info.registered == {"passes": ["fold_bn"]}
    assert plugins.registry.passes["fold_bn"].plugin == "fold_bn"


def test_third_party_plugin_pass_runs_from_a_yaml_recipe(install_plugin, small_cnn, image) -> None:
    install_plugin("scaler", "fxcomp_scaler_plugin", SCALE_PLUGIN, dist="fxcomp-scaler", version="0.4.2")
    plugins = fxcomp.load_plugins(disable=())
    info = {i.name: i for i in plugins.infos}["scaler"]
    assert (info.distribution, info.version) == ("fxcomp-scaler", "0.4.2")
    assert info.registered == {"passes": ["scale_output"], "importance": ["toy_norm"]}

    recipe = "passes:\n  - pass: fold_bn\n  - pass: scale_output\n    factor: 3\n"
    result = fxcomp.compress(small_cnn, image, recipe, plugins=plugins)
    with torch.no_grad():
        expected = 3 * small_cnn(image)
    torch.testing.assert_close(result.model(image), expected, rtol=1e-5, atol=1e-5)
    assert result.plan[1] == {
        "pass": "scale_output",
        "options": {"factor": 3.0},
        "plan": {"factor": 3.0},
        "modified": True,
        "stats": {"factor": 3.0},
    }


def test_compress_loads_entry_point_plugins_when_none_are_given(install_plugin, small_cnn, image) -> None:
    install_plugin("scaler2", "fxcomp_scaler_plugin2", SCALE_PLUGIN)
    result = fxcomp.compress(small_cnn, image, {"passes": [{"pass": "scale_output", "factor": 0.5}]})
    with torch.no_grad():
        torch.testing.assert_close(result.model(image), 0.5 * small_cnn(image))


def test_disable_environment_variable_blocks_a_plugin(install_plugin, small_cnn, image, monkeypatch) -> None:
    install_plugin("scaler3", "fxcomp_scaler_plugin3", SCALE_PLUGIN)
    monkeypatch.setenv("FXCOMP_DISABLE_PLUGINS", "scaler3, other")
    plugins = fxcomp.load_plugins()
    assert "scaler3" not in {i.name for i in plugins.infos}
    assert plugins.blocked == ("scaler3", "other")
    with pytest.raises(fxcomp.RecipeError, match=r"passes\[0\]\.pass: unknown pass 'scale_output'; registered passes: cluster, convert, early_exit, fold_bn"):
        fxcomp.compress(small_cnn, image, "passes: [{pass: scale_output}]", plugins=plugins)


def test_two_plugins_registering_one_pass_name_is_an_error_naming_both(install_plugin) -> None:
    install_plugin("scaler_a", "fxcomp_scaler_a", SCALE_PLUGIN, dist="dist-a")
    install_plugin("scaler_b", "fxcomp_scaler_b", SCALE_PLUGIN, dist="dist-b")
    with pytest.raises(fxcomp.PluginError) as caught:
        fxcomp.load_plugins(disable=())
    message = str(caught.value)
    assert "'scaler_a'" in message and "'scaler_b'" in message and "scale_output" in message
    # Blocking either one resolves the conflict.
    plugins = fxcomp.load_plugins(disable=["scaler_b"])
    assert plugins.registry.passes["scale_output"].plugin == "scaler_a"


def test_misspelled_hook_is_reported() -> None:
    plugin = types.SimpleNamespace()

    @fxcomp.hookimpl
    def fxcomp_register_pases(register):  # noqa: ANN001 - deliberately misspelled
        pass

    plugin.fxcomp_register_pases = fxcomp_register_pases
    with pytest.raises(fxcomp.PluginError, match=r"plugin 'typo' implements a hook fxcomp does not define.*pases"):
        fxcomp.load_plugins(entry_points=False, extra={"typo": plugin})


def test_plugin_that_fails_to_import_is_named(install_plugin) -> None:
    install_plugin("broken", "fxcomp_broken_plugin", "raise RuntimeError('boom')\n", dist="broken-dist")
    with pytest.raises(fxcomp.PluginError, match=r"plugin 'broken' \(distribution broken-dist 1\.2\.3\) failed to import: boom"):
        fxcomp.load_plugins(disable=())
    assert "broken" not in {i.name for i in fxcomp.load_plugins(disable=["broken"]).infos}


@pytest.mark.parametrize(
    ("hook", "call", "fragment"),
    [
        ("fxcomp_register_passes", lambda register: register(int), "not a subclass of fxcomp.Pass"),
        ("fxcomp_register_importance", lambda register: register("x", 3), "not callable"),
        ("fxcomp_register_lowerings", lambda register: register("triton", 3, print), "must be non-empty strings"),
        ("fxcomp_register_serializables", lambda register: register(3), "nn.Module subclass or a function"),
        ("fxcomp_register_serializables", lambda register: register(functools.partial(torch.add, alpha=2)),
         "which has no module-level name: give the function or class itself, not an instance or a partial"),
        ("fxcomp_register_serializables", lambda register: register(lambda x: x), r"test_plugins\.<lambda>\.<locals>\.<lambda>: give a function or class defined at module level"),
    ],
)
def test_bad_registrations_are_refused(hook, call, fragment) -> None:
    plugin = types.SimpleNamespace()
    setattr(plugin, hook, fxcomp.hookimpl(specname=hook)(lambda register: call(register)))
    with pytest.raises(fxcomp.PluginError, match=fragment):
        fxcomp.load_plugins(entry_points=False, extra={"bad": plugin})


def test_one_plugin_object_under_two_names_is_refused() -> None:
    plugin = types.SimpleNamespace()
    with pytest.raises(fxcomp.PluginError, match=r"plugin 'second' .* is the same object as the already loaded plugin 'first'"):
        fxcomp.load_plugins(entry_points=False, extra={"first": plugin, "second": plugin})


def test_crashing_hook_is_a_plugin_error() -> None:
    plugin = types.SimpleNamespace(
        fxcomp_register_checks=fxcomp.hookimpl(specname="fxcomp_register_checks")(lambda register: 1 / 0)
    )
    with pytest.raises(fxcomp.PluginError, match=r"plugin 'crash' failed in fxcomp_register_checks: division by zero"):
        fxcomp.load_plugins(entry_points=False, extra={"crash": plugin})


class _Shift(Pass):
    """Adds a constant to the output: runs fine, so only a plugin check can object."""

    name = "shift"

    def plan(self, gm, context):
        return {}

    def apply(self, gm, plan, context):
        output = next(n for n in gm.graph.nodes if n.op == "output")
        with gm.graph.inserting_before(output):
            shifted = gm.graph.call_function(torch.add, (output.args[0], 100.0))
        output.args = (shifted,)
        return PassResult(gm, modified=True)


def test_plugin_verification_check_stops_a_pass(small_cnn, image) -> None:
    seen = []

    def bounded(gm, context):
        seen.append(context.pass_name)
        if context.outputs.abs().max() > 50:
            return [f"outputs grew to {context.outputs.abs().max().item():.0f}"]
        return []

    plugin = types.SimpleNamespace(
        fxcomp_register_passes=fxcomp.hookimpl(specname="fxcomp_register_passes")(lambda register: register(_Shift)),
        fxcomp_register_checks=fxcomp.hookimpl(specname="fxcomp_register_checks")(
            lambda register: register("bounded_outputs", bounded)
        ),
    )
    plugins = fxcomp.load_plugins(extra={"guard": plugin}, disable=())
    fxcomp.compress(small_cnn, image, "passes: [{pass: fold_bn}]", plugins=plugins)
    assert seen == [None, "fold_bn"]  # once on the model before any pass, then after each pass
    with pytest.raises(
        fxcomp.PassError,
        match=r"pass 'shift' \(passes\[0\]\) failed check 'bounded_outputs' \(plugin 'guard'\): outputs grew to",
    ):
        fxcomp.compress(small_cnn, image, "passes: [{pass: shift}]", plugins=plugins)


def test_plugins_are_independent_between_loads() -> None:
    plugin = types.SimpleNamespace(
        fxcomp_register_passes=fxcomp.hookimpl(specname="fxcomp_register_passes")(lambda register: register(_Shift))
    )
    with_extra = fxcomp.load_plugins(extra={"extra": plugin}, disable=())
    plain = fxcomp.load_plugins(disable=())
    assert "shift" in with_extra.registry.passes
    assert "shift" not in plain.registry.passes


def test_plugins_command_lists_plugins(install_plugin, capsys) -> None:
    install_plugin("scaler4", "fxcomp_scaler_plugin4", SCALE_PLUGIN, dist="fxcomp-scaler", version="0.4.2")
    assert main(["plugins"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["plugin", "distribution", "version", "registers"]
    rows = {line.split()[0]: line for line in lines[2:]}
    assert rows["fold_bn"].split()[1:4] == ["fxcomp", fxcomp.__version__, "passes:"]
    assert "fxcomp-scaler" in rows["scaler4"] and "0.4.2" in rows["scaler4"]
    assert "passes: scale_output; importance: toy_norm" in rows["scaler4"]


# -- plugin authors' mistakes -------------------------------------------------------------------


def _with(**hooks) -> fxcomp.Plugins:
    plugin = types.SimpleNamespace(
        **{name: fxcomp.hookimpl(specname=name)(hook) for name, hook in hooks.items()}
    )
    return fxcomp.load_plugins(extra={"mine": plugin}, disable=())


class _Returns(Pass):
    """Applies by returning whatever ``returned(gm)`` gives; declares ``tolerance``."""

    name = "returns"
    returned = staticmethod(lambda gm: PassResult(gm, modified=False))

    def plan(self, gm, context):
        context.example_inputs[0].zero_()  # a careless pass: the caller's tensors must not change
        return {}

    def apply(self, gm, plan, context):
        return self.returned(gm)


def test_the_original_model_goes_as_a_copy_to_the_passes_that_ask_for_it(small_cnn, image) -> None:
    seen = []

    class Scribbler(Pass):
        name = "scribbler"
        uses_original = True

        def plan(self, gm, context):
            seen.append(copy.deepcopy(context.original.state_dict()))
            with torch.no_grad():
                for parameter in context.original.parameters():
                    parameter.zero_()  # a careless pass: the next one must still get the original
            return {}

        def apply(self, gm, plan, context):
            return PassResult(gm, modified=False)

    class Other(Scribbler):
        name = "other"
        uses_original = False

        def plan(self, gm, context):
            seen.append(context.original)
            return {}

    plugins = _with(fxcomp_register_passes=lambda register: [register(Scribbler), register(Other)])
    fxcomp.compress(small_cnn, image, "passes: [{pass: scribbler}, {pass: other}, {pass: scribbler}]", plugins=plugins)
    first, other, second = seen
    assert other is None
    assert first.keys() == second.keys() and all(torch.equal(first[key], second[key]) for key in first)
    assert all(torch.equal(value, small_cnn.state_dict()[key]) for key, value in first.items())


def test_what_a_pass_returns_and_declares_is_checked(small_cnn, image) -> None:
    from fxcomp.passes import Option, number

    with pytest.raises(fxcomp.PluginError, match=r"^Option\(number\) takes the check, not its factory: write number\(...\)$"):
        Option(number, default=0.5)
    cases = [
        ({"returned": staticmethod(lambda gm: gm)}, r"apply returned a GraphModule; return fxcomp.PassResult\(graph_module, modified, stats\)$"),
        ({"returned": staticmethod(lambda gm: PassResult(gm, False, stats=[1]))}, "returned stats that are not a JSON-serializable dict"),
        ({"returned": staticmethod(lambda gm: PassResult(gm, False, stats={"t": torch.ones(1)}))}, "returned stats that are not a JSON-serializable dict"),
        ({"tolerance": "0.1"}, r"declares tolerance '0.1'; a pass's tolerance is a number >= 0, or None$"),
    ]
    for attributes, message in cases:
        broken = type("Broken", (_Returns,), attributes)
        plugins = _with(fxcomp_register_passes=lambda register, cls=broken: register(cls))
        before = image.clone()
        with pytest.raises(fxcomp.PassError, match=r"^pass 'returns' \(passes\[0\]\)[: ].*" + message):
            fxcomp.compress(small_cnn, image, "passes: [{pass: returns}]", plugins=plugins)
        assert torch.equal(image, before)


def test_recipe_options_are_checked_once(small_cnn, image) -> None:
    def percent(value, path):
        return value / 100  # a normalizing check: applied twice, 50 would become 0.005

    class Percent(_Returns):
        name = "returns"
        schema = {"amount": fxcomp.Option(percent, default=0.5)}

    plugins = _with(fxcomp_register_passes=lambda register: register(Percent))
    result = fxcomp.compress(small_cnn, image, "passes: [{pass: returns, amount: 50}]", plugins=plugins)
    assert result.plan[0]["options"] == {"amount": 0.5}


def test_checks_must_return_problem_lists_and_leave_modes_alone(small_cnn, image) -> None:
    def sloppy(gm, context):
        gm.train()
        return "fine"

    plugins = _with(fxcomp_register_checks=lambda register: register("sloppy", sloppy))
    with pytest.raises(fxcomp.PassError, match=r"^check 'sloppy' \(plugin 'mine'\) returned str; a check returns a list of problem strings"):
        fxcomp.compress(small_cnn.eval(), image, "passes: [{pass: fold_bn}]", plugins=plugins)
    plugins = _with(fxcomp_register_checks=lambda register: register("sloppy", lambda gm, context: gm.train() and []))
    assert not fxcomp.compress(small_cnn.eval(), image, "passes: [{pass: fold_bn}]", plugins=plugins).model.training


def test_non_finite_importance_scores_are_refused(small_cnn, image) -> None:
    def broken(groups, gm, context):
        return [torch.full((group.channels,), float("nan")) for group in groups]

    plugins = _with(fxcomp_register_importance=lambda register: register("broken", broken))
    with pytest.raises(fxcomp.PluginError, match="^importance criterion 'broken' returned NaN or infinite scores"):
        fxcomp.compress(small_cnn, image, "passes: [{pass: prune, ratio: 0.5, importance: broken}]", plugins=plugins)


def test_hooks_that_would_register_nothing_are_refused() -> None:
    returns = types.SimpleNamespace(
        fxcomp_register_passes=fxcomp.hookimpl(specname="fxcomp_register_passes")(lambda register: [_Shift])
    )
    with pytest.raises(fxcomp.PluginError, match=r"^plugin 'mine' returned list from fxcomp_register_passes, which fxcomp ignores; call register"):
        fxcomp.load_plugins(extra={"mine": returns}, disable=())
    unmarked = types.SimpleNamespace(fxcomp_register_passes=lambda register: register(_Shift))
    with pytest.raises(fxcomp.PluginError, match=r"^plugin 'mine' \(object SimpleNamespace\) defines fxcomp_register_passes without @fxcomp.hookimpl"):
        fxcomp.load_plugins(extra={"mine": unmarked}, disable=())
