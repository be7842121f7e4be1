"""The download manager: queue, transfers, durable state and events behind `DownloadManager`.

`coordinator.py` holds the class; each other module of the package does one part of its work
and says which in its first line. This module re-exports the names callers import.
"""

from modelfetch.manager.coordinator import DownloadManager
from modelfetch.manager.settings import ManagerSettings, default_home

__all__ = ["DownloadManager", "ManagerSettings", "default_home"]
