"""Running many trials: expansion happens in mtbench.config, launching here."""

from mtbench.sweep.launchers import attach, launch, launch_local, plan_sweep

__all__ = ["attach", "launch", "launch_local", "plan_sweep"]
