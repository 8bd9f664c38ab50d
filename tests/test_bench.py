"""`mtbench bench` (training-step throughput, TFLOP/s, MFU) and the torch.compile path it shares with train.compile."""

from __future__ import annotations

import json
import sys
import warnings

import pytest
import torch
from torch import nn

from mtbench.bench import (
    DEFAULT_SETTING,
    PUBLISHED,
    compile_model,
    device_peak,
    flop_rate,
    published_setting,
    train_flops_per_step,
)
from mtbench.errors import MtbenchError

TINY = ["--backbone", "tiny", "--size", "64x80", "--batch", "2", "--repeats", "2", "--warmup", "1", "--peak", "1.0"]
KEYS = {"model", "dataset", "tasks", "setting_source", "backbone", "options", "input_size", "batch", "optimizer",
        "amp", "compiled", "device", "device_name", "step_s", "step_s_all", "images_per_s", "gmacs",
        "train_tflop_per_step", "convention", "tflops", "peak_tflops", "peak_source", "mfu", "mfu_note",
        "peak_memory_mib", "memory_basis", "uncounted_ops"}


def run_cli_in_process(monkeypatch, capsys, *args: str) -> tuple[int, str, str]:
    """`mtbench <args>` through the console script's entry point, in this process: (exit code, stdout, stderr)."""
    from mtbench import cli

    monkeypatch.setattr(sys, "argv", ["mtbench", *args])
    monkeypatch.setattr(warnings, "formatwarning", warnings.formatwarning)  # main() replaces it
    with pytest.raises(SystemExit) as exited:  # any other exception would be a traceback
        cli.main()
    captured = capsys.readouterr()
    return exited.value.code or 0, captured.out, captured.err


def test_flop_rate_matches_the_hand_computed_value():
    # 1 GMAC per image, batch 8: 2 flops per MAC x 3 (forward + backward) = 48e9 flops; in 0.05 s = 0.96 TFLOP/s.
    assert train_flops_per_step(1e9, 8) == pytest.approx(48e9)
    tflops, mfu = flop_rate(1e9, 8, 0.05, 989.4)
    assert tflops == pytest.approx(0.96)
    assert mfu == pytest.approx(0.96 / 989.4)
    assert flop_rate(1e9, 8, 0.05, None) == (pytest.approx(0.96), None)


def test_device_peaks_match_the_most_specific_name_and_say_when_unknown():
    assert device_peak("NVIDIA H100 80GB HBM3", "bf16")[0] == 989.4
    assert device_peak("NVIDIA H200", "fp32")[0] == 494.7
    assert device_peak("NVIDIA A100-SXM4-80GB", "bf16")[0] == 312.0
    assert device_peak("NVIDIA A10", "bf16")[0] == 125.0
    for name in ("NVIDIA A10G", "NVIDIA L40S", "NVIDIA RTX A1000", "NVIDIA H100 NVL"):  # not their namesakes'
        peak, why = device_peak(name, "bf16")
        assert peak is None and "pass --peak" in why and name in why
    assert device_peak("Tesla V100-SXM2-16GB", "bf16")[0] is None  # no bf16 on a V100


def test_every_recipe_model_has_a_setting_per_dataset_and_the_others_the_default():
    from mtbench.models import MODELS

    for (model, dataset), setting in PUBLISHED.items():
        assert model in MODELS and dataset in DEFAULT_SETTING and setting.source.startswith("baselines/")
    assert published_setting("shared_encoder", "nyud") == DEFAULT_SETTING["nyud"]
    assert published_setting("demt", "nyud").size == (425, 560)


def test_cli_prints_the_table_with_mfu_and_writes_the_json(tmp_path, monkeypatch, capsys):
    path = tmp_path / "bench.json"
    code, out, err = run_cli_in_process(monkeypatch, capsys, "bench", "shared_encoder", "--dataset", "nyud",
                                        *TINY, "--json", str(path))
    assert code == 0, err
    result = json.loads(path.read_text())
    assert KEYS <= set(result)
    assert result["batch"] == 2 and result["input_size"] == "64x80" and result["peak_tflops"] == 1.0
    # The rate is the convention applied to the measured median step and fvcore's count.
    assert result["tflops"] == pytest.approx(6 * result["gmacs"] * 1e9 * 2 / result["step_s"] / 1e12)
    assert result["mfu"] == pytest.approx(result["tflops"] / 1.0)
    assert "MFU" in out and f"{100 * result['mfu']:.2f} %" in out and "2 * MACs * batch * 3" in out


def test_cli_json_to_stdout_for_demt(monkeypatch, capsys):
    code, out, err = run_cli_in_process(monkeypatch, capsys, "bench", "demt", "--dataset", "nyud", *TINY,
                                        "--json", "-")
    assert code == 0, err
    result = json.loads(out)  # stdout is the JSON alone; the table goes to stderr
    assert KEYS <= set(result)
    assert result["model"] == "demt" and result["setting_source"] == "baselines/demt_nyud.yaml"
    assert result["mfu"] is not None and "MFU" in err


@pytest.mark.parametrize(("args", "needle"), [
    (["bench", "demtt", "--dataset", "nyud"], "unknown model 'demtt'"),
    (["bench", "demt", "--dataset", "kitti"], "unknown dataset 'kitti'"),
    (["bench", "demt", "--dataset", "nyud", "--size", "64by80"], "--size '64by80' must look like HEIGHTxWIDTH"),
    (["bench", "demt", "--dataset", "nyud", "--amp", "fp16"], "--amp 'fp16'"),
], ids=["model", "dataset", "size", "amp"])
def test_bad_input_is_one_message_and_exit_2(monkeypatch, capsys, args, needle):
    code, _, err = run_cli_in_process(monkeypatch, capsys, *args)
    assert code == 2
    assert needle in err and err.count("error:") == 1 and "Traceback" not in err


@pytest.mark.skipif(torch.cuda.is_available(), reason="bf16 is refused on CPU only")
def test_amp_bf16_on_cpu_is_refused(monkeypatch, capsys):
    code, _, err = run_cli_in_process(monkeypatch, capsys, "bench", "demt", "--dataset", "nyud", "--amp", "bf16")
    assert code == 2 and "--amp bf16 needs a CUDA device" in err


class WithAuxiliary(nn.Module):
    """A model that fills `auxiliary` in its forward, as deep-supervised models do."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(2, 2)
        self.auxiliary: dict | None = None

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        y = self.lin(x)
        self.auxiliary = {"mid": {"a": 2 * y}}
        return {"a": y}


def test_compiled_model_shares_parameters_and_auxiliary_with_the_original():
    model = WithAuxiliary()
    compiled = compile_model(model, name="with_auxiliary", backend="eager")
    x = torch.randn(3, 2)
    torch.testing.assert_close(compiled(x)["a"], model(x)["a"])
    assert compiled.auxiliary is model.auxiliary  # what the trainer's deep supervision reads
    assert list(model.state_dict()) == ["lin.weight", "lin.bias"]  # what checkpoints save


def test_a_compile_failure_names_the_model_and_the_reason():
    def broken(graph, example_inputs):
        raise RuntimeError("no kernel for this op")

    compiled = compile_model(WithAuxiliary(), name="demt", backend=broken)
    with pytest.raises(MtbenchError, match=r"torch.compile failed for model 'demt': .*no kernel for this op"):
        compiled(torch.zeros(1, 2))


def tiny_trial(tmp_path, **train: object):
    from mtbench.config.schema import TrialConfig

    return TrialConfig.model_validate({
        "experiment": "compile", "variant": "v", "seed": 0, "output_dir": str(tmp_path / "runs"),
        "tracking": {"uri": f"sqlite:///{tmp_path}/mlruns.db"},
        "dataset": {"name": "synthetic_nyud", "options": {"height": 16, "width": 16, "num_train": 4, "num_val": 2,
                                                           "num_test": 2}},
        "model": {"name": "shared_encoder", "backbone": "tiny"},
        "train": {"steps": 2, "batch_size": 2, "eval_batch_size": 2, "eval_every": 2, "checkpoint_every": 2,
                  "device": "cpu", **train}})


def test_train_compile_keeps_the_trial_id_when_off(tmp_path):
    plain, off, on = tiny_trial(tmp_path), tiny_trial(tmp_path, compile=False), tiny_trial(tmp_path, compile=True)
    assert plain.id == off.id != on.id


@pytest.mark.slow  # dynamo traces the whole model (about 20 s on 2 CPU cores)
def test_train_compile_trains_the_compiled_module_and_checkpoints_the_original(tmp_path, monkeypatch):
    import mtbench.bench as bench
    from mtbench.engine import trial as trial_module
    from mtbench.engine.checkpoint import load_checkpoint

    real, compiled = bench.compile_model, []

    def eager(model: nn.Module, *, name: str) -> nn.Module:  # the trial's path, on dynamo's cheapest backend
        compiled.append(name)
        return real(model, name=name, backend="eager")

    monkeypatch.setattr(bench, "compile_model", eager)
    monkeypatch.setattr(trial_module, "log_predictions", lambda trial, tracker: None)
    cfg = tiny_trial(tmp_path, compile=True)
    assert trial_module.run_trial(cfg).status == "FINISHED"
    assert compiled == ["shared_encoder"]
    state = load_checkpoint(trial_module.trial_dir(cfg) / "last.pt")
    assert not any(k.startswith("_orig_mod.") for k in state["model"])


def test_train_compile_failure_fails_the_trial_naming_the_model(tmp_path, monkeypatch):
    import mtbench.bench as bench
    from mtbench.engine import trial as trial_module

    def broken(graph, example_inputs):
        raise RuntimeError("no kernel for this op")

    real = bench.compile_model
    monkeypatch.setattr(bench, "compile_model", lambda model, *, name: real(model, name=name, backend=broken))
    with pytest.raises(MtbenchError, match="torch.compile failed for model 'shared_encoder'"):
        trial_module.run_trial(tiny_trial(tmp_path, compile=True))
