"""cityseg prepare: official layout from cityscapes and pairs sources, resume, links, every bad input."""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cityseg import labels
from cityseg.cli import main
from cityseg.data import colour

ID = {name: lb.id for name, lb in labels.LABEL_BY_NAME.items()}
W, H = 48, 24


def _png(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


def _read(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path))


def _label_ids(seed: int) -> np.ndarray:
    """(H, W) uint8 labelIds: road below, building/sky above, a car, a parking patch, void corner."""
    ids = np.full((H, W), ID["road"], np.uint8)
    ids[: H // 2] = ID["building"]
    ids[: H // 4, W // 2:] = ID["sky"]
    ids[14:20, 4 + seed: 16 + seed] = ID["car"]
    ids[16:22, 30:40] = ID["parking"]
    ids[-3:, -5:] = ID["ego vehicle"]
    return ids


def _photo(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (H, W, 3), np.uint8)


def _cityscapes_source(root: Path) -> dict[str, np.ndarray]:
    """SRC with one frame per label kind: labelIds, labelTrainIds only, colour only. Returns labelIds per stem."""
    frames = {"bonn_000000_000019": "labelIds", "bonn_000001_000019": "labelTrainIds", "ulm_000002_000019": "color"}
    truth = {}
    for i, (stem, kind) in enumerate(frames.items()):
        split, city = ("train", stem.split("_")[0]) if i < 2 else ("val", "ulm")
        ids = _label_ids(i)
        truth[stem] = ids
        _png(root / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png", _photo(i))
        label = {"labelIds": ids, "labelTrainIds": labels.ID_TO_TRAIN_ID[ids], "color": labels.ID_PALETTE[ids]}[kind]
        _png(root / "gtFine" / split / city / f"{stem}_gtFine_{kind}.png", label)
    return truth


def _snapshot(root: Path) -> dict[str, tuple[str, int]]:
    """path -> (sha1, mtime_ns) of every file under root."""
    return {str(p.relative_to(root)): (hashlib.sha1(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
            for p in sorted(root.rglob("*")) if p.is_file()}


def _prepare(*args: str | Path) -> int:
    return main(["prepare", *map(str, args)])


def _outputs(out: Path, split: str, city: str, stem: str) -> tuple[Path, Path, Path]:
    return (out / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png",
            out / "gtFine" / split / city / f"{stem}_gtFine_labelIds.png",
            out / "gtFine" / split / city / f"{stem}_gtFine_labelTrainIds.png")


@pytest.fixture
def cityscapes_src(tmp_path) -> tuple[Path, dict[str, np.ndarray]]:
    src = tmp_path / "src"
    return src, _cityscapes_source(src)


# ---------------------------------------------------------------------------- cityscapes sources


def test_cityscapes_source_gives_official_layout(cityscapes_src, tmp_path, capsys):
    src, truth = cityscapes_src
    before = _snapshot(src)
    out = tmp_path / "out"
    assert _prepare(src, out, "--workers", "1") == 0
    assert _snapshot(src) == before  # SRC is only read
    where = {"bonn_000000_000019": ("train", "bonn"), "bonn_000001_000019": ("train", "bonn"),
             "ulm_000002_000019": ("val", "ulm")}
    for i, (stem, ids) in enumerate(truth.items()):
        image, label_ids, train_ids = _outputs(out, *where[stem], stem)
        assert image.read_bytes() == (src / "leftImg8bit" / where[stem][0] / where[stem][1] / image.name).read_bytes()
        assert (_read(train_ids) == labels.ID_TO_TRAIN_ID[ids]).all(), stem
        written_ids = _read(label_ids)
        assert (labels.ID_TO_TRAIN_ID[written_ids] == labels.ID_TO_TRAIN_ID[ids]).all()  # usable as ground truth
        if i == 0:  # the source's own labelIds, unchanged
            assert (written_ids == ids).all()
        if i == 1:  # derived from trainIds: void (parking, ego vehicle) -> 0
            assert written_ids[17, 35] == 0 and written_ids[0, 0] == ID["building"]
        if i == 2:  # from colours: void classes with their own colour keep their id
            assert written_ids[17, 35] == ID["parking"] and written_ids[-1, -1] == 0
    printed = capsys.readouterr().out
    assert "prepared 3 files (cityscapes)" in printed and "3 written, 0 already done, 0 bad" in printed
    assert f"{3 * H * W:,} mapped exactly" in printed


def test_split_filter_and_unknown_split(cityscapes_src, tmp_path, capsys):
    src, _ = cityscapes_src
    assert _prepare(src, tmp_path / "out", "--split", "val", "--workers", "1") == 0
    assert not (tmp_path / "out/gtFine/train").exists() and (tmp_path / "out/gtFine/val/ulm").is_dir()
    assert _prepare(src, tmp_path / "out", "--split", "test") == 2
    assert "no split test; found: train, val" in capsys.readouterr().err


def test_second_run_skips_and_killed_run_resumes(cityscapes_src, tmp_path, capsys):
    src, _ = cityscapes_src
    out = tmp_path / "out"
    assert _prepare(src, out, "--workers", "1") == 0
    capsys.readouterr()
    first = _snapshot(out)
    assert _prepare(src, out, "--workers", "1") == 0
    assert "0 written, 3 already done" in capsys.readouterr().out
    assert _snapshot(out) == first  # nothing rewritten
    # a run killed mid-frame leaves at most a temporary file and no labelTrainIds: redone
    image, label_ids, train_ids = _outputs(out, "train", "bonn", "bonn_000001_000019")
    train_ids.unlink()
    (train_ids.parent / f".{train_ids.stem}.abc.tmp.png").write_bytes(b"half")
    assert _prepare(src, out, "--workers", "1") == 0
    assert "1 written, 2 already done" in capsys.readouterr().out
    assert _snapshot(out)[str(train_ids.relative_to(out))][0] == first[str(train_ids.relative_to(out))][0]


def test_worker_processes_give_the_same_files(cityscapes_src, tmp_path):
    src, _ = cityscapes_src
    assert _prepare(src, tmp_path / "one", "--workers", "1") == 0
    assert _prepare(src, tmp_path / "two", "--workers", "2") == 0
    one, two = _snapshot(tmp_path / "one"), _snapshot(tmp_path / "two")
    assert {k: v[0] for k, v in one.items()} == {k: v[0] for k, v in two.items()}


@pytest.mark.parametrize("flag", ["--link", "--symlink"])
def test_images_can_be_linked(cityscapes_src, tmp_path, flag):
    src, _ = cityscapes_src
    out = tmp_path / "out"
    assert _prepare(src, out, flag, "--workers", "1") == 0
    source = src / "leftImg8bit/train/bonn/bonn_000000_000019_leftImg8bit.png"
    target = _outputs(out, "train", "bonn", "bonn_000000_000019")[0]
    if flag == "--link":
        assert os.path.samefile(source, target) and not target.is_symlink()
    else:
        assert target.is_symlink() and target.resolve() == source.resolve()


def _set_mtime_later(path: Path) -> None:
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))


@pytest.mark.parametrize("changed", ["label", "image"])
def test_a_changed_source_is_made_again_and_the_others_are_skipped(cityscapes_src, tmp_path, capsys, changed):
    src, _ = cityscapes_src
    out = tmp_path / "out"
    assert _prepare(src, out, "--workers", "1") == 0
    capsys.readouterr()
    first = _snapshot(out)
    stem, new_ids = "bonn_000000_000019", _label_ids(5)  # the car moved
    if changed == "label":
        path = _png(src / f"gtFine/train/bonn/{stem}_gtFine_labelIds.png", new_ids)
    else:
        path = _png(src / f"leftImg8bit/train/bonn/{stem}_leftImg8bit.png", _photo(7))
    _set_mtime_later(path)  # a copy tool may keep the size; the mtime moves
    assert _prepare(src, out, "--workers", "2") == 0
    assert "1 written (1 of them made again: source changed or unrecorded), 2 already done, 0 bad" \
        in capsys.readouterr().out
    image, label_ids, train_ids = _outputs(out, "train", "bonn", stem)
    if changed == "label":
        assert (_read(label_ids) == new_ids).all() and (_read(train_ids) == labels.ID_TO_TRAIN_ID[new_ids]).all()
    else:
        assert (_read(image) == _photo(7)).all()
    now = _snapshot(out)
    rewritten = {k for k in first if now[k] != first[k]}
    assert rewritten and all(stem in k for k in rewritten)  # the other frames were not touched
    assert _prepare(src, out, "--workers", "1") == 0
    assert "0 written, 3 already done" in capsys.readouterr().out


def test_force_and_missing_records_make_every_frame_again(cityscapes_src, tmp_path, capsys):
    src, _ = cityscapes_src
    out = tmp_path / "out"
    assert _prepare(src, out, "--workers", "1") == 0
    assert _prepare(src, out, "--workers", "1", "--force") == 0
    assert "3 written, 0 already done, 0 bad" in capsys.readouterr().out.splitlines()[-2]
    shutil.rmtree(out / ".cityseg-prepare")  # outputs of an older cityseg: nothing says what they were made from
    assert _prepare(src, out, "--workers", "1") == 0
    assert "3 written (3 of them made again: source changed or unrecorded), 0 already done" in capsys.readouterr().out


def test_a_source_turned_bad_leaves_no_stale_outputs(cityscapes_src, tmp_path, capsys):
    src, _ = cityscapes_src
    out = tmp_path / "out"
    assert _prepare(src, out, "--workers", "1") == 0
    _png(src / "gtFine/val/ulm/ulm_000002_000019_gtFine_color.png", _photo(3))  # a photo where the mask was
    assert _prepare(src, out, "--workers", "1", "--skip-bad") == 0
    captured = capsys.readouterr()
    assert "0 written, 2 already done, 1 bad" in captured.out
    assert "ulm_000002_000019_gtFine_color.png: not a Cityscapes colour mask" in captured.err
    assert not any(p.exists() for p in _outputs(out, "val", "ulm", "ulm_000002_000019"))


def test_a_colour_mask_that_is_a_photo_is_bad_input(cityscapes_src, tmp_path, capsys):
    src, _ = cityscapes_src
    mask = src / "gtFine/val/ulm/ulm_000002_000019_gtFine_color.png"
    _png(mask, _photo(3))
    assert _prepare(src, tmp_path / "out", "--workers", "1") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert err.startswith(f"cityseg prepare: error: {mask}: not a Cityscapes colour mask: ")
    assert "of its pixels are far from every label colour; a colour mask has at least 50% of its pixels near one" in err
    assert _prepare(src, tmp_path / "out", "--workers", "1", "--skip-bad") == 0
    assert "0 written, 2 already done, 1 bad" in capsys.readouterr().out  # the first run stopped at the bad one


# ---------------------------------------------------------------------------- pairs sources


PAIRS = (("train", "0001.png"), ("train", "0002.jpg"), ("val", "17.png"))  # (split, file); seed = index


def _pairs_source(root: Path) -> None:
    for seed, (split, name) in enumerate(PAIRS):
        _png(root / split / name, np.concatenate([_photo(seed), labels.ID_PALETTE[_label_ids(seed)]], axis=1))


def test_pairs_source_png_and_jpeg(tmp_path, capsys):
    src, out = tmp_path / "src", tmp_path / "out"
    _pairs_source(src)
    assert _prepare(src, out, "--city", "frankfurt", "--workers", "1") == 0  # format auto-detected
    assert "prepared 3 files (pairs)" in capsys.readouterr().out
    for seed, (split, name) in enumerate(PAIRS):
        image, label_ids, train_ids = _outputs(out, split, "frankfurt", Path(name).stem)
        expected = labels.ID_TO_TRAIN_ID[_label_ids(seed)]
        got = _read(train_ids)
        assert got.shape == (H, W) and _read(image).shape == (H, W, 3)
        if name.endswith(".png"):  # lossless: photo half and labels exact
            assert (_read(image) == _photo(seed)).all()
            assert (got == expected).all()
            assert (labels.ID_TO_TRAIN_ID[_read(label_ids)] == expected).all()
        else:  # JPEG blurs the random photo into the mask's border; the recovery keeps nearly every pixel
            assert (got == expected).mean() > 0.97


def test_pairs_default_city_and_format_flag(tmp_path):
    src, out = tmp_path / "src", tmp_path / "out"
    _pairs_source(src)
    assert _prepare(src, out, "--format", "pairs", "--split", "val", "--workers", "1") == 0
    assert all(p.is_file() for p in _outputs(out, "val", "pairs", "17"))


def _photo_folder(root: Path) -> None:
    """Photos without masks (a smooth gradient plus noise, like camera frames), in split folders."""
    y, x = np.mgrid[0:H, 0:2 * W]
    for split in ("train", "val"):
        for seed in range(3):
            rgb = np.stack([x * 2 + 40, y * 3 + 60, (x + y) % 90 + 80], -1) + _photo(seed)[:, :1] // 8
            _png(root / split / f"{seed:06d}_10.png", rgb.astype(np.uint8))


def test_auto_refuses_photos_that_are_not_pairs(tmp_path, capsys):
    src, out = tmp_path / "photos", tmp_path / "out"
    _photo_folder(src)
    assert _prepare(src, out) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert err.startswith(f"cityseg prepare: error: {src}: cannot tell the format: {src / 'train' / '000000_10.png'} "
                          "is not a photo | colour mask pair: label colours make ")
    assert "known formats: cityscapes (leftImg8bit/<split>/<city>/*_leftImg8bit.png beside gtFine/); pairs (" in err
    assert not out.exists()
    # forced, every frame is bad input (its right half is no colour mask), never made-up labels
    assert _prepare(src, out, "--format", "pairs", "--workers", "1") == 2
    assert "000000_10.png: its right half is not a Cityscapes colour mask: " in capsys.readouterr().err
    assert _prepare(src, out, "--format", "pairs", "--workers", "1", "--skip-bad") == 0
    assert "0 written, 0 already done, 6 bad" in capsys.readouterr().out
    assert not list(out.glob("gtFine/**/*.png"))


def test_auto_refuses_two_masks_side_by_side(tmp_path, capsys):
    src = tmp_path / "src"
    _png(src / "train/a.png", np.concatenate([labels.ID_PALETTE[_label_ids(0)]] * 2, axis=1))
    assert _prepare(src, tmp_path / "out") == 2
    assert "a.png is not a photo | colour mask pair: label colours make 100% of its right half (a colour mask: " \
           "at least 50%) and 100% of its left half (a photo: less)" in capsys.readouterr().err


def test_auto_looks_at_the_chosen_splits_only(tmp_path, capsys):
    src = tmp_path / "src"
    _pairs_source(src)
    _photo_folder(tmp_path / "photos")
    shutil.copytree(tmp_path / "photos" / "train", src / "test")  # a split of photos without masks
    assert _prepare(src, tmp_path / "out", "--workers", "1") == 2
    assert "test/000000_10.png is not a photo | colour mask pair" in capsys.readouterr().err
    assert _prepare(src, tmp_path / "out", "--workers", "1", "--split", "train", "val") == 0
    assert "prepared 3 files (pairs)" in capsys.readouterr().out


# ---------------------------------------------------------------------------- bad input


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


BAD_CASES = {
    # name: (how to spoil a fresh cityscapes source, expected message fragment)
    "missing label": (lambda s: next(s.glob("gtFine/train/bonn/bonn_000000_*")).unlink(),
                      "bonn_000000_000019_leftImg8bit.png: no label found"),
    "truncated image": (lambda s: _truncate(next(s.glob("leftImg8bit/val/ulm/*.png"))),
                        "ulm_000002_000019_leftImg8bit.png: cannot read image"),
    "truncated label": (lambda s: _truncate(next(s.glob("gtFine/train/bonn/bonn_000001_*"))),
                        "bonn_000001_000019_gtFine_labelTrainIds.png: cannot read image"),
    "size mismatch": (lambda s: _png(next(s.glob("leftImg8bit/train/bonn/bonn_000000_*")), _photo(0)[:, :-2]),
                      f"bonn_000000_000019_leftImg8bit.png: image is {W - 2}x{H} but its label "
                      f"bonn_000000_000019_gtFine_labelIds.png is {W}x{H}"),
    "values outside the table": (lambda s: _png(next(s.glob("gtFine/train/bonn/bonn_000000_*")),
                                                np.full((H, W), 40, np.uint8)),
                                 "bonn_000000_000019_gtFine_labelIds.png: values outside the label table: 40"),
}


@pytest.mark.parametrize("case", BAD_CASES)
def test_bad_input_is_one_clear_line(cityscapes_src, tmp_path, capsys, case):
    src, _ = cityscapes_src
    spoil, message = BAD_CASES[case]
    spoil(src)
    assert _prepare(src, tmp_path / "out", "--workers", "1") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("cityseg prepare: error: ")
    assert message in err


@pytest.mark.parametrize("workers", ["1", "2"])
def test_skip_bad_goes_on_and_lists_bad_files(cityscapes_src, tmp_path, capsys, workers):
    src, _ = cityscapes_src
    BAD_CASES["missing label"][0](src)
    BAD_CASES["truncated image"][0](src)
    out = tmp_path / "out"
    assert _prepare(src, out, "--skip-bad", "--workers", workers) == 0
    captured = capsys.readouterr()
    assert "1 written, 0 already done, 2 bad" in captured.out
    assert "skipped 2 bad files:" in captured.err
    assert BAD_CASES["missing label"][1] in captured.err and BAD_CASES["truncated image"][1] in captured.err
    assert all(p.is_file() for p in _outputs(out, "train", "bonn", "bonn_000001_000019"))
    assert not any(p.exists() for p in _outputs(out, "val", "ulm", "ulm_000002_000019"))  # nothing half-written


def test_pairs_with_odd_width_names_the_file(tmp_path, capsys):
    src = tmp_path / "src"
    _png(src / "train/odd.jpg", np.zeros((8, 15, 3), np.uint8))
    assert _prepare(src, tmp_path / "out") == 2
    assert "odd.jpg: width 15 is odd" in capsys.readouterr().err


def test_truncated_jpeg_pair_is_a_clear_error(tmp_path, capsys):
    src = tmp_path / "src"
    _pairs_source(src)
    _truncate(src / "train/0002.jpg")
    assert _prepare(src, tmp_path / "out", "--workers", "1") == 2
    assert "0002.jpg: cannot read image" in capsys.readouterr().err


@pytest.mark.parametrize("args, message", [
    (["--format", "pairs", "--link"], "cannot be linked"),
    (["--format", "cityscapes", "--city", "x"], "--city names the output city of --format pairs"),
])
def test_options_that_do_not_apply(tmp_path, capsys, args, message):
    src = tmp_path / "src"
    _pairs_source(src)
    (src / "leftImg8bit/train/x").mkdir(parents=True)
    assert _prepare(src, tmp_path / "out", *args) == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("layout, message", [
    ("missing", "src: not a folder"),
    ("empty", "src: cannot tell the format: neither leftImg8bit/ with gtFine/ nor split folders of images; "
              "known formats: cityscapes ("),
    ("no labels", "src: cannot tell the format: leftImg8bit/ without gtFine/"),
    ("no images", "src: no images found (looked for"),
])
def test_empty_or_wrong_folders(tmp_path, capsys, layout, message):
    src = tmp_path / "src"
    if layout != "missing":
        src.mkdir()
    if layout in ("no images", "no labels"):
        (src / "leftImg8bit/train/bonn").mkdir(parents=True)
    if layout == "no images":
        (src / "gtFine").mkdir()
    assert _prepare(src, tmp_path / "out") == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("fmt", [[], ["--format", "pairs"]], ids=["auto", "pairs"])
def test_a_split_folder_as_src_names_its_parent(tmp_path, capsys, fmt):
    src = tmp_path / "src"
    _pairs_source(src)
    assert _prepare(src / "train", tmp_path / "out", *fmt) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("cityseg prepare: error: ")
    assert f"{src / 'train'}: holds the pair images itself" in err
    assert f"give its parent folder {src} (the one with the train/ val/ split folders)" in err


def test_out_inside_src_is_refused(cityscapes_src, capsys):
    src, _ = cityscapes_src
    assert _prepare(src, src / "out") == 2
    assert "is inside the source" in capsys.readouterr().err


# ---------------------------------------------------------------------------- real frames


def _link_tree(root: Path, files: dict[str, Path]) -> Path:
    for rel, target in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).symlink_to(target)
    return root


def test_real_frames_prepare(fixtures_dir, tmp_path):
    small = fixtures_dir / "cityscapes_small"
    stem = "frankfurt_000000_000294"
    src = _link_tree(tmp_path / "src", {
        f"leftImg8bit/val/frankfurt/{stem}_leftImg8bit.png": small / f"leftImg8bit/val/frankfurt/{stem}_leftImg8bit.png",
        f"gtFine/val/frankfurt/{stem}_gtFine_labelIds.png": small / f"gtFine/val/frankfurt/{stem}_gtFine_labelIds.png",
    })
    out = tmp_path / "out"
    assert _prepare(src, out, "--symlink", "--workers", "1") == 0
    _, label_ids, train_ids = _outputs(out, "val", "frankfurt", stem)
    source_ids = _read(small / f"gtFine/val/frankfurt/{stem}_gtFine_labelIds.png")
    assert (_read(label_ids) == source_ids).all()
    assert (_read(train_ids) == labels.ID_TO_TRAIN_ID[source_ids]).all()
    # the fixture's own labelTrainIds were downscaled separately from its labelIds: 77 of
    # 32,768 pixels differ, all on borders
    official = _read(small / f"gtFine/val/frankfurt/{stem}_gtFine_labelTrainIds.png")
    assert (_read(train_ids) != official).sum() <= 77


def test_real_size_mismatch_of_kitti(fixtures_dir, tmp_path, capsys):
    kitti = fixtures_dir / "kitti"
    src = _link_tree(tmp_path / "src", {
        "leftImg8bit/train/kitti/kitti_000000_000010_leftImg8bit.png": kitti / "image_2/000000_10.png",
        "gtFine/train/kitti/kitti_000000_000010_gtFine_labelIds.png": kitti / "semantic/000000_10.png",
    })
    assert _prepare(src, tmp_path / "out") == 2
    assert ("kitti_000000_000010_leftImg8bit.png: image is 1224x370 but its label "
            "kitti_000000_000010_gtFine_labelIds.png is 1242x375") in capsys.readouterr().err


def test_auto_refuses_the_kitti_tree(fixtures_dir, tmp_path, capsys):
    """KITTI's image_2/, semantic/, semantic_rgb/ folders are no pairs: refused, not cut in half."""
    kitti, out = fixtures_dir / "kitti", tmp_path / "out"
    assert _prepare(kitti, out) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert err.startswith(f"cityseg prepare: error: {kitti}: cannot tell the format: ")
    assert "image_2/000000_10.png is not a photo | colour mask pair" in err and "known formats: cityscapes" in err
    assert not out.exists()


PAIRS_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "cityscapes-pairs"


def test_real_pairs_are_recognised_and_their_masks_accepted():
    """The pairs copy of Cityscapes (where present): told as pairs; sampled masks well above the threshold."""
    if not PAIRS_DATA.is_dir():
        pytest.skip("../shared/data/cityscapes-pairs is not present")
    from cityseg.data import formats
    from cityseg.data.prepare_source import detect_format

    assert detect_format(PAIRS_DATA) == "pairs"
    files = sorted((PAIRS_DATA / "val").glob("*.jpg"))[::10]
    for path in files:
        photo, mask = formats.read_pair(path)
        assert colour.palette_share(mask) > colour.MIN_PALETTE_SHARE + 0.1, path  # worst of all 3,075: 0.647
        assert colour.palette_share(photo) < colour.MIN_PALETTE_SHARE - 0.1, path  # worst of all 3,075: 0.341
        formats.load_pair(path)


def test_recovery_stats_add_up():
    a = colour.ColourStats(10, 7, 2, 1)
    assert (a + a).astuple() == (20, 14, 4, 2)


def test_instance_maps_are_carried_over_so_a_prepared_folder_gives_iiou(synth_root, tmp_path, capsys):
    out = tmp_path / "out"
    assert _prepare(synth_root, out, "--format", "cityscapes", "--workers", "1") == 0
    sources = sorted((synth_root / "gtFine").rglob("*_gtFine_instanceIds.png"))
    assert sources
    for src in sources:
        copied = out / src.relative_to(synth_root)
        assert copied.read_bytes() == src.read_bytes()
    from cityseg.layout import has_instances

    assert has_instances(out, "val")
    # an instance map of the wrong size is bad input, and a changed one makes its frame again
    bad_src = tmp_path / "src"
    import shutil

    shutil.copytree(synth_root, bad_src)
    victim = sorted((bad_src / "gtFine" / "val").rglob("*_gtFine_instanceIds.png"))[0]
    _png(victim, np.zeros((5, 7), np.uint16))
    capsys.readouterr()
    assert _prepare(bad_src, tmp_path / "out2", "--format", "cityscapes", "--workers", "1") == 2
    assert f"{victim}: instanceIds map is 7x5 but the label is" in capsys.readouterr().err
