"""User code as plug-ins, shared by every plug-in point (rewards, tools): resolving `pkg.module:function` and
`path/file.py:function` specs (`loading`), and running a plug-in in a persistent worker process with a timeout, a
memory cap and a restart after a hang or a death (`process`, kept in bounds by `workers`).

It imports nothing of mmrl but the root registry, so any part may build on it.
"""

from mmrl.plugins.loading import PluginSpecError, is_plugin, load, resolve
from mmrl.plugins.process import IsolatedCall, Loaded, PluginError, PluginTimeout

__all__ = ["IsolatedCall", "Loaded", "PluginError", "PluginSpecError", "PluginTimeout", "is_plugin", "load", "resolve"]
