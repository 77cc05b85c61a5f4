"""Stage export: safe save/load of rewritten graphs, and DOT rendering."""

from fxcomp.export.dot import to_dot
from fxcomp.export.files import load, save

__all__ = ["load", "save", "to_dot"]
