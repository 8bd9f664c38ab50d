"""MLflow tracking: the only module of mtbench that imports mlflow (DESIGN.md, "Integrations").

Every trial is one MLflow run, written through `MlflowClient` (never the fluent global state, so
several trials can share a process). The naming contract between the engine, this module and
`mtbench.report`:

- tags on every run: the `TAG_*` constants below (`mtbench.variant`, `mtbench.seed`, ...);
- metrics `<split>/<task>/<metric>`, e.g. `val/semseg/mIoU` logged per evaluation step and
  `test/depth/rmse` logged once at the end; `load_runs` returns the `test/` ones with the prefix
  stripped (`depth/rmse`), which is what tables and Δm use;
- params are the flattened resolved config (`flatten_config`), dotted keys;
- an `mtbench eval` run (weights scored without training) has the tags of its trial plus `TAG_EVAL*`: its kind
  is "eval", which `load_runs` leaves out unless asked and `trial_records` ignores: it never stands in for a trial.

mlflow is imported inside functions: importing it takes about a second, which `mtbench --help`
should not pay.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import os
import re
import sys
import threading
import time
import urllib.error
import urllib.request
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

from mtbench import locks
from mtbench.errors import MtbenchError

if TYPE_CHECKING:
    import pandas as pd
    from mlflow.tracking import MlflowClient

# Tags the engine sets on every run.
TAG_EXPERIMENT = "mtbench.experiment"  # experiment file name (also the MLflow experiment name)
TAG_VARIANT = "mtbench.variant"  # row label in tables: one grid point / ablation arm, e.g. "single_task"
TAG_SEED = "mtbench.seed"  # integer seed, as a string
TAG_MODEL = "mtbench.model"  # registered model name, e.g. "demt"
TAG_DATASET = "mtbench.dataset"  # dataset name, e.g. "nyud"
TAG_CHECKPOINT = "mtbench.checkpoint"  # which weights the test metrics come from: "final" or "best_val"
TAG_METRIC_VARIANTS = "mtbench.metric_variants"  # JSON {task: meter variant name}
TAG_GIT_COMMIT = "mtbench.git_commit"
TAG_DEVICE = "mtbench.device"
TAG_TRIAL_ID = "mtbench.trial_id"  # TrialConfig.id: hash of the resolved config (skip/resume key of sweeps)
TAG_STUDY = "mtbench.study"  # Optuna study name of a search trial
TAG_STUDY_TRIAL = "mtbench.study_trial"  # Optuna trial number
TAG_PRUNED = "mtbench.pruned"  # "true" on a search trial that Optuna pruned (run status KILLED)
TAG_END_REASON = "mtbench.end_reason"  # why a FAILED or KILLED run stopped: the error and its message, or the signal
TAG_PARENT = "mlflow.parentRunId"  # MLflow's own tag: nests a study's trials under its parent run
TAG_STUDY_PARENT = "mtbench.study_parent"  # "true" on a study's parent run
TAG_REPORT = "mtbench.report"  # "true" on the run that holds a `mtbench report`'s files
TAG_SWEEP_PARENT = "mtbench.sweep_parent"  # "true" on the run a grid's trials nest under (one per `mtbench run`)
TAG_NOTE = "mlflow.note.content"  # MLflow's description of a run or an experiment
TAG_EXPERIMENT_KIND = "mlflow.experimentKind"  # MLflow 3: which view the UI opens an experiment in
TRAINING_KIND = "custom_model_development"  # ... the model-training one (not GenAI's traces)
SHARED_VIEW_PREFIX = "mlflow.sharedViewState."  # experiment tag of a saved runs-table view, opened by its key
VIEW_KEY = "mtbench"
TAG_KIND = "mtbench.kind"  # what a run is: trial, eval, report, study (a study's parent), sweep (a grid's parent)
TRIALS_ONLY = "tags.`mtbench.kind` = 'trial'"  # MLflow search filter: trial runs only
TAG_DATASET_VARIANT = "mtbench.dataset_variant"  # archive the data came from: NYUD_MT, NYUDv2, PASCAL_MT, ...
TAG_PROTOCOL = "mtbench.protocol"  # augmentation/evaluation preset: atrc, mtinet
TAG_REFERENCE_VARIANT = "mtbench.reference_variant"  # the experiment's Δm reference row (report default)
# Tags of an `mtbench eval` run (run kind "eval": weights scored without training, kept out of trial tables).
TAG_EVAL = "mtbench.eval"  # "true"
TAG_EVAL_WEIGHTS = "mtbench.eval.weights"  # path of the weights file, as given
TAG_EVAL_SHA256 = "mtbench.eval.weights_sha256"
TAG_EVAL_FORMAT = "mtbench.eval.weights_format"  # "mtbench trial checkpoint", "state dict", a converter's name
TAG_EVAL_SPLIT = "mtbench.eval.split"  # the split its `<split>/...` metrics were scored on: test or val
TEST_PREFIX = "test/"

DEFAULT_DB = "mlruns.db"
RUN_STATUSES = ("FINISHED", "FAILED", "KILLED")
# load_runs' fixed columns; metric columns follow.
RUN_COLUMNS = ("run_id", "run_name", "experiment", "status", "kind", "start_time", "end_time", "variant", "seed",
               "model", "backbone", "dataset", "dataset_variant", "protocol", "metric_variants", "checkpoint",
               "trial_id", "study", "study_trial", "pruned", "parent_run", "params_m", "gflops", "input_size",
               "flop_convention", "params", "tags")
HTTP_TIMEOUT_S = 3.0
_UNCHECKED_SCHEMES = ("postgresql", "mysql", "mssql", "databricks")  # accepted as given: checks need drivers
_BATCH = 100  # MLflow's limit of params/tags per log_batch call
_PARAM_LIMIT_FALLBACK = 500  # MAX_PARAM_VAL_LENGTH of older MLflow releases
_TAG_LIMIT_FALLBACK = 5000
_TRUNCATED = "...[truncated]"

# MLflow's HTTP client retries a failed request 7 times with exponential backoff (about 4 minutes) and waits
# 120 s for an answer. mtbench buffers metrics through outages itself (MetricSender), so each request may
# fail fast: 3 retries, backoff factor 1 (1 + 2 + 4 s), 20 s timeout. A value the user exported wins.
MLFLOW_HTTP_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "3", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                        "MLFLOW_HTTP_REQUEST_TIMEOUT": "20"}
for _var, _value in MLFLOW_HTTP_DEFAULTS.items():
    os.environ.setdefault(_var, _value)
DEFAULT_OUTAGE_S = 300.0

# MLflow logs "Creating initial MLflow database tables..." through alembic on every new sqlite store.
for _name in ("alembic", "mlflow.store.db.utils"):
    logging.getLogger(_name).setLevel(logging.WARNING)


def _sqlite_path(uri: str) -> Path | None:
    """Return the database file of a `sqlite:///` URI, or None for an in-memory database."""
    rest = uri[len("sqlite://"):]
    path = rest[1:] if rest.startswith("/") else rest
    path = path.split("?", 1)[0]
    return None if path in ("", ":memory:") else Path(path)


def _file_path(uri: str) -> Path:
    return Path(urlparse(uri).path) if uri.startswith("file:") else Path(uri)


def resolve_tracking_uri(configured: str | None) -> str:
    """Return the tracking URI to use: `configured`, else $MLFLOW_TRACKING_URI, else ./mlruns.db.

    Relative sqlite and file paths are made absolute against the current directory, so a later
    `chdir` (or a SLURM job starting elsewhere) still writes to the same store.
    """
    uri = configured or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{DEFAULT_DB}"
    if uri.startswith("sqlite:"):
        path = _sqlite_path(uri)
        if path is not None and not path.is_absolute():
            query = uri.split("?", 1)[1] if "?" in uri else ""
            uri = "sqlite:///" + Path.cwd().joinpath(path).as_posix() + (f"?{query}" if query else "")
    elif "://" not in uri and not uri.startswith("file:"):
        uri = Path(uri).expanduser().absolute().as_uri()  # a bare path is a file store
    return uri


def _check_writable_dir(folder: Path, what: str, uri: str) -> None:
    if not folder.is_dir():
        problem = "is a file, not a folder" if folder.exists() else "does not exist"
        raise MtbenchError(f"cannot use tracking store {uri!r}: folder {str(folder)!r} for {what} {problem}. "
                           "Create it (mkdir -p) or set `tracking.uri` / $MLFLOW_TRACKING_URI.")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise MtbenchError(f"cannot use tracking store {uri!r}: folder {str(folder)!r} for {what} is not "
                           f"writable. Fix its permissions or choose another `tracking.uri`.")


def check_tracking_uri(uri: str) -> None:
    """Raise MtbenchError unless the tracking store at `uri` can be used, within a few seconds.

    MLflow's own client retries an unreachable server for minutes, so a server is probed here
    with one short HTTP request. Database (postgresql, mysql, mssql) and databricks URIs are accepted
    unchecked.
    """
    scheme = uri.split(":", 1)[0].split("+", 1)[0].lower()  # postgresql+psycopg2 -> postgresql
    if scheme == "sqlite":
        path = _sqlite_path(uri)
        if path is None:
            return
        _check_writable_dir(path.parent, "the sqlite database", uri)
        if path.exists() and not os.access(path, os.W_OK):
            raise MtbenchError(f"cannot use tracking store {uri!r}: {str(path)!r} is not writable. "
                               "Fix its permissions or choose another `tracking.uri`.")
    elif scheme == "file":
        from mlflow import environment_variables as env

        allow = getattr(env, "MLFLOW_ALLOW_FILE_STORE", None)  # MLflow >= 3.x refuses file stores by default
        if allow is not None and not allow.get():
            raise MtbenchError(
                f"MLflow refuses the file store {uri!r} unless MLFLOW_ALLOW_FILE_STORE=true is set. Use a sqlite "
                f"store (sqlite:///path/to/{DEFAULT_DB}; `mlflow migrate-filestore` converts old runs), or set "
                "that variable.")
        path = _file_path(uri)
        existing = next(p for p in (path, *path.parents) if p.exists())  # MLflow creates the rest
        _check_writable_dir(existing, "the file store", uri)
    elif scheme in ("http", "https"):
        probe = uri.rstrip("/") + "/health"
        try:
            with urllib.request.urlopen(probe, timeout=HTTP_TIMEOUT_S):
                pass
        except urllib.error.HTTPError:
            pass  # the server answered; MLflow itself will report auth or path problems
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise MtbenchError(
                f"MLflow server {uri!r} did not answer within {HTTP_TIMEOUT_S:.0f} s ({reason}). Start it "
                "(`mtbench ui` or `mlflow server`), check the address, or set `tracking.uri` to a local "
                f"store such as sqlite:///{DEFAULT_DB}.") from None
    elif scheme not in _UNCHECKED_SCHEMES:
        raise MtbenchError(
            f"unsupported tracking URI {uri!r}: use sqlite:///path/to/{DEFAULT_DB}, file:///path/to/mlruns, "
            "http(s)://host:port of an MLflow server, or a postgresql/mysql/mssql database URI.")


def _client(uri: str) -> MlflowClient:
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def _require_existing_store(uri: str) -> None:
    """Refuse to read a sqlite store that does not exist (MLflow would create an empty one)."""
    if uri.startswith("sqlite:"):
        path = _sqlite_path(uri)
        if path is not None and not path.exists():
            raise MtbenchError(f"no runs yet at {uri!r} ({str(path)!r} does not exist); run "
                               "`mtbench run <experiment.yaml>` first, or point the tracking URI at your "
                               "store.")
    check_tracking_uri(uri)


def _artifact_location(uri: str, experiment: str) -> str | None:
    """Keep a sqlite store's artifacts beside its database, not in the current directory.

    (MLflow's default for a sqlite store is ./mlruns of whatever directory the process runs in.)
    """
    if not uri.startswith("sqlite:"):
        return None
    path = _sqlite_path(uri)
    if path is None:
        return None
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", experiment).strip("._") or "experiment"
    return (path.parent / "mlartifacts" / slug).as_uri()


def _limit(name: str, fallback: int) -> int:
    from mlflow.utils import validation

    return int(getattr(validation, name, fallback))


def _clip(value: object, limit: int) -> str:
    """Stringify `value` and cut it to MLflow's length limit, marking the cut."""
    if isinstance(value, list | tuple | dict):
        text = json.dumps(value, default=str)
    else:
        text = str(value)
    return text if len(text) <= limit else text[: limit - len(_TRUNCATED)] + _TRUNCATED


def _chunks(items: list[Any], size: int) -> Iterable[list[Any]]:
    for i in range(0, len(items), size):
        yield items[i:i + size]


class MetricSender:
    """Send a run's metrics without ever blocking training on the store.

    Metrics are queued and sent in batches; a batch that fails stays queued and is retried (every
    `retry_s` from a background thread for a server; at the next call for a local store, where a second
    writer thread would contend for the sqlite file). While the store is away a warning is printed once,
    and once more when it is back. A store away for longer than `outage_s` makes the next `put` raise
    MtbenchError, which fails the trial with its checkpoint kept: rerunning the command resumes it.
    """

    def __init__(self, client: MlflowClient, run_id: str, *, outage_s: float, threaded: bool,
                 retry_s: float = 5.0) -> None:
        self._client, self._run_id, self._outage_s, self._retry_s = client, run_id, outage_s, retry_s
        self._queue: list[Any] = []
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._down_since: float | None = None
        self._thread = threading.Thread(target=self._loop, daemon=True, name=f"mlflow-{run_id[:8]}") \
            if threaded else None
        if self._thread is not None:
            self._thread.start()

    def put(self, rows: list[Any]) -> None:
        """Queue metric rows; raise MtbenchError if the store has been away longer than `outage_s`."""
        self._check_outage()
        with self._lock:
            self._queue.extend(rows)
        if self._thread is None:
            self._send_all()
        else:
            self._wake.set()

    def flush(self, timeout_s: float | None = None) -> None:
        """Send everything queued, retrying for up to `timeout_s` (default `outage_s`); raise if it cannot."""
        deadline = time.monotonic() + (self._outage_s if timeout_s is None else timeout_s)
        while self._pending():
            self._send_all()
            if not self._pending():
                break
            if time.monotonic() > deadline:
                raise MtbenchError(self._outage_message(len(self._queue)))
            time.sleep(min(self._retry_s, max(0.0, deadline - time.monotonic())))

    def close(self) -> None:
        """Stop the background thread (metrics still queued are dropped: call flush first to keep them)."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _pending(self) -> bool:
        with self._lock:
            return bool(self._queue)

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(timeout=self._retry_s)
            self._wake.clear()
            if not self._stop.is_set():
                self._send_all()

    def _send_all(self) -> None:
        while True:
            with self._lock:
                batch = self._queue[:1000]  # MLflow's metrics-per-batch limit
            if not batch:
                return
            try:
                self._client.log_batch(self._run_id, metrics=batch)
            except Exception as err:  # connection refused, timeouts, 5xx: keep the batch, try again later
                self._went_away(err)
                return
            with self._lock:
                del self._queue[:len(batch)]
            self._came_back()

    def _went_away(self, err: Exception) -> None:
        if self._down_since is None:
            self._down_since = time.monotonic()
            warnings.warn(f"the tracking store is not answering ({type(err).__name__}); training goes on and its "
                          f"metrics are kept and sent when it returns (giving up after {self._outage_s:.0f} s).",
                          stacklevel=2)

    def _came_back(self) -> None:
        if self._down_since is not None:
            warnings.warn(f"the tracking store is back after {time.monotonic() - self._down_since:.0f} s; the "
                          "kept metrics were sent.", stacklevel=2)
            self._down_since = None

    def _check_outage(self) -> None:
        if self._down_since is not None and time.monotonic() - self._down_since > self._outage_s:
            raise MtbenchError(self._outage_message(len(self._queue)))

    def _outage_message(self, queued: int) -> str:
        return (f"the tracking store has not answered for over {self._outage_s:.0f} s (tracking.outage_s); "
                f"{queued} metric values of run {self._run_id} could not be sent. The trial stops here with its "
                "last checkpoint kept: when the store is back, rerun the same command to resume it.")


class Tracker:
    """One MLflow run of one trial. Use `Tracker.start`, then `end(status)` (or a `with` block)."""

    def __init__(self, client: MlflowClient, run_id: str, *, outage_s: float = DEFAULT_OUTAGE_S,
                 threaded: bool = False, uri: str | None = None) -> None:
        self._client = client
        self.run_id = run_id
        self._uri = uri
        self._metrics = MetricSender(client, run_id, outage_s=outage_s, threaded=threaded)

    @contextmanager
    def _answering(self) -> Iterator[None]:
        """Turn a failed call to an MLflow server that no longer answers into one MtbenchError (the trial stops
        with its checkpoint kept); any other failure, or one of a server that still answers, is raised as is."""
        try:
            yield
        except MtbenchError:
            raise
        except Exception as err:
            if self._uri is None or not self._uri.startswith(("http:", "https:")):
                raise
            try:
                check_tracking_uri(self._uri)
            except MtbenchError:
                raise MtbenchError(
                    f"the MLflow server {self._uri!r} stopped answering ({type(err).__name__}) while run "
                    f"{self.run_id} was being written. The trial stops here with its last checkpoint kept: when the "
                    "server is back, rerun the same command to resume it.") from None
            raise

    @classmethod
    def start(cls, uri: str, experiment: str, run_name: str, tags: Mapping[str, object],
              run_id: str | None = None, outage_s: float = DEFAULT_OUTAGE_S) -> Tracker:
        """Start a run in `experiment` (created if missing), or reopen `run_id` to resume it.

        Metrics go through a MetricSender (sent from a background thread for a server), so a store that
        goes away for up to `outage_s` seconds does not stop training.
        """
        from mlflow.exceptions import MlflowException

        check_tracking_uri(uri)
        client = _client(uri)
        build = functools.partial(cls, client, outage_s=outage_s, threaded=uri.startswith(("http:", "https:")),
                                  uri=uri)
        str_tags = {k: _clip(v, _limit("MAX_TAG_VAL_LENGTH", _TAG_LIMIT_FALLBACK)) for k, v in tags.items()}
        if run_id is not None:
            try:
                run = client.get_run(run_id)
            except MlflowException as exc:
                raise MtbenchError(f"cannot resume MLflow run {run_id!r} at {uri!r}: {exc.message} "
                                   "Check the run id, or start the trial without resuming.") from None
            if run.info.lifecycle_stage != "active":
                raise MtbenchError(f"cannot resume MLflow run {run_id!r}: it was deleted. Restore it "
                                   "(`mlflow runs restore`) or start a fresh run.")
            client.update_run(run_id, status="RUNNING")
            if TAG_END_REASON in run.data.tags:  # it ran on: why it stopped last time no longer describes it
                client.delete_tag(run_id, TAG_END_REASON)
            tracker = build(run_id)
            tracker.set_tags(str_tags)
            return tracker
        run = client.create_run(_experiment_id(client, uri, experiment), run_name=run_name, tags=str_tags)
        return build(run.info.run_id)

    def log_params(self, flat: Mapping[str, object]) -> None:
        """Log params (values stringified and truncated); skip those already logged with that value.

        A param already logged with a different value (a resumed run whose config changed) is a
        user error: MLflow forbids changing params, and the run would no longer match its numbers.
        """
        from mlflow.entities import Param

        limit = _limit("MAX_PARAM_VAL_LENGTH", _PARAM_LIMIT_FALLBACK)
        with self._answering():
            logged = self._client.get_run(self.run_id).data.params
        new = {k: _clip(v, limit) for k, v in flat.items()}
        changed = {k: (logged[k], v) for k, v in new.items() if k in logged and logged[k] != v}
        if changed:
            diff = "; ".join(f"{k}: {old!r} -> {v!r}" for k, (old, v) in sorted(changed.items())[:5])
            raise MtbenchError(f"MLflow run {self.run_id} already has different values for {len(changed)} "
                               f"param(s) ({diff}). Resume with the run's original config, or start a "
                               "new run.")
        params = [Param(k, v) for k, v in new.items() if k not in logged]
        with self._answering():
            for chunk in _chunks(params, _BATCH):
                self._client.log_batch(self.run_id, params=chunk)

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        """Log `{name: value}` at `step`; names like `val/semseg/mIoU` are fine for MLflow."""
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self._metrics.put([Metric(k, float(v), now, int(step)) for k, v in metrics.items()])

    def set_tags(self, tags: Mapping[str, object]) -> None:
        """Set tags (values stringified and truncated to MLflow's limit)."""
        from mlflow.entities import RunTag

        limit = _limit("MAX_TAG_VAL_LENGTH", _TAG_LIMIT_FALLBACK)
        rows = [RunTag(k, _clip(v, limit)) for k, v in tags.items()]
        with self._answering():
            for chunk in _chunks(rows, _BATCH):
                self._client.log_batch(self.run_id, tags=chunk)

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        """Copy a local file or folder into the run's artifacts (under `artifact_path`)."""
        with self._answering():
            self._client.log_artifact(self.run_id, str(path), artifact_path)

    def log_text(self, text: str, artifact_file: str) -> None:
        with self._answering():
            self._client.log_text(self.run_id, text, artifact_file)

    def log_inputs(self, datasets: Sequence[Any], attempts: int = 3) -> None:
        """Record MLflow dataset inputs (`dataset_inputs`) on the run: the runs table's Dataset column.

        A dataset is stored once per experiment. Two trials that start together on a new store both find it
        missing and both insert it; the second insert fails on the store's unique key (seen with SQLite and two
        local workers). The call is idempotent, so it is retried: the retry finds the dataset and links it.
        """
        from mlflow.exceptions import MlflowException

        for attempt in range(attempts):
            try:
                with self._answering():
                    self._client.log_inputs(self.run_id, datasets=list(datasets))
                return
            except MlflowException:
                if attempt == attempts - 1:
                    raise
                time.sleep(0.2 * (attempt + 1))

    def log_dict(self, d: Mapping[str, Any], artifact_file: str) -> None:
        """Save `d` as JSON or YAML, chosen by the suffix of `artifact_file`."""
        with self._answering():
            self._client.log_dict(self.run_id, dict(d), artifact_file)

    def log_figure(self, fig: Any, artifact_file: str) -> None:
        """Save a matplotlib figure as an artifact (format from the suffix, e.g. `.png`)."""
        with self._answering():
            self._client.log_figure(self.run_id, fig, artifact_file)

    def flush(self) -> None:
        """Send every queued metric (waiting up to tracking.outage_s for the store)."""
        self._metrics.flush()

    def end(self, status: str = "FINISHED") -> None:
        """Mark the run FINISHED (after sending every queued metric), FAILED or KILLED (sending what can be
        sent within a few seconds: a trial that stops does not wait for the store)."""
        if status not in RUN_STATUSES:
            raise ValueError(f"status must be one of {RUN_STATUSES}, got {status!r}")
        try:
            self._metrics.flush(None if status == "FINISHED" else 5.0)
        except MtbenchError:
            if status == "FINISHED":
                raise
        finally:
            self._metrics.close()
        with self._answering():
            self._client.set_terminated(self.run_id, status=status)

    def __enter__(self) -> Tracker:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *_: object) -> None:
        if exc_type is None:
            self.end("FINISHED")
        else:
            self.end("KILLED" if issubclass(exc_type, KeyboardInterrupt) else "FAILED")


def flatten_config(d: Mapping[str, Any], prefix: str = "") -> dict[str, object]:
    """Flatten nested dicts to dotted keys; lists become JSON text, empty dicts `{}`.

    >>> flatten_config({"model": {"name": "demt", "tasks": ["semseg", "depth"]}, "seed": 0})
    {'model.name': 'demt', 'model.tasks': '["semseg", "depth"]', 'seed': 0}
    """
    flat: dict[str, object] = {}
    for key, value in d.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(flatten_config(value, prefix=f"{name}."))
        elif isinstance(value, Mapping):
            flat[name] = "{}"
        elif isinstance(value, list | tuple):
            flat[name] = json.dumps(list(value), default=str)
        else:
            flat[name] = value
    return flat


def list_experiments(uri: str) -> list[str]:
    """Return the names of the active experiments at `uri`, sorted."""
    _require_existing_store(uri)
    return sorted(e.name for e in _client(uri).search_experiments())


def experiments_with_runs(uri: str) -> list[str]:
    """The names of the active experiments at `uri` that hold at least one run, sorted."""
    _require_existing_store(uri)
    client = _client(uri)
    return sorted(e.name for e in client.search_experiments()
                  if client.search_runs([e.experiment_id], max_results=1))


def _experiment_ids(client: MlflowClient, uri: str, names: Sequence[str] | None) -> dict[str, str]:
    """Map experiment id -> name for `names` (every active experiment when None); unknown names fail."""
    experiments = {e.experiment_id: e.name for e in client.search_experiments()}
    if names is None:
        return experiments
    by_name = {name: i for i, name in experiments.items()}
    unknown = [n for n in names if n not in by_name]
    if unknown:
        existing = ", ".join(sorted(experiments.values())) or "none"
        raise MtbenchError(f"no MLflow experiment named {', '.join(map(repr, unknown))} at {uri!r}; existing "
                           f"experiments: {existing}.")
    return {by_name[n]: n for n in names}


def _experiment_id(client: MlflowClient, uri: str, experiment: str) -> str:
    """The id of active experiment `experiment`, created (as a model-training experiment) if missing."""
    from mlflow.exceptions import MlflowException

    found = client.get_experiment_by_name(experiment)
    if found is None:
        try:
            return client.create_experiment(experiment, artifact_location=_artifact_location(uri, experiment),
                                            tags={TAG_EXPERIMENT_KIND: TRAINING_KIND})
        except MlflowException:
            # Another worker of the same sweep created it a moment ago.
            found = client.get_experiment_by_name(experiment)
            if found is None:
                raise
    if found.lifecycle_stage != "active":
        raise MtbenchError(f"MLflow experiment {experiment!r} at {uri!r} is deleted. Restore it "
                           "(`mlflow experiments restore`) or use another experiment name.")
    return found.experiment_id


def prepare_experiment(uri: str, experiment: str, *, description: str, metric_keys: Sequence[str]) -> str:
    """Create or update `experiment` for browsing; return its id.

    MLflow's UI then opens it in its model-training view (`mlflow.experimentKind`), shows the YAML's
    `description` (`mlflow.note.content`), and keeps a saved view of the runs table (a shared view state, the
    one `ui_address` opens) with the Dataset and Description columns and the final `metric_keys`.
    """
    ensure_store(uri)
    client = _client(uri)
    exp_id = _experiment_id(client, uri, experiment)
    view = {"selectedColumns": ["attributes.`Dataset`", "attributes.`Description`",
                                *(f"metrics.`{k}`" for k in metric_keys)],
            "orderByKey": "attributes.start_time", "orderByAsc": False}
    tags = {TAG_EXPERIMENT_KIND: TRAINING_KIND, f"{SHARED_VIEW_PREFIX}{VIEW_KEY}": json.dumps(view),
            **({TAG_NOTE: description.strip()} if description.strip() else {})}
    with readable_store(uri):
        for key, value in tags.items():
            client.set_experiment_tag(exp_id, key, value)
    return exp_id


def ui_address(uri: str, experiment: str | None, base: str) -> str:
    """The address of an experiment's model-training Runs page under `base` (the UI's root), with mtbench's
    runs-table view; `experiment` None: the experiment with the most recent run."""
    client = _client(uri)
    names = {e.experiment_id: e.name for e in client.search_experiments()}
    if experiment is None:
        latest = client.search_runs(list(names), max_results=1, order_by=["attributes.start_time DESC"])
        if not latest:
            raise MtbenchError(f"the store {uri!r} holds no run yet. Run an experiment first "
                               "(`mtbench run experiments/quickstart.yaml --smoke`).")
        exp_id = latest[0].info.experiment_id
    else:
        by_name = {n: i for i, n in names.items()}
        if experiment not in by_name:
            raise MtbenchError(f"no MLflow experiment named {experiment!r} at {uri!r}; existing experiments: "
                               f"{', '.join(sorted(by_name)) or 'none'}.")
        exp_id = by_name[experiment]
    shared = f"{SHARED_VIEW_PREFIX}{VIEW_KEY}" in client.get_experiment(exp_id).tags
    return (f"{base.rstrip('/')}/#/experiments/{exp_id}/runs?workflowType=machine_learning"
            + (f"&viewStateShareKey={VIEW_KEY}" if shared else ""))


def dataset_inputs(name: str, datasets: Mapping[str, Any]) -> list[Any]:
    """MLflow dataset inputs of a trial's splits {split: TaskDataset}: name = the dataset `name` and its archive
    variant, digest = a hash of mtbench's fingerprint (itself in the profile), source = the root, context = split."""
    import hashlib

    from mlflow.entities import Dataset, DatasetInput, InputTag

    inputs = []
    for split, data in datasets.items():
        root = getattr(data, "root", None)
        label = name if data.variant == name else f"{name} ({data.variant})"
        dataset = Dataset(name=label, digest=hashlib.sha1(data.fingerprint.encode())
                          .hexdigest()[:16], source_type="local" if root else "code",
                          source=json.dumps({"uri": str(root) if root else "generated by mtbench.data.synthetic"}),
                          profile=json.dumps({"fingerprint": data.fingerprint, "samples": len(data)}))
        inputs.append(DatasetInput(dataset, tags=[InputTag(key="mlflow.data.context", value=split)]))
    return inputs


def _run_kind(tags: Mapping[str, str]) -> str:
    """trial, study (a study's parent run), report or eval (`mtbench eval`)."""
    if tags.get(TAG_EVAL) == "true":
        return "eval"
    if tags.get(TAG_REPORT) == "true":
        return "report"
    if tags.get(TAG_STUDY_PARENT) == "true":
        return "study"
    if tags.get(TAG_SWEEP_PARENT) == "true":
        return "sweep"
    return "trial"


def _float_or_nan(value: str | None) -> float:
    try:
        return float(value) if value not in (None, "") else math.nan
    except ValueError:
        return math.nan


def load_runs(uri: str, experiments: str | Sequence[str] | None = None, *, query: str | None = None,
              kinds: Sequence[str] = ("trial", "study")) -> pd.DataFrame:
    """Return one row per run of `experiments` (all when None) with its final test metrics.

    `query` is an MLflow search filter (e.g. "tags.`mtbench.model` = 'demt' and params.`train.steps` =
    '500'"); `kinds` keeps trial runs, study parent runs, `mtbench report` runs and/or `mtbench eval` runs
    (those only when asked: their metrics come from weights, not from a trial of this config).
    Columns: RUN_COLUMNS (`params` and `tags` hold every param and tag as dicts), then one column per `test/` metric
    with the prefix stripped (`semseg/mIoU`, `depth/rmse`, ...); NaN where a run did not log it.
    """
    import pandas as pd
    from mlflow.exceptions import MlflowException

    _require_existing_store(uri)
    client = _client(uri)
    names = [experiments] if isinstance(experiments, str) else experiments
    ids = _experiment_ids(client, uri, names)
    rows: list[dict[str, object]] = []
    token = None
    while ids:
        try:
            page = client.search_runs(list(ids), filter_string=query or "", max_results=1000, page_token=token)
        except MlflowException as exc:
            raise MtbenchError(f"invalid run query {query!r}: {exc.message} Write an MLflow search filter, e.g. "
                               "\"tags.`mtbench.model` = 'demt' and params.`train.steps` = '500'\".") from None
        for run in page:
            tags, params = run.data.tags, run.data.params
            kind = _run_kind(tags)
            if kind not in kinds:
                continue
            row: dict[str, object] = {
                "run_id": run.info.run_id, "run_name": run.info.run_name,
                "experiment": ids[run.info.experiment_id], "status": run.info.status, "kind": kind,
                "start_time": pd.Timestamp(run.info.start_time, unit="ms", tz="UTC"),
                "end_time": pd.Timestamp(run.info.end_time, unit="ms", tz="UTC") if run.info.end_time else pd.NaT,
                "variant": tags.get(TAG_VARIANT), "seed": tags.get(TAG_SEED), "model": tags.get(TAG_MODEL),
                "backbone": params.get("model.backbone"), "dataset": tags.get(TAG_DATASET),
                "dataset_variant": tags.get(TAG_DATASET_VARIANT), "protocol": tags.get(TAG_PROTOCOL),
                "metric_variants": tags.get(TAG_METRIC_VARIANTS), "checkpoint": tags.get(TAG_CHECKPOINT),
                "trial_id": tags.get(TAG_TRIAL_ID), "study": tags.get(TAG_STUDY),
                "study_trial": tags.get(TAG_STUDY_TRIAL), "pruned": tags.get(TAG_PRUNED) == "true",
                "parent_run": tags.get(TAG_PARENT), "params_m": _float_or_nan(params.get("cost/params_M")),
                "gflops": _float_or_nan(params.get("cost/gflops_fvcore")),
                "input_size": params.get("cost/input_size"), "flop_convention": params.get("cost/convention"),
                "params": dict(params), "tags": dict(tags)}
            metrics = run.data.metrics.items()
            row.update({k[len(TEST_PREFIX):]: v for k, v in metrics if k.startswith(TEST_PREFIX)})
            rows.append(row)
        token = page.token
        if not token:
            break
    metric_names = sorted({k for r in rows for k in r} - set(RUN_COLUMNS))
    frame = pd.DataFrame(rows, columns=[*RUN_COLUMNS, *metric_names])
    for column in ("seed", "study_trial"):
        frame[column] = pd.to_numeric(frame[column], errors="coerce").astype("Int64")
    return frame


def metric_history(uri: str, run_ids: Sequence[str], keys: Sequence[str]) -> pd.DataFrame:
    """Every logged value of metrics `keys` of the runs: columns run_id, metric, step, value (step order)."""
    import pandas as pd

    client = _client(uri)
    rows = [(run_id, key, m.step, m.value) for run_id in run_ids for key in keys
            for m in client.get_metric_history(run_id, key)]
    frame = pd.DataFrame(rows, columns=["run_id", "metric", "step", "value"])
    return frame.sort_values(["run_id", "metric", "step"], kind="stable").reset_index(drop=True)


def log_report(uri: str, experiment: str, folder: Path, tags: Mapping[str, object]) -> str:
    """Log the files of `folder` as artifacts of a new FINISHED `report` run in `experiment`; return its id.

    The run sits beside the runs it summarises, so `mtbench ui` shows the tables and figures with them.
    """
    note = (f"`mtbench report` files (tables, figures) of {tags.get('mtbench.report_runs', 'the')} trial runs: not a "
            f"trial. Show trials only with the filter {TRIALS_ONLY}")
    tracker = Tracker.start(uri, experiment, "report", {**tags, TAG_REPORT: "true", TAG_KIND: "report",
                                                        TAG_EXPERIMENT: experiment, TAG_NOTE: note})
    try:
        for path in sorted(folder.iterdir()):
            tracker.log_artifact(path)
    except BaseException:
        tracker.end("FAILED")
        raise
    tracker.end("FINISHED")
    return tracker.run_id


@dataclass(frozen=True)
class TrialRecord:
    """The latest MLflow run of one trial id: its run id, status and final test metrics."""

    run_id: str
    status: str
    metrics: dict[str, float]


def _new_sqlite_store(uri: str) -> bool:
    """A sqlite store whose file does not exist yet: it holds no runs (and reading must not create it)."""
    path = _sqlite_path(uri) if uri.startswith("sqlite:") else None
    return path is not None and not path.exists()


@contextmanager
def readable_store(uri: str) -> Iterator[None]:
    """Turn a damaged store into one message naming it (and saying it is left as it is)."""
    try:
        yield
    except MtbenchError:
        raise
    except Exception as err:  # sqlalchemy's DatabaseError, MlflowException, ...
        text = str(err).splitlines()[0] if str(err) else type(err).__name__
        if "not a database" not in text and "malformed" not in text and "no such table" not in text:
            raise
        raise MtbenchError(f"tracking store {uri!r} cannot be read: {text}. It is left untouched; move it aside "
                           "(or restore it from a backup) and rerun, or set tracking.uri to another store.") from None


def trial_records(uri: str, experiment: str) -> dict[str, TrialRecord]:
    """Latest run per `mtbench.trial_id` tag in `experiment`, through MLflow's API on every kind of store
    (sqlite, file, server); empty when the store or experiment is new. A server that is down is an error."""
    if _new_sqlite_store(uri):
        return {}
    check_tracking_uri(uri)
    with readable_store(uri):
        return _trial_records(_client(uri), experiment)


def _trial_records(client: MlflowClient, experiment: str) -> dict[str, TrialRecord]:
    found = client.get_experiment_by_name(experiment)
    if found is None:
        return {}
    records: dict[str, tuple[int, TrialRecord]] = {}
    token = None
    while True:
        page = client.search_runs([found.experiment_id], max_results=1000, page_token=token)
        for run in page:
            trial_id = run.data.tags.get(TAG_TRIAL_ID)
            if trial_id is None or _run_kind(run.data.tags) == "eval":  # an eval run did not train the trial
                continue
            metrics = {k[len(TEST_PREFIX):]: v for k, v in run.data.metrics.items() if k.startswith(TEST_PREFIX)}
            record = TrialRecord(run.info.run_id, run.info.status, metrics)
            if trial_id not in records or run.info.start_time > records[trial_id][0]:
                records[trial_id] = (run.info.start_time, record)
        token = page.token
        if not token:
            break
    return {k: v for k, (_, v) in records.items()}


def ensure_store(uri: str) -> None:
    """Create (and migrate) the store now, under a file lock beside a sqlite database: concurrent first use
    of a fresh store (two `mtbench run`, several workers) races on MLflow's schema migration otherwise."""
    check_tracking_uri(uri)
    path = _sqlite_path(uri) if uri.startswith("sqlite:") else None
    lock = locks.exclusive(path.with_name(f".{path.name}.lock"), wait=True, what=f"store {uri}") \
        if path is not None else nullcontext()
    with lock, readable_store(uri):
        _client(uri).search_experiments(max_results=1)


def close_stale_runs(uri: str, experiment: str, trial_id: str, *, keep: str | None) -> list[str]:
    """Mark KILLED every RUNNING run of `trial_id` but `keep`; return their ids.

    Called by the process that holds the trial's lock (mtbench.locks), so no other process trains the
    trial: a RUNNING run of it is one whose trainer died (kill -9, a lost node) or was abandoned by --fresh.
    """
    stale = [r for r in find_runs(uri, experiment, {TAG_TRIAL_ID: trial_id}, status="RUNNING") if r != keep]
    client = _client(uri)
    for run_id in stale:
        client.set_tag(run_id, TAG_END_REASON, "stale: its trainer stopped without closing it (killed, or "
                                               "the trial was restarted afresh)")
        client.set_terminated(run_id, status="KILLED")
    return stale


def find_runs(uri: str, experiment: str, tags: Mapping[str, str], *, status: str | None = None) -> list[str]:
    """Ids of the runs of `experiment` carrying all `tags` (and `status`; newest first); empty for a new store."""
    if _new_sqlite_store(uri):
        return []
    client = _client(uri)
    found = client.get_experiment_by_name(experiment)
    if found is None:
        return []
    query = " and ".join([f"tags.`{k}` = '{v}'" for k, v in tags.items()]
                         + ([f"attributes.status = '{status}'"] if status else []))
    runs = client.search_runs([found.experiment_id], filter_string=query, order_by=["attributes.start_time DESC"])
    return [r.info.run_id for r in runs]


def launch_ui(uri: str, *, host: str = "127.0.0.1", port: int = 5000, experiment: str | None = None,
              ready: Callable[[str], None] | None = None) -> int:
    """Serve MLflow's UI for `uri` until Ctrl-C or SIGTERM; return the server's exit code.

    `ready(address)` gets the model-training Runs page of `experiment` (default: the most recent) once the
    server answers. A server store is already browsable: `ready` gets its page and nothing is started.
    """
    from mtbench import serving

    if uri.startswith(("http:", "https:")):
        if ready is not None:
            ready(ui_address(uri, experiment, uri))
        return 0
    _require_existing_store(uri)
    base = serving.base_url(host, port)
    address = ui_address(uri, experiment, base)  # an unknown experiment fails before anything starts
    cmd = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", uri, "--host", host, "--port", str(port)]
    return serving.serve(cmd, name="mlflow server", host=host, port=port, probe=f"{base}/health",
                         ready=None if ready is None else lambda: ready(address))
