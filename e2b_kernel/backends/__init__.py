"""Where a session's sandboxes run: E2B cloud, or a local service behind one ``ServiceHandle``.

- :class:`Backend` resolves ``cloud``/``local`` and gives the SDK its settings.
- :mod:`.handles`: the ``ServiceHandle`` type, the in-process and the shared local service.
- :mod:`.hosted`: the kernel's private service in a helper process that outlives a restart
  (started early, as the kernel process starts, when the environment says it is needed).
- :mod:`.restart_state`: what a kernel process hands to its restarted successor.
"""

from .backend import CLOUD_ISOLATION, Backend
from .handles import InProcessService, ServiceHandle, SharedLocalService, SharedView
from .hosted import HostedService, discard_early, launch_early

__all__ = [
    "CLOUD_ISOLATION",
    "Backend",
    "HostedService",
    "InProcessService",
    "ServiceHandle",
    "SharedLocalService",
    "SharedView",
    "discard_early",
    "launch_early",
]
