"""``cityseg serve``: the API (FastAPI's TestClient), its refusals, the bounded pool, the token, the
page, and the real server driven by a headless Chromium (Playwright)."""

from __future__ import annotations

import io
import os
import re
import signal
import struct
import subprocess
import sys
import threading
import time
import zlib
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import torch
from headless_browser import browser_or_skip
from model_files import write_checkpoint
from PIL import Image

pytest.importorskip("fastapi")
pytest.importorskip("httpx")
from fastapi.testclient import TestClient  # noqa: E402

from cityseg import labels  # noqa: E402
from cityseg.cli import build_parser, main  # noqa: E402
from cityseg.commands.shared_options import load_predictor  # noqa: E402
from cityseg.config import Config  # noqa: E402
from cityseg.errors import CitysegError  # noqa: E402
from cityseg.serve import Busy, InferencePool, Limits, Service, Settings, create_app  # noqa: E402
from cityseg.serve.server import listen_socket  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
PHOTO = REPO.parent / "shared" / "fixtures" / "images_only" / "frankfurt_demo_leftImg8bit.png"
TOKEN = "s3cret-token"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    from cityseg.models import build_model

    torch.manual_seed(0)
    return write_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.pt", build_model("cityseg_tiny", freeze=[]).eval())


def serve_args(checkpoint, *flags):
    return build_parser().parse_args(["serve", "--checkpoint", str(checkpoint), *flags])


@pytest.fixture(scope="module")
def predictor(checkpoint):
    return load_predictor(serve_args(checkpoint), None)  # as the command loads it: default precision and runtime


def make_client(predictor, warm=True, **settings):
    settings.setdefault("workers", 1)
    settings.setdefault("threads", 1)
    service = Service(predictor, Settings(**settings), source="/somewhere/tiny.pt")
    if warm:
        service.warm_up((64, 32))
    return TestClient(create_app(service), raise_server_exceptions=False), service


@pytest.fixture(scope="module")
def client(predictor):
    client, service = make_client(predictor)
    yield client
    service.close()


def rgb(h=48, w=80, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def encode(array, fmt="PNG", **kw) -> bytes:
    out = io.BytesIO()
    Image.fromarray(array).save(out, format=fmt, **kw)
    return out.getvalue()


def decoded(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)))


def post(client, body, output=None, content_type="image/png", **kw):
    url = "/v1/segment" + (f"?output={output}" if output else "")
    headers = kw.pop("headers", {})
    if content_type is not None:
        headers["Content-Type"] = content_type
    return client.post(url, content=body, headers=headers, **kw)


def bomb_png(width=20000, height=20000) -> bytes:
    """A 1-bit grey PNG of ``width`` x ``height`` zeros: a few tens of KB declaring 400 M pixels."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    z, row = zlib.compressobj(9), b"\0" * (1 + (width + 7) // 8)
    idat = b"".join(z.compress(row) for _ in range(height)) + z.flush()
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0))
            + chunk(b"IDAT", idat) + chunk(b"IEND", b""))


def assert_error(response, status, *words):
    assert response.status_code == status, response.text
    body = response.json()
    assert list(body) == ["error"] and "\n" not in body["error"], body
    for word in words:
        assert word in body["error"], body


# --- the answers ----------------------------------------------------------------------------------


def test_answers_agree_with_cityseg_predict(tmp_path, checkpoint, client):
    """labels / color / overlay decode to the arrays of predict's trainIds / color / overlay PNGs, and the
    JSON's shares are those of its trainIds (the same photo, the same checkpoint, default flags)."""
    photos = tmp_path / "in"
    photos.mkdir()
    (photos / "street.png").write_bytes(encode(rgb(96, 160)))
    (photos / "photo.jpg").write_bytes(encode(rgb(64, 64, seed=2), "JPEG", quality=90))
    assert main(["predict", "-q", "--checkpoint", str(checkpoint), str(photos), "--out", str(tmp_path / "out")]) == 0
    for src, kind in [(photos / "street.png", "image/png"), (photos / "photo.jpg", "image/jpeg")]:
        body = src.read_bytes()
        train_ids = np.asarray(Image.open(tmp_path / "out" / "trainIds" / f"{src.stem}.png"))
        for output, folder in [("labels", "trainIds"), ("color", "color"), ("overlay", "overlay")]:
            r = post(client, body, output, kind)
            assert r.status_code == 200 and r.headers["content-type"] == "image/png", r.text
            expected = np.asarray(Image.open(tmp_path / "out" / folder / f"{src.stem}.png"))
            np.testing.assert_array_equal(decoded(r.content), expected, err_msg=f"{src.name} {output}")
        info = post(client, body, None, kind).json()  # json is the default
        assert (info["width"], info["height"]) == (train_ids.shape[1], train_ids.shape[0])
        assert info["model"] == "cityseg_tiny" and info["dataset"] == "cityscapes" and info["runtime"]
        assert list(info["classes"]) == list(labels.CLASS_NAMES)
        counts = np.bincount(train_ids.ravel(), minlength=labels.NUM_CLASSES)
        for i, name in enumerate(labels.CLASS_NAMES):
            assert info["classes"][name] == pytest.approx(counts[i] / train_ids.size, abs=1e-6)


def test_multipart_field_image_is_the_same_as_the_raw_body(client):
    body = encode(rgb())
    raw = post(client, body, "labels")
    form = client.post("/v1/segment?output=labels", files={"image": ("x.png", body, "image/png")})
    unknown_type = client.post("/v1/segment?output=labels", files={"image": ("x", body, "application/octet-stream")})
    assert raw.status_code == form.status_code == unknown_type.status_code == 200
    assert raw.content == form.content == unknown_type.content


def test_model_info(client):
    r = client.get("/v1/model")
    assert r.status_code == 200
    info = r.json()
    assert info["model"] == "cityseg_tiny" and info["dataset"] == "cityscapes" and info["source"] == "tiny.pt"
    assert [c["name"] for c in info["classes"]] == list(labels.CLASS_NAMES)
    assert [c["train_id"] for c in info["classes"]] == list(range(labels.NUM_CLASSES))
    assert info["palette"] == labels.TRAIN_PALETTE[: labels.NUM_CLASSES].tolist()
    assert info["classes"][0]["color"] == info["palette"][0] and info["ignore_index"] == 255
    norm = info["input"]["normalization"]
    assert norm["mean"] == pytest.approx([0.485, 0.456, 0.406]) and norm["std"] == pytest.approx([0.229, 0.224, 0.225])
    assert info["input"]["max_pixels"] == 50_000_000 and "image/png" in info["input"]["content_types"]
    assert info["runtime"]["path"] and info["runtime"]["workers"] == 1 and info["runtime"]["queue"] == 16
    from cityseg import __version__

    assert info["version"] == __version__ and info["outputs"] == ["json", "labels", "color", "overlay"]


def test_healthz_is_503_until_warm(predictor):
    client, service = make_client(predictor, warm=False)
    try:
        assert client.get("/healthz").status_code == 503
        assert_error(post(client, encode(rgb())), 503, "warming up")
        service.warm_up((32, 32))
        assert client.get("/healthz").json() == {"status": "ok", "model": "cityseg_tiny"}
        assert post(client, encode(rgb())).status_code == 200
    finally:
        service.close()


def test_openapi_docs(client):
    docs = client.get("/docs")
    assert docs.status_code == 200
    # every script and style of the page comes from this server: the docs work offline
    assets = re.findall(r'(?:src|href)="([^"]+\.(?:js|css))"', docs.text)
    assert assets and all(a.startswith("/docs-static/") for a in assets), assets
    assert all(client.get(a).status_code == 200 for a in assets)
    spec = client.get("/openapi.json").json()
    assert {"/v1/segment", "/v1/model", "/healthz"} <= set(spec["paths"])


# --- refusals --------------------------------------------------------------------------------------


def test_bad_bodies_are_4xx_with_one_line_and_the_server_stays_up(predictor):
    client, service = make_client(predictor, max_batch=1, limits=Limits(max_bytes=200_000, max_pixels=100_000))
    png = encode(rgb())
    truncated = png[: len(png) // 2]
    multipart_text = {"image": (None, "not a file")}
    cases = [
        (post(client, b"just some text"), 400, "not an image"),
        (post(client, truncated), 400, "truncated"),
        (post(client, b""), 400, "empty"),
        (post(client, bomb_png()), 413, "pixels"),  # 400 M pixels: over Pillow's own bomb limit too
        (post(client, encode(np.zeros((400, 400), np.uint8))), 413, "160,000 pixels"),  # over --max-pixels
        (post(client, b"\0" * 300_000), 413, "--max-bytes"),  # by Content-Length
        (post(client, (b"\0" * 50_000 for _ in range(6))), 413, "--max-bytes"),  # chunked: counted
        (post(client, png, content_type="text/plain"), 415, "text/plain"),
        (post(client, png, content_type=None), 415, "no content type"),
        (post(client, png, content_type="application/json"), 415, "image/png"),
        (client.post("/v1/segment", files={"photo": ("x.png", png, "image/png")}), 400, "no field 'image'"),
        (client.post("/v1/segment", files={"image": ("x.txt", png, "text/plain")}), 415, "field 'image'"),
        (client.post("/v1/segment", files=multipart_text), 400, "must be a file"),
        (post(client, b"--x\r\nbroken", content_type="multipart/form-data; boundary=x"), 400, "field 'image'"),
        (post(client, png, "labelz"), 422, "'json', 'labels', 'color' or 'overlay'"),
        (client.get("/v1/nothing"), 404, "Not Found"),
        (client.get("/v1/segment"), 405, "Method Not Allowed"),
    ]
    try:
        for i, (response, status, words) in enumerate(cases):
            assert_error(response, status, words)
            assert response.status_code != 500, i
        assert post(client, png, "labels").status_code == 200  # still serving
        assert service.pool.taken == 0  # every slot given back
    finally:
        service.close()


@pytest.mark.filterwarnings("ignore:Truncated File Read")
def test_damaged_files_of_every_format_are_4xx_never_500(client):
    rng = np.random.default_rng(0)
    for fmt in ("PNG", "JPEG", "GIF", "TIFF", "WEBP", "BMP"):
        good = encode(rgb(24, 32), fmt)
        for _ in range(12):
            body = bytearray(good)
            at = rng.integers(0, len(body), 4)
            body[at[0]:at[0] + 8] = rng.integers(0, 256, 8, dtype=np.uint8).tobytes()  # overwrite a few bytes
            for damaged in (bytes(body), bytes(body[: at[1]])):  # and cut it short
                r = post(client, damaged)
                assert r.status_code in (200, 400, 413), (fmt, r.status_code, r.text)


def test_decompression_bomb_is_refused_without_decoding(client, monkeypatch):
    import cityseg.serve.images as images

    def never(data):
        raise AssertionError("decoded")

    monkeypatch.setattr(images, "decode", never)
    assert_error(post(client, bomb_png(8000, 7000)), 413, "56,000,000 pixels", "refused undecoded")


def test_token(predictor):
    client, service = make_client(predictor, token=TOKEN)
    try:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {TOKEN}"}):
            for response in (client.get("/v1/model", headers=headers),
                             post(client, encode(rgb()), headers=dict(headers))):
                assert_error(response, 401, "bearer token")
                assert response.headers["www-authenticate"] == "Bearer"
        ok = {"Authorization": f"Bearer {TOKEN}"}
        assert client.get("/v1/model", headers=ok).status_code == 200
        assert post(client, encode(rgb()), headers=ok).status_code == 200
        assert client.get("/healthz").status_code == 200 and client.get("/").status_code == 200  # open
    finally:
        service.close()


# --- the bounded pool --------------------------------------------------------------------------------


def test_full_queue_is_503_with_retry_after_then_service_continues(predictor):
    client, service = make_client(predictor, workers=1, queue=2)
    release = threading.Event()
    try:
        blocked = [service.pool.submit(lambda: (release.wait(10), rgb())[1], lambda image, ids: ids.shape)
                   for _ in range(service.pool.capacity)]  # one running, two waiting
        r = post(client, encode(rgb()))
        assert_error(r, 503, "busy")
        assert int(r.headers["retry-after"]) >= 1
        release.set()
        assert [f.result(10) for f in blocked] == [(48, 80)] * 3
        assert post(client, encode(rgb())).status_code == 200
        assert service.pool.taken == 0 and service.pool.refused == 1
    finally:
        release.set()
        service.close()


def test_pool_bounds_batches_skips_cancelled_and_passes_errors_on():
    release, calls = threading.Event(), []

    def predict_batch(images):
        calls.append(len(images))
        release.wait(10)
        return [im[..., 0] for im in images]

    pool = InferencePool(predict_batch, workers=1, queue=3, max_batch=4)
    try:
        first = pool.submit(lambda: rgb(4, 4), lambda im, ids: "first")
        while not calls:  # the worker holds the first job
            time.sleep(0.01)
        waiting = [pool.submit(lambda i=i: rgb(4, 4, i), lambda im, ids: ids.sum()) for i in range(2)]
        bad = pool.submit(lambda: (_ for _ in ()).throw(ValueError("bad upload")), lambda im, ids: None)
        with pytest.raises(Busy):
            pool.submit(lambda: rgb(), lambda im, ids: None)
        waiting[1].cancel()
        release.set()
        assert first.result(10) == "first"
        assert waiting[0].result(10) == rgb(4, 4, 0)[..., 0].sum()
        with pytest.raises(ValueError, match="bad upload"):
            bad.result(10)
        assert calls == [1, 1]  # the waiting jobs went as one batch; the cancelled and the failed were left out
        deadline = time.time() + 5
        while pool.taken and time.time() < deadline:
            time.sleep(0.01)
        assert pool.taken == 0
    finally:
        release.set()
        pool.close()


def test_pixel_budget_keeps_large_images_apart():
    running, most, lock = [0], [0], threading.Lock()

    def predict_batch(images):
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
        time.sleep(0.05)
        with lock:
            running[0] -= 1
        return [im[..., 0] for im in images]

    for size, together in [((10, 8), 1), ((5, 4), 2)]:  # 80 pixels each: one at a time; 20: two at once
        pool = InferencePool(predict_batch, workers=2, queue=8, pixel_budget=100)
        most[0] = 0
        try:
            jobs = [pool.submit(lambda: rgb(*size), lambda im, ids: ids.shape) for _ in range(6)]
            assert [j.result(10) for j in jobs] == [size] * 6
            assert most[0] == together
        finally:
            pool.close()


def test_listen_socket_in_use_is_one_line():
    sock = listen_socket("127.0.0.1", 0)
    try:
        sock.listen()
        with pytest.raises(CitysegError, match=r"--port \d+: cannot listen there"):
            listen_socket("127.0.0.1", sock.getsockname()[1]).close()
    finally:
        sock.close()


def test_missing_fastapi_is_one_line(monkeypatch, capsys, checkpoint):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "fastapi" else real(name, *a))
    assert main(["serve", "--checkpoint", str(checkpoint)]) == 2
    assert capsys.readouterr().err.strip() == (
        "cityseg serve: error: cityseg serve needs fastapi and uvicorn: pip install 'cityseg[serve]'")


# --- the page --------------------------------------------------------------------------------------


class Tags(HTMLParser):
    def __init__(self, text: str) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict]] = []
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))


def test_page_is_self_contained(client):
    r = client.get("/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert "default-src 'none'" in r.headers["content-security-policy"]
    assert not re.search(r"(https?:)?//[\w.-]+\.\w", r.text)  # no address of anything elsewhere
    tags = Tags(r.text).tags
    assert not [t for t, a in tags if t in ("link", "iframe", "object", "embed")]
    assert not [a for t, a in tags if t == "script" and a.get("src")]
    assert not [a for t, a in tags for k in ("src", "href") if a.get(k)]  # pictures are set by the script
    assert {"file", "opacity", "token", "legend", "mask", "photo"} <= {a.get("id") for _, a in tags}


def fixture_photo(tmp_path) -> Path:
    if PHOTO.is_file():
        return PHOTO
    path = tmp_path / "street.png"
    path.write_bytes(encode(rgb(256, 512)))
    return path


@pytest.mark.slow
def test_real_server_page_in_headless_chromium(checkpoint, tmp_path):
    """``cityseg serve`` in a process (token from the environment, a free port), its page in Chromium:
    type the token, choose a photo, see the class colours over it and the legend; then Ctrl-C."""
    browser_path = browser_or_skip()
    sync_api = pytest.importorskip("playwright.sync_api")
    import httpx

    env = {**os.environ, "CITYSEG_SERVE_TOKEN": TOKEN, "PYTHONUNBUFFERED": "1"}
    server = subprocess.Popen([sys.executable, "-m", "cityseg", "serve", "--checkpoint", str(checkpoint), "--port", "0",
                               "--workers", "1"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        url = None
        for line in server.stdout:  # the address is printed once the port listens (after the warm-up)
            if m := re.search(r"ready at (http://\S+/)", line):
                url = m.group(1)
                break
        assert url, server.stderr.read()
        assert httpx.get(url + "healthz").status_code == 200
        assert httpx.get(url + "v1/model").status_code == 401
        photo = fixture_photo(tmp_path)
        with sync_api.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=browser_path, args=["--no-sandbox"])
            page = browser.new_page()
            problems: list[str] = []
            page.on("console", lambda msg: problems.append(msg.text) if msg.type == "error" else None)
            page.on("pageerror", lambda exc: problems.append(str(exc)))
            page.goto(url)
            page.wait_for_selector("body[data-state=ready]")
            assert "missing bearer token" in page.inner_text("#model")  # no token typed yet: the page says so
            page.fill("#token", TOKEN)
            page.dispatch_event("#token", "change")
            page.wait_for_selector("#model:has-text('cityseg_tiny')")  # /v1/model answered with the token
            page.set_input_files("#file", str(photo))
            page.wait_for_selector("body[data-state=done]", timeout=60_000)
            sizes = page.eval_on_selector_all("img", "els => els.map(e => [e.id, e.naturalWidth, e.naturalHeight])")
            width, height = Image.open(photo).size
            assert sizes == [["photo", width, height], ["under", width, height], ["mask", width, height]]
            legend = page.eval_on_selector_all(
                "#legend li", "els => els.map(e => [e.getAttribute('data-class'), Number(e.getAttribute('data-share'))])")
            # the shares the page counts from the colour answer are the server's own (?output=json)
            answer = httpx.post(url + "v1/segment", content=photo.read_bytes(), timeout=60,
                                headers={"Content-Type": "image/png", "Authorization": f"Bearer {TOKEN}"}).json()
            expected = {name: share for name, share in answer["classes"].items() if share > 0}
            assert legend and {name for name, _ in legend} == set(expected) <= set(labels.CLASS_NAMES)
            assert all(abs(share - expected[name]) < 1e-5 for name, share in legend), (legend, expected)
            assert "%" in page.inner_text("#legend")
            page.fill("#opacity", "20")
            page.dispatch_event("#opacity", "input")
            assert page.eval_on_selector("#mask", "e => e.style.opacity") == "0.2"
            browser.close()
        assert [p for p in problems if "401 (Unauthorized)" not in p] == []  # the 401: before the token
    finally:
        server.send_signal(signal.SIGINT)  # Ctrl-C: a clean stop
        try:
            server.wait(20)
        finally:
            if server.poll() is None:
                server.kill()
    assert server.returncode in (0, 130), server.stderr.read()


def test_onnx_model_is_named_and_normalised_from_its_metadata():
    import json
    from types import SimpleNamespace

    from cityseg.serve.service import _model_name, _normalization

    meta = {"cityseg.config": json.dumps({"model": {"name": "lraspp_mobilenet_v3_large"}}),
            "cityseg.input": json.dumps({"mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]})}
    predictor = SimpleNamespace(runner=SimpleNamespace(), config=Config())  # an onnxruntime runner has no .model
    assert _model_name(predictor, meta) == "lraspp_mobilenet_v3_large"
    assert _normalization(predictor, meta).to_dict() == {"mean": [0.5] * 3, "std": [0.25] * 3}
    assert _model_name(predictor, {"other": "x"}) == "onnx model"  # an export cityseg did not write
