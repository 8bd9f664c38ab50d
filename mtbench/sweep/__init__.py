"""Running many trials: expansion happens in mtbench.config, launching here."""

from mtbench.sweep.launchers import launch_local

__all__ = ["launch_local"]
