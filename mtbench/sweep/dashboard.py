"""Optuna's dashboard (the `optuna-dashboard` package) on a study's storage: the only module that runs it.

The dashboard runs as a child process in its own process group, so stopping it (Ctrl-C or SIGTERM here, which the
child does not see) ends the server and any workers it forked, and never leaves a server behind. Its pages are
`/dashboard` (all studies of the storage) and `/dashboard/studies/<study id>` (one study; `/trials`,
`/trialTable`, `/analytics` and `/note` below it), where the id is the storage's, not the study's name.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from importlib.metadata import entry_points

from mtbench import serving
from mtbench.config.schema import Experiment
from mtbench.errors import MtbenchError
from mtbench.sweep import search

SCRIPT = "optuna-dashboard"  # the package's console script (entry point)
# Run the console script's entry point with this interpreter: no dependence on PATH or on where pip put scripts.
LAUNCH = ("import sys; from importlib.metadata import entry_points; sys.argv[0] = 'optuna-dashboard'; "
          "sys.exit(entry_points(group='console_scripts')['optuna-dashboard'].load()())")


def dashboard_command(storage: str, *, host: str, port: int) -> list[str]:
    """The command that serves `storage` (a `search.storage_spec`) on host:port, quietly."""
    if storage.startswith("journal:"):
        where = [storage[len("journal:"):], "--storage-class", "JournalFileStorage"]
    else:
        where = [storage]
    return [sys.executable, "-c", LAUNCH, *where, "--host", host, "--port", str(port), "--quiet"]


def serve_dashboard(exp: Experiment, *, host: str = "127.0.0.1", port: int = 8080,
                    ready: Callable[[str], None] | None = None, timeout_s: float = 120.0) -> int:
    """Serve Optuna's dashboard on the experiment's study until Ctrl-C or SIGTERM; return the exit code.

    `ready(url)` is called once the server answers, with the study's page. Returns 130 after Ctrl-C, 143 after
    SIGTERM, or the dashboard's own code if it stops by itself.
    """
    if exp.search is None:
        raise MtbenchError(f"experiment {exp.name!r} has no `search:` section, so it has no Optuna study to show; "
                           "add one (see experiments/tune_demt.yaml) or use `mtbench ui` for its MLflow runs.")
    if not entry_points(group="console_scripts", name=SCRIPT):
        raise MtbenchError("optuna-dashboard is not installed in this environment; `pip install optuna-dashboard`.")
    study_id = search.study_id(exp)
    base = serving.base_url(host, port)
    return serving.serve(dashboard_command(search.storage_spec(exp), host=host, port=port), name="optuna-dashboard",
                         host=host, port=port, probe=f"{base}/api/studies", timeout_s=timeout_s,
                         ready=None if ready is None else lambda: ready(f"{base}/dashboard/studies/{study_id}"))
