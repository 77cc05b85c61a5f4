"""Stage analyze: the coupled-channel dependency analyzer."""

from fxcomp.analysis.analyzer import analyze
from fxcomp.analysis.groups import ChannelGroup, Member

__all__ = ["ChannelGroup", "Member", "analyze"]
