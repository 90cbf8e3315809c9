"""The fast greyscale PNG decoder (cityseg.data.png) against Pillow, the official tools' decoder."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cityseg.data import png

FILTERS = (0, 1, 2, 3, 4)  # None, Sub, Up, Average, Paeth


# --- a PNG writer that picks each row's filter type (Pillow picks them itself) ------------------


def _paeth(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
    a, b, c = (v.astype(np.int32) for v in (a, b, c))
    pa, pb, pc = np.abs(b - c), np.abs(a - c), np.abs(a + b - 2 * c)
    return np.where((pa <= pb) & (pa <= pc), a, np.where(pb <= pc, b, c))


def filter_rows(samples: np.ndarray, filters: list[int]) -> bytes:
    """PNG scanlines of (H, W) uint8 or big-endian uint16 samples, row y filtered with filters[y]."""
    data = samples.astype(">u2" if samples.dtype.itemsize == 2 else np.uint8)
    rows = data.view(np.uint8).reshape(samples.shape[0], -1).astype(np.int32)
    bpp = samples.dtype.itemsize
    out = []
    for y, kind in enumerate(filters):
        cur = rows[y]
        up = rows[y - 1] if y else np.zeros_like(cur)
        left = np.concatenate([np.zeros(bpp, np.int32), cur[:-bpp]])
        upleft = np.concatenate([np.zeros(bpp, np.int32), up[:-bpp]])
        predictor = [0, left, up, (left + up) // 2, _paeth(left, up, upleft)][kind]
        out.append(bytes([kind]) + ((cur - predictor) % 256).astype(np.uint8).tobytes())
    return b"".join(out)


def chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def write_png(samples: np.ndarray, filters: list[int], *, idat_parts: int = 1, interlace: int = 0,
              colour: int = 0, depth: int | None = None, extra: bytes = b"") -> bytes:
    h, w = samples.shape
    depth = depth or 8 * samples.dtype.itemsize
    stream = zlib.compress(filter_rows(samples, filters), 9)
    step = -(-len(stream) // idat_parts)
    idats = b"".join(chunk(b"IDAT", stream[i : i + step]) for i in range(0, len(stream), step))
    ihdr = chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, depth, colour, 0, 0, interlace))
    return png.SIGNATURE + ihdr + extra + idats + chunk(b"IEND", b"")


def label_like(h: int, w: int, dtype: type, rng: np.random.Generator) -> np.ndarray:
    """Blocks of one value with ragged edges and a sprinkle of single odd pixels."""
    top = 34 if dtype == np.uint8 else 34_000
    cells = rng.integers(0, top, size=(h // 5 + 1, w // 7 + 1))
    out = np.kron(cells, np.ones((5, 7), np.int64))[:h, :w]
    out = np.where(rng.random((h, w)) < 0.02, rng.integers(0, top, size=(h, w)), out)
    shift = rng.integers(0, 3, size=h)
    out = np.stack([np.roll(row, s) for row, s in zip(out, shift)])
    return out.astype(dtype)


def pillow(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as img:
        return np.asarray(img)


# --- tests ----------------------------------------------------------------------------------


def test_the_fast_path_is_built():
    # setup.py builds the extension; without it everything still works, only slower
    assert png.available(), "cityseg.data._unfilter is not built: reinstall with a C compiler (pip install -e .)"


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
@pytest.mark.parametrize("kind", [*FILTERS, "mixed"])
def test_every_filter_type_decodes_as_pillow_does(dtype, kind):
    rng = np.random.default_rng(7)
    for h, w in [(1, 1), (3, 2), (9, 7), (17, 8), (16, 9), (33, 64), (20, 101)]:
        samples = label_like(h, w, dtype, rng)
        filters = list(rng.integers(0, 5, size=h)) if kind == "mixed" else [kind] * h
        data = write_png(samples, filters)
        expected = pillow(data)
        np.testing.assert_array_equal(expected, samples)  # the writer above is right
        got = png.decode_grey(data)
        assert got is not None and got.dtype == dtype and got.shape == (h, w)
        np.testing.assert_array_equal(got, samples, err_msg=f"{h}x{w}")


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_noise_and_flat_images_with_every_filter(dtype):
    # noise defeats every fast path; a flat image takes only fast paths
    rng = np.random.default_rng(3)
    top = np.iinfo(dtype).max + 1
    for samples in (rng.integers(0, top, size=(40, 75)).astype(dtype), np.full((40, 75), 200, dtype),
                    np.tile(rng.integers(0, top, size=(1, 75)), (40, 1)).astype(dtype),
                    np.tile(rng.integers(0, top, size=(40, 1)), (1, 75)).astype(dtype)):
        for kind in FILTERS:
            got = png.decode_grey(write_png(samples, [kind] * 40))
            np.testing.assert_array_equal(got, samples, err_msg=f"filter {kind}")


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])  # Pillow modes "L" and "I;16"
@pytest.mark.parametrize("level", [0, 1, 6, 9])
def test_files_written_by_pillow(tmp_path, dtype, level):
    samples = label_like(64, 130, dtype, np.random.default_rng(level))
    path = tmp_path / "map.png"
    Image.fromarray(samples).save(path, compress_level=level)
    data = path.read_bytes()
    np.testing.assert_array_equal(png.decode_grey(data), pillow(data))


def test_split_idat_chunks():
    samples = label_like(50, 60, np.uint8, np.random.default_rng(1))
    data = write_png(samples, [4] * 50, idat_parts=5)
    np.testing.assert_array_equal(png.decode_grey(data), samples)


def test_files_with_ancillary_chunks_are_left_to_pillow():
    """Pillow validates some ancillary chunks and refuses malformed ones; the fast path checks
    none, so it takes no file that has one (label maps carry none)."""
    samples = label_like(50, 60, np.uint8, np.random.default_rng(1))
    extra = chunk(b"gAMA", struct.pack(">I", 45455)) + chunk(b"tEXt", b"Comment\x00label ids")
    data = write_png(samples, [4] * 50, idat_parts=5, extra=extra)
    assert png.decode_grey(data) is None
    np.testing.assert_array_equal(pillow(data), samples)


def test_real_label_maps_decode_as_pillow_does(fixtures_dir):
    maps = sorted(fixtures_dir.glob("cityscapes/gtFine/*/*/*_gtFine_*Ids.png"))
    maps += sorted(fixtures_dir.glob("kitti/semantic/*.png")) + sorted(fixtures_dir.glob("kitti/instance/*.png"))
    assert maps
    for path in maps:
        data = path.read_bytes()
        got = png.decode_grey(data)
        assert got is not None, path
        np.testing.assert_array_equal(got, pillow(data), err_msg=str(path))


def _corrupt(data: bytes, offset: int, value: int) -> bytes:
    return data[:offset] + bytes([value]) + data[offset + 1 :]


@pytest.mark.parametrize("case", ["rgb", "grey-alpha", "palette", "4-bit", "interlaced", "bad IHDR crc",
                                  "bad IDAT crc", "truncated", "no IEND", "filter type 5", "too few rows",
                                  "not a png", "zero width"])
def test_anything_else_is_left_to_the_general_decoder(case, tmp_path):
    samples = label_like(12, 10, np.uint8, np.random.default_rng(0))
    good = write_png(samples, [1] * 12)
    if case in ("rgb", "grey-alpha", "palette", "4-bit"):
        mode = {"rgb": "RGB", "grey-alpha": "LA", "palette": "P", "4-bit": "P"}[case]
        img = Image.fromarray(samples).convert(mode)
        buf = io.BytesIO()
        img.save(buf, format="PNG", bits=4 if case == "4-bit" else 8)
        data = buf.getvalue()
    elif case == "interlaced":
        data = write_png(samples, [0] * 12, interlace=1)
    elif case == "bad IHDR crc":
        data = _corrupt(good, 29, good[29] ^ 1)
    elif case == "bad IDAT crc":
        data = _corrupt(good, len(good) - 13, good[len(good) - 13] ^ 1)
    elif case == "truncated":
        data = good[: len(good) - 20]
    elif case == "no IEND":
        data = good[:-12]
    elif case == "filter type 5":
        stream = zlib.compress(b"".join(bytes([5]) + bytes(10) for _ in range(12)))
        ihdr = chunk(b"IHDR", struct.pack(">IIBBBBB", 10, 12, 8, 0, 0, 0, 0))
        data = png.SIGNATURE + ihdr + chunk(b"IDAT", stream) + chunk(b"IEND", b"")
    elif case == "too few rows":
        ihdr = chunk(b"IHDR", struct.pack(">IIBBBBB", 10, 13, 8, 0, 0, 0, 0))
        data = good[:8] + ihdr + good[33:]
    elif case == "not a png":
        data = b"GIF89a" + bytes(40)
    else:
        ihdr = chunk(b"IHDR", struct.pack(">IIBBBBB", 0, 12, 8, 0, 0, 0, 0))
        data = good[:8] + ihdr + good[33:]
    assert png.decode_grey(data) is None


def test_random_damage_never_crashes_and_never_decodes_wrongly():
    rng = np.random.default_rng(11)
    samples = label_like(30, 40, np.uint16, rng)
    good = write_png(samples, list(rng.integers(0, 5, size=30)))
    for _ in range(300):
        data = bytearray(good)
        for offset in rng.integers(8, len(data), size=int(rng.integers(1, 4))):
            data[offset] = int(rng.integers(0, 256))
        got = png.decode_grey(bytes(data))
        # a CRC-32 per chunk and the stream's Adler-32: damage is caught, not decoded into wrong ids
        if got is not None:
            np.testing.assert_array_equal(got, samples)


def test_unfilter_checks_its_arguments():
    from cityseg.data._unfilter import unfilter

    for raw, out, args in [
        (bytes(9), bytearray(8), (2, 4, 1, False)),  # one filtered byte short
        (bytes(10), bytearray(9), (2, 4, 1, False)),  # output one byte long
        (b"", bytearray(), (2**63 - 1, 2**63 - 1, 1, False)),  # sizes that overflow
        (bytes(4), bytearray(), (4, 2**62, 1, False)),
        (bytes(8), bytearray(), (2**32, 2**32 - 1, 1, False)),
    ]:
        with pytest.raises(ValueError, match="filtered bytes|overflows"):
            unfilter(raw, out, *args)
    for args in [(-1, 4, 1, False), (2, 0, 1, False), (2, 4, 0, False), (2, 4, 9, False), (2, 4, 3, False),
                 (2, 4, 1, True), (2, 8, 4, True)]:
        with pytest.raises(ValueError, match="bpp"):
            unfilter(bytes(10), bytearray(8), *args)
    with pytest.raises(ValueError, match="filter type 9"):
        unfilter(bytes([0, 1, 2, 3, 4, 9, 0, 0, 0, 0]), bytearray(8), 2, 4, 1, False)
    with pytest.raises(TypeError):
        unfilter(bytes(10), bytes(8), 2, 4, 1, False)  # read-only output
    shared = bytearray(18)
    with pytest.raises(ValueError, match="overlap"):
        unfilter(memoryview(shared)[:10], memoryview(shared)[8:16], 2, 4, 1, False)
    unfilter(b"", bytearray(), 0, 4, 1, False)  # no rows: nothing to do


def _reference_unfilter(raw: bytes, height: int, row_bytes: int, bpp: int) -> bytes:
    """PNG spec section 9, byte by byte (slow): the oracle of the C code."""
    out, prev = bytearray(), bytearray(row_bytes)
    for y in range(height):
        kind, cur = raw[y * (row_bytes + 1)], raw[y * (row_bytes + 1) + 1 : (y + 1) * (row_bytes + 1)]
        row = bytearray(row_bytes)
        for x in range(row_bytes):
            a = row[x - bpp] if x >= bpp else 0
            b, c = prev[x], prev[x - bpp] if x >= bpp else 0
            p = a + b - c
            pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
            paeth = a if pa <= pb and pa <= pc else b if pb <= pc else c
            row[x] = (cur[x] + (0, a, b, (a + b) // 2, paeth)[kind]) & 255
        out += row
        prev = row
    return bytes(out)


def test_unfilter_follows_the_spec_on_random_streams():
    """Filtered bytes drawn at random (mostly zero, or from sets that make Paeth ties and
    wrap-around common) reconstruct exactly as the spec says, in both byte orders."""
    from cityseg.data._unfilter import unfilter

    rng = np.random.default_rng(2024)
    alphabets = [np.arange(256), np.array([0, 1, 255]), np.array([0, 127, 128, 129, 255])]
    for it in range(400):
        bpp = 1 + it % 2
        width, height = int(rng.integers(1, 40)), int(rng.integers(1, 8))
        row_bytes = width * bpp
        rows = []
        for _ in range(height):
            residuals = rng.choice(alphabets[it % 3], size=row_bytes).astype(np.uint8)
            residuals[rng.random(row_bytes) < rng.choice([0.0, 0.5, 0.9, 1.0])] = 0
            rows.append(bytes([int(rng.integers(0, 5))]) + residuals.tobytes())
        raw = b"".join(rows)
        expected = _reference_unfilter(raw, height, row_bytes, bpp)
        out = bytearray(height * row_bytes)
        unfilter(raw, out, height, row_bytes, bpp, False)
        assert bytes(out) == expected, (bpp, width, height, raw.hex())
        if bpp == 2:
            unfilter(raw, out, height, row_bytes, bpp, True)
            assert bytes(out) == np.frombuffer(expected, ">u2").astype("<u2").tobytes()


def test_damaged_scanlines_decode_as_pillow_does_or_not_at_all():
    """Damage inside the filtered data (valid checksums around it): either the same values as
    Pillow (a residual changed: still a valid file) or None (a filter type outside 0-4)."""
    rng = np.random.default_rng(5)
    for it in range(60):
        dtype = (np.uint8, np.uint16)[it % 2]
        samples = label_like(24, 33, dtype, rng)
        raw = bytearray(filter_rows(samples, list(rng.integers(0, 5, size=24))))
        for offset in rng.integers(0, len(raw), size=int(rng.integers(1, 6))):
            raw[offset] = int(rng.integers(0, 256))
        ihdr = chunk(b"IHDR", struct.pack(">IIBBBBB", 33, 24, 8 * samples.dtype.itemsize, 0, 0, 0, 0))
        data = png.SIGNATURE + ihdr + chunk(b"IDAT", zlib.compress(bytes(raw))) + chunk(b"IEND", b"")
        got = png.decode_grey(data)
        row_bytes = 33 * samples.dtype.itemsize
        if any(raw[y * (row_bytes + 1)] > 4 for y in range(24)):
            assert got is None
            with pytest.raises(Exception):
                pillow(data)
        else:
            np.testing.assert_array_equal(got, pillow(data))


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_trns_and_sbit_files_are_left_to_pillow_which_keeps_the_samples(dtype):
    samples = label_like(16, 20, dtype, np.random.default_rng(4))
    bits = 8 * samples.dtype.itemsize
    extra = chunk(b"sBIT", bytes([bits - 2])) + chunk(b"tRNS", struct.pack(">H", int(samples[0, 0])))
    data = write_png(samples, [4] * 16, extra=extra)
    assert png.decode_grey(data) is None
    np.testing.assert_array_equal(pillow(data), samples)


def test_files_pillow_would_read_differently_or_refuse_are_left_to_it():
    samples = label_like(12, 10, np.uint8, np.random.default_rng(0))
    stream = zlib.compress(filter_rows(samples, [0] * 12))
    ihdr = chunk(b"IHDR", struct.pack(">IIBBBBB", 10, 12, 8, 0, 0, 0, 0))
    end = chunk(b"IEND", b"")
    # a second IHDR (Pillow applies the last one: 5 pixels of 16 bits need the same bytes)
    second = chunk(b"IHDR", struct.pack(">IIBBBBB", 5, 12, 16, 0, 0, 0, 0))
    # IDAT chunks that are not consecutive (Pillow: "image file is truncated")
    half = len(stream) // 2
    split = chunk(b"IDAT", stream[:half]) + chunk(b"tEXt", b"a\x00b") + chunk(b"IDAT", stream[half:])
    # a bad CRC on an ancillary chunk before the image data (Pillow refuses the file)
    gama = chunk(b"gAMA", struct.pack(">I", 45455))
    gama = gama[:-1] + bytes([gama[-1] ^ 1])
    for data in (png.SIGNATURE + ihdr + second + chunk(b"IDAT", stream) + end,
                 png.SIGNATURE + ihdr + split + end,
                 png.SIGNATURE + ihdr + gama + chunk(b"IDAT", stream) + end):
        assert png.decode_grey(data) is None
    assert png.decode_grey(png.SIGNATURE + ihdr + chunk(b"IDAT", stream) + end) is not None


def test_images_over_pillows_pixel_limit_are_left_to_it():
    side = int(png.MAX_PIXELS**0.5) + 1
    ihdr = chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0))
    data = png.SIGNATURE + ihdr + chunk(b"IDAT", zlib.compress(bytes(side + 1))) + chunk(b"IEND", b"")
    assert png.decode_grey(data) is None  # returns at once: nothing of side * side bytes is allocated


def test_evaluate_reads_with_the_fast_path_and_falls_back_to_pillow(tmp_path):
    from cityseg.metrics.pred_dir import read_id_map

    samples = label_like(20, 30, np.uint8, np.random.default_rng(5))
    fast = tmp_path / "fast.png"
    fast.write_bytes(write_png(samples, [4] * 20))
    palette = tmp_path / "palette.png"
    Image.fromarray(samples).convert("P").save(palette)  # not plain greyscale: Pillow decodes it
    for path in (fast, palette):
        np.testing.assert_array_equal(read_id_map(Path(path), 33, "label id"), samples)


def test_without_the_extension_evaluate_decodes_the_same(tmp_path, monkeypatch):
    """Where setup.py could not compile _unfilter.c, pyspng (then Pillow) reads the same values."""
    from cityseg.metrics.pred_dir import read_id_map

    rng = np.random.default_rng(9)
    paths = []
    for dtype in (np.uint8, np.uint16):
        samples = label_like(40, 50, dtype, rng)
        paths.append((tmp_path / f"{np.dtype(dtype).name}.png", samples))
        paths[-1][0].write_bytes(write_png(samples, list(rng.integers(0, 5, size=40))))
    fast = [read_id_map(p, None, "id") for p, _ in paths]
    monkeypatch.setattr(png, "_unfilter", None)
    assert not png.available()
    for (path, samples), got in zip(paths, fast):
        slow = read_id_map(path, None, "id")
        np.testing.assert_array_equal(got, samples)
        np.testing.assert_array_equal(slow, samples)
        assert slow.dtype == got.dtype and slow.flags.c_contiguous


# --- differential fuzzing against Pillow ------------------------------------------------------

ANCILLARY = (b"gAMA", b"tRNS", b"iCCP", b"sBIT", b"tEXt", b"zTXt", b"iTXt", b"pHYs", b"cHRM", b"sRGB",
             b"bKGD", b"tIME", b"eXIf", b"acTL", b"fcTL", b"PLTE", b"vpAg")


def mutant(rng: np.random.Generator, good: list[tuple[bytes, bytes]]) -> bytes:
    """A PNG built from ``good``'s chunks, then damaged: chunks inserted (random payloads with a
    valid CRC: what per-chunk CRCs cannot catch), dropped, duplicated or reordered, and bytes flipped."""
    chunks = list(good)
    for _ in range(int(rng.integers(0, 4))):
        kind = ANCILLARY[int(rng.integers(len(ANCILLARY)))]
        payload = rng.integers(0, 256, size=int(rng.integers(0, 40)), dtype=np.uint8).tobytes()
        chunks.insert(int(rng.integers(1, len(chunks))), (kind, payload))
    action = int(rng.integers(4))
    if action == 1 and len(chunks) > 2:
        del chunks[int(rng.integers(1, len(chunks)))]
    elif action == 2:
        i = int(rng.integers(len(chunks)))
        chunks.insert(i, chunks[i])
    elif action == 3 and len(chunks) > 3:
        i, j = rng.integers(1, len(chunks), size=2)
        chunks[i], chunks[j] = chunks[j], chunks[i]
    data = bytearray(png.SIGNATURE + b"".join(chunk(k, p) for k, p in chunks))
    for offset in rng.integers(8, len(data), size=int(rng.integers(0, 3))):
        data[offset] = int(rng.integers(0, 256))
    return bytes(data)


def pillow_or_none(data: bytes) -> np.ndarray | None:
    try:
        return pillow(data)
    except Exception:  # noqa: BLE001 - any refusal by Pillow counts as a refusal
        return None


def fuzz(seed: int, cases: int) -> None:
    """Whatever the fast decoder returns, Pillow reads the same file to the same samples."""
    rng = np.random.default_rng(seed)
    accepted = 0
    for case in range(cases):
        dtype = np.uint8 if case % 2 else np.uint16
        samples = label_like(int(rng.integers(1, 24)), int(rng.integers(1, 24)), dtype, rng)
        h, w = samples.shape
        stream = zlib.compress(filter_rows(samples, list(rng.integers(0, 5, size=h))))
        cut = int(rng.integers(0, len(stream) + 1))
        good = [(b"IHDR", struct.pack(">IIBBBBB", w, h, 8 * samples.dtype.itemsize, 0, 0, 0, 0)),
                (b"IDAT", stream[:cut]), (b"IDAT", stream[cut:]), (b"IEND", b"")]
        data = mutant(rng, good)
        got = png.decode_grey(data)
        if got is not None:
            accepted += 1
            reference = pillow_or_none(data)
            assert reference is not None, f"seed {seed} case {case}: accepted a file Pillow refuses"
            np.testing.assert_array_equal(got, reference, err_msg=f"seed {seed} case {case}")
    assert accepted >= cases // 40  # enough files survive the mutations intact to compare (~5%)


def test_differential_fuzz_against_pillow():
    fuzz(seed=2026, cases=400)


@pytest.mark.long
def test_differential_fuzz_against_pillow_at_length():
    for seed in range(10):
        fuzz(seed=seed, cases=4000)
