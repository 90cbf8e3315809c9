"""A fast CPU training step. Depthwise convolutions in float32 under CPU bf16 autocast
(models.parts.float32_depthwise, engine.build.apply_precision_policy): same parameters and keys,
float32 inside autocast, the original forward without it, and only where the policy says. Then
setup_torch's deterministic mode without the NaN fill, and the loss's contiguous logits handing
their gradient back channels_last (engine.train.ContiguousForLoss)."""

from __future__ import annotations

import copy

import pytest
import torch
from timm.layers import create_conv2d
from torch import nn

from cityseg.config import load_config
from cityseg.engine import build as B
from cityseg.models import build_model
from cityseg.models.parts import float32_depthwise, is_depthwise


def small_net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 1),                                     # pointwise: stays in bf16
        nn.Conv2d(8, 8, 3, padding=1, groups=8),                # depthwise
        create_conv2d(8, 8, 5, stride=2, padding="same", depthwise=True),  # timm's "same" padding (Conv2dSame)
        nn.Conv2d(8, 4, 3, padding=1, groups=2),                # grouped, not depthwise: stays
    )


def test_only_depthwise_convolutions_switch_and_the_state_dict_is_unchanged():
    net = small_net()
    keys = {k: v.clone() for k, v in net.state_dict().items()}
    assert [is_depthwise(m) for m in net] == [False, True, True, False]
    assert float32_depthwise(net) == 2
    assert float32_depthwise(net) == 0  # already switched: not wrapped twice
    assert [type(m).__name__.startswith("Float32") for m in net] == [False, True, True, False]
    assert isinstance(net[2], type(create_conv2d(8, 8, 5, stride=2, padding="same", depthwise=True)))
    state = net.state_dict()
    assert state.keys() == keys.keys() and all(torch.equal(state[k], keys[k]) for k in keys)
    clone = copy.deepcopy(net)
    assert type(clone[1]) is type(net[1])  # copies keep the float32 forward


def test_float32_inside_autocast_and_the_original_forward_outside():
    plain, switched = small_net(), small_net()
    float32_depthwise(switched)
    x = torch.randn(2, 3, 16, 16)
    assert torch.equal(plain(x), switched(x))  # no autocast: exactly the original forward
    with torch.autocast("cpu", dtype=torch.bfloat16):
        h = switched[0](x)
        assert h.dtype == torch.bfloat16
        d = switched[1](h)
        assert d.dtype == torch.float32
        bf16_conv = plain[1](h)
        assert switched[3](switched[2](d)).dtype == torch.bfloat16
    # the float32 convolution of the bf16 input, not the bf16 convolution's result
    assert torch.equal(d, plain[1](h.float()))
    assert not torch.equal(d, bf16_conv.float())


def test_gradients_follow_the_float32_convolution():
    net = small_net()
    float32_depthwise(net)
    reference = copy.deepcopy(net)
    x = torch.randn(2, 3, 16, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        net(x).float().sum().backward()
    reference(x).sum().backward()  # all float32
    for (name, p), q in zip(net.named_parameters(), reference.parameters()):
        assert p.grad is not None and p.grad.dtype == torch.float32, name
        assert torch.allclose(p.grad, q.grad, rtol=0.05, atol=0.05 * q.grad.abs().max().item()), name


@pytest.mark.parametrize("amp, expected", [("bf16", True), ("none", False)])
def test_the_policy_switches_lite0_under_bf16_on_the_cpu_only(amp, expected):
    cfg = load_config("pairs_imagenet", overrides=[f"train.amp={amp}"])
    model = build_model("fpn_efficientnet_lite0", freeze=["stem", "layer1"], output_stride=32)
    depthwise = sum(is_depthwise(m) for m in model.modules())
    assert depthwise >= 16  # one per MBConv block (and the stem block's)
    settings = B.build_step_settings(cfg, torch.device("cpu"), micro_batch=cfg.train.batch_size)
    assert B.apply_precision_policy(model, settings) == (depthwise if expected else 0)
    x = torch.randn(1, 3, 64, 64)
    with settings.autocast():
        out = model(x)["out"]
    assert out.shape == (1, 19, 64, 64)


# --- the rest of a fast CPU step --------------------------------------------------------------------


def test_setup_torch_keeps_deterministic_kernels_without_the_nan_fill():
    """Deterministic algorithms stay on as the config asks, but new tensors are no longer filled with
    NaN (13% of a CPU step): what torch would otherwise do in deterministic mode."""
    B.setup_torch(load_config("pairs_imagenet", ["train.threads=null"]), torch.device("cpu"))
    assert torch.are_deterministic_algorithms_enabled()
    assert torch.utils.deterministic.fill_uninitialized_memory is False


@pytest.mark.parametrize("channels_last", [True, False])
def test_contiguous_for_loss_gives_the_gradient_back_in_the_input_layout(channels_last):
    from cityseg.engine.train import ContiguousForLoss

    fmt = torch.channels_last if channels_last else torch.contiguous_format
    logits = (torch.randn(2, 5, 4, 3).contiguous(memory_format=fmt).requires_grad_() * 2)  # not a leaf,
    y = ContiguousForLoss.apply(logits)  # whose gradient autograd hands back in the layout made for it
    assert y.is_contiguous() and torch.equal(y, logits)
    weights = torch.randn(2, 5, 4, 3)
    (grad,) = torch.autograd.grad((y * weights).sum(), logits)
    assert torch.equal(grad, weights)
    assert grad.is_contiguous(memory_format=fmt)
    if channels_last:  # what plain contiguous() gives, which this test tells apart
        (plain,) = torch.autograd.grad((logits.contiguous() * weights).sum(), logits)
        assert not plain.is_contiguous(memory_format=torch.channels_last)
