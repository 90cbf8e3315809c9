"""Videos through ``cityseg predict`` and ``Predictor.predict_video`` (issue 25, part 1): rate, count and size
kept, frames that agree with the same frames segmented as PNGs, damaged and non-video files, folders of
frames, Ctrl-C, odd sizes, the runtimes. Clips are made here with PyAV from synthetic frames (and one from
real frames of ../shared, skipped when absent)."""

from __future__ import annotations

import csv
import threading
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cityseg.cli import main
from cityseg.errors import CitysegError
from model_files import write_checkpoint
from cityseg.inference import outputs, video_io
from cityseg.inference.predict import Predictor

av = pytest.importorskip("av")

pytestmark = pytest.mark.usefixtures("one_thread_torch")  # conftest: one thread, restored after
PAIRS = Path(__file__).resolve().parents[2] / "shared" / "data" / "cityscapes-pairs"


def tiny_model() -> torch.nn.Module:
    """cityseg_tiny with its classifier scaled up, so that its random weights give many classes per frame."""
    from cityseg.models import build_model

    torch.manual_seed(0)
    model = build_model("cityseg_tiny", freeze=[]).eval()
    with torch.no_grad():
        model.classifier.weight.mul_(30)
        model.classifier.bias.zero_()
    return model


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return write_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.pt", tiny_model())


def scene(i: int, h: int = 64, w: int = 96) -> np.ndarray:
    """A smooth moving picture (H.264 keeps it close; random noise it would not)."""
    y, x = np.mgrid[0:h, 0:w]
    img = np.zeros((h, w, 3), np.float32)
    img[..., 0] = 128 + 100 * np.sin((x + 3 * i) / 9)
    img[..., 1] = 128 + 100 * np.cos((y - 2 * i) / 7)
    img[..., 2] = np.where((x // 16 + y // 16 + i // 4) % 2, 220, 30)
    return img.clip(0, 255).astype(np.uint8)


def write_clip(path: Path, frames, rate=Fraction(17), codec: str = "libx264", pix_fmt: str = "yuv420p",
               options: dict | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w", options=options or {}) as container:
        stream = container.add_stream(codec, rate=rate)
        first = frames[0]
        stream.width, stream.height, stream.pix_fmt = first.shape[1], first.shape[0], pix_fmt
        for i, rgb in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
            frame.pts = i
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return path


def read_clip(path: Path) -> tuple[list[np.ndarray], Fraction, int]:
    """(decoded RGB frames, average rate, frame count in the header); stops quietly at damage."""
    frames = []
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        try:
            for frame in container.decode(stream):
                frames.append(frame.to_ndarray(format="rgb24"))
        except av.error.FFmpegError:
            pass
        return frames, Fraction(stream.average_rate), stream.frames


def predict(checkpoint, *args) -> int:
    return main(["predict", "--checkpoint", str(checkpoint), *map(str, args), "--precision", "fp32",
                 "--runtime", "torch"])


def png(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path))


def save_frames_as_png(frames, folder: Path, stem: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i, frame in enumerate(frames):
        Image.fromarray(frame).save(folder / f"{stem}_{i:06d}.png")


def blocks(rgb: np.ndarray, k: int = 8) -> np.ndarray:
    """Means of k x k blocks: H.264 in yuv420p keeps one colour per 2x2 pixels, so colours are compared over
    areas (the tiny model's label maps change class at every tenth pixel, where chroma cannot follow)."""
    h, w = rgb.shape[0] // k * k, rgb.shape[1] // k * k
    return rgb[:h, :w].reshape(h // k, k, w // k, k, -1).astype(float).mean((1, 3))


def like(video_frame: np.ndarray, image: np.ndarray) -> float:
    """Mean absolute difference of the 8x8 block colours of a decoded video frame and an image."""
    return float(np.abs(blocks(video_frame) - blocks(image)).mean())


def our_threads() -> list[threading.Thread]:
    """The decode and encode threads still alive (none may outlive a video)."""
    return [t for t in threading.enumerate() if t.name.startswith("cityseg-")]


def no_temp_files(out: Path) -> bool:
    return not [p for p in out.rglob(".*") if p.is_file()]


# --- cityseg predict on a video -----------------------------------------------------------------


def test_video_keeps_rate_count_and_size_and_agrees_with_its_frames_as_pngs(tmp_path, checkpoint):
    rate = Fraction(30000, 1001)
    clip = write_clip(tmp_path / "in" / "drive.mp4", [scene(i) for i in range(12)], rate)
    decoded, _, _ = read_clip(clip)
    save_frames_as_png(decoded, tmp_path / "png", "drive")  # the same frames, as photos
    assert predict(checkpoint, clip, "--out", tmp_path / "v", "--save-frames", "--color-video") == 0
    assert predict(checkpoint, tmp_path / "png", "--out", tmp_path / "p") == 0
    v, p = tmp_path / "v", tmp_path / "p"
    for name in ("drive.overlay.mp4", "drive.color.mp4"):
        frames, out_rate, count = read_clip(v / name)
        assert (len(frames), count, out_rate) == (12, 12, rate)
        assert frames[0].shape == decoded[0].shape
    overlays, _, _ = read_clip(v / "drive.overlay.mp4")
    colours, _, _ = read_clip(v / "drive.color.mp4")
    classes = list(csv.reader(open(v / "drive.classes.csv", encoding="utf-8")))
    assert classes[0][:4] == ["frame", "time_s", "road", "sidewalk"] and len(classes[0]) == 2 + 19
    assert len(classes) == 1 + 12
    used = set()
    for i in range(12):
        stem = f"drive_{i:06d}"
        for folder in ("trainIds", "labelIds", "color", "overlay"):  # the same maps as the photos get
            np.testing.assert_array_equal(png(v / folder / f"{stem}.png"), png(p / folder / f"{stem}.png"))
        train_ids = png(p / "trainIds" / f"{stem}.png")
        used |= set(np.unique(train_ids).tolist())
        # H.264 (yuv420p, crf 18) is lossy: close to the PNG overlay, and far from another frame's
        expected = png(p / "overlay" / f"{stem}.png")
        assert like(overlays[i], expected) < 2.5 and np.abs(overlays[i] - expected.astype(int)).mean() < 10
        assert like(overlays[(i + 6) % 12], expected) > 10
        assert like(colours[i], png(p / "color" / f"{stem}.png")) < 3
        row = classes[1 + i]
        assert int(row[0]) == i and float(row[1]) == pytest.approx(i * 1001 / 30000, abs=1e-6)
        shares = np.array(row[2:], float)
        np.testing.assert_allclose(shares, np.bincount(train_ids.ravel(), minlength=19) / train_ids.size, atol=1e-6)
        assert shares.sum() == pytest.approx(1, abs=1e-5)
    assert len(used) > 3  # the model paints many classes: the comparisons above mean something
    assert no_temp_files(v)


def test_lossless_odd_sized_clip_agrees_exactly_with_its_original_frames(tmp_path, checkpoint):
    """FFV1 keeps the pixels, so the video's trainIds must equal those of the original frames as PNGs; an odd
    size is padded by one pixel in the videos (yuv420p) and kept in the frames' maps."""
    frames = [scene(i, 33, 45) for i in range(5)]
    clip = write_clip(tmp_path / "odd.mkv", frames, Fraction(5), codec="ffv1", pix_fmt="bgr0")
    save_frames_as_png(frames, tmp_path / "png", "odd")
    assert predict(checkpoint, clip, "--out", tmp_path / "v", "--save-frames") == 0
    assert predict(checkpoint, tmp_path / "png", "--out", tmp_path / "p") == 0
    overlays, rate, _ = read_clip(tmp_path / "v" / "odd.overlay.mp4")
    assert len(overlays) == 5 and rate == 5 and overlays[0].shape == (34, 46, 3)
    for i in range(5):
        stem = f"odd_{i:06d}"
        train_ids = png(tmp_path / "v" / "trainIds" / f"{stem}.png")
        assert train_ids.shape == (33, 45)
        np.testing.assert_array_equal(train_ids, png(tmp_path / "p" / "trainIds" / f"{stem}.png"))
        expected = png(tmp_path / "p" / "overlay" / f"{stem}.png")
        assert like(overlays[i][:33, :45], expected) < 2.5
        # the padding repeats the last row and column (blurred a little by the codec)
        frame = overlays[i].astype(int)
        assert np.abs(frame[33] - frame[32]).mean() < 6 and np.abs(frame[:, 45] - frame[:, 44]).mean() < 6


def test_real_frames_clip(tmp_path, checkpoint):
    if not (PAIRS / "val").is_dir():
        pytest.skip("../shared/data/cityscapes-pairs is not present")
    photos = [np.asarray(Image.open(PAIRS / "val" / f"{i}.jpg").convert("RGB"))[:, :256] for i in range(1, 5)]
    clip = write_clip(tmp_path / "pairs.mp4", photos, Fraction(17))
    decoded, _, _ = read_clip(clip)
    save_frames_as_png(decoded, tmp_path / "png", "pairs")
    assert predict(checkpoint, clip, "--out", tmp_path / "v", "--save-frames") == 0
    assert predict(checkpoint, tmp_path / "png", "--out", tmp_path / "p") == 0
    frames, rate, count = read_clip(tmp_path / "v" / "pairs.overlay.mp4")
    assert (len(frames), count, rate, frames[0].shape) == (4, 4, 17, (256, 256, 3))
    for i in range(4):
        stem = f"pairs_{i:06d}"
        np.testing.assert_array_equal(png(tmp_path / "v" / "trainIds" / f"{stem}.png"),
                                      png(tmp_path / "p" / "trainIds" / f"{stem}.png"))
        assert like(frames[i], png(tmp_path / "p" / "overlay" / f"{stem}.png")) < 2.5


@pytest.mark.parametrize("kind", ["mp4 +faststart", "mkv"])
def test_truncated_clip_gives_its_frames_and_one_warning(tmp_path, checkpoint, capsys, kind):
    suffix, options = (".mp4", {"movflags": "+faststart"}) if kind.startswith("mp4") else (".mkv", None)
    whole = write_clip(tmp_path / f"whole{suffix}", [scene(i) for i in range(30)], options=options)
    cut = tmp_path / f"cut{suffix}"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    readable = len(read_clip(cut)[0])
    assert 0 < readable < 30
    assert predict(checkpoint, cut, "--out", tmp_path / "out") == 0
    frames, _, _ = read_clip(tmp_path / "out" / "cut.overlay.mp4")
    assert len(frames) == readable
    rows = list(csv.reader(open(tmp_path / "out" / "cut.classes.csv", encoding="utf-8")))
    assert len(rows) == 1 + readable
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "warning:" in err[0], err
    assert str(cut) in err[0] and f"decoding stopped at frame {readable}" in err[0]


def test_a_file_that_is_no_video_is_one_line_and_the_rest_done(tmp_path, checkpoint, capsys):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "x.mp4").write_text("this is not a video\n")
    Image.fromarray(scene(0)).save(tmp_path / "in" / "a.png")
    write_clip(tmp_path / "in" / "drive.mkv", [scene(i) for i in range(3)])
    whole = write_clip(tmp_path / "whole.mp4", [scene(i) for i in range(10)])  # index (moov) at the end
    (tmp_path / "in" / "cut.mp4").write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    assert predict(checkpoint, tmp_path / "in", "--out", tmp_path / "out") == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len([line for line in err if "x.mp4" in line]) == 1
    assert [line for line in err if "cut.mp4" in line and "moov" in line]
    assert len(err) == 3 and err[-1].endswith(f"2 input(s) failed; the rest are in {tmp_path / 'out'}"), err
    assert (tmp_path / "out" / "trainIds" / "a.png").is_file()
    assert len(read_clip(tmp_path / "out" / "drive.overlay.mp4")[0]) == 3
    assert not (tmp_path / "out" / "x.overlay.mp4").exists() and no_temp_files(tmp_path / "out")


def test_mixed_folder_and_stems_shared_by_an_image_and_a_video(tmp_path, checkpoint, capsys):
    Image.fromarray(scene(0, 48, 64)).save(tmp_path / "a.jpg")
    write_clip(tmp_path / "drive.mp4", [scene(i) for i in range(4)])
    Image.fromarray(scene(1)).save(tmp_path / "sub" / "drive.png") if (tmp_path / "sub").mkdir() is None else None
    assert predict(checkpoint, tmp_path, "--out", tmp_path / "out") == 1  # drive.png and drive.mp4: one refused
    assert "same name as" in capsys.readouterr().err
    assert (tmp_path / "out" / "trainIds" / "a.png").is_file()
    assert (tmp_path / "out" / "drive.overlay.mp4").is_file() != (tmp_path / "out" / "trainIds" / "drive.png").is_file()


def test_folder_of_frames_with_video_fps(tmp_path, checkpoint, capsys):
    folder = tmp_path / "stuttgart_00"
    folder.mkdir()
    order = [3, 0, 4, 1, 2]  # written out of order: the video takes them in name order
    for i in order:
        Image.fromarray(scene(i)).save(folder / f"stuttgart_00_000000_{i:06d}_leftImg8bit.png")
    single = tmp_path / "alone.png"
    Image.fromarray(scene(9)).save(single)
    out = tmp_path / "out"
    assert predict(checkpoint, folder, single, "--out", out, "--video-fps", "12.5", "--save-frames") == 0
    frames, rate, count = read_clip(out / "stuttgart_00.overlay.mp4")
    assert (len(frames), count, rate) == (5, 5, Fraction(25, 2))
    for i in range(5):  # the frames' maps keep the images' names, and the video follows their order
        overlay = png(out / "overlay" / f"stuttgart_00_000000_{i:06d}_leftImg8bit.png")
        assert like(frames[i], overlay) < 2.5 and like(frames[(i + 2) % 5], overlay) > 5
    assert (out / "trainIds" / "alone.png").is_file()  # a file named by itself stays a photo
    assert predict(checkpoint, folder, "--out", tmp_path / "plain", "--video-fps", "5") == 0
    assert not (tmp_path / "plain" / "trainIds").exists()  # without --save-frames: the video alone
    # a frame of another size is one line and a failure; the video has the others
    Image.fromarray(scene(5, 32, 32)).save(folder / "stuttgart_00_000000_000005_leftImg8bit.png")
    assert predict(checkpoint, folder, "--out", tmp_path / "sizes", "--video-fps", "5") == 1
    assert "32x32, not the 96x64 of the first frame" in capsys.readouterr().err
    assert len(read_clip(tmp_path / "sizes" / "stuttgart_00.overlay.mp4")[0]) == 5


def test_ctrl_c_leaves_a_playable_file_of_the_frames_done(tmp_path, checkpoint, capsys, monkeypatch):
    clip = write_clip(tmp_path / "drive.mp4", [scene(i) for i in range(20)])
    later = write_clip(tmp_path / "later.mp4", [scene(i) for i in range(3)])
    calls, real = [], Predictor.predict_batch

    def interrupted_after_seven(self, images):
        calls.append(len(images))
        if len(calls) > 7:
            raise KeyboardInterrupt
        return real(self, images)

    monkeypatch.setattr(Predictor, "predict_batch", interrupted_after_seven)
    out = tmp_path / "out"
    assert predict(checkpoint, clip, later, "--out", out, "--color-video") == 130
    for name in ("drive.overlay.mp4", "drive.color.mp4"):
        frames, rate, count = read_clip(out / name)
        assert (len(frames), count, rate) == (7, 7, 17)
    assert len(list(csv.reader(open(out / "drive.classes.csv", encoding="utf-8")))) == 1 + 7
    assert f"interrupted: 7 of the 20 frames of {clip} done, in {out / 'drive.overlay.mp4'}" in capsys.readouterr().err
    assert not (out / "later.overlay.mp4").exists() and no_temp_files(out)
    assert not our_threads()


def test_an_error_mid_video_removes_its_files_and_stops_the_threads(tmp_path, checkpoint, monkeypatch):
    clip = write_clip(tmp_path / "drive.mp4", [scene(i) for i in range(10)])
    calls = []

    def failing(self, images):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("boom")
        return [np.zeros(im.shape[:2], np.uint8) for im in images]

    monkeypatch.setattr(Predictor, "predict_batch", failing)
    with pytest.raises(RuntimeError, match="boom"):
        predict(checkpoint, clip, "--out", tmp_path / "out")
    assert not our_threads()
    assert not (tmp_path / "out" / "drive.overlay.mp4").exists() and no_temp_files(tmp_path / "out")


# --- the runtimes -------------------------------------------------------------------------------


def test_onnx_and_tta_on_a_video_agree_with_the_same_on_pngs(tmp_path, checkpoint):
    pytest.importorskip("onnxruntime")
    model = tmp_path / "tiny.onnx"
    assert main(["export", "--checkpoint", str(checkpoint), "--onnx", str(model), "--exporter", "torchscript"]) == 0
    clip = write_clip(tmp_path / "clip.mp4", [scene(i, 48, 64) for i in range(3)])
    save_frames_as_png(read_clip(clip)[0], tmp_path / "png", "clip")
    runs = {"onnx": ["--onnx", str(model)],
            "tta": ["--checkpoint", str(checkpoint), "--precision", "fp32", "--runtime", "torch", "--tta"]}
    for name, flags in runs.items():
        v, p = tmp_path / f"{name}-v", tmp_path / f"{name}-p"
        assert main(["predict", *flags, str(clip), "--out", str(v), "--save-frames"]) == 0
        assert main(["predict", *flags, str(tmp_path / "png"), "--out", str(p)]) == 0
        assert len(read_clip(v / "clip.overlay.mp4")[0]) == 3
        for i in range(3):
            np.testing.assert_array_equal(png(v / "trainIds" / f"clip_{i:06d}.png"),
                                          png(p / "trainIds" / f"clip_{i:06d}.png"))


@pytest.mark.slow
def test_int8_sliding_crf_and_hf_on_a_video_agree_with_the_same_on_pngs(tmp_path, checkpoint, monkeypatch):
    from cityseg.inference import paths

    pytest.importorskip("onnxruntime")
    pytest.importorskip("pydensecrf.densecrf")
    pytest.importorskip("transformers")
    from test_hf import save_segformer

    from cityseg import labels

    monkeypatch.setattr(paths, "cpu_has_vnni", lambda: True)  # the int8 path runs (slower, still right) anywhere
    clip = write_clip(tmp_path / "clip.mp4", [scene(i, 48, 64) for i in range(3)])
    save_frames_as_png(read_clip(clip)[0], tmp_path / "png", "clip")
    hf = save_segformer(tmp_path / "segformer", list(labels.CLASS_NAMES))
    exact = ["--precision", "fp32", "--runtime", "torch"]
    runs = {"int8": ["--checkpoint", str(checkpoint), "--precision", "int8", "--calibration", str(tmp_path / "png")],
            "sliding": ["--checkpoint", str(checkpoint), *exact, "--sliding", "--crop", "32x32", "--stride", "24x24"],
            "crf": ["--checkpoint", str(checkpoint), *exact, "--crf"],
            "hf": ["--checkpoint", f"hf:{hf}", *exact]}
    for name, flags in runs.items():
        v, p = tmp_path / f"{name}-v", tmp_path / f"{name}-p"
        assert main(["predict", *flags, str(clip), "--out", str(v), "--save-frames"]) == 0, name
        assert main(["predict", *flags, str(tmp_path / "png"), "--out", str(p)]) == 0, name
        assert len(read_clip(v / "clip.overlay.mp4")[0]) == 3
        for i in range(3):
            np.testing.assert_array_equal(png(v / "trainIds" / f"clip_{i:06d}.png"),
                                          png(p / "trainIds" / f"clip_{i:06d}.png"), err_msg=name)


def test_without_libx264_the_videos_are_mpeg4(tmp_path, checkpoint, monkeypatch):
    monkeypatch.setattr(video_io, "encoder", lambda: "mpeg4")
    clip = write_clip(tmp_path / "drive.mp4", [scene(i) for i in range(4)], Fraction(30000, 1001))
    assert predict(checkpoint, clip, "--out", tmp_path / "out", "--save-frames") == 0
    with av.open(str(tmp_path / "out" / "drive.overlay.mp4")) as container:
        assert container.streams.video[0].codec_context.name == "mpeg4"
    frames, rate, count = read_clip(tmp_path / "out" / "drive.overlay.mp4")
    assert (len(frames), count, rate) == (4, 4, Fraction(30000, 1001))
    assert like(frames[2], png(tmp_path / "out" / "overlay" / "drive_000002.png")) < 3


def test_the_path_choice_counts_every_frame_of_a_video(tmp_path):
    mp4 = write_clip(tmp_path / "a.mp4", [scene(i, 32, 48) for i in range(7)])
    mkv = write_clip(tmp_path / "b.mkv", [scene(i, 16, 32) for i in range(5)])  # no count in the header: estimated
    (tmp_path / "x.mp4").write_text("no video")
    assert outputs.image_sizes([mp4, mkv, tmp_path / "x.mp4"]) == [(48, 32)] * 7 + [(32, 16)] * 5


# --- the Python API -----------------------------------------------------------------------------


def test_predict_video_on_a_path_and_on_frames(tmp_path, checkpoint):
    predictor = Predictor.from_checkpoint(checkpoint, device="cpu", precision="fp32", runtime="torch", batch_size=2)
    clip = write_clip(tmp_path / "drive.mp4", [scene(i) for i in range(5)])
    decoded, _, _ = read_clip(clip)
    from_path = list(predictor.predict_video(clip))
    assert len(from_path) == 5 and from_path[0].dtype == np.uint8 and from_path[0].shape == (64, 96)
    for got, frame in zip(from_path, decoded, strict=True):
        np.testing.assert_array_equal(got, predictor.predict(frame))
    for got, want in zip(predictor.predict_video(decoded), from_path, strict=True):
        np.testing.assert_array_equal(got, want)

    def endless():  # lazily: labels come while the frames are still coming
        i = 0
        while True:
            yield decoded[i % len(decoded)]
            i += 1

    labels = predictor.predict_video(endless())
    np.testing.assert_array_equal(next(labels), from_path[0])
    labels.close()
    (tmp_path / "x.mp4").write_text("no video")
    with pytest.raises(CitysegError, match="x.mp4: not a video"):
        predictor.predict_video(tmp_path / "x.mp4")


def test_prefetch_passes_errors_on_and_stops_when_closed():
    def failing():
        yield 1
        raise ValueError("bad frame")

    with pytest.raises(ValueError, match="bad frame"):
        list(video_io.prefetch(failing(), 2))
    produced = []

    def many():
        for i in range(10_000):
            produced.append(i)
            yield i

    it = video_io.prefetch(many(), 3)
    assert next(it) == 0
    it.close()
    assert not our_threads() and len(produced) < 10  # bounded: it did not run ahead
