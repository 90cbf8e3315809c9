"""Joint transforms: RandomScaleCrop against resize-then-crop (exact where the grids align,
statistically everywhere), image/mask alignment, ignore padding, jitter, the config factory."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from cityseg import labels
from cityseg.config import DataConfig
from cityseg.data.resample import resample_aa_on_grid
from cityseg.data.transforms import (
    FloatColorJitter,
    RandomScaleCrop,
    ResizeImage,
    build_transforms,
    crop_at,
    set_crop,
)
from cityseg.errors import CitysegError
from cityseg.imaging import IMAGENET_MEAN, IMAGENET_STD

H, W = 96, 160  # source frame (height, width)
CROP = (48, 64)
NEAREST_EXACT = v2.InterpolationMode.NEAREST_EXACT


def resize_then_crop(x: torch.Tensor, scaled: tuple[int, int], top: int, left: int, fill: int, mask: bool) -> torch.Tensor:
    """The slow reference: resize the whole frame, pad where the window leaves it, crop."""
    interp = NEAREST_EXACT if mask else v2.InterpolationMode.BILINEAR
    batch = x[None] if mask else x
    r = F.resize(batch, list(scaled), interpolation=interp, antialias=True)
    r = F.pad(r, [max(0, -left), max(0, -top), CROP[1], CROP[0]], fill=fill)
    r = r[..., max(top, 0) : max(top, 0) + CROP[0], max(left, 0) : max(left, 0) + CROP[1]]
    return r[0] if mask else r


@pytest.mark.parametrize(
    "scale, top, left",
    [
        (1.0, 5, 7),
        (0.5, 0, 16),  # downscale: whole source region, grid aligned at src_lo = 0
        (0.5, -3, -8),  # scaled frame smaller than the window on both axes: padding
        (2.0, 13, 40),  # upscale, interior window
        (2.0, 2 * H - CROP[0], 2 * W - CROP[1]),  # window at the bottom-right edge
    ],
)
def test_random_scale_crop_equals_resize_then_crop_on_aligned_grids(scale, top, left):
    # Where src_lo / step is an integer the crop-first resample uses exactly the full-frame grid,
    # so image (bilinear antialias) and both mask paths must match the reference bit for bit.
    gen = torch.Generator().manual_seed(1)
    image = torch.randint(0, 256, (3, H, W), dtype=torch.uint8, generator=gen)
    mask8 = torch.randint(0, 256, (H, W), dtype=torch.uint8, generator=gen)  # native nearest kernel
    mask64 = torch.arange(H * W).view(H, W)  # gather path
    t = RandomScaleCrop(CROP)
    scaled = (int(H * scale), int(W * scale))
    params = t.plan((H, W), scaled, top, left)
    out = t.transform(tv_tensors.Image(image), params)
    assert isinstance(out, tv_tensors.Image) and out.shape == (3, *CROP)
    assert torch.equal(out, resize_then_crop(image, scaled, top, left, 0, mask=False))
    for m in (mask8, mask64):
        got = t.transform(tv_tensors.Mask(m), params)
        assert isinstance(got, tv_tensors.Mask) and got.dtype == m.dtype
        assert torch.equal(got, resize_then_crop(m, scaled, top, left, labels.IGNORE_INDEX, mask=True))


def coordinate_frame() -> tuple[torch.Tensor, torch.Tensor]:
    """A float image whose channels hold each pixel's (x, y, 0) and a mask holding y * W + x."""
    ys, xs = torch.meshgrid(torch.arange(H, dtype=torch.float32), torch.arange(W, dtype=torch.float32), indexing="ij")
    image = torch.stack([xs, ys, torch.zeros_like(xs)])
    return image, (ys * W + xs).long()


@pytest.mark.parametrize("scale", [0.55, 0.83, 1.37, 1.91])
def test_mask_is_the_nearest_pixel_of_each_image_sample(scale):
    # Bilinear antialias of a linear ramp returns the sample centre, so the image tells where each
    # output pixel was sampled; the mask must hold the source pixel nearest to that centre, and
    # the centres must lie within half an output pixel of where resize-then-crop samples.
    image, mask = coordinate_frame()
    t = RandomScaleCrop(CROP)
    scaled = (int(H * scale), int(W * scale))
    for top, left in [(0, 0), (3, 11), (scaled[0] - CROP[0], scaled[1] - CROP[1])]:
        params = t.plan((H, W), scaled, top, left)
        out = t.transform(tv_tensors.Image(image), params)
        got = t.transform(tv_tensors.Mask(mask), params)
        cx, cy = out[0], out[1]
        mx, my = got % W, got // W
        step_x, step_y = W / scaled[1], H / scaled[0]
        # away from the frame border, where the kernel is clamped and the ramp bends
        inner = (cx > step_x + 1) & (cx < W - step_x - 2) & (cy > step_y + 1) & (cy < H - step_y - 2)
        assert inner.float().mean() > 0.3
        assert (mx - cx)[inner].abs().max() <= 0.5 + 0.02
        assert (my - cy)[inner].abs().max() <= 0.5 + 0.02
        ref = resize_then_crop(image, scaled, top, left, 0, mask=False)
        assert (cx - ref[0])[inner].abs().max() <= 0.5 * step_x + 0.02
        assert (cy - ref[1])[inner].abs().max() <= 0.5 * step_y + 0.02


def test_both_mask_paths_agree_off_grid():
    # uint8 masks use the nearest-exact kernel (F.interpolate), others a gather; same indices everywhere.
    t = RandomScaleCrop(CROP, scale_range=(0.5, 2.0))
    gen = torch.Generator().manual_seed(0)
    m8 = torch.randint(0, 256, (H, W), dtype=torch.uint8, generator=gen)
    torch.manual_seed(0)
    for _ in range(20):
        params = t.make_params([m8])
        a = t.transform(tv_tensors.Mask(m8), params)
        b = t.transform(tv_tensors.Mask(m8.long()), params)
        assert torch.equal(a.long(), b)


def test_both_mask_paths_agree_on_windows_ending_at_the_frame_edge():
    # There interpolate(scale_factor) makes one sample fewer than the window needs; the uint8 path
    # extends the mask by its last row/column first, which is what the clamped samples read.
    t = RandomScaleCrop(CROP, scale_range=(0.5, 2.0))
    m8 = torch.randint(0, 256, (H, W), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    for k in range(40):
        scaled = (max(1, int(H * (0.5 + 1.5 * k / 40))), max(1, int(W * (0.5 + 1.5 * k / 40))))
        params = t.plan((H, W), scaled, scaled[0] - CROP[0], scaled[1] - CROP[1])  # bottom-right window
        a = t.transform(tv_tensors.Mask(m8), params)
        b = t.transform(tv_tensors.Mask(m8.long()), params)
        assert torch.equal(a.long(), b), scaled


# The kernel called directly (a private op, which src/ no longer calls): the oracle for the public route.
AA_KERNEL = torch.ops.aten._upsample_bilinear2d_aa


def aa_cases(n: int, seed: int) -> list[tuple[tuple[int, int], tuple[int, int], tuple[float, float]]]:
    """``n`` random (region size, sample count, scales): scales 0.25-2.5, each axis asking for 0, 1 or 2
    samples more than ``interpolate(scale_factor)`` makes, all three counts on both axes."""
    rng = np.random.default_rng(seed)
    cases = []
    while len(cases) < n:
        h, w = (int(v) for v in rng.integers(2, 48, size=2))
        scales = (float(rng.uniform(0.25, 2.5)), float(rng.uniform(0.25, 2.5)))
        extra = len(cases) % 3, len(cases) // 3 % 3
        size = (max(1, int(h * scales[0]) + extra[0]), int(w * scales[1]) + extra[1])
        # Windows the kernel can fill: every sample with a tap inside the region (the pipeline's
        # always have one), at least two wide (the CPU kernel mis-resamples one-pixel-wide columns,
        # so the oracle itself is wrong there). A sample with taps resamples ones to 1 (the weights
        # are normalised); one without is outside both kernels' contract, and what they give there
        # depends on torch's state: 0 normally, NaN under deterministic algorithms (which fill
        # uninitialised memory with NaN). Testing "== 0" let such a case in whenever a module
        # before this one had left deterministic algorithms on, and the comparison failed on NaN.
        if size[1] < 2:
            continue
        ones = AA_KERNEL(torch.ones(1, 1, h, w), list(size), False, *scales)
        if not torch.allclose(ones, torch.ones_like(ones), rtol=0, atol=1e-4):
            continue
        cases.append(((h, w), size, scales))
    return cases


def plan_cases() -> list[tuple[tuple[int, int], tuple[int, int], tuple[float, float]]]:
    """The regions RandomScaleCrop resamples for windows at the bottom-right edge, scales 0.5-2,
    plus the axes the kernel copies: as many samples as pixels, and scales just above 1."""
    t, cases = RandomScaleCrop(CROP), []
    for k in range(30):
        scaled = (int(H * (0.5 + 1.5 * k / 30)), int(W * (0.5 + 1.5 * k / 30)))
        p = t.plan((H, W), scaled, scaled[0] - CROP[0], scaled[1] - CROP[1])
        rows, cols = p["rows"], p["cols"]
        region = (rows.src_hi - rows.src_lo, cols.src_hi - cols.src_lo)
        cases.append((region, (rows.resample_len, cols.resample_len), (rows.scale, cols.scale)))
    copied = [
        ((34, 40), (34, 40), (0.9985, 0.97)),  # both axes keep their length: the kernel copies them
        ((40, 300), (36, 298), (0.93, 1.002)),  # interpolate would copy the columns: padded further
        ((40, 50), (38, 51), (0.97, 1.01)),  # the same, and one column short
    ]
    return cases + copied


def test_resample_aa_on_grid_equals_the_kernel_on_float_images():
    gen = torch.Generator().manual_seed(0)
    for region, size, scales in aa_cases(300, seed=0) + plan_cases():
        x = torch.rand(2, 3, *region, generator=gen) * 255
        got = resample_aa_on_grid(x, size, scales)
        want = AA_KERNEL(x, list(size), False, *scales)
        bound = resample_rounding(x, scales)
        # the state that could matter, in the message: this test once failed only inside a full run
        state = (f"threads {torch.get_num_threads()}, deterministic {torch.are_deterministic_algorithms_enabled()}, "
                 f"cpu autocast {torch.is_autocast_enabled('cpu')}, grad {torch.is_grad_enabled()}")
        torch.testing.assert_close(got, want, rtol=0, atol=bound, msg=lambda m: (
            f"{region} -> {size} at {scales}: largest difference {float((got - want).abs().max()):.3g}, "
            f"bound {bound:.3g}; {state}\n{m}"))


def resample_rounding(x: torch.Tensor, scales: tuple[float, float]) -> float:
    """How far float rounding alone can take two evaluations of the same antialiased resample of ``x``
    apart, whatever order they sum in (CPU, SIMD width, alignment, threads): a bound, not a measurement.

    The bilinear antialias kernel at scale s has ``2 * ceil(max(1, 1/s)) + 1`` taps at most per axis
    (support ``max(1, 1/s)`` on each side); call the sum over both axes n and M = max |x|. Each
    kernel makes a sample in two passes of weighted sums with non-negative weights normalised to 1,
    and such a sum of k taps is within (2k + 3) u M of exact (k products, k - 1 additions, about
    three roundings in normalising the weights; u = eps / 2, Higham's gamma bound): (n + 3) eps M
    for both passes. resample_aa_on_grid also divides by the in-image share, itself such a resample
    of ones plus a product and a division: (n + 4) eps M more. So the two kernels differ by at most
    (3n + 10) eps M (8e-4 to 2e-3 at M = 255 over these cases): the largest difference seen is
    4 ulps of 255 (6.1e-5, 6% of its bound) and a 1e-4 bound chosen from that once failed on another
    CPU, while a wrong tap or weight moves a sample of these random images by whole units.
    """
    taps = sum(2 * math.ceil(max(1.0, 1.0 / s)) + 1 for s in scales)
    return (3 * taps + 10) * torch.finfo(x.dtype).eps * float(x.abs().max())


def test_resample_aa_on_grid_on_uint8_is_the_uint8_kernel_up_to_its_rounding():
    # Where interpolate(scale_factor) makes the samples by itself it is the same kernel, byte for
    # byte. Where the region is padded, the fixed-point kernel (two roundings, precision set by its
    # largest weight) is not reproduced, but both stay within 1 of the exact (float) resample.
    gen = torch.Generator().manual_seed(0)
    for region, size, scales in aa_cases(150, seed=1) + plan_cases():
        x = torch.randint(0, 256, (1, 3, *region), dtype=torch.uint8, generator=gen)
        got = resample_aa_on_grid(x, size, scales)
        want = AA_KERNEL(x, list(size), False, *scales)
        exact = AA_KERNEL(x.float(), list(size), False, *scales)
        assert got.dtype == torch.uint8 and got.shape == want.shape
        if all(n == length or n <= int(length * s) != length for n, length, s in zip(size, region, scales)):
            assert torch.equal(got, want), (region, size, scales)
        assert (got.float() - exact).abs().max() <= 1.05, (region, size, scales)
        assert (got.int() - want.int()).abs().max() <= 2, (region, size, scales)


def ks_statistic(a: np.ndarray, b: np.ndarray) -> float:
    """Two-sample Kolmogorov-Smirnov statistic: the largest gap between the empirical CDFs."""
    grid = np.concatenate([a, b])
    cdf_a = np.searchsorted(np.sort(a), grid, side="right") / len(a)
    cdf_b = np.searchsorted(np.sort(b), grid, side="right") / len(b)
    return float(np.abs(cdf_a - cdf_b).max())


def crop_geometry(transform, n: int, seed: int) -> np.ndarray:
    """(n, 3) scale, left and top of each crop, recovered from a coordinate mask."""
    torch.manual_seed(seed)
    _, mask = coordinate_frame()
    out = []
    for _ in range(n):
        m = transform(tv_tensors.Mask(mask))
        x0, x1 = int(m[0, 0] % W), int(m[0, -1] % W)
        out.append(((CROP[1] - 1) / max(x1 - x0, 1), x0, int(m[0, 0] // W)))
    return np.asarray(out, dtype=np.float64)


def test_crop_distribution_matches_v2_resize_then_crop():
    # v2's own chain (full-frame ScaleJitter + RandomCrop) against ours, with a scale range where
    # no padding occurs (the two differ there by design). Two-sample KS on scale, left and top.
    scales = (0.5, 2.0)
    reference = v2.Compose([v2.ScaleJitter(target_size=(W, H), scale_range=scales), v2.RandomCrop(CROP)])
    ours = RandomScaleCrop(CROP, scale_range=scales)
    n = 200
    a, b = crop_geometry(ours, n, seed=0), crop_geometry(reference, n, seed=1)
    critical = 1.63 * np.sqrt(2 / n)  # alpha = 0.01
    for k in range(3):
        assert ks_statistic(a[:, k], b[:, k]) < critical
    # the test has power: a pipeline whose scales stop at 1.5 is told apart
    narrow = crop_geometry(RandomScaleCrop(CROP, scale_range=(0.5, 1.5)), n, seed=2)
    assert ks_statistic(a[:, 0], narrow[:, 0]) > critical


def test_small_frame_is_padded_with_ignore_and_kept_whole():
    image = torch.full((3, 20, 30), 200, dtype=torch.uint8)
    mask = torch.ones(20, 30, dtype=torch.uint8)
    t = RandomScaleCrop((32, 48), scale_range=(1.0, 1.0))
    torch.manual_seed(0)
    tops, lefts = set(), set()
    for _ in range(100):
        out = t({"image": tv_tensors.Image(image), "mask": tv_tensors.Mask(mask)})
        img, m = out["image"], out["mask"]
        assert m.shape == (32, 48) and img.shape == (3, 32, 48)
        assert int((m == 1).sum()) == 20 * 30  # the whole frame is inside the window
        assert set(m.unique().tolist()) == {1, labels.IGNORE_INDEX}
        assert torch.equal(img[0] == 200, m == 1) and int(img[:, m == labels.IGNORE_INDEX].max()) == 0
        ys, xs = torch.nonzero(m == 1, as_tuple=True)
        tops.add(int(ys.min()))
        lefts.add(int(xs.min()))
    # placement is random over the whole slack, both extremes included
    assert tops == set(range(32 - 20 + 1)) and {0, 48 - 30} <= lefts


def test_scale_crop_is_deterministic_under_a_seed():
    image, mask = coordinate_frame()
    t = RandomScaleCrop(CROP)
    runs = []
    for seed in (3, 3, 4):
        torch.manual_seed(seed)
        runs.append(t({"image": tv_tensors.Image(image), "mask": tv_tensors.Mask(mask)}))
    assert torch.equal(runs[0]["image"], runs[1]["image"]) and torch.equal(runs[0]["mask"], runs[1]["mask"])
    assert not torch.equal(runs[0]["mask"], runs[2]["mask"])


def test_float_color_jitter_equals_v2_color_jitter():
    image = tv_tensors.Image(torch.randint(0, 256, (3, 24, 32), dtype=torch.uint8))
    reference = v2.Compose([v2.ToDtype(torch.float32, scale=True), v2.ColorJitter(0.4, 0.4, 0.4)])
    ours = FloatColorJitter(0.4, 0.4, 0.4)
    for seed in range(5):  # several random orders of the three adjustments
        torch.manual_seed(seed)
        want = reference(image)
        torch.manual_seed(seed)
        got = ours(image)
        assert isinstance(got, tv_tensors.Image) and got.dtype == torch.float32
        torch.testing.assert_close(got, want, rtol=0, atol=1e-6)
    as_float = F.to_dtype(image, torch.float32, scale=True)
    before = as_float.clone()
    ours(as_float)
    assert torch.equal(as_float, before)  # float input is never modified in place


def synthetic_item(h: int = 64, w: int = 128) -> dict:
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, labels.NUM_CLASSES, (h, w), dtype=torch.uint8, generator=gen)
    ids[:, :5] = labels.IGNORE_INDEX
    image = torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=gen)
    return {"image": tv_tensors.Image(image), "mask": tv_tensors.Mask(ids), "name": "frame"}


def test_train_transform_output_and_determinism():
    cfg = DataConfig(crop_size="48x32", scale_range=[0.5, 2.0], hflip=True, color_jitter=0.2)
    t = build_transforms(cfg, train=True)
    item = synthetic_item()
    torch.manual_seed(0)
    a = t(dict(item))
    torch.manual_seed(0)
    b = t(dict(item))
    assert a["image"].shape == (3, 32, 48) and a["image"].dtype == torch.float32
    assert a["mask"].shape == (32, 48) and a["mask"].dtype == torch.int64
    assert a["name"] == "frame"
    assert torch.equal(a["image"], b["image"]) and torch.equal(a["mask"], b["mask"])
    assert set(a["mask"].unique().tolist()) <= set(range(labels.NUM_CLASSES)) | {labels.IGNORE_INDEX}
    # normalised: a mid-grey 0.5 becomes (0.5 - mean) / std; values stay in the normalised [0, 1] range
    lo = (0 - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD)
    hi = (1 - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD)
    per_channel = a["image"].flatten(1)
    assert (per_channel.min(1).values >= lo - 1e-5).all() and (per_channel.max(1).values <= hi + 1e-5).all()


def test_val_transform_resizes_the_image_only():
    item = synthetic_item()
    t = build_transforms(DataConfig(val_size="64x32"), train=False)
    out = t(dict(item))
    assert out["image"].shape == (3, 32, 64) and out["image"].dtype == torch.float32
    assert out["mask"].shape == (64, 128) and torch.equal(out["mask"], item["mask"].long())
    full = build_transforms(DataConfig(val_size=None), train=False)(dict(item))
    expected = F.normalize(item["image"].float() / 255, IMAGENET_MEAN, IMAGENET_STD)
    torch.testing.assert_close(full["image"].as_subclass(torch.Tensor), expected.as_subclass(torch.Tensor))
    assert torch.equal(ResizeImage((10, 20))(item["mask"]), item["mask"])


@pytest.mark.parametrize(
    "field, value, key",
    [
        ("scale_range", [2.0, 0.5], "data.scale_range"),
        ("scale_range", [0.5], "data.scale_range"),
        ("color_jitter", -0.1, "data.color_jitter"),
    ],
)
def test_bad_config_values_name_the_key(field, value, key):
    cfg = DataConfig(**{field: value})
    with pytest.raises(CitysegError, match=key):
        build_transforms(cfg, train=True)


@pytest.mark.parametrize(("field", "value", "key"), [("crop_size", "512", "data.crop_size: '512' is not a size"),
                                                      ("crop_stages", ["32x16", "big"], "data.crop_stages: 'big'")])
def test_bad_sizes_are_refused_when_the_config_is_built(field, value, key):
    with pytest.raises(CitysegError, match=key):
        DataConfig(**{field: value})


def test_crop_stages_share_the_run_equally_and_end_on_crop_size():
    cfg = DataConfig(crop_size="96x48", crop_stages=["32x16", "64x32"])
    fractions = [0.0, 0.33, 0.34, 0.66, 0.67, 0.99, 1.0, 1.5]
    assert [crop_at(cfg, f) for f in fractions] == [(16, 32)] * 2 + [(32, 64)] * 2 + [(48, 96)] * 4
    assert {crop_at(DataConfig(crop_size="96x48"), f) for f in fractions} == {(48, 96)}


def test_set_crop_changes_what_the_training_transform_crops():
    cfg = DataConfig(crop_size="64x32", crop_stages=["32x16"], scale_range=[1.0, 1.0])
    t = build_transforms(cfg, train=True)
    item = synthetic_item()
    assert t(dict(item))["mask"].shape == (16, 32)  # the first stage
    assert set_crop(t, crop_at(cfg, 0.5)) and not set_crop(t, (32, 64))
    out = t(dict(item))
    assert out["image"].shape == (3, 32, 64) and out["mask"].shape == (32, 64)
