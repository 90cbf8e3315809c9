"""Losses against hand-computed values, torch's cross-entropy, and the ignore contract."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from cityseg import labels
from cityseg.config import LossConfig
from cityseg.errors import CitysegError
from cityseg.losses import LOSSES, CrossEntropy, DiceLoss, FocalLoss, WeightedSum, build_loss

IGN = labels.IGNORE_INDEX

# Two pixels, three classes: pixel A = (1, 2, 0.5) labelled 0, pixel B = (0, -1, 3) labelled 2.
A, B = (1.0, 2.0, 0.5), (0.0, -1.0, 3.0)


def _logits(*pixels: tuple[float, ...]) -> torch.Tensor:
    """(1, C, 1, P) logits from P per-pixel tuples."""
    return torch.tensor(pixels, dtype=torch.float32).T.reshape(1, len(pixels[0]), 1, len(pixels))


def _target(*ids: int) -> torch.Tensor:
    return torch.tensor(ids, dtype=torch.long).reshape(1, 1, len(ids))


def _softmax(z: tuple[float, ...]) -> list[float]:
    exps = [math.exp(v) for v in z]
    return [e / sum(exps) for e in exps]


def _random_case(seed: int = 0, n: int = 2, c: int = 5, h: int = 6, w: int = 7, ignore_frac: float = 0.3):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, c, h, w, generator=g) * 3
    target = torch.randint(0, c, (n, h, w), generator=g)
    target[torch.rand(n, h, w, generator=g) < ignore_frac] = IGN
    return logits, target


ALL_LOSSES = [CrossEntropy(), FocalLoss(gamma=2.0), DiceLoss()]
IDS = ["ce", "focal", "dice"]


# --- values ---------------------------------------------------------------------------------------


def test_cross_entropy_hand_computed():
    expected = (-math.log(_softmax(A)[0]) - math.log(_softmax(B)[2])) / 2
    value = CrossEntropy()(_logits(A, B), _target(0, 2))
    assert value.item() == pytest.approx(expected, rel=1e-6)


def test_cross_entropy_class_weights_hand_computed():
    w = [2.0, 1.0, 0.5]
    expected = (w[0] * -math.log(_softmax(A)[0]) + w[2] * -math.log(_softmax(B)[2])) / (w[0] + w[2])
    value = CrossEntropy(class_weights=w)(_logits(A, B), _target(0, 2))
    assert value.item() == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("weights", [None, [0.5, 2.0, 1.0, 3.0, 0.1]])
def test_cross_entropy_matches_torch(weights):
    logits, target = _random_case()
    ref = F.cross_entropy(logits, target, ignore_index=IGN, weight=None if weights is None else torch.tensor(weights))
    torch.testing.assert_close(CrossEntropy(weights)(logits, target), ref)


def test_focal_hand_computed_with_alpha():
    gamma, alpha = 2.0, [0.25, 1.0, 0.75]
    pa, pb = _softmax(A)[0], _softmax(B)[2]
    expected = (
        -alpha[0] * (1 - pa) ** gamma * math.log(pa) - alpha[2] * (1 - pb) ** gamma * math.log(pb)
    ) / 2  # a mean over the pixels, not over the alpha weights
    value = FocalLoss(gamma=gamma, alpha=alpha)(_logits(A, B), _target(0, 2))
    assert value.item() == pytest.approx(expected, rel=1e-6)


def test_focal_non_integer_gamma_hand_computed():
    pa, pb = _softmax(A)[0], _softmax(B)[2]
    expected = (-((1 - pa) ** 1.5) * math.log(pa) - (1 - pb) ** 1.5 * math.log(pb)) / 2
    assert FocalLoss(gamma=1.5)(_logits(A, B), _target(0, 2)).item() == pytest.approx(expected, rel=1e-6)


def test_focal_gamma_zero_is_cross_entropy():
    logits, target = _random_case(seed=3)
    torch.testing.assert_close(FocalLoss(gamma=0.0)(logits, target), CrossEntropy()(logits, target))


def test_dice_hand_computed_counts_predicted_but_absent_class():
    # Arg-max of A is class 1, which no pixel is labelled: class 1 is in the mean (penalised).
    pa, pb = _softmax(A), _softmax(B)
    dice0 = (2 * pa[0] + 1) / (pa[0] + pb[0] + 1 + 1)
    dice1 = (0 + 1) / (pa[1] + pb[1] + 0 + 1)
    dice2 = (2 * pb[2] + 1) / (pa[2] + pb[2] + 1 + 1)
    expected = ((1 - dice0) + (1 - dice1) + (1 - dice2)) / 3
    value = DiceLoss(smooth=1.0)(_logits(A, B), _target(0, 2))
    assert value.item() == pytest.approx(expected, rel=1e-6)


def test_dice_leaves_out_classes_neither_labelled_nor_predicted():
    # A2 = (3, 1, 0.5) predicts its label 0; B predicts its label 2; class 1 is absent from both.
    a2 = (3.0, 1.0, 0.5)
    pa, pb = _softmax(a2), _softmax(B)
    dice0 = (2 * pa[0] + 1) / (pa[0] + pb[0] + 1 + 1)
    dice2 = (2 * pb[2] + 1) / (pa[2] + pb[2] + 1 + 1)
    expected = ((1 - dice0) + (1 - dice2)) / 2  # not divided by 3
    value = DiceLoss(smooth=1.0)(_logits(a2, B), _target(0, 2))
    assert value.item() == pytest.approx(expected, rel=1e-6)


def test_dice_unaffected_by_extra_absent_classes():
    logits, target = _random_case(seed=4, c=4)
    extra = torch.full((2, 3, 6, 7), -30.0)  # three more classes, never labelled, never predicted
    wider = torch.cat([logits, extra], dim=1)
    torch.testing.assert_close(DiceLoss()(wider, target), DiceLoss()(logits, target), atol=1e-6, rtol=1e-5)


def test_dice_perfect_prediction_is_near_zero():
    target = torch.tensor([[[0, 1], [2, 2]]])
    logits = F.one_hot(target, 3).permute(0, 3, 1, 2).float() * 50
    assert DiceLoss(smooth=0.0)(logits, target).item() == pytest.approx(0.0, abs=1e-6)


# --- OHEM: cross-entropy on the hard pixels ----------------------------------------------------------

C = (0.3, 0.2, -0.4)  # labelled 1: p = 0.35 (A's true class has p = 0.23, B's 0.94)


def _nll(z: tuple[float, ...], label: int) -> float:
    return -math.log(_softmax(z)[label])


def test_ohem_keeps_pixels_below_the_probability_hand_computed():
    logits, target = _logits(A, B, C), _target(0, 2, 1)
    assert _softmax(A)[0] < 0.7 and _softmax(B)[2] > 0.7 and _softmax(C)[1] < 0.7
    value = CrossEntropy(ohem=0.7, ohem_min_kept=0.01)(logits, target)
    assert value.item() == pytest.approx((_nll(A, 0) + _nll(C, 1)) / 2, rel=1e-6)
    w = [2.0, 1.0, 0.5]
    weighted = CrossEntropy(w, ohem=0.7, ohem_min_kept=0.01)(logits, target)
    expected = (w[0] * _nll(A, 0) + w[1] * _nll(C, 1)) / (w[0] + w[1])
    assert weighted.item() == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize(("min_kept", "kept"), [(1 / 3, "A"), (0.5, "AC"), (0.9, "ABC")])
def test_ohem_keeps_the_hardest_share_when_too_few_are_hard(min_kept, kept):
    """No pixel has p < 0.1, so the ceil(min_kept * 3) hardest are kept: A (p 0.23), then C, then B."""
    nll = {"A": _nll(A, 0), "B": _nll(B, 2), "C": _nll(C, 1)}
    value = CrossEntropy(ohem=0.1, ohem_min_kept=min_kept)(_logits(A, B, C), _target(0, 2, 1))
    assert value.item() == pytest.approx(sum(nll[k] for k in kept) / len(kept), rel=1e-6)


def test_ohem_gives_easy_pixels_no_gradient_and_ignores_void():
    logits = _logits(A, B, (1e4, -1e4, 0.0), C).requires_grad_()
    value = CrossEntropy(ohem=0.7, ohem_min_kept=0.01)(logits, _target(0, 2, IGN, 1))
    value.backward()
    assert value.item() == pytest.approx((_nll(A, 0) + _nll(C, 1)) / 2, rel=1e-6)
    assert torch.all(logits.grad[..., [1, 2]] == 0) and torch.all(logits.grad[..., [0, 3]].abs().sum(1) > 0)


def test_ohem_of_one_is_plain_cross_entropy():
    logits, target = _random_case(seed=3)
    torch.testing.assert_close(CrossEntropy(ohem=1.0)(logits, target), CrossEntropy()(logits, target))


@pytest.mark.parametrize(("kwargs", "message"), [({"ohem": 0.0}, "loss.ohem=0.0"), ({"ohem": 1.5}, "loss.ohem=1.5"),
                                                 ({"ohem": 0.7, "ohem_min_kept": 0.0}, "loss.ohem_min_kept=0.0")])
def test_ohem_rejects_values_out_of_range(kwargs, message):
    with pytest.raises(CitysegError, match=message):
        CrossEntropy(**kwargs)


def test_build_loss_passes_ohem():
    loss = build_loss(LossConfig(ce=1.0, focal=0.0, dice=0.0, ohem=0.7, ohem_min_kept=0.25))
    assert (loss.losses["ce"].ohem, loss.losses["ce"].ohem_min_kept) == (0.7, 0.25)


# --- ignore handling --------------------------------------------------------------------------------


@pytest.mark.parametrize("loss", ALL_LOSSES, ids=IDS)
def test_ignored_pixels_change_nothing(loss):
    """A batch with ignored pixels (however wild their logits) equals the batch without them."""
    kept_logits = _logits(A, B, (0.3, 0.2, -0.4))
    kept_target = _target(0, 2, 1)
    wild = (1e4, -1e4, 0.0)  # would dominate every term if it leaked in
    logits = _logits(A, wild, B, wild, (0.3, 0.2, -0.4)).requires_grad_()
    target = _target(0, IGN, 2, IGN, 1)
    value = loss(logits, target)
    torch.testing.assert_close(value, loss(kept_logits, kept_target), atol=0, rtol=1e-6)
    value.backward()
    assert torch.all(logits.grad[..., [1, 3]] == 0)  # exactly zero at ignored pixels
    assert torch.all(logits.grad[..., [0, 2, 4]].abs().sum(1) > 0)


@pytest.mark.parametrize(
    "loss", [*ALL_LOSSES, CrossEntropy([1, 2, 3, 4, 5]), CrossEntropy(ohem=0.7), FocalLoss(1.5, [1, 1, 2, 2, 3])]
)
def test_all_ignored_gives_zero_without_nan(loss):
    logits = torch.randn(2, 5, 4, 4, requires_grad=True)
    value = loss(logits, torch.full((2, 4, 4), IGN))
    value.backward()
    assert value.item() == 0.0
    assert torch.all(logits.grad == 0)


@pytest.mark.parametrize("loss", [*ALL_LOSSES, FocalLoss(gamma=0.5)], ids=[*IDS, "focal_gamma_half"])
@pytest.mark.parametrize("scale", [1.0, 1e3])
def test_gradients_finite_even_for_saturated_logits(loss, scale):
    logits, target = _random_case(seed=5)
    logits = (logits * scale).requires_grad_()
    value = loss(logits, target)
    value.backward()
    assert torch.isfinite(value) and torch.isfinite(logits.grad).all()


def test_gradient_matches_finite_differences():
    logits, target = _random_case(seed=6, n=1, c=3, h=2, w=3)
    logits = logits.double().requires_grad_()
    for loss in ALL_LOSSES:
        # float32 inside the losses; gradcheck compares against float64 finite differences loosely
        assert torch.autograd.gradcheck(lambda z: loss(z, target).double(), (logits,), eps=1e-3, atol=1e-3)


@pytest.mark.parametrize("loss", ALL_LOSSES, ids=IDS)
def test_computed_in_float32_under_autocast(loss):
    logits, target = _random_case(seed=7)
    low = logits.bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        value = loss(low, target)
    assert value.dtype == torch.float32
    torch.testing.assert_close(value, loss(low.float(), target))


# --- weighted sum and build_loss -------------------------------------------------------------------


def test_weighted_sum_total_and_parts():
    logits, target = _random_case(seed=8)
    loss = WeightedSum({"focal": (FocalLoss(2.0), 1.5), "dice": (DiceLoss(), 1.0)})
    total, parts = loss.terms(logits, target)
    focal, dice = FocalLoss(2.0)(logits, target), DiceLoss()(logits, target)
    torch.testing.assert_close(parts["focal"], focal)
    torch.testing.assert_close(parts["dice"], dice)
    torch.testing.assert_close(total, 1.5 * focal + dice)
    torch.testing.assert_close(loss(logits, target), total)


def test_weighted_sum_shares_one_log_softmax_with_each_terms_gradient():
    """The sum computes log_softmax once for all its terms: the same gradient as the terms called
    one by one, each on its own log_softmax (class weights and alpha included)."""
    logits, target = _random_case(seed=10)
    weights = [0.5, 1.0, 2.0, 1.5, 3.0]
    terms = {"ce": (CrossEntropy(weights), 0.7), "focal": (FocalLoss(1.5, weights), 1.5), "dice": (DiceLoss(), 1.0)}
    shared = logits.clone().requires_grad_()
    WeightedSum(terms)(shared, target).backward()
    alone = logits.clone().requires_grad_()
    sum(w * loss(alone, target) for loss, w in terms.values()).backward()
    assert shared.grad.abs().sum() > 0
    torch.testing.assert_close(shared.grad, alone.grad)


def test_build_loss_seed_default_and_baseline():
    seed = build_loss(LossConfig())  # the seed: focal 1.5 + dice 1.0
    assert seed.weights == {"focal": 1.5, "dice": 1.0}
    assert isinstance(seed.losses["focal"], FocalLoss) and seed.losses["focal"].gamma == 2.0
    baseline = build_loss(LossConfig(ce=1.0, focal=0.0, dice=0.0))
    assert baseline.weights == {"ce": 1.0}
    logits, target = _random_case(seed=9, c=labels.NUM_CLASSES)
    torch.testing.assert_close(baseline(logits, target), F.cross_entropy(logits, target, ignore_index=IGN))


def test_build_loss_passes_class_vectors():
    weights = [float(i + 1) for i in range(labels.NUM_CLASSES)]
    loss = build_loss(LossConfig(ce=1.0, focal=1.0, dice=0.0, class_weights=weights, focal_alpha=weights))
    assert loss.losses["ce"].weight.tolist() == weights and loss.losses["focal"].alpha.tolist() == weights


@pytest.mark.parametrize(
    ("cfg", "message"),
    [
        (LossConfig(ce=0.0, focal=0.0, dice=0.0), "loss.ce, loss.focal, loss.dice are all 0"),
        (LossConfig(dice=-1.0), "loss.dice=-1.0: loss weights must be >= 0"),
        (LossConfig(class_weights=[1.0, 2.0]), rf"loss.class_weights has 2 values; .* \({labels.NUM_CLASSES}\)"),
        (LossConfig(focal_gamma=-1.0), "loss.focal_gamma must be >= 0"),
    ],
)
def test_build_loss_rejects_bad_config(cfg, message):
    with pytest.raises(CitysegError, match=message):
        build_loss(cfg)


def test_losses_dict():
    assert LOSSES == {"ce": CrossEntropy, "focal": FocalLoss, "dice": DiceLoss}


def _one_hot_dice(logits: torch.Tensor, target: torch.Tensor, smooth: float = 1.0) -> torch.Tensor:
    """The Dice loss written the plain way (one-hot tensor, arg-max over dim 1): the oracle of
    DiceLoss's index-based sums."""
    valid = target != labels.IGNORE_INDEX
    safe = torch.where(valid, target, torch.zeros_like(target))
    mask = valid.unsqueeze(1)
    probs = F.softmax(logits.float(), dim=1) * mask
    one_hot = torch.zeros_like(probs).scatter_(1, safe.unsqueeze(1), 1.0) * mask
    inter, card = (probs * one_hot).sum((0, 2, 3)), probs.sum((0, 2, 3)) + one_hot.sum((0, 2, 3))
    dice = (2 * inter + smooth) / (card + smooth)
    predicted = torch.nn.functional.one_hot(logits.argmax(1)[valid], logits.shape[1]).sum(0) > 0
    present = (one_hot.sum((0, 2, 3)) > 0) | predicted
    return ((1 - dice) * present).sum() / present.sum()


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("channels_last", [False, True])
def test_dice_equals_the_one_hot_formula_in_value_and_gradient(seed, channels_last):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(3, 7, 9, 11, generator=g) * 3
    if channels_last:
        logits = logits.contiguous(memory_format=torch.channels_last)
    target = torch.randint(0, 5, (3, 9, 11), generator=g)  # classes 5, 6 only ever predicted
    target[torch.rand(3, 9, 11, generator=g) < 0.2] = labels.IGNORE_INDEX
    a, b = logits.clone().requires_grad_(), logits.clone().requires_grad_()
    got, want = DiceLoss()(a, target), _one_hot_dice(b, target)
    got.backward(), want.backward()
    assert got.item() == pytest.approx(want.item(), abs=1e-6)
    torch.testing.assert_close(a.grad, b.grad, atol=1e-7, rtol=1e-5)


def test_channel_argmax_equals_argmax_with_ties_to_the_first():
    from cityseg.losses import channel_argmax

    x = torch.randint(0, 3, (2, 6, 5, 4)).float()  # many ties
    assert torch.equal(channel_argmax(x), x.argmax(1))
    y = torch.randn(2, 19, 8, 8).contiguous(memory_format=torch.channels_last)
    assert torch.equal(channel_argmax(y), y.argmax(1))


def test_weighted_sum_refuses_a_term_without_log_probs():
    with pytest.raises(TypeError, match="loss term 'l1' \\(L1Loss\\) has no from_log_probs"):
        WeightedSum({"l1": (torch.nn.L1Loss(), 1.0)})
