"""Stage analyze: the coupled-channel dependency analyzer."""

from fxcomp.analysis.analyzer import analyze, set_size_arguments, size_arguments
from fxcomp.analysis.groups import ChannelGroup, Member
from fxcomp.analysis.rules import RULE_KINDS

__all__ = ["RULE_KINDS", "ChannelGroup", "Member", "analyze", "set_size_arguments", "size_arguments"]
