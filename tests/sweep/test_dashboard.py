"""serve_dashboard refuses what it cannot show, saying how to fix it (the browser test serves a real study)."""

from __future__ import annotations

import socket

import pytest

from mtbench.config import load_experiment
from mtbench.errors import MtbenchError
from mtbench.sweep import dashboard, search

BASE = """name: d
dataset: {name: synthetic_nyud}
model: {name: shared_encoder, backbone: tiny}
train: {steps: 4}
output_dir: OUT
"""
SEARCH = """search:
  objective: semseg/mIoU
  space: {train.optimizer.lr: {type: float, low: 0.001, high: 0.01}}
"""


@pytest.fixture
def study_exp(tmp_path, write_yaml):
    return load_experiment(write_yaml("d.yaml", BASE.replace("OUT", str(tmp_path / "runs")) + SEARCH))


def test_an_experiment_without_search_has_no_study_to_show(tmp_path, write_yaml):
    exp = load_experiment(write_yaml("d.yaml", BASE.replace("OUT", str(tmp_path / "runs"))))
    with pytest.raises(MtbenchError, match=r"'d' has no `search:` section.*mtbench ui"):
        dashboard.serve_dashboard(exp)


def test_a_study_not_run_yet_says_run_it_first_and_creates_no_storage(tmp_path, study_exp):
    with pytest.raises(MtbenchError, match=r"no Optuna study 'd' in 'sqlite:///.*optuna.db' yet: run the study "
                                           r"first \(`mtbench run EXP.yaml`"):
        dashboard.serve_dashboard(study_exp)
    assert not (tmp_path / "runs").exists()


def test_a_storage_without_the_study_says_run_it_first(study_exp):
    import optuna

    optuna.create_study(study_name="other", storage=search.open_storage(study_exp))
    with pytest.raises(MtbenchError, match="no Optuna study 'd'.*run the study first"):
        dashboard.serve_dashboard(study_exp)


def test_a_port_in_use_is_refused_before_starting(study_exp):
    import optuna

    optuna.create_study(study_name="d", storage=search.open_storage(study_exp))
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(MtbenchError, match=rf"port {port} on 127.0.0.1 is in use.*--port"):
            dashboard.serve_dashboard(study_exp, port=port)


def test_without_optuna_dashboard_installed_it_says_how_to_install(study_exp, monkeypatch):
    monkeypatch.setattr(dashboard, "entry_points", lambda **kwargs: [])
    with pytest.raises(MtbenchError, match="pip install optuna-dashboard"):
        dashboard.serve_dashboard(study_exp)


def test_a_journal_storage_is_named_as_a_journal_file():
    cmd = dashboard.dashboard_command("journal:/shared/s.log", host="127.0.0.1", port=8081)
    assert cmd[3:] == ["/shared/s.log", "--storage-class", "JournalFileStorage", "--host", "127.0.0.1",
                       "--port", "8081", "--quiet"]
    assert dashboard.dashboard_command("sqlite:////a/b.db", host="h", port=1)[3] == "sqlite:////a/b.db"
