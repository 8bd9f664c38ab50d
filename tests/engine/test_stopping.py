"""Stop signals mid-training: the running step finishes and is checkpointed before the stop (engine.stopping)."""

from __future__ import annotations

import os
import signal

import pytest

from mtbench.engine import stopping
from mtbench.errors import Terminated


class Stop(Exception):
    pass


def stop(signum, frame):
    raise Stop(signal.Signals(signum).name)


@pytest.fixture
def sigusr1():
    """SIGUSR1 as the test's stop signal, delivered synchronously to this process."""
    previous = signal.getsignal(signal.SIGUSR1)
    yield lambda action: signal.signal(signal.SIGUSR1, stopping.deferred(action))
    signal.signal(signal.SIGUSR1, previous)


def send() -> None:
    os.kill(os.getpid(), signal.SIGUSR1)  # Python runs the handler before the next bytecode


def test_outside_the_training_steps_the_action_runs_at_once(sigusr1):
    sigusr1(stop)
    with pytest.raises(Stop, match="SIGUSR1"):
        send()


def test_a_signal_mid_step_checkpoints_that_step_then_stops():
    saved: list[int] = []
    handler = stopping.deferred(stop)
    with stopping.training_steps(), pytest.raises(Stop) as stopped:
        for step in range(1, 10):
            if step == 4:
                handler(signal.SIGUSR1, None)  # lands while step 4 runs
            stopping.at_step_end(step, saved.append, saved=False)
    assert saved == [4] and stopped.value.checkpoint_step == 4


def test_a_step_that_saved_its_regular_checkpoint_is_not_saved_twice():
    saved: list[int] = []
    handler = stopping.deferred(stop)
    with stopping.training_steps(), pytest.raises(Stop):
        handler(signal.SIGUSR1, None)
        stopping.at_step_end(10, saved.append, saved=True)
    assert saved == []


def test_without_an_action_the_signal_checkpoints_and_training_goes_on():
    saved: list[int] = []
    handler = stopping.deferred(None)
    with stopping.training_steps():
        for step in range(1, 6):
            if step in (2, 4):
                handler(signal.SIGTERM, None)
            stopping.at_step_end(step, saved.append, saved=False)
    assert saved == [2, 4]


def test_a_second_signal_while_one_waits_acts_at_once():
    handler = stopping.deferred(stop)
    with stopping.training_steps():
        handler(signal.SIGTERM, None)
        with pytest.raises(Stop, match="SIGTERM"):
            handler(signal.SIGTERM, None)


def test_a_stop_after_a_checkpoint_only_request_still_waits_for_the_step_end():
    # SLURM preempts with SIGTERM (checkpoint, train on) and then USR2 (stop): the stop must not act mid-step.
    saved: list[int] = []
    term, usr2 = stopping.deferred(None), stopping.deferred(stop)
    with stopping.training_steps(), pytest.raises(Stop, match="SIGUSR2") as stopped:
        term(signal.SIGTERM, None)
        usr2(signal.SIGUSR2, None)
        stopping.at_step_end(3, saved.append, saved=False)
    assert saved == [3] and stopped.value.checkpoint_step == 3


def test_disabled_deferral_acts_at_once_and_requests_do_not_outlive_the_loop():
    handler = stopping.deferred(stop)
    with stopping.training_steps(enabled=False), pytest.raises(Stop):
        handler(signal.SIGTERM, None)
    with stopping.training_steps():
        handler(signal.SIGTERM, None)
    saved: list[int] = []
    with stopping.training_steps():  # a new loop starts with no request pending
        stopping.at_step_end(1, saved.append, saved=False)
    assert saved == []


def terminate(signum, frame):
    raise Terminated()


def test_terminated_mid_training_names_the_checkpointed_step(tmp_path, monkeypatch):
    """The real trainer under the CLI's SIGTERM handler: it stops after the step it was in, checkpointed there."""
    import mtbench.engine.trainer as trainer
    from mtbench.config.schema import TrialConfig
    from mtbench.engine.checkpoint import load_checkpoint
    from mtbench.engine.trial import end_reason, run_trial, trial_dir

    cfg = TrialConfig.model_validate({
        "experiment": "stop", "variant": "v", "seed": 0, "output_dir": str(tmp_path / "runs"),
        "tracking": {"uri": f"sqlite:///{tmp_path}/mlruns.db"},
        "dataset": {"name": "synthetic_nyud", "options": {"height": 16, "width": 16, "num_train": 8, "num_val": 2,
                                                           "num_test": 2}},
        "model": {"name": "shared_encoder", "backbone": "tiny"},
        "train": {"steps": 20, "batch_size": 2, "eval_batch_size": 2, "eval_every": 20, "checkpoint_every": 10,
                  "device": "cpu"}})
    handler, real_lr_at, sent = stopping.deferred(terminate), trainer.lr_at, []

    def lr_at(step, *args, **kwargs):  # SIGTERM lands while step 7 (index 6) runs
        if step == 6 and not sent:
            sent.append(step)
            handler(signal.SIGTERM, None)
        return real_lr_at(step, *args, **kwargs)

    monkeypatch.setattr(trainer, "lr_at", lr_at)
    with pytest.raises(Terminated) as stopped:
        run_trial(cfg)
    assert load_checkpoint(trial_dir(cfg) / "last.pt")["step"] == 7
    assert end_reason(stopped.value) == "terminated (SIGTERM) after step 7, checkpointed"
