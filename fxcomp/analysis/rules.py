"""Channel rules: how plugins teach the analyzer an op it does not know.

A plugin registers ``register(target, kind)`` through the
``fxcomp_register_channel_rules`` hook; ``target`` is an ``nn.Module`` subclass
(matched by exact type), a function, or a tensor method name, and ``kind`` one of
:data:`RULE_KINDS`. Without a rule, an unknown op pins every channel it touches.
"""

from __future__ import annotations

RULE_KINDS: dict[str, str] = {
    "elementwise": "tensor and parameter arguments broadcast together; channels meeting at one position merge",
    "spatial": "the first tensor argument's channels (axis 1) pass through; other axes may change size",
    "movement": "the op only moves or selects elements; the analyzer runs it on the channel labels",
}
"""The kinds of channel rule, each with what it means."""


def check_rule(kind: object) -> str | None:
    """Why ``kind`` is not a valid rule, or None when it is."""
    if kind in RULE_KINDS:
        return None
    return f"rule {kind!r}, which is not one of: {', '.join(RULE_KINDS)}"
