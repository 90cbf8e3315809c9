"""Hugging Face transformers semantic-segmentation models as cityseg models: ``hf:REPO_OR_DIR``.

``hf:nvidia/segformer-b0-finetuned-cityscapes-1024-1024`` (a Hub id) or ``hf:DIR`` (a folder written
by ``save_pretrained`` or ``hf download --local-dir``) names any model transformers'
``AutoModelForSemanticSegmentation`` builds: SegFormer, UperNet, DPT, BEiT, MobileViT, ... whatever
returns ``.logits`` of shape (N, K, h, w). Loading goes through transformers' own
``from_pretrained`` (the optional extra ``cityseg[hf]``).

:class:`HfSegmentation` makes such a model a cityseg model (:mod:`cityseg.models`' convention): it
takes cityseg's input, (N, 3, H, W) float32 normalised with ImageNet's mean and std
(:func:`cityseg.imaging.normalize`), maps it per channel to the normalisation of the model's image
processor (``preprocessor_config.json``: ``image_mean``, ``image_std``, ``rescale_factor``;
without one, the model config's ``image_mean``/``image_std`` where it has them, else ImageNet's
with a warning that names them) and returns ``{"out": logits}`` upsampled bilinearly
(``align_corners=False``) to the input size, as the processor's post-processing does. The
processor's fixed resize is not applied: the model predicts at the input's own size like cityseg's
models, so sliding windows and test-time augmentation work unchanged.

Mask-classification models (Mask2Former, MaskFormer, OneFormer) return class and mask queries, not
per-pixel logits; they train with a matching loss cityseg does not have, so they are refused.

Lower layer than :mod:`cityseg.models` (which builds ``hf:`` names through :func:`build_hf`) and
:mod:`cityseg.checkpoint` (which loads them for inference through :func:`load_hf`).
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from cityseg.datasets import DatasetSpec
from cityseg.errors import CitysegError, first_line
from cityseg.imaging import IMAGENET_MEAN, IMAGENET_STD, Normalization, affine_normalization
from cityseg.imaging import input_affine as imaging_input_affine
from cityseg.utils import require

log = logging.getLogger(__name__)

#: Model names that start with it are transformers models: ``hf:REPO_OR_DIR``.
HF_PREFIX = "hf:"
#: The image processor's settings in a model folder (transformers' ``IMAGE_PROCESSOR_NAME``).
PROCESSOR_FILE = "preprocessor_config.json"
#: transformers model types that segment by mask classification (queries), not per-pixel logits.
MASK_CLASSIFICATION = ("mask2former", "maskformer", "oneformer")

#: stage name -> parameter-name prefixes (as :data:`cityseg.models.parts.StageMap`).
StageMap = dict[str, tuple[str, ...]]

_HUB_ID = re.compile(r"^[\w.-]+(/[\w.-]+)?$")  # NAME or OWNER/NAME; anything else is a path


def is_hf(name: str) -> bool:
    """Whether a model name or ``--checkpoint`` value is a transformers reference ``hf:REPO_OR_DIR``."""
    return str(name).startswith(HF_PREFIX)


def hf_ref(name: str) -> str:
    """``hf:REPO_OR_DIR`` -> ``REPO_OR_DIR``.

    Raises:
        CitysegError: nothing after the prefix.
    """
    ref = str(name)[len(HF_PREFIX) :].strip()
    if not ref:
        raise CitysegError(f"{name!r}: name a transformers model after hf:, a Hub id (hf:OWNER/NAME) or a folder "
                           "(hf:DIR)")
    return ref


def _transformers() -> Any:
    return require("transformers", "hf", "hf: models (Hugging Face)")


# --- the model ----------------------------------------------------------------------------------


class HfSegmentation(nn.Module):
    """A transformers semantic-segmentation model behind cityseg's model interface.

    Args:
        model: an ``AutoModelForSemanticSegmentation`` model (its forward takes ``pixel_values``
            and returns ``.logits``).
        mean, std: the image processor's per-channel normalisation (0-1 scale).
        rescale: the processor's ``rescale_factor`` (1/255: pixel values 0-255 -> 0-1).

    Shape:
        x: (N, 3, H, W) float32 normalised with ImageNet mean/std. Returns ``{"out": (N, K, H, W)
        float32 logits}``, K = ``model.config.num_labels``.
    """

    def __init__(
        self,
        model: nn.Module,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        rescale: float = 1 / 255,
    ) -> None:
        super().__init__()
        self.model = model
        scale, shift = input_affine(mean, std, rescale)
        # buffers, not constants: they travel in the state dict and the ONNX graph
        self.register_buffer("scale", scale.view(1, 3, 1, 1))
        self.register_buffer("shift", shift.view(1, 3, 1, 1))
        #: parameter-name prefixes of the encoder, for the head's own learning rate (optim.head_lr_mult)
        self.backbone_prefixes = tuple(f"model.{name}." for name in _encoder_names(model))

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        logits = self.model(pixel_values=x * self.scale + self.shift).logits
        return {"out": F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)}

    @property
    def normalization(self) -> Normalization:
        """The processor's normalisation (:func:`cityseg.imaging.model_normalization` reads it), read back
        from the input map, which travels in the state dict (a checkpoint rebuilt from its transformers
        config alone still has it)."""
        return affine_normalization(self.scale.flatten(), self.shift.flatten())

    def classifier_convs(self) -> list[str]:
        """Qualified names of the convolutions that write the class logits (the decode head's classifier
        and, where the architecture has one, the auxiliary head's): the transformers model's convolutions
        with ``config.num_labels`` output channels, the model's own class count
        (:func:`cityseg.modelinfo.classifier_convs` asks for them)."""
        count = self.model.config.num_labels
        return [f"model.{name}" for name, m in self.model.named_modules()
                if isinstance(m, nn.Conv2d) and m.out_channels == count]

    @property
    def hf_config(self) -> dict[str, Any]:
        """The transformers config as a plain dict (``config.to_dict()``): rebuilds the model without its folder."""
        return self.model.config.to_dict()


def input_affine(
    mean: Sequence[float], std: Sequence[float], rescale: float = 1 / 255
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel ``(scale, shift)``, (3,) float32, mapping cityseg's input to the processor's.

    The processor gives ``(v * rescale - mean) / std`` of the pixel values ``v``: the normalisation
    ``mean / (255 rescale)``, ``std / (255 rescale)`` of 0-1 pixels (:func:`cityseg.imaging.input_affine`).
    """
    return imaging_input_affine(processor_normalization(mean, std, rescale))


def processor_normalization(mean: Sequence[float], std: Sequence[float], rescale: float = 1 / 255) -> Normalization:
    """An image processor's ``(v * rescale - mean) / std`` of 0-255 values as a normalisation of 0-1 pixels."""
    unit = 255 * rescale
    return Normalization(tuple(float(m) / unit for m in mean), tuple(float(s) / unit for s in std))


def _encoder_names(model: nn.Module) -> list[str]:
    """The child modules of a transformers model that are its encoder (``segformer``, ``backbone``, ``dpt``...)."""
    children = dict(model.named_children())
    names = [n for n in ("backbone", getattr(model, "base_model_prefix", "")) if n in children]
    return list(dict.fromkeys(names))


#: Where SegFormer keeps each encoder stage's patch embedding, blocks and layer norm: transformers 5
#: nests them per stage, 4.x kept three parallel lists.
_SEGFORMER_LAYOUTS = (
    ("segformer.stages.{i}.patch_embeddings.", "segformer.stages.{i}.blocks.", "segformer.stages.{i}.layer_norm."),
    ("segformer.encoder.patch_embeddings.{i}.", "segformer.encoder.block.{i}.", "segformer.encoder.layer_norm.{i}."),
)


def stage_map(model: nn.Module, prefix: str = "model.") -> StageMap:
    """Backbone stages of a transformers model in cityseg's vocabulary (:mod:`cityseg.models`), for
    ``model.freeze``, as parameter-name prefixes under ``prefix``: SegFormer's overlapping patch
    embedding at 1/4 is ``stem``, its four encoder stages ``layer1``-``layer4`` (1/4 to 1/32, each
    with its patch embedding and layer norm); {} for other architectures."""
    if getattr(model.config, "model_type", None) != "segformer":
        return {}
    names = [n for n, _ in model.named_parameters()]
    for layout in _SEGFORMER_LAYOUTS:
        if any(n.startswith(layout[0].format(i=0)) for n in names):
            patch, block, norm = (f"{prefix}{part}" for part in layout)
            stages: StageMap = {"stem": (patch.format(i=0),)}
            for i in range(model.config.num_encoder_blocks):
                parts = (patch, block, norm) if i else (block, norm)
                stages[f"layer{i + 1}"] = tuple(p.format(i=i) for p in parts)
            return stages
    return {}


# --- reading a reference ------------------------------------------------------------------------


def _is_path(ref: str) -> bool:
    """A folder on disk (existing, or spelt as a path), not a Hub id ``NAME``/``OWNER/NAME``."""
    return Path(ref).expanduser().exists() or not _HUB_ID.match(ref) or ref.startswith(".")


def _from_hub(name: str, ref: str, load: Callable[..., Any]) -> Any:
    """``load(ref, local_files_only=...)`` for a folder or a Hub id: the cache first (no request, so an
    offline machine with the files is not slowed down by retries), then the Hub.

    Raises:
        CitysegError: a missing folder, a folder without a transformers model, or a Hub id that is
            neither cached nor downloadable (says how to download it elsewhere).
    """
    if _is_path(ref):
        folder = Path(ref).expanduser()
        if not folder.is_dir():
            raise CitysegError(f"{name}: no such folder (a Hub model is hf:OWNER/NAME)")
        if not (folder / "config.json").is_file():
            raise CitysegError(f"{name}: {folder} holds no config.json; give a transformers model folder "
                               "(written by save_pretrained or hf download --local-dir)")
        try:
            return load(str(folder), local_files_only=True)
        except (OSError, ValueError) as exc:
            raise CitysegError(f"{name}: not a readable transformers model ({first_line(exc)})") from None
    try:
        return load(ref, local_files_only=True)
    except (OSError, ValueError):  # not in the Hugging Face cache (or not wholly): the Hub decides below
        pass
    try:
        return load(ref)
    except ValueError as exc:  # transformers: a config.json without a model type it knows
        raise CitysegError(f"{name}: not a readable transformers model ({first_line(exc)})") from None
    except OSError as exc:
        if _caused_by(exc, ("RepositoryNotFoundError", "GatedRepoError", "RevisionNotFoundError")):
            raise CitysegError(f"{name}: no such model on the Hugging Face Hub, and no folder {ref} "
                               f"({first_line(exc)})") from None
        # huggingface_hub >= 0.34 names its command line `hf`; older ones only `huggingface-cli`
        raise CitysegError(f"{name}: cannot download (offline?); download it on a machine with internet with "
                           f"`hf download {ref} --local-dir DIR` (older huggingface_hub: huggingface-cli download), "
                           "copy DIR here and pass hf:DIR") from None


def _caused_by(exc: BaseException, names: Sequence[str]) -> bool:
    """Whether an exception of one of the class ``names`` is in ``exc``'s chain (huggingface_hub's
    errors reach us wrapped in transformers' OSError)."""
    seen: BaseException | None = exc
    while seen is not None:
        if type(seen).__name__ in names:
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def read_config(name: str) -> Any:
    """The transformers config of ``hf:REPO_OR_DIR``, checked to be a per-pixel segmentation model.

    Raises:
        CitysegError: transformers missing, the reference unreadable (see :func:`_from_hub`), or an
            architecture ``AutoModelForSemanticSegmentation`` does not build (lists those it does).
    """
    transformers = _transformers()
    config = _from_hub(name, hf_ref(name), transformers.AutoConfig.from_pretrained)
    check_architecture(config, name)
    return config


def check_architecture(config: Any, name: str) -> None:
    """CitysegError unless transformers' ``AutoModelForSemanticSegmentation`` builds ``config``'s model type."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_SEMANTIC_SEGMENTATION_MAPPING_NAMES as SUPPORTED

    kind = getattr(config, "model_type", "?")
    if kind in SUPPORTED:
        return
    why = ("a mask-classification model (class and mask queries, trained with a matching loss), not per-pixel "
           "logits" if kind in MASK_CLASSIFICATION else "not a semantic-segmentation model")
    raise CitysegError(f"{name}: model type {kind!r} is {why}; supported (transformers' "
                       f"AutoModelForSemanticSegmentation): {', '.join(SUPPORTED)}")


def processor_stats(name: str, config: Any = None) -> tuple[list[float], list[float], float]:
    """``(mean, std, rescale)`` of the model's image processor (``preprocessor_config.json``).
    ``do_normalize: false`` means mean 0, std 1; ``do_rescale: false`` a rescale of 1 (the processor
    then takes 0-255 values).

    A model without a processor file takes the ``image_mean``/``image_std`` of its transformers
    ``config`` where that has them (an info line says so); otherwise ImageNet's mean/std and 1/255,
    with a warning naming them: a model trained on other statistics would predict worse, silently.
    """
    path = _processor_file(hf_ref(name))
    if path is None:
        own = {key: getattr(config, key) for key in ("image_mean", "image_std", "rescale_factor")
               if getattr(config, key, None) is not None} if config is not None else {}
        if "image_mean" in own and "image_std" in own:
            stats = _stats(own, f"{name}: config.json")
            log.info("%s: no %s; normalising with the model config's mean %s and std %s", name, PROCESSOR_FILE,
                     _rounded(stats[0]), _rounded(stats[1]))
            return stats
        log.warning("%s: no %s (the model's image processor); assuming ImageNet's mean %s and std %s on 0-1 "
                    "pixels: if the model was trained with others, add its %s to the folder", name, PROCESSOR_FILE,
                    _rounded(IMAGENET_MEAN), _rounded(IMAGENET_STD), PROCESSOR_FILE)
        return list(IMAGENET_MEAN), list(IMAGENET_STD), 1 / 255
    try:
        settings = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise CitysegError(f"{name}: {PROCESSOR_FILE} is not readable JSON ({first_line(exc)})") from None
    if not isinstance(settings, dict):
        raise CitysegError(f"{name}: {PROCESSOR_FILE} is not a JSON object of processor settings")
    return _stats(settings, f"{name}: {PROCESSOR_FILE}")


def _rounded(values: Sequence[float]) -> list[float]:
    return [round(float(v), 4) for v in values]


def _processor_file(ref: str) -> str | None:
    """The processor settings file of a model folder or Hub id (cache first, then the Hub); None when
    there is none (or, for a Hub id, when it is neither cached nor downloadable)."""
    if _is_path(ref):
        path = Path(ref).expanduser() / PROCESSOR_FILE
        return str(path) if path.is_file() else None
    from transformers.utils import cached_file

    def find(local_files_only: bool) -> str | None:
        return cached_file(ref, PROCESSOR_FILE, local_files_only=local_files_only,
                           _raise_exceptions_for_missing_entries=False)

    return find(local_files_only=True) or find(local_files_only=False)


def _stats(settings: dict[str, Any], what: str) -> tuple[list[float], list[float], float]:
    """(mean, std, rescale) from an image processor's settings; CitysegError naming ``what`` when
    ``image_mean``/``image_std`` are not 1 or 3 numbers (std non-zero)."""
    normalize = settings.get("do_normalize", True)
    mean = _three(settings.get("image_mean", IMAGENET_MEAN) if normalize else 0.0, "image_mean", what)
    std = _three(settings.get("image_std", IMAGENET_STD) if normalize else 1.0, "image_std", what)
    if any(s == 0 for s in std):
        raise CitysegError(f"{what}: image_std {std} has a zero; valid: non-zero numbers")
    rescale = float(settings.get("rescale_factor", 1 / 255)) if settings.get("do_rescale", True) else 1.0
    return mean, std, rescale


def _three(value: Any, key: str, what: str) -> list[float]:
    values = value if isinstance(value, (list, tuple)) else [value]
    if len(values) not in (1, 3) or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        raise CitysegError(f"{what}: {key} {value!r}; valid: one number or three (R, G, B)")
    return [float(v) for v in values] * (3 // len(values))


# --- class tables -------------------------------------------------------------------------------


def model_classes(config: Any) -> list[str]:
    """The class names a transformers config predicts, in output order (``id2label``)."""
    id2label = {int(k): str(v) for k, v in (config.id2label or {}).items()}
    return [id2label.get(i, f"LABEL_{i}") for i in range(config.num_labels)]


def _normalized(name: str) -> str:
    # "traffic_light", "Traffic Light", "traffic-light" and CamVid's "SignSymbol" style all agree
    return "".join(name.lower().replace("_", " ").replace("-", " ").split())


def _unnamed(names: Sequence[str]) -> bool:
    """transformers' placeholder table ``LABEL_0, LABEL_1, ...``: a model whose classes were never named."""
    return all(n == f"LABEL_{i}" for i, n in enumerate(names))


def same_classes(names: Sequence[str], spec_names: Sequence[str]) -> bool:
    """Equal tables, names compared in lower case without spaces, ``_`` and ``-``."""
    return len(names) == len(spec_names) and all(
        _normalized(a) == _normalized(b) for a, b in zip(names, spec_names, strict=True))


def _shown(names: Sequence[str], n: int = 4) -> str:
    return ", ".join(names[:n]) + (", ..." if len(names) > n else "")


def check_classes(config: Any, spec: DatasetSpec, name: str) -> None:
    """CitysegError in one line when the model's ``id2label`` is not ``spec``'s class table.

    A model with transformers' placeholder names (``LABEL_0``, ...) and the right count is taken
    as predicting ``spec``'s classes in order, with a warning.
    """
    names = model_classes(config)
    if same_classes(names, spec.class_names):
        return
    if _unnamed(names) and len(names) == spec.num_classes:
        log.warning("%s: the model does not name its %d classes (LABEL_0, ...); taken as %s' classes in order",
                    name, len(names), spec.name)
        return
    owner = f"{spec.name}'" if spec.name.endswith("s") else f"{spec.name}'s"
    raise CitysegError(f"{name}: the model predicts {len(names)} classes ({_shown(names)}), not {owner} "
                       f"{spec.num_classes} ({_shown(spec.class_names)}); pass --dataset with its class table")


# --- building -----------------------------------------------------------------------------------


def load_hf(name: str, spec: DatasetSpec) -> HfSegmentation:
    """``hf:REPO_OR_DIR`` with its own weights and head, for inference on ``spec``'s classes.

    Raises:
        CitysegError: see :func:`read_config`; the model's classes are not ``spec``'s (:func:`check_classes`).
    """
    config = read_config(name)
    check_classes(config, spec, name)
    model = _from_hub(name, hf_ref(name), _model_loader())
    return HfSegmentation(model.float(), *processor_stats(name, config))


def build_hf(name: str, num_classes: int, class_names: Sequence[str] | None = None) -> tuple[HfSegmentation, StageMap]:
    """``hf:REPO_OR_DIR`` as the starting point of a training on ``num_classes`` classes.

    The model keeps its classifier when its table is ``class_names`` (None: when the counts
    agree). A table of another size gets a new, randomly initialised classifier
    (``ignore_mismatched_sizes``, with a warning); one of the same size with other names keeps
    the classifier's weights under the new names (a warning too).

    Returns:
        (the model in train mode, its stages for ``model.freeze``: :func:`stage_map`).
    """
    config = read_config(name)
    names = model_classes(config)
    wanted = list(class_names) if class_names is not None else None
    kwargs: dict[str, Any] = {}
    if len(names) != num_classes:
        wanted = wanted or [f"class_{i}" for i in range(num_classes)]
        log.warning("%s: the model predicts %d classes, the dataset has %d: its classifier is replaced by a new, "
                    "randomly initialised one", name, len(names), num_classes)
        kwargs["ignore_mismatched_sizes"] = True
    elif wanted is not None and not same_classes(names, wanted) and not _unnamed(names):
        log.warning("%s: the model's classes (%s) are not the dataset's (%s): its classifier is fine-tuned to the "
                    "dataset's in the same order", name, _shown(names), _shown(wanted))
    if wanted is not None:
        kwargs |= dict(num_labels=num_classes, id2label=dict(enumerate(wanted)),
                       label2id={n: i for i, n in enumerate(wanted)})
    model = _from_hub(name, hf_ref(name), _model_loader(**kwargs))
    wrapped = HfSegmentation(model.float(), *processor_stats(name, config))
    return wrapped.train(), stage_map(wrapped.model)


def _model_loader(**kwargs: Any) -> Callable[..., nn.Module]:
    """``from_pretrained`` of ``AutoModelForSemanticSegmentation`` with ``kwargs`` (a :func:`_from_hub` loader)."""
    auto = _transformers().AutoModelForSemanticSegmentation

    def load(ref: str, local_files_only: bool = False) -> nn.Module:
        return auto.from_pretrained(ref, local_files_only=local_files_only, **kwargs)

    return load


def from_config_dict(config: dict[str, Any], name: str) -> HfSegmentation:
    """An :class:`HfSegmentation` of the architecture ``config`` (a ``config.to_dict()``, as a cityseg
    checkpoint of an ``hf:`` model stores it) with random weights and placeholder normalisation:
    the checkpoint's state dict fills both. Needs no model folder and no network.

    Raises:
        CitysegError: transformers missing; ``config`` names no model type transformers knows.
    """
    transformers = _transformers()
    values = dict(config)
    kind = values.pop("model_type", None)
    if kind not in transformers.CONFIG_MAPPING:
        raise CitysegError(f"{name}: the stored transformers config has model type {kind!r}, which this transformers "
                           f"({transformers.__version__}) does not know; upgrade it")
    hf_config = transformers.CONFIG_MAPPING[kind].from_dict(values)
    check_architecture(hf_config, name)
    model = transformers.AutoModelForSemanticSegmentation.from_config(hf_config)
    return HfSegmentation(model.float())
