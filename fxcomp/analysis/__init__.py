"""Stage analyze: the coupled-channel dependency analyzer."""

from fxcomp.analysis.analyzer import analyze, set_size_arguments, set_split_sizes, size_arguments, split_sizes
from fxcomp.analysis.groups import ChannelGroup, Member
from fxcomp.analysis.rules import RULE_KINDS

__all__ = [
    "RULE_KINDS", "ChannelGroup", "Member", "analyze", "set_size_arguments", "set_split_sizes", "size_arguments", "split_sizes",
]
