"""Built-in plugin ``torchvision_ops``: channel rules for torchvision's own ops.

torchvision wraps some functions so that fx records them as single calls
instead of tracing through them; the analyzer does not know them and would pin
the channels they touch. This plugin teaches it, through the public
channel-rule hook, exactly as a third-party plugin would:

* ``torchvision.ops.stochastic_depth`` (and the ``StochasticDepth`` module):
  drops whole samples of a residual branch; channels pass through unchanged.

torchvision is optional: without it, the plugin registers nothing.
"""

from __future__ import annotations

import importlib.util
from typing import Any

from fxcomp import hookimpl


@hookimpl
def fxcomp_register_channel_rules(register: Any) -> None:
    """Register the rules for torchvision's wrapped ops, when torchvision is installed."""
    if importlib.util.find_spec("torchvision") is None:
        return
    from torchvision.ops import StochasticDepth, stochastic_depth

    register(stochastic_depth, "elementwise")
    register(StochasticDepth, "elementwise")
