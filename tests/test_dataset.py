"""CityscapesDataset: every label format, instance ids, transforms, and one clear error per bad input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader
from torchvision import tv_tensors

from cityseg import labels
from cityseg.config import DataConfig
from cityseg.data.dataset import CityscapesDataset
from cityseg.data.synthetic import generate
from cityseg.data.transforms import build_transforms
from cityseg.errors import CitysegError
from cityseg.utils import save_png

SUFFIX = {
    "labelIds": "_gtFine_labelIds.png",
    "labelTrainIds": "_gtFine_labelTrainIds.png",
    "color": "_gtFine_color.png",
    "instanceIds": "_gtFine_instanceIds.png",
}


def block_label_ids(h: int, w: int, seed: int) -> np.ndarray:
    """(h, w) uint8 labelIds in 8x8 blocks of random ids; polegroup (18) left out, as its colour
    is pole's and a colour mask cannot tell them apart."""
    ids = np.array([i for i in labels.VALID_LABEL_IDS if i != 18], dtype=np.uint8)
    rng = np.random.default_rng(seed)
    blocks = rng.choice(ids, size=(-(-h // 8), -(-w // 8)))
    return np.kron(blocks, np.ones((8, 8), np.uint8))[:h, :w]


def write_frame(root: Path, split: str, stem: str, label_ids: np.ndarray, fmts=("labelIds",), image_size=None) -> np.ndarray:
    """Write one frame of the official layout (city ``testcity``); returns the RGB image written."""
    h, w = label_ids.shape
    ih, iw = image_size or (h, w)
    image = np.random.default_rng(len(stem)).integers(0, 256, (ih, iw, 3), dtype=np.uint8)
    save_png(image, root / "leftImg8bit" / split / "testcity" / f"{stem}_leftImg8bit.png")
    gt = root / "gtFine" / split / "testcity"
    for fmt in fmts:
        data = {
            "labelIds": label_ids,
            "labelTrainIds": labels.ID_TO_TRAIN_ID[label_ids],
            "color": labels.ID_PALETTE[label_ids],
            "instanceIds": label_ids.astype(np.int32) * 1000 + 7,
        }[fmt]
        save_png(data, gt / f"{stem}{SUFFIX[fmt]}")
    return image


@pytest.fixture(scope="module")
def synth_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("synth")
    generate(root, train=3, val=1, size=(64, 32), seed=0, workers=1, progress=False)
    return root


def test_items_of_the_synthetic_tree_match_the_files(synth_root):
    ds = CityscapesDataset(synth_root, "train")
    assert len(ds) == 3 and len(CityscapesDataset(synth_root, "val")) == 1
    item = ds[1]
    assert set(item) == {"image", "mask", "name"}
    assert isinstance(item["image"], tv_tensors.Image) and item["image"].dtype == torch.uint8
    assert item["image"].shape == (3, 32, 64)
    assert isinstance(item["mask"], tv_tensors.Mask) and item["mask"].dtype == torch.int64
    # oracle: PIL decoding and the label table's own lookup
    image_path = ds.images[1]
    label_path = Path(str(image_path).replace("leftImg8bit", "gtFine", 1).replace("_leftImg8bit.png", SUFFIX["labelIds"]))
    assert item["name"] == image_path.name.replace("_leftImg8bit.png", "")
    np.testing.assert_array_equal(item["image"].permute(1, 2, 0).numpy(), np.asarray(Image.open(image_path)))
    expected = labels.ID_TO_TRAIN_ID[np.asarray(Image.open(label_path))]
    np.testing.assert_array_equal(item["mask"].numpy(), expected)


@pytest.mark.parametrize("fmt", ["labelIds", "labelTrainIds", "color"])
def test_every_label_format_gives_the_same_train_ids(tmp_path, fmt):
    ids = block_label_ids(24, 40, seed=3)
    write_frame(tmp_path, "train", "city_000000_000019", ids, fmts=(fmt,))
    item = CityscapesDataset(tmp_path, "train")[0]
    np.testing.assert_array_equal(item["mask"].numpy(), labels.ID_TO_TRAIN_ID[ids])


def test_label_ids_are_preferred_over_train_ids_and_colour(tmp_path):
    ids = block_label_ids(16, 16, seed=4)
    write_frame(tmp_path, "train", "city_000000_000019", ids, fmts=("labelIds", "color"))
    # a contradicting trainIds file beside them must not be read
    save_png(np.zeros_like(ids), tmp_path / "gtFine/train/testcity/city_000000_000019_gtFine_labelTrainIds.png")
    ds = CityscapesDataset(tmp_path, "train")
    assert ds.labels[0].name.endswith(SUFFIX["labelIds"])
    np.testing.assert_array_equal(ds[0]["mask"].numpy(), labels.ID_TO_TRAIN_ID[ids])


def test_instance_ids_are_loaded_on_request(tmp_path):
    ids = block_label_ids(16, 24, seed=5)
    write_frame(tmp_path, "val", "city_000000_000019", ids, fmts=("labelIds", "instanceIds"))
    item = CityscapesDataset(tmp_path, "val", with_instances=True)[0]
    assert item["instance_ids"].dtype == torch.int64
    np.testing.assert_array_equal(item["instance_ids"].numpy(), ids.astype(np.int64) * 1000 + 7)
    assert "instance_ids" not in CityscapesDataset(tmp_path, "val")[0]


def test_label_maps_read_the_same_without_the_fast_decoder(synth_root, monkeypatch):
    """cityseg.data.png reads plain greyscale maps; torchvision.io reads them where it cannot."""
    from cityseg.data import png

    ds = CityscapesDataset(synth_root, "val", with_instances=True)
    fast = [ds[i] for i in range(min(2, len(ds)))]
    assert fast
    monkeypatch.setattr(png, "_unfilter", None)
    for i, item in enumerate(fast):
        slow = ds[i]
        for key in ("mask", "instance_ids"):
            assert slow[key].dtype == item[key].dtype == torch.int64
            torch.testing.assert_close(slow[key], item[key], rtol=0, atol=0)


def test_transform_runs_on_items_and_batches_collate(synth_root):
    cfg = DataConfig(crop_size="32x16", scale_range=[0.5, 2.0], color_jitter=0.2)
    ds = CityscapesDataset(synth_root, "train", transform=build_transforms(cfg, train=True))
    batch = next(iter(DataLoader(ds, batch_size=3, shuffle=False, num_workers=0)))
    assert batch["image"].shape == (3, 3, 16, 32) and batch["image"].dtype == torch.float32
    assert batch["mask"].shape == (3, 16, 32) and batch["mask"].dtype == torch.int64
    assert len(batch["name"]) == 3
    valid = set(range(labels.NUM_CLASSES)) | {labels.IGNORE_INDEX}
    assert set(batch["mask"].unique().tolist()) <= valid


# ---------------------------------------------------------------- bad input


def test_missing_folder(tmp_path):
    with pytest.raises(CitysegError, match="data folder not found"):
        CityscapesDataset(tmp_path / "nowhere", "train")


def test_folder_without_the_layout(tmp_path):
    (tmp_path / "images").mkdir()
    with pytest.raises(CitysegError, match=r"not a Cityscapes-layout folder.*leftImg8bit/<split>/<city>"):
        CityscapesDataset(tmp_path, "train")


def test_missing_split_lists_the_splits_present(tmp_path):
    write_frame(tmp_path, "train", "city_000000_000019", block_label_ids(8, 8, 0))
    with pytest.raises(CitysegError, match=r"split 'val' not found; splits here: train"):
        CityscapesDataset(tmp_path, "val")


def test_empty_split(tmp_path):
    (tmp_path / "leftImg8bit" / "val" / "testcity").mkdir(parents=True)
    with pytest.raises(CitysegError, match=r"leftImg8bit/val: split 'val' is empty"):
        CityscapesDataset(tmp_path, "val")


def test_image_without_label(tmp_path):
    write_frame(tmp_path, "train", "city_000000_000019", block_label_ids(8, 8, 0))
    write_frame(tmp_path, "train", "city_000001_000019", block_label_ids(8, 8, 0), fmts=())
    with pytest.raises(CitysegError, match="city_000001_000019"):
        CityscapesDataset(tmp_path, "train")


def test_image_and_label_of_different_sizes(tmp_path):
    write_frame(tmp_path, "train", "city_000000_000019", block_label_ids(16, 32, 0), image_size=(15, 30))
    ds = CityscapesDataset(tmp_path, "train")
    with pytest.raises(CitysegError, match=r"city_000000_000019_leftImg8bit.png: image is 30x15 but its label .* is 32x16"):
        ds[0]


@pytest.mark.parametrize(
    "fmt, value, message",
    [("labelIds", 40, "label id 40 is not in the Cityscapes table"), ("labelTrainIds", 30, "trainId 30 is not valid")],
)
def test_label_values_outside_the_table(tmp_path, fmt, value, message):
    write_frame(tmp_path, "train", "city_000000_000019", block_label_ids(8, 8, 0), fmts=())
    bad = np.full((8, 8), value, np.uint8)
    save_png(bad, tmp_path / "gtFine/train/testcity" / f"city_000000_000019{SUFFIX[fmt]}")
    with pytest.raises(CitysegError, match=message):
        CityscapesDataset(tmp_path, "train")[0]


def test_truncated_image(tmp_path):
    write_frame(tmp_path, "train", "city_000000_000019", block_label_ids(32, 32, 0))
    path = tmp_path / "leftImg8bit/train/testcity/city_000000_000019_leftImg8bit.png"
    path.write_bytes(path.read_bytes()[:60])
    with pytest.raises(CitysegError, match=r"city_000000_000019_leftImg8bit.png: cannot decode image"):
        CityscapesDataset(tmp_path, "train")[0]


def test_missing_instance_ids(tmp_path):
    write_frame(tmp_path, "val", "city_000000_000019", block_label_ids(8, 8, 0))
    with pytest.raises(CitysegError, match="instanceIds map not found"):
        CityscapesDataset(tmp_path, "val", with_instances=True)


# ---------------------------------------------------------------- real frames


def test_real_cityscapes_frames(fixtures_dir):
    root = fixtures_dir / "cityscapes"
    ds = CityscapesDataset(root, "train", with_instances=True)
    assert len(ds) == 8
    item = ds[0]
    assert item["image"].shape == (3, 1024, 2048) and item["mask"].shape == (1024, 2048)
    label_ids = np.asarray(Image.open(ds.labels[0]))
    np.testing.assert_array_equal(item["mask"].numpy(), labels.ID_TO_TRAIN_ID[label_ids])
    np.testing.assert_array_equal(item["image"].permute(1, 2, 0).numpy(), np.asarray(Image.open(ds.images[0]).convert("RGB")))
    inst = item["instance_ids"].numpy()
    np.testing.assert_array_equal(inst, np.asarray(Image.open(ds.instances[0])))
    has_instance = inst >= 1000
    np.testing.assert_array_equal(inst[has_instance] // 1000, label_ids[has_instance])

    cfg = DataConfig(crop_size="1024x512", scale_range=[0.5, 2.0], color_jitter=0.2)
    torch.manual_seed(0)
    crop = CityscapesDataset(root, "train", transform=build_transforms(cfg, train=True))[0]
    assert crop["image"].shape == (3, 512, 1024) and crop["mask"].shape == (512, 1024)
    assert set(crop["mask"].unique().tolist()) <= set(np.unique(labels.ID_TO_TRAIN_ID[label_ids]).tolist())


def test_real_kitti_size_mismatch(fixtures_dir, tmp_path):
    # KITTI photos are 1224x370, their Cityscapes-id labels 1242x375: linked into the layout.
    kitti = fixtures_dir / "kitti"
    images = tmp_path / "leftImg8bit/train/kitti"
    gt = tmp_path / "gtFine/train/kitti"
    images.mkdir(parents=True)
    gt.mkdir(parents=True)
    (images / "000000_10_leftImg8bit.png").symlink_to(kitti / "image_2/000000_10.png")
    (gt / "000000_10_gtFine_labelIds.png").symlink_to(kitti / "semantic/000000_10.png")
    ds = CityscapesDataset(tmp_path, "train")
    with pytest.raises(CitysegError, match=r"000000_10_leftImg8bit.png: image is 1224x370 but its label .* is 1242x375"):
        ds[0]
