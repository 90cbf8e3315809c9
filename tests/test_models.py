"""Models: every builder on a 64x64 CPU batch, freezing, weights from files, offline ImageNet."""

from __future__ import annotations

import logging
import socket

import pytest
import torch
import torchvision
from torch import nn

from cityseg import labels
from cityseg.pretrained import build_starting_model
from cityseg.errors import CitysegError
from cityseg.imaging import IMAGENET_MEAN, IMAGENET_STD
from cityseg.models import (
    MODELS,
    build_model,
    count_parameters,
    set_frozen_bn_eval,
)

C = labels.NUM_CLASSES
# torchvision's LR-ASPP has no auxiliary head
NO_AUX = {"lraspp_mobilenet_v3_large", *(f"lraspp_efficientnet_lite{i}" for i in range(3))}


@pytest.fixture(autouse=True)
def _one_thread():
    # 64x64 batches gain nothing from intra-op threads, and OpenMP threads spin-waiting on a
    # shared, busy machine (parallel test runs, CI) made these tests several times slower.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def no_network(monkeypatch, tmp_path):
    """Fail every connection and point the torch and Hugging Face caches at empty folders."""

    def refuse(*args, **kwargs):
        raise OSError("network disabled in tests")

    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    import huggingface_hub.constants as hf

    monkeypatch.setattr(hf, "HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setattr(hf, "HF_HUB_OFFLINE", True)  # fail fast instead of retrying with back-off
    return tmp_path


def _stage_params(model: nn.Module, prefix: str) -> list[nn.Parameter]:
    return [p for n, p in model.named_parameters() if n.startswith(prefix)]


FROZEN_PREFIX = {  # one parameter prefix of the "layer1" stage of each model
    "deeplabv3_resnet50": "backbone.layer1.",
    "deeplabv3_resnet101": "backbone.layer1.",
    "deeplabv3_convnext_tiny": "backbone.stages_0.",
    "deeplabv3_mobilenet_v3_large": "backbone.2.",
    "lraspp_mobilenet_v3_large": "backbone.3.",
    "cityseg_tiny": "backbone.layer1.",
    "cityseg_small": "backbone.layer1.",
    **{f"{head}_efficientnet_lite{i}": "backbone.blocks.1." for head in ("deeplabv3", "lraspp", "fpn") for i in range(3)},
}


# ResNet-101 differs from ResNet-50 (tested at output stride 8) only in depth; at stride 32 its
# 64x64 pass costs a fifth as much.
EXTRA_KWARGS = {"deeplabv3_resnet101": {"output_stride": 32},
                **{f"deeplabv3_efficientnet_lite{i}": {"output_stride": 16} for i in (1, 2)}}


@pytest.mark.parametrize("name", list(MODELS))
def test_forward_backward_shapes_and_freeze(name):
    aux = name not in NO_AUX
    model = build_model(name, aux_head=aux, freeze=["stem", "layer1"], **EXTRA_KWARGS.get(name, {})).train()
    set_frozen_bn_eval(model)
    x = torch.randn(2, 3, 64, 64)
    out = model(x)
    assert set(out) == ({"out", "aux"} if aux else {"out"})
    for value in out.values():
        assert value.shape == (2, C, 64, 64) and value.dtype == torch.float32
    (out["out"].mean() + (out["aux"].mean() if aux else 0)).backward()

    frozen = _stage_params(model, FROZEN_PREFIX[name])
    assert frozen and all(not p.requires_grad and p.grad is None for p in frozen)
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in trainable)
    assert count_parameters(model, trainable_only=True) < count_parameters(model)
    bns = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.BatchNorm2d)]
    for mod_name, bn in bns:  # frozen BN in eval, every other BN training
        assert bn.training == bn.weight.requires_grad, mod_name


def test_frozen_bn_keeps_running_stats_and_survives_syncbn():
    model = build_model("cityseg_tiny", freeze=["stem"])
    model = nn.SyncBatchNorm.convert_sync_batchnorm(model)  # what DDP training with sync_bn does
    model.train()
    set_frozen_bn_eval(model)
    stem_bn = model.backbone.stem[1]
    before = stem_bn.running_mean.clone()
    model.backbone.stem(torch.randn(2, 3, 16, 16) + 5)  # a training-mode BN would move its mean
    assert isinstance(stem_bn, nn.SyncBatchNorm) and not stem_bn.training
    assert torch.equal(stem_bn.running_mean, before)
    assert model.backbone.layer1[0][1].training


@pytest.mark.parametrize("name", ["cityseg_tiny", "lraspp_mobilenet_v3_large", "deeplabv3_convnext_tiny"])
def test_output_at_any_input_size(name):
    model = build_model(name, output_stride=32).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 45, 70))["out"].shape == (1, C, 45, 70)


@pytest.mark.parametrize(
    ("name", "reference"),
    [
        ("deeplabv3_resnet50", torchvision.models.segmentation.deeplabv3_resnet50),
        ("deeplabv3_mobilenet_v3_large", torchvision.models.segmentation.deeplabv3_mobilenet_v3_large),
        ("lraspp_mobilenet_v3_large", torchvision.models.segmentation.lraspp_mobilenet_v3_large),
    ],
)
def test_same_architecture_as_torchvision_builders(name, reference):
    aux = name not in NO_AUX
    ours = build_model(name, aux_head=aux, freeze=[]).state_dict()
    kwargs = {"aux_loss": aux} if aux else {}
    theirs = reference(weights=None, weights_backbone=None, num_classes=C, **kwargs).state_dict()
    assert {k: v.shape for k, v in ours.items()} == {k: v.shape for k, v in theirs.items()}


def test_output_stride_sets_dilation_and_aspp_rates():
    os8 = build_model("deeplabv3_resnet50", freeze=[])
    # torchvision dilates from the second block of a stage on; the first keeps the previous rate
    assert os8.backbone.layer3[0].conv2.stride == (1, 1) and os8.backbone.layer4[1].conv2.dilation == (4, 4)
    assert [m[0].dilation[0] for m in os8.classifier[0].convs[1:4]] == [12, 24, 36]
    os16 = build_model("deeplabv3_resnet50", freeze=[], output_stride=16)
    assert os16.backbone.layer3[0].conv2.stride == (2, 2) and os16.backbone.layer4[1].conv2.dilation == (2, 2)
    assert [m[0].dilation[0] for m in os16.classifier[0].convs[1:4]] == [6, 12, 18]
    with pytest.raises(CitysegError, match=r"model.output_stride=12 .*valid: 8, 16, 32"):
        build_model("deeplabv3_resnet50", output_stride=12)


def test_unknown_model_lists_valid_names():
    with pytest.raises(CitysegError) as err:
        build_model("unet_resnet18")
    assert "'unet_resnet18'" in str(err.value)
    assert all(name in str(err.value) for name in MODELS)


def test_unknown_stage_lists_valid_stages():
    with pytest.raises(CitysegError, match=r"'layer4'.*cityseg_tiny; valid: stem, layer1, layer2, layer3$"):
        build_model("cityseg_tiny", freeze=["layer4"])


def test_lraspp_refuses_aux_head():
    with pytest.raises(CitysegError, match="no auxiliary head"):
        build_model("lraspp_mobilenet_v3_large", aux_head=True)


@pytest.mark.parametrize("name", ["cityseg_tiny", "lraspp_mobilenet_v3_large"])
def test_channels_last_matches_nchw(name):
    torch.manual_seed(0)
    model = build_model(name).eval()
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        ref = model(x)["out"]
        out = model.to(memory_format=torch.channels_last)(x.contiguous(memory_format=torch.channels_last))["out"]
    torch.testing.assert_close(out, ref, atol=1e-4, rtol=1e-4)


@pytest.mark.slow
def test_tiny_model_exports_to_onnx(tmp_path):
    """The hand-written model exports with dynamic sizes and onnxruntime agrees (library models: see report)."""
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")

    class OutOnly(nn.Module):  # ONNX graphs return tensors, not dicts
        def __init__(self, model: nn.Module) -> None:
            super().__init__()
            self.model = model

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.model(x)["out"]

    model = OutOnly(build_model("cityseg_tiny")).eval()
    path = tmp_path / "tiny.onnx"
    dims = {"x": {0: "n", 2: "h", 3: "w"}}
    torch.onnx.export(model, (torch.randn(1, 3, 64, 128),), str(path), dynamo=True, dynamic_shapes=dims)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = torch.randn(2, 3, 45, 70)  # another batch and an odd size
    with torch.no_grad():
        expected = model(x).numpy()
    got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    assert got.shape == expected.shape
    assert abs(got - expected).max() < 1e-4


def test_tiny_model_is_tiny():
    n = count_parameters(build_model("cityseg_tiny"))
    assert 200_000 < n < 600_000


def test_imagenet_constants():
    assert IMAGENET_MEAN == (0.485, 0.456, 0.406) and IMAGENET_STD == (0.229, 0.224, 0.225)


# --- pretrained=PATH ----------------------------------------------------------------------------


def _assert_same_weights(module: nn.Module, state: dict[str, torch.Tensor]) -> None:
    own = module.state_dict()
    for key, value in state.items():
        assert torch.equal(own[key], value), key


def test_full_state_dict_roundtrip_strips_prefixes(tmp_path):
    torch.manual_seed(1)
    src = build_model("cityseg_tiny", aux_head=True)
    state = src.state_dict()
    torch.save({f"module._orig_mod.{k}": v for k, v in state.items()}, tmp_path / "w.pt")
    loaded = build_starting_model("cityseg_tiny", aux_head=True, pretrained=str(tmp_path / "w.pt"))
    _assert_same_weights(loaded, state)


def test_cityseg_checkpoint_fine_tune_and_wrong_model(tmp_path, caplog):
    src = build_model("cityseg_tiny", aux_head=True)
    ckpt = {"format": "cityseg", "version": 1, "config": {"model": {"name": "cityseg_tiny"}}, "model": src.state_dict()}
    torch.save(ckpt, tmp_path / "best.pt")
    with caplog.at_level(logging.WARNING, logger="cityseg.pretrained"):
        loaded = build_starting_model("cityseg_tiny", pretrained=str(tmp_path / "best.pt"))  # no aux: its keys are extra
    _assert_same_weights(loaded, {k: v for k, v in src.state_dict().items() if not k.startswith("aux")})
    assert "ignored" in caplog.text and "aux_classifier.0.0.weight" in caplog.text
    with pytest.raises(CitysegError, match="holds model 'cityseg_tiny', but model.name is 'lraspp_mobilenet_v3_large'"):
        build_starting_model("lraspp_mobilenet_v3_large", pretrained=str(tmp_path / "best.pt"))


def test_resnet_backbone_state_dict(tmp_path, caplog):
    resnet = torchvision.models.resnet50()
    torch.save(resnet.state_dict(), tmp_path / "resnet50.pth")
    with caplog.at_level(logging.WARNING, logger="cityseg.pretrained"):
        model = build_starting_model("deeplabv3_resnet50", pretrained=str(tmp_path / "resnet50.pth"))
    _assert_same_weights(model.backbone, {k: v for k, v in resnet.state_dict().items() if not k.startswith("fc.")})
    assert "2 tensors ignored" in caplog.text and "fc.weight" in caplog.text


def test_mobilenet_backbone_state_dict_keys_are_mapped(tmp_path):
    net = torchvision.models.mobilenet_v3_large()
    torch.save(net.state_dict(), tmp_path / "mnv3.pth")
    model = build_starting_model("lraspp_mobilenet_v3_large", pretrained=str(tmp_path / "mnv3.pth"))
    features = {k.removeprefix("features."): v for k, v in net.state_dict().items() if k.startswith("features.")}
    _assert_same_weights(model.backbone, features)


def test_convnext_backbone_safetensors(tmp_path):
    timm = pytest.importorskip("timm")
    from safetensors.torch import save_file

    net = timm.create_model("convnext_tiny")
    save_file(net.state_dict(), str(tmp_path / "model.safetensors"))
    model = build_starting_model("deeplabv3_convnext_tiny", pretrained=str(tmp_path / "model.safetensors"))
    ref = net.state_dict()
    assert torch.equal(model.backbone.stem_0.weight, ref["stem.0.weight"])
    assert torch.equal(model.backbone.stages_3.blocks[2].mlp.fc2.weight, ref["stages.3.blocks.2.mlp.fc2.weight"])


def test_shape_mismatch_names_the_key(tmp_path):
    torch.save(build_model("cityseg_tiny", num_classes=5).state_dict(), tmp_path / "five.pt")
    with pytest.raises(CitysegError, match=r"tensor classifier.weight has shape \(5, 32, 1, 1\).*\(19, 32, 1, 1\)"):
        build_starting_model("cityseg_tiny", pretrained=str(tmp_path / "five.pt"))


def test_unusable_weight_files(tmp_path):
    torch.save({"foo.weight": torch.zeros(3)}, tmp_path / "other.pt")
    with pytest.raises(CitysegError, match="none of its 1 tensors fits the backbone"):
        build_starting_model("cityseg_tiny", pretrained=str(tmp_path / "other.pt"))
    (tmp_path / "broken.pt").write_bytes(b"not a zip")
    with pytest.raises(CitysegError, match="broken.pt: not a readable weights file"):
        build_starting_model("cityseg_tiny", pretrained=str(tmp_path / "broken.pt"))
    with pytest.raises(CitysegError, match="missing.pt'?: no such file"):
        build_starting_model("cityseg_tiny", pretrained=str(tmp_path / "missing.pt"))


# --- pretrained="imagenet" without network --------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "weights"),
    [
        ("deeplabv3_resnet50", torchvision.models.ResNet50_Weights.IMAGENET1K_V2),
        ("lraspp_mobilenet_v3_large", torchvision.models.MobileNet_V3_Large_Weights.IMAGENET1K_V1),
    ],
)
def test_imagenet_offline_says_where_to_put_the_file(no_network, name, weights):
    file_name = weights.url.rsplit("/", 1)[-1]
    with pytest.raises(CitysegError) as err:
        build_model(name, pretrained="imagenet")
    msg = str(err.value)
    assert "\n" not in msg and file_name in msg and str(no_network / "torch" / "hub" / "checkpoints") in msg


def test_imagenet_from_torch_hub_cache(no_network):
    weights = torchvision.models.MobileNet_V3_Large_Weights.IMAGENET1K_V1
    net = torchvision.models.mobilenet_v3_large()
    cache = no_network / "torch" / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    torch.save(net.state_dict(), cache / weights.url.rsplit("/", 1)[-1])
    model = build_model("lraspp_mobilenet_v3_large", pretrained="imagenet")
    assert torch.equal(model.backbone["16"][0].weight, net.features[16][0].weight)


def test_imagenet_offline_timm(no_network):
    with pytest.raises(CitysegError) as err:
        build_model("deeplabv3_convnext_tiny", pretrained="imagenet")
    msg = str(err.value)
    assert "timm/convnext_tiny.fb_in1k" in msg and "model.safetensors" in msg and str(no_network / "hf") in msg


def test_imagenet_timm_file_from_cache(no_network, hf_cache_with):
    timm = pytest.importorskip("timm")
    net = timm.create_model("convnext_tiny")
    asked = hf_cache_with(net.state_dict())
    model = build_model("deeplabv3_convnext_tiny", pretrained="imagenet")
    assert asked == [("timm/convnext_tiny.fb_in1k", "model.safetensors", True)]
    assert torch.equal(model.backbone.stages_2.blocks[0].conv_dw.weight, net.stages[2].blocks[0].conv_dw.weight)


def test_tiny_has_no_imagenet_weights():
    with pytest.raises(CitysegError, match="cityseg_tiny has no ImageNet weights"):
        build_model("cityseg_tiny", pretrained="imagenet")
