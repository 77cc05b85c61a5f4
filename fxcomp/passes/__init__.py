"""Stages plan → rewrite → verify.

This package's namespace is the pass-author API: the :class:`Pass` contract and
the option checks, and :class:`Mask` / :func:`add_mask`, which hold pruned
weights at zero (:mod:`fxcomp.passes.masks`). The recipe loader
(:mod:`fxcomp.passes.recipe`), the checks run after each pass
(:mod:`fxcomp.passes.verify`) and ``compress`` (:mod:`fxcomp.passes.pipeline`)
build on it and on the plugins.
"""

from fxcomp.passes.base import CheckContext, Pass, PassContext, PassResult, matches
from fxcomp.passes.masks import Mask, add_mask
from fxcomp.passes.options import (
    REQUIRED,
    Option,
    boolean,
    choice,
    globs,
    integer,
    number,
    optional,
    string,
    validate_options,
)

__all__ = [
    "REQUIRED",
    "CheckContext",
    "Mask",
    "Option",
    "Pass",
    "PassContext",
    "PassResult",
    "add_mask",
    "boolean",
    "choice",
    "globs",
    "integer",
    "matches",
    "number",
    "optional",
    "string",
    "validate_options",
]
