"""Load weights into a built model, safely and strictly, with a report of what was loaded (DESIGN.md, "Weights").

`load_weights(model, path)` reads mtbench's own trial checkpoints (`last.pt`, `best.pt`) and plain state dicts
with `torch.load(..., weights_only=True)` only: a file that needs arbitrary objects unpickled is refused, never
loaded unsafely. Keys must match the model exactly (after stripping the `module.` / `_orig_mod.` prefixes of
DataParallel and torch.compile); every mismatch is a user error that names keys and shapes.

The authors' released checkpoints use other key names. A converter (registered in `CONVERTERS`) renames and
drops their keys; `load_weights` applies the first one whose `matches` accepts a state dict that does not fit
the model as it is, and the report lists every key it mapped or dropped, with the reason.
"""

from __future__ import annotations

import hashlib
import json
import pickle
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import Tensor, nn

from mtbench.errors import MtbenchError
from mtbench.registry import Registry
from mtbench.tasks import resolve_tasks

PREFIXES = ("module.", "_orig_mod.")  # DataParallel / DistributedDataParallel, torch.compile
SHOWN = 4  # keys named in an error message
# What a trial's saved config says the weights are, compared with what an experiment builds.
IDENTITY = ("model", "backbone", "dataset", "tasks")


@dataclass(frozen=True)
class Conversion:
    """A converter's output: the state dict in the model's key names, and what it renamed or left out."""

    state: dict[str, Tensor]
    mapped: dict[str, str] = field(default_factory=dict)  # key in the file -> key in the model
    dropped: dict[str, str] = field(default_factory=dict)  # key in the file -> why it is not loaded
    name: str | None = None  # what the report calls the format, when more precise than the converter's name


class WeightsConverter(Protocol):
    """Turns a released checkpoint's state dict into the keys of an mtbench model."""

    def matches(self, state: Mapping[str, Tensor], model: nn.Module) -> bool:
        """Whether `state` is in this converter's format (e.g. the released DeMT keys) for `model`."""
        ...

    def convert(self, state: Mapping[str, Tensor], model: nn.Module) -> Conversion:
        """Rename and drop keys; every key of `state` ends up in `Conversion.mapped`, `.dropped` or kept as is."""
        ...


CONVERTERS: Registry[WeightsConverter] = Registry("weights converter", "Converters of released checkpoints.")


@dataclass
class WeightsReport:
    """What `load_weights` read and loaded: the file, its format, and every key renamed or dropped."""

    path: str
    sha256: str
    source: str  # "mtbench trial checkpoint", "state dict", "checkpoint['state_dict']", ...
    loaded: int  # tensors loaded into the model
    converter: str | None = None
    mapped: dict[str, str] = field(default_factory=dict)
    dropped: dict[str, str] = field(default_factory=dict)
    stripped_prefixes: dict[str, int] = field(default_factory=dict)  # prefix -> number of keys it was cut from
    step: int | None = None  # training step of an mtbench checkpoint
    trained_as: dict[str, Any] | None = None  # model, backbone, dataset, tasks from the checkpoint's config

    def summary(self) -> str:
        """A few lines for the console and the run's artifacts."""
        lines = [f"weights {self.path} (sha256 {self.sha256[:12]}): {self.source}"
                 + (f" at step {self.step}" if self.step is not None else "")
                 + (f", converted by {self.converter}" if self.converter else ""),
                 f"loaded {self.loaded} tensors strictly; {len(self.mapped)} renamed, {len(self.dropped)} dropped"]
        if self.trained_as:
            lines.append("trained as " + ", ".join(f"{k} {v}" for k, v in self.trained_as.items()))
        lines += [f"stripped prefix {p!r} from {n} keys" for p, n in self.stripped_prefixes.items()]
        lines += [f"renamed {src} -> {dst}" for src, dst in self.mapped.items()]
        lines += [f"dropped {key}: {why}" for key, why in self.dropped.items()]
        return "\n".join(lines)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def load_weights(model: nn.Module, path: str | Path, *, expect: Mapping[str, Any] | None = None,
                 converter: str | None = None) -> WeightsReport:
    """Load the weights at `path` into `model` strictly; return what was loaded.

    `expect` ({model, backbone, dataset, tasks}: what the caller built) is compared with the checkpoint's saved
    config when it has one, so weights of another experiment are refused before their keys are. `converter`
    forces a registered converter instead of picking the first that matches.
    """
    path = Path(path)
    raw = read_file(path)
    source, state, meta = unwrap(raw, path)
    state, stripped = strip_prefixes(state)
    trained_as = saved_identity(meta.get("config"))
    if trained_as is not None and expect:
        check_identity(trained_as, expect, path)
    conversion, used = convert(state, model, path, converter)
    check_keys(conversion.state, model, path)
    model.load_state_dict(conversion.state, strict=True)
    step = meta.get("step")
    return WeightsReport(path=str(path), sha256=file_sha256(path), source=source, loaded=len(conversion.state),
                         converter=used, mapped=conversion.mapped, dropped=conversion.dropped,
                         stripped_prefixes=stripped, step=int(step) if isinstance(step, int) else None,
                         trained_as=trained_as)


def read_file(path: Path) -> Any:
    """`torch.load` with weights_only=True; every way a file can fail becomes one clear MtbenchError."""
    if not path.is_file():
        what = "is a folder" if path.is_dir() else "does not exist"
        raise MtbenchError(f"weights {str(path)!r} {what}. Give the path of a checkpoint file, e.g. "
                           "<output_dir>/<experiment>/<variant>/seed<k>/last.pt.")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        refused, reason = unpickler_reason(str(err))
        if not refused:  # the bytes are no pickle at all
            raise MtbenchError(f"weights {str(path)!r} cannot be read as a PyTorch checkpoint ({reason}). Is it "
                               "a file written by torch.save?") from None
        raise MtbenchError(
            f"weights {str(path)!r} refused: reading it needs arbitrary Python objects unpickled, which could run "
            f"code ({reason}). mtbench only loads with weights_only=True. If you trust the file, re-save its state "
            "dict where it was written: torch.save(model.state_dict(), 'weights.pt').") from None
    except Exception as err:  # torch raises several types for files that are not checkpoints
        detail = f"{type(err).__name__}: {err}" if str(err) else type(err).__name__
        raise MtbenchError(f"weights {str(path)!r} cannot be read as a PyTorch checkpoint ({detail}). Is it a "
                           "file written by torch.save, and complete?") from None


def unpickler_reason(message: str) -> tuple[bool, str]:
    """(whether torch's weights-only unpickler refused the objects a file holds, its reason in one line)."""
    detail = message.split("WeightsUnpickler error:", 1)[-1].split("Check the documentation", 1)[0]
    detail = " ".join(detail.split()).split(". Please use", 1)[0] or message
    return "Weights only load failed" in message and not detail.startswith("Unsupported operand"), detail


def unwrap(raw: Any, path: Path) -> tuple[str, dict[str, Tensor], dict[str, Any]]:
    """(source format, state dict, the checkpoint's other entries) of what `torch.load` returned."""
    if not isinstance(raw, Mapping):
        raise MtbenchError(f"weights {str(path)!r} holds a {type(raw).__name__}, not a state dict. Save "
                           "model.state_dict(), or give an mtbench checkpoint (last.pt / best.pt).")
    if isinstance(raw.get("model"), Mapping):
        rest = {k: v for k, v in raw.items() if k != "model"}
        source = "mtbench trial checkpoint" if "step" in raw else "checkpoint['model']"
        return source, checked_state(raw["model"], path), rest
    if isinstance(raw.get("state_dict"), Mapping):
        return "checkpoint['state_dict']", checked_state(raw["state_dict"], path), {}
    return "state dict", checked_state(raw, path), {}


def checked_state(state: Mapping[Any, Any], path: Path) -> dict[str, Tensor]:
    """The mapping as a state dict: string keys, tensor values; anything else is named in the error."""
    bad = [k for k, v in state.items() if not isinstance(k, str) or not isinstance(v, Tensor)]
    if bad or not state:
        shown = ", ".join(f"{k!r} ({type(state[k]).__name__})" for k in bad[:SHOWN])
        raise MtbenchError(f"weights {str(path)!r} is not a state dict: "
                           + (f"{len(bad)} of its {len(state)} entries are not tensors ({shown})" if bad
                              else "it is empty")
                           + ". Give model.state_dict() saved with torch.save, or an mtbench checkpoint.")
    return dict(state)


def strip_prefixes(state: dict[str, Tensor]) -> tuple[dict[str, Tensor], dict[str, int]]:
    """Cut the wrapper prefixes (`module.`, `_orig_mod.`, in any order) off every key that has them."""
    out: dict[str, Tensor] = {}
    counts: dict[str, int] = {}
    for key, value in state.items():
        name = key
        while name.startswith(PREFIXES):
            prefix = next(p for p in PREFIXES if name.startswith(p))
            counts[prefix] = counts.get(prefix, 0) + 1
            name = name[len(prefix):]
        out[name] = value
    return out, counts


def saved_identity(config: Any) -> dict[str, Any] | None:
    """Model, backbone, dataset and tasks from a trial checkpoint's config (JSON text), or None without one."""
    try:
        cfg = json.loads(config) if isinstance(config, str) else None
        dataset = cfg["dataset"]["name"]
        return {"model": cfg["model"]["name"], "backbone": cfg["model"]["backbone"], "dataset": dataset,
                "tasks": list(resolve_tasks(dataset, cfg["dataset"].get("tasks")))}
    except (ValueError, TypeError, KeyError, MtbenchError):
        return None  # no config, or one this version cannot read: the keys alone decide


def check_identity(saved: Mapping[str, Any], expect: Mapping[str, Any], path: Path) -> None:
    """Refuse weights whose trial was another model, backbone, dataset or task set than the one built."""
    differ = [k for k in IDENTITY if k in expect and k in saved and norm(saved[k]) != norm(expect[k])]
    if differ:
        shown = "; ".join(f"{k}: checkpoint {saved[k]!r}, experiment {expect[k]!r}" for k in differ)
        raise MtbenchError(f"weights {str(path)!r} were trained for another setting ({shown}). Evaluate them "
                           "with the experiment and variant that trained them (--variant, -o key=value).")


def norm(value: Any) -> Any:
    """Task lists compare as sets; other values as they are."""
    return frozenset(value) if isinstance(value, list | tuple) else value


def convert(state: dict[str, Tensor], model: nn.Module, path: Path,
            name: str | None) -> tuple[Conversion, str | None]:
    """The state dict in the model's keys: as it is when they match, else through a matching converter."""
    if name is not None:
        conversion = CONVERTERS.get(name).convert(state, model)
        return conversion, conversion.name or name
    if set(state) == set(model.state_dict()):
        return Conversion(state), None
    for candidate in CONVERTERS:  # e.g. "released": the authors' checkpoints (mtbench/models/released.py)
        converter = CONVERTERS.get(candidate)
        if converter.matches(state, model):
            conversion = converter.convert(state, model)
            return conversion, conversion.name or candidate
    return Conversion(state), None


def check_keys(state: Mapping[str, Tensor], model: nn.Module, path: Path) -> None:
    """Name the missing and unexpected keys, or the shape mismatches, before a strict load would fail."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        parts = [f"{len(keys)} {what} (e.g. {', '.join(keys[:SHOWN])})"
                 for what, keys in (("missing", missing), ("unexpected", unexpected)) if keys]
        raise MtbenchError(f"weights {str(path)!r} do not fit this model: keys of another architecture, "
                           f"{'; '.join(parts)}. Use the experiment, variant and model options that wrote "
                           "them, or a converter for released checkpoints.")
    wrong = [k for k in expected if state[k].shape != expected[k].shape]
    if wrong:
        shown = "; ".join(f"{k}: checkpoint {tuple(state[k].shape)}, model {tuple(expected[k].shape)}"
                          for k in wrong[:SHOWN])
        raise MtbenchError(f"weights {str(path)!r} do not fit this model: {len(wrong)} tensor(s) have other "
                           f"shapes ({shown}), e.g. another number of classes or another width. Use the "
                           "dataset, tasks and model options that wrote them.")


def file_sha256(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
