"""One typed configuration: dataclass sections filled from one YAML file plus ``--set`` overrides.

A recipe is one flat YAML file (``configs/*.yaml``) with one level of sections; no inheritance.
Every key is documented here with its default. The resolved config is written into the run
folder and into every checkpoint.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_args, get_origin, get_type_hints

import yaml

from cityseg.datasets import BUILTINS, DatasetSpec, load_dataset
from cityseg.errors import CitysegError
from cityseg.utils import Size, parse_size, read_yaml

#: Where the recipes live: package data (``cityseg/configs/*.yaml``), so that a plain
#: ``pip install`` finds them too; the checkout's ``configs/`` is a link to this folder.
CONFIG_DIR = Path(__file__).resolve().parent / "configs"
DEFAULT_CONFIG = CONFIG_DIR / "demo.yaml"


def recipe_names() -> list[str]:
    """Names of the shipped recipes (``demo``, ``seed``, ``pairs``, ...)."""
    return sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))


def resolve_config_path(path: str | Path | None) -> Path:
    """A recipe name (``pairs``) or a YAML path -> the file; the default recipe when None.

    A path that exists wins; otherwise a bare name (no folder, no ``.yaml``) is looked up
    among the shipped recipes.

    Raises:
        CitysegError: neither a file nor a recipe name (lists the recipe names).
    """
    if path is None:
        return DEFAULT_CONFIG
    path = Path(path)
    if path.is_file():
        return path
    if path.parent == Path(".") and path.suffix == "" and (CONFIG_DIR / f"{path}.yaml").is_file():
        return CONFIG_DIR / f"{path}.yaml"
    raise CitysegError(f"{path}: config file not found; give a YAML file or a recipe name: {', '.join(recipe_names())}")


@dataclass
class DataConfig:
    root: str | None = None  # Cityscapes-layout folder; None: the synthetic default data (generated on first use)
    train_split: str = "train"
    val_split: str = "val"
    crop_size: Size = Size(256, 128)  # WIDTHxHEIGHT of training crops
    # progressive resizing: smaller WIDTHxHEIGHT crops for the first equal shares of the run (by the
    # budget's fraction, as the LR schedule), crop_size for the last share; [] keeps crop_size throughout
    crop_stages: list[Size] = field(default_factory=list)
    scale_range: list[float] = field(default_factory=lambda: [0.5, 2.0])  # random scale before cropping
    hflip: bool = True
    color_jitter: float = 0.2  # brightness/contrast/saturation strength; 0 disables
    val_size: Size | None = None  # WIDTHxHEIGHT to resize validation images to; labels are still scored at full size
    workers: int = 2  # DataLoader worker processes per GPU/process
    cache: bool = False  # decode every frame once into memory before training (small frames: ~0.26 MB each at 256x256)
    synth_train: int = 200  # size of the synthetic default data (used when root is None)
    synth_val: int = 40
    synth_size: Size = Size(256, 128)

    def __post_init__(self) -> None:
        _parse_sizes(self, "data")


@dataclass
class ModelConfig:
    name: str = "lraspp_mobilenet_v3_large"  # key of cityseg.models.MODELS, or hf:REPO_OR_DIR (a transformers model)
    pretrained: str = "none"  # imagenet | none | PATH (cityseg checkpoint or backbone state dict)
    freeze: list[str] = field(default_factory=lambda: ["stem", "layer1"])  # backbone stages kept frozen (BN in eval)
    aux_head: bool = False  # auxiliary FCN head on the penultimate stage
    output_stride: int = 8
    sync_bn: bool = False  # convert BatchNorm to SyncBatchNorm under DDP


@dataclass
class LossConfig:
    ce: float = 0.0  # weight of cross-entropy
    focal: float = 1.5  # weight of softmax focal loss (the seed's)
    dice: float = 1.0  # weight of soft multi-class Dice loss (the seed's)
    focal_gamma: float = 2.0  # Lin et al. 2017
    focal_alpha: list[float] | None = None  # per-class alpha (19 values) or None
    class_weights: list[float] | None = None  # per-class cross-entropy weights (19 values) or None
    ohem: float | None = None  # cross-entropy on hard pixels only: true-class probability below this (BiSeNet: 0.7)
    ohem_min_kept: float = 1 / 16  # ... but at least this share of the valid pixels, the hardest first
    aux_weight: float = 0.4  # weight of the auxiliary head's loss (same terms)


@dataclass
class OptimConfig:
    name: str = "adamw"  # adamw | sgd
    lr: float = 5e-4
    weight_decay: float = 1e-3
    momentum: float = 0.9  # sgd only
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])  # adamw only
    head_lr_mult: float = 1.0  # learning-rate multiplier of the head relative to the backbone


@dataclass
class SchedConfig:
    name: str = "plateau"  # plateau | poly | cosine | constant
    warmup_iters: int = 0  # linear warmup from warmup_factor*lr, in optimiser steps
    warmup_factor: float = 0.1
    factor: float = 0.5  # plateau: multiply lr by this ...
    patience: int = 3  # ... after this many epochs without improvement of the validation loss
    power: float = 0.9  # poly
    min_lr: float = 0.0


@dataclass
class TrainConfig:
    epochs: int = 10
    max_steps: int | None = None  # stop after this many optimiser steps (None: epochs x steps per epoch)
    # stop after this much wall time (training + validation, counted across --resume); poly and cosine
    # schedules then decay over the elapsed fraction of it, so the run anneals on time on any machine
    max_minutes: float | None = None
    batch_size: int = 8  # global batch size (all processes, after accumulation)
    micro_batch_size: int | None = None  # per-process batch per step; None: batch_size / world size
    # auto: bf16 on GPUs that support it, else fp16 with a GradScaler; none (float32) on the CPU, where
    # autocast is slower than float32 without AMX and changes results; bf16 | fp16 force it
    amp: str = "auto"  # auto | bf16-native | bf16 | fp16 | none (engine.build.build_step_settings)
    channels_last: bool = True
    grad_clip: float | None = None  # max gradient norm (None: no clipping)
    compile: bool = False  # torch.compile the model
    seed: int = 0
    threads: int | None = None  # CPU threads of each training process (torch.set_num_threads); None: one per core
    deterministic: bool = True  # torch.use_deterministic_algorithms (warn-only) and no cudnn.benchmark
    early_stop: int | None = None  # stop after this many validations without a better val mIoU
    val_every: int = 1  # epochs between validations (the last epoch is always validated)
    val_batch_size: int = 1  # per-process validation batch (whole images)
    panels: int = 4  # validation frames drawn as image | ground truth | prediction panels
    log_every: int = 10  # optimiser steps between TensorBoard scalars / plain log lines


@dataclass
class EvalConfig:
    mode: str = "whole"  # whole | sliding
    crop_size: Size = Size(1024, 512)  # WIDTHxHEIGHT of sliding windows
    stride: Size = Size(683, 341)  # WIDTHxHEIGHT step of sliding windows
    scales: list[float] = field(default_factory=lambda: [1.0])  # multi-scale TTA
    flip: bool = False  # horizontal-flip TTA
    boundary_tolerance: int = 2  # pixels; boundary F1 counts a boundary pixel matched within this distance

    def __post_init__(self) -> None:
        _parse_sizes(self, "eval")

    def single_pass(self) -> bool:
        """True when inference is one whole-image pass: what validation during training runs. Else
        the checkpoint's own inference (``evaluate --checkpoint``, ``predict``) does more, and
        training scores its best checkpoint that way once at the end."""
        return self.mode == "whole" and [float(s) for s in self.scales] == [1.0] and not self.flip


@dataclass
class CRFConfig:
    # Dense CRF of ``cityseg predict --crf`` (cityseg.inference.crf). Widths (*_sxy) are in pixels
    # of a 2048-wide frame, scaled to the image. Tuned by benchmarks/tune_crf.py on the synthetic
    # val split (demo model) and real fixture frames (real-frame model); see BENCHMARKS.md.
    iterations: int = 5  # mean-field steps
    gaussian_sxy: float = 3.0  # smoothness kernel width
    gaussian_compat: float = 1.0  # smoothness kernel weight
    bilateral_sxy: float = 80.0  # appearance kernel width
    bilateral_srgb: float = 8.0  # appearance kernel colour scale (0-255 RGB)
    bilateral_compat: float = 5.0  # appearance kernel weight


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    sched: SchedConfig = field(default_factory=SchedConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    crf: CRFConfig = field(default_factory=CRFConfig)
    # the class table: a built-in name (cityscapes, kitti, camvid) or a description (cityseg.datasets);
    # a description file given by path is read into the config, so a run folder or a checkpoint
    # keeps its classes even when the file moves
    dataset: str | dict[str, Any] = "cityscapes"
    name: str = "demo"  # recipe name (defaults to the YAML file's stem); runs go to runs/<name>

    def spec(self) -> DatasetSpec:
        """The validated :class:`~cityseg.datasets.DatasetSpec` of :attr:`dataset`."""
        return load_dataset(self.dataset)

    def to_dict(self) -> dict[str, Any]:
        """Plain YAML values: sizes as their ``"WxH"`` text."""
        return _plain(dataclasses.asdict(self))

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


@dataclass(frozen=True)
class Range:
    """The valid values of a numeric key: from ``low`` (exclusive with ``low_open``) up to
    ``high`` (inclusive; None: no upper bound), finite. Lists are checked item by item."""

    low: float
    high: float | None = None
    low_open: bool = False

    def holds(self, value: float) -> bool:
        if not math.isfinite(value):
            return False
        above = value > self.low if self.low_open else value >= self.low
        return above and (self.high is None or value <= self.high)

    def describe(self, integer: bool) -> str:
        what = "an integer" if integer else "a finite number"
        low = f"{'>' if self.low_open else '>='} {self.low:g}"
        return f"{what} {low}" + (f" and <= {self.high:g}" if self.high is not None else "")


#: Valid ranges of numeric keys, checked whenever a config is built (a null, where allowed, means
#: "no limit" or "none" and is not checked). The one place that says which numbers make sense;
#: the upper bounds stop values that would try to allocate tens of GB or run for ever.
RANGES: dict[str, Range] = {
    "data.scale_range": Range(0, 8, low_open=True),
    "data.color_jitter": Range(0, 1),
    "data.workers": Range(0, 256),
    "data.synth_train": Range(1, 100_000),
    "data.synth_val": Range(1, 100_000),
    "model.output_stride": Range(8, 32),
    "loss.ce": Range(0),
    "loss.focal": Range(0),
    "loss.dice": Range(0),
    "loss.focal_gamma": Range(0, 10),
    "loss.focal_alpha": Range(0),
    "loss.class_weights": Range(0),
    "loss.aux_weight": Range(0),
    "loss.ohem": Range(0, 1, low_open=True),
    "loss.ohem_min_kept": Range(0, 1, low_open=True),
    "optim.lr": Range(0, 10, low_open=True),
    "optim.weight_decay": Range(0, 10),
    "optim.momentum": Range(0, 1),
    "optim.betas": Range(0, 0.9999),  # 1 divides by zero in Adam's bias correction
    "optim.head_lr_mult": Range(0, 1000, low_open=True),
    "sched.warmup_iters": Range(0),
    "sched.warmup_factor": Range(0, 1, low_open=True),
    "sched.factor": Range(0, 1, low_open=True),
    "sched.patience": Range(0),
    "sched.power": Range(0, 10),
    "sched.min_lr": Range(0),
    "train.epochs": Range(1),
    "train.max_steps": Range(1),
    "train.max_minutes": Range(0, low_open=True),
    "train.batch_size": Range(1, 65_536),
    "train.micro_batch_size": Range(1, 65_536),
    "train.grad_clip": Range(0, low_open=True),
    "train.threads": Range(1, 1024),
    "train.early_stop": Range(1),
    "train.val_every": Range(1),
    "train.val_batch_size": Range(1, 65_536),
    "train.panels": Range(0, 100),
    "train.log_every": Range(1),
    "eval.scales": Range(0, 8, low_open=True),
    "eval.boundary_tolerance": Range(-1, 256),
    "crf.iterations": Range(1, 1000),
    "crf.gaussian_sxy": Range(0, low_open=True),
    "crf.gaussian_compat": Range(0),
    "crf.bilateral_sxy": Range(0, low_open=True),
    "crf.bilateral_srgb": Range(0, low_open=True),
    "crf.bilateral_compat": Range(0),
}

def _is_size(hint: Any) -> bool:
    """A size key's annotation: Size, Size | None or list[Size]."""
    return hint is Size or Size in get_args(hint)


@functools.cache
def _size_fields(section: type) -> dict[str, Any]:
    return {name: hint for name, hint in get_type_hints(section).items() if _is_size(hint)}


def _parse_sizes(section: Any, name: str) -> None:
    # "WxH" text given to a section (its YAML, or Python code building one) is parsed here, once;
    # every reader then gets a Size
    for key, hint in _size_fields(type(section)).items():
        setattr(section, key, _coerce(getattr(section, key), hint, f"{name}.{key}"))


#: Keys whose value is one WIDTHxHEIGHT size (``--set`` keeps their text: YAML 1.1 reads 0x100 as 256).
SIZE_KEYS = tuple(f"{name}.{key}" for name, section in (("data", DataConfig), ("eval", EvalConfig))
                  for key, hint in _size_fields(section).items() if get_origin(hint) is not list)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _plain(value: Any) -> Any:
    if isinstance(value, Size):
        return str(value)
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def check_value(value: Any, key: str, name: str | None = None) -> None:
    """CitysegError naming ``name`` (default: ``config key KEY``) and the valid range when an
    already typed ``value`` lies outside :data:`RANGES`. (Sizes are checked as they are parsed.)"""
    name = name or f"config key {key}"
    if value is None:
        return
    bound = RANGES.get(key)
    if bound is None:
        return
    for item in value if isinstance(value, list) else [value]:
        if not bound.holds(item):
            valid = bound.describe(integer=isinstance(item, int))
            shown = f"{value!r}" if item is value else f"{item!r} in {value!r}"
            raise CitysegError(f"{name}: {shown} is out of range; valid: {valid}")


def parse_number(value: Any, name: str) -> float:
    """``value`` when it is a finite number, or its text (PyYAML reads 1e-3 as a string); CitysegError
    naming ``name`` otherwise. (``cityseg sweep``'s bounds, checked then by :func:`check_value`.)"""
    if isinstance(value, str):
        with contextlib.suppress(ValueError):
            value = float(value)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise CitysegError(f"{name}: expected a finite number, got {value!r}")
    return value


def section_keys(section: str) -> dict[str, Any]:
    """The keys of config section ``section`` and their annotations; CitysegError listing the sections otherwise."""
    sections = {name: hint for name, hint in get_type_hints(Config).items() if name not in ("name", "dataset")}
    if section not in sections:
        raise CitysegError(f"unknown config section {section!r}; valid sections: {', '.join(sections)} "
                           "(and the keys name, dataset)")
    return get_type_hints(sections[section])


def key_type(key: str) -> Any:
    """The annotation of config key ``section.key``; CitysegError listing the valid sections or keys otherwise."""
    section, _, name = key.partition(".")
    hints = section_keys(section)
    if name not in hints:
        raise CitysegError(f"unknown config key {section}.{name}; valid keys of {section}: {', '.join(hints)}")
    return hints[name]


def number_type(key: str) -> type:
    """``int`` or ``float``, the number config key ``section.key`` holds (it may be null too); CitysegError
    for an unknown key or one that holds no single number (listing the section's numeric keys)."""
    key_type(key)
    section, _, name = key.partition(".")
    numeric = {}
    for other, hint in section_keys(section).items():
        kinds = [a for a in get_args(hint) if a is not type(None)] or [hint]
        if len(kinds) == 1 and kinds[0] in (int, float):
            numeric[other] = kinds[0]
    if name not in numeric:
        raise CitysegError(f"{key} is not a number; numeric keys of {section}: {', '.join(numeric) or 'none'}")
    return numeric[name]


def _coerce(value: Any, hint: Any, key: str) -> Any:
    """Check ``value`` against the annotation ``hint`` (YAML already typed it); name ``key`` on error."""
    origin = get_origin(hint)
    args = get_args(hint)
    if value is None:
        if type(None) in args:
            return None
        raise CitysegError(f"config key {key}: null is not allowed; expected {_hint_name(hint)}")
    if args and type(None) in args:  # Optional[X]
        inner = [a for a in args if a is not type(None)]
        return _coerce(value, inner[0], key)
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise CitysegError(f"config key {key}: expected a list, got {value!r}")
        return [_coerce(v, args[0], key) for v in value]
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise CitysegError(f"config key {key}: expected true or false, got {value!r}")
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise CitysegError(f"config key {key}: expected an integer, got {value!r}")
    if hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # PyYAML (YAML 1.1) reads 1e-3 (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise CitysegError(f"config key {key}: expected a number, got {value!r}")
    if hint is Size:
        if isinstance(value, (tuple, list)) and len(value) == 2 and all(_is_int(v) for v in value):
            value = f"{value[0]}x{value[1]}"  # Size(w, h) or (w, h) given from Python
        if isinstance(value, str):
            return parse_size(value, f"config key {key}")
        raise CitysegError(f"config key {key}: {value!r} is not a size; write WIDTHxHEIGHT, e.g. 1024x512")
    if hint is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        why = " (YAML reads unquoted yes/no/on/off as true/false; quote it)" if isinstance(value, bool) else ""
        raise CitysegError(f"config key {key}: expected a string, got {value!r}{why}")
    return value


def _hint_name(hint: Any) -> str:
    return getattr(hint, "__name__", str(hint))


def config_from_dict(raw: dict[str, Any], name: str = "demo") -> Config:
    """Build a Config from a nested dict; unknown sections or keys raise CitysegError listing the valid ones."""
    cfg = Config(name=name)
    for sec_name, values in (raw or {}).items():
        if sec_name == "name":
            cfg.name = str(values)
            continue
        if sec_name == "dataset":
            cfg.dataset = dataset_value(values)
            continue
        section_keys(sec_name)  # an unknown section names the valid ones
        if values is None:
            continue
        if not isinstance(values, dict):
            raise CitysegError(f"config section {sec_name!r} must be a mapping of keys to values")
        section = getattr(cfg, sec_name)
        for key, value in values.items():
            value = _coerce(value, key_type(f"{sec_name}.{key}"), f"{sec_name}.{key}")
            check_value(value, f"{sec_name}.{key}")
            setattr(section, key, value)
    return cfg


def dataset_value(value: Any) -> str | dict[str, Any]:
    """The config's ``dataset`` value: a built-in name stays a name; a description file or mapping
    becomes the validated description mapping (CitysegError naming the file or key otherwise)."""
    if value is None:
        return "cityscapes"
    if isinstance(value, str) and value in BUILTINS:
        return value
    if not isinstance(value, (str, dict)):
        raise CitysegError(f"config key dataset: {value!r}; give a built-in name ({', '.join(BUILTINS)}), "
                           "a description file or a description mapping")
    return load_dataset(value).to_dict()


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``section.key=value`` strings (value parsed as YAML) to a nested dict, in order;
    ``dataset=NAME|FILE`` sets the top-level dataset."""
    for item in overrides or []:
        if item.split("=", 1)[0].strip() == "dataset":
            raw["dataset"] = item.split("=", 1)[1].strip()
            continue
        if "=" not in item or "." not in item.split("=", 1)[0]:
            raise CitysegError(f"--set {item!r}: write section.key=value, e.g. train.epochs=20")
        dotted, text = item.split("=", 1)
        section, key = dotted.strip().split(".", 1)
        value = yaml.safe_load(text) if text.strip() else None
        if dotted.strip() in SIZE_KEYS and value is not None:
            value = text.strip()  # a size is text: YAML 1.1 would read 0x100 as the integer 256
        raw.setdefault(section, {})
        if raw[section] is None:
            raw[section] = {}
        raw[section][key] = value
    return raw


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Read a recipe (a name such as ``pairs``, or a YAML path; ``demo`` when None), apply
    ``--set`` overrides, validate."""
    path = resolve_config_path(path)
    raw = read_yaml(path, str(path)) or {}
    if not isinstance(raw, dict):
        raise CitysegError(f"{path}: a config must be a mapping of sections")
    raw = apply_overrides(raw, overrides or [])
    name = str(raw.pop("name", path.stem))
    return config_from_dict(raw, name=name)
