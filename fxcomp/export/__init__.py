"""Stage export: safe save/load of rewritten graphs, and DOT rendering."""

from fxcomp.export.dot import to_dot
from fxcomp.export.files import load, save
from fxcomp.export.paths import check_writable

__all__ = ["check_writable", "load", "save", "to_dot"]
