"""The web app's limits and safety (issue 18, item 2): upload size, decompression bombs,
labels x templates, Host, cross-origin writes, the auth token, files outside the indexed
folder, a concurrent flood, and one error shape — through TestClient and a real `vlkit serve`
on 127.0.0.1."""

import http.client
import io
import json
import os
import shutil
import socket
import struct
import subprocess
import sys
import time
import zlib
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image
from skimage import data as skdata

import vlkit
from vlkit.data.images import load_image_bytes
from vlkit.inference.index import EmbeddingIndex
from vlkit.serve import ServeLimits, create_app
from vlkit.serve.gate import Busy, InferenceGate
from vlkit.serve.guard import host_name
from vlkit.serve.uploads import TooLarge, decode_upload

LABELS = {"labels": "a cat, a dog"}


def bomb_png(width: int, height: int, bits: int = 8) -> bytes:
    """A valid grayscale PNG of width x height zeros: a few hundred KB, width x height bytes
    once decoded (the issue's bomb was 12000 x 12000); `bits` per pixel (1 or 8)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    row = b"\0" * (1 + (width * bits + 7) // 8)  # filter byte + pixels
    compressor, rows = zlib.compressobj(9), row * 100
    pixels = b"".join(compressor.compress(rows) for _ in range(height // 100)) + compressor.flush()
    header = struct.pack(">IIBBBBB", width, height, bits, 0, 0, 0, 0)  # grayscale
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")
    )


def huge_grey_jpeg(width: int, height: int) -> bytes:
    """A valid baseline grayscale JPEG of width x height mid-grey (multiples of 32), built
    without its pixels: a small JPEG's header with the size patched into SOF0, then one scan
    where every 8x8 block is the same 6 bits (DC difference 0: Huffman "00", then end of block
    "1010" in the standard tables PIL writes), 4 blocks per 3 bytes 28 A2 8A (no 0xFF to stuff).
    16000 x 16000 is 3 MB on the wire, 256 megapixels decoded in full."""
    buffer = io.BytesIO()
    Image.new("L", (32, 32), 128).save(buffer, "JPEG", quality=50)
    small = buffer.getvalue()
    sos = small.index(b"\xff\xda")
    header = bytearray(small[: sos + 2 + struct.unpack(">H", small[sos + 2 : sos + 4])[0]])
    assert small[len(header) : -2] == b"\x28\xa2\x8a" * 4  # 16 blocks of the pattern
    sof = header.index(b"\xff\xc0")
    struct.pack_into(">HH", header, sof + 5, height, width)
    return bytes(header) + b"\x28\xa2\x8a" * (width * height // 256) + b"\xff\xd9"


def encoded(size, format, color=(200, 30, 30)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def bomb():
    return bomb_png(12000, 12000)


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    directory = tmp_path_factory.mktemp("photos")
    for name, load in {"astronaut.png": skdata.astronaut, "coffee.jpg": skdata.coffee,
                       "rocket.jpg": skdata.rocket}.items():  # fmt: skip
        Image.fromarray(load()).save(directory / name)
    return directory


@pytest.fixture(scope="module")
def index_dir(checkpoint, photos, tmp_path_factory):
    model, transform = vlkit.from_pretrained(str(checkpoint)), vlkit.get_transform(str(checkpoint))
    paths = sorted(str(p) for p in photos.iterdir())
    with torch.no_grad():
        pixels = torch.stack([transform(Image.open(p).convert("RGB")) for p in paths])
        embeddings = model.encode_image(pixels, normalize=True)
    directory = tmp_path_factory.mktemp("index")
    metadata = {"model": str(checkpoint), "images_dir": str(photos)}
    EmbeddingIndex.build(embeddings, paths, metadata=metadata).save(directory)
    return directory


def app_client(checkpoint, index_dir=None, base_url="http://127.0.0.1", **limits):
    app = create_app(str(checkpoint), str(index_dir) if index_dir else None,
                     limits=ServeLimits(**limits))  # fmt: skip
    return TestClient(app, base_url=base_url, raise_server_exceptions=False)


@pytest.fixture(scope="module")
def client(checkpoint, index_dir):
    return app_client(checkpoint, index_dir, max_upload_bytes=300_000, max_pixels=1_000_000,
                      max_prompts=40)  # fmt: skip


def error_of(response, status):
    """The one error shape: the status and {"error": one line}, nothing else."""
    assert response.status_code == status, response.text
    body = response.json()
    assert list(body) == ["error"] and isinstance(body["error"], str), body
    assert "\n" not in body["error"] and body["error"].strip()
    return body["error"]


def upload(name, data):
    return {"image": (name, data, "application/octet-stream")}


# --- uploads: size and pixels -----------------------------------------------------------------


def test_an_oversized_body_is_413_by_length_and_when_streamed(client):
    big = upload("big.png", b"\0" * 400_000)
    assert "at most 0.3 MB" in error_of(client.post("/api/zeroshot", files=big, data=LABELS), 413)

    def chunks():  # no Content-Length: refused once the bytes received pass the limit
        for _ in range(40):
            yield b"x" * 10_000

    streamed = client.post("/api/search", content=chunks(), headers={"content-type": "text/plain"})
    assert "--max-upload-mb" in error_of(streamed, 413)


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_a_decompression_bomb_is_refused_from_its_header(client, bomb):
    started = time.perf_counter()
    message = error_of(client.post("/api/zeroshot", files=upload("b.png", bomb), data=LABELS), 413)
    assert "12000x12000 = 144.0 megapixels" in message and "--max-megapixels" in message
    assert time.perf_counter() - started < 2  # decoding it would take seconds
    with pytest.raises(TooLarge):
        decode_upload(bomb, "b.png", 40_000_000)


def test_a_large_jpeg_is_decoded_at_reduced_scale_and_other_formats_refused():
    jpeg = encoded((2000, 1500), "JPEG")  # 3 megapixels
    assert decode_upload(jpeg, "x.jpg", 3_000_000).size == (2000, 1500)  # within: untouched
    assert decode_upload(jpeg, "x.jpg", 1_000_000).size == (1000, 750)  # 1/2 fits
    assert decode_upload(jpeg, "x.jpg", 100_000).size == (250, 188)  # 1/8
    with pytest.raises(TooLarge, match="2000x1500"):
        decode_upload(jpeg, "x.jpg", 40_000)  # even 1/8 is too big
    with pytest.raises(TooLarge, match="x.png is 2000x1500"):
        decode_upload(encoded((2000, 1500), "PNG"), "x.png", 1_000_000)
    # Within the budget the pixels are the CLI's (load_image_bytes).
    small = encoded((64, 48), "PNG", (10, 200, 90))
    assert decode_upload(small, "s.png", 10_000).tobytes() == load_image_bytes(small).tobytes()


def test_a_large_jpeg_is_classified_and_a_large_png_is_413(client):
    jpeg = upload("big.jpg", encoded((2000, 1500), "JPEG"))  # ~30 KB, 3 MP > 1 MP: drafted
    assert client.post("/api/zeroshot", files=jpeg, data=LABELS).status_code == 200
    png = upload("big.png", encoded((2000, 1500), "PNG"))
    assert "big.png is 2000x1500" in error_of(
        client.post("/api/search/image", files=png, data={"k": "1"}), 413
    )


def test_images_over_pils_bomb_limit_get_the_servers_budget(checkpoint):
    # PIL refuses headers over 2 x MAX_IMAGE_PIXELS (179 MP) at Image.open; the budget must apply
    # instead: a 16000 x 16000 JPEG is decoded at 1/8, a 30000 x 30000 PNG gets our one line.
    limit = Image.MAX_IMAGE_PIXELS
    jpeg, png = huge_grey_jpeg(16000, 16000), bomb_png(30000, 30000, bits=1)
    with pytest.raises(Image.DecompressionBombError):
        Image.open(io.BytesIO(jpeg))  # PIL's own check is untouched
    image = decode_upload(jpeg, "big.jpg", 4_000_000)
    assert image.size == (2000, 2000) and image.mode == "RGB"
    assert image.getextrema() == ((128, 128),) * 3  # the decoded pixels, not a stand-in
    assert decode_upload(jpeg, "big.jpg", 16_000_000, keep_mode=True).size == (4000, 4000)
    with pytest.raises(TooLarge, match=r"^image big.jpg is 16000x16000 = 256.0 megapixels: "
                       r"this server decodes at most 3 \(--max-megapixels\)$"):  # fmt: skip
        decode_upload(jpeg, "big.jpg", 3_000_000)  # even 1/8 (4 MP) is over
    with pytest.raises(TooLarge, match=r"^image b.png is 30000x30000 = 900.0 megapixels: "
                       r"this server decodes at most 40 \(--max-megapixels\)$"):  # fmt: skip
        decode_upload(png, "b.png", 40_000_000)
    assert limit == Image.MAX_IMAGE_PIXELS  # PIL's global limit is never changed

    client = app_client(checkpoint, max_upload_bytes=4_000_000, max_pixels=4_000_000)
    answer = client.post("/api/zeroshot", files=upload("big.jpg", jpeg), data=LABELS)
    assert answer.status_code == 200, answer.text
    message = error_of(client.post("/api/zeroshot", files=upload("b.png", png), data=LABELS), 413)
    assert message == (
        "image b.png is 30000x30000 = 900.0 megapixels: this server decodes at most 4 "
        "(--max-megapixels)"
    )


# --- labels x templates -----------------------------------------------------------------------


def test_labels_times_templates_is_capped(client, photos):
    image = upload("coffee.jpg", (photos / "coffee.jpg").read_bytes())
    message = error_of(client.post("/api/zeroshot", files=image,
                                   data={"labels": "a, b, c", "templates": "cifar"}), 400)  # fmt: skip
    assert message == (
        "3 labels x 18 templates = 54 prompts: this server encodes at most 40 (--max-prompts)"
    )
    many = {"labels": ",".join(f"class {i}" for i in range(41))}
    assert "41 labels x 1 templates" in error_of(client.post("/api/zeroshot", files=image,
                                                             data=many), 400)  # fmt: skip
    fits = {"labels": ",".join(f"class {i}" for i in range(40))}
    assert client.post("/api/zeroshot", files=image, data=fits).status_code == 200


# --- Host, origin, token ----------------------------------------------------------------------


def test_host_header_must_be_allowed(checkpoint):
    app = create_app(str(checkpoint))
    for base in ("http://127.0.0.1:8000", "http://localhost", "http://[::1]:8000"):
        assert TestClient(app, base_url=base).get("/api/info").status_code == 200
    for base in ("http://attacker.example", "http://127.0.0.1.nip.io:8000", "http://testserver"):
        assert "--allowed-host" in error_of(TestClient(app, base_url=base).get("/api/info"), 400)
    assert error_of(TestClient(app).get("/api/images/0"), 400)  # every route, files included
    anything = app_client(checkpoint, base_url="http://any.example", allowed_hosts=("*",))
    assert anything.get("/api/info").status_code == 200
    assert [host_name(h) for h in ("LocalHost:80", "[::1]:8000", "example.com.")] == [
        "localhost", "::1", "example.com"
    ]  # fmt: skip


def test_cross_origin_writes_are_403(client, photos):
    image = upload("coffee.jpg", (photos / "coffee.jpg").read_bytes())
    for headers in ({"Origin": "http://attacker.example"}, {"Origin": "null"},
                    {"Sec-Fetch-Site": "cross-site"}, {"Sec-Fetch-Site": "same-site"},
                    {"Referer": "http://attacker.example/page"},
                    {"Origin": "http://127.0.0.1:9999"}):  # fmt: skip
        response = client.post("/api/zeroshot", files=image, data=LABELS, headers=headers)
        assert "cross-origin POST refused" in error_of(response, 403), headers
    # The page's own requests (same origin) and clients that are not browsers pass.
    same = {"Origin": "http://127.0.0.1", "Sec-Fetch-Site": "same-origin",
            "Referer": "http://127.0.0.1/"}  # fmt: skip
    assert client.post("/api/zeroshot", files=image, data=LABELS, headers=same).status_code == 200
    assert client.post("/api/search", json={"text": "a cat"}).status_code == 200
    # Reading stays open to the same-origin page only: other sites cannot embed the images.
    assert client.get("/api/images/0").headers["cross-origin-resource-policy"] == "same-origin"


def test_the_auth_token(checkpoint):
    client = app_client(checkpoint, auth_token="s3cret")
    assert client.get("/").status_code == 200  # the page holds no secret
    assert "needs its token" in error_of(client.get("/api/info"), 401)
    assert error_of(client.get("/api/info", headers={"Authorization": "Bearer wrong"}), 401)
    assert client.get("/api/info", headers={"Authorization": "Bearer s3cret"}).status_code == 200
    assert error_of(client.get("/?token=wrong", follow_redirects=False), 401) == "wrong token"
    login = client.get("/?token=s3cret", follow_redirects=False)
    assert login.status_code == 303 and login.headers["location"] == "/"
    cookie = login.headers["set-cookie"]
    assert "vlkit_token=s3cret" in cookie and "HttpOnly" in cookie and "strict" in cookie.lower()
    assert client.get("/api/info").status_code == 200  # the client kept the cookie


# --- files --------------------------------------------------------------------------------------


def test_an_indexed_file_swapped_for_a_symlink_is_refused(checkpoint, photos, tmp_path):
    folder = tmp_path / "photos"
    shutil.copytree(photos, folder)
    names = sorted(str(p) for p in folder.iterdir())  # astronaut, coffee, rocket
    index = tmp_path / "index"
    EmbeddingIndex.build(torch.eye(3, vlkit.PRESETS["tiny"].embed_dim), names,
                         metadata={"images_dir": str(folder)}).save(index)  # fmt: skip
    client = app_client(checkpoint, index)
    assert client.get("/api/images/2").content == (folder / "rocket.jpg").read_bytes()
    secret = tmp_path / "secret.jpg"  # outside the indexed folder, even with an image suffix
    secret.write_bytes(b"secret")
    for target in (secret, "/etc/hostname"):
        (folder / "rocket.jpg").unlink()
        (folder / "rocket.jpg").symlink_to(target)
        assert "resolves outside the indexed folder" in error_of(client.get("/api/images/2"), 403)
    (folder / "rocket.jpg").unlink()
    (folder / "rocket.jpg").symlink_to(folder / "notes.txt")
    (folder / "notes.txt").write_text("inside, but no image")
    assert "no image" in error_of(client.get("/api/images/2"), 403)
    (folder / "rocket.jpg").unlink()
    (folder / "rocket.jpg").symlink_to(folder / "coffee.jpg")  # inside: served
    assert client.get("/api/images/2").content == (folder / "coffee.jpg").read_bytes()
    (folder / "coffee.jpg").unlink()
    assert "the file is gone" in error_of(client.get("/api/images/1"), 404)


# --- concurrency and errors ---------------------------------------------------------------------


def test_the_gate_admits_up_to_its_capacity_and_times_out():
    gate = InferenceGate(max_concurrent=1, max_queue=1, timeout_s=0.05)
    gate.admit()
    gate.admit()
    with pytest.raises(Busy, match="1 requests running and 1 waiting"):
        gate.admit()
    gate.leave()
    gate.admit()
    with gate.slot(), pytest.raises(Busy, match="no model slot free after 0.05 s"):
        gate.acquire()
    gate.acquire()  # released by the `with`
    gate.release()


def test_every_error_is_one_line_json(client, checkpoint, monkeypatch):
    error_of(client.get("/no/such/page"), 404)
    error_of(client.put("/api/info"), 405)
    error_of(client.post("/api/search", json={"text": ""}), 400)
    error_of(client.post("/api/search", content=b"{not json", headers={"content-type":
                                                                       "application/json"}), 400)  # fmt: skip
    error_of(client.post("/api/zeroshot", data=LABELS), 400)
    error_of(client.post("/api/zeroshot", files=upload("x.png", b"not an image"), data=LABELS), 400)
    error_of(client.post("/api/zeroshot", files=upload("x.png", b""), data=LABELS), 400)
    error_of(client.post("/api/search", headers={"content-length": "x"}), 400)
    # An unexpected failure: 500 with the exception's type, its message (paths) kept in the log.
    monkeypatch.setattr("vlkit.serve.app.label_probabilities",
                        lambda *a: (_ for _ in ()).throw(RuntimeError("/secret/path")))  # fmt: skip
    response = client.post("/api/zeroshot", files=upload("a.png", encoded((8, 8), "PNG")),
                           data=LABELS)  # fmt: skip
    assert error_of(response, 500) == "internal error (RuntimeError): see the server log"


def test_a_busy_server_answers_503_with_retry_after(checkpoint, photos):
    client = app_client(checkpoint, max_concurrent=1, max_queue=0, queue_timeout_s=0.05)
    image = upload("coffee.jpg", (photos / "coffee.jpg").read_bytes())
    gate = next(middleware.kwargs["gate"] for middleware in client.app.user_middleware)
    with gate.slot():  # the only slot, held as a long request would
        busy = client.post("/api/zeroshot", files=image, data=LABELS)
        assert "no model slot free" in error_of(busy, 503)
        assert busy.headers["retry-after"] == "2"
        gate.admit()  # one in flight fills max_concurrent + max_queue = 1
        full = client.post("/api/search", json={"text": "a cat"})
        assert "1 requests running and 0 waiting" in error_of(full, 503)
        assert full.headers["retry-after"] == "2"
        gate.leave()
    assert client.post("/api/zeroshot", files=image, data=LABELS).status_code == 200


def test_bad_flags_are_one_line_errors(capsys):
    from vlkit.cli import main

    for flags, message in (
        (["--port", "70000"], "--port 70000: must be between 1 and 65535"),
        (["--port", "0"], "--port 0: must be between 1 and 65535"),
        (["--max-upload-mb", "0"], "--max-upload-mb 0.0: must be at least 0.001"),
        (["--max-megapixels", "nan"], "--max-megapixels nan: must be at least 0.001"),
        (["--max-queue", "-1"], "--max-queue -1: must be at least 0"),
        (["--auth-token", " "], "--auth-token is empty"),
    ):
        assert main(["serve", "--model", "x", *flags]) == 2
        assert capsys.readouterr().err == f"vlkit: error: {message}\n"


def test_a_busy_port_is_a_one_line_error(capsys):
    from vlkit.cli import main

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        assert main(["serve", "--model", "x", "--port", str(port)]) == 2
    assert capsys.readouterr().err.startswith(f"vlkit: error: cannot listen on 127.0.0.1:{port}: ")


def test_a_non_loopback_address_warns(checkpoint, monkeypatch):
    from vlkit.serve import app as serve_app

    runs, warnings = [], []
    monkeypatch.setattr(serve_app, "bind_socket", lambda host, port: object())
    monkeypatch.setattr("uvicorn.Server.run", lambda self, sockets: runs.append(self.config.app))
    serve_app.run_server(str(checkpoint), host="0.0.0.0", port=8000, log=lambda _: None,
                         warn=warnings.append)  # fmt: skip
    assert len(runs) == 1 and "reachable from other machines" in warnings[0]
    assert "anyone who can connect" in warnings[0] and "no --auth-token" in warnings[1]
    warnings.clear()
    serve_app.run_server(str(checkpoint), host="0.0.0.0", port=8000, log=lambda _: None,
                         warn=warnings.append, limits=ServeLimits(auth_token="s3cret"))  # fmt: skip
    assert "reachable from other machines" in warnings[0]
    assert "anyone who has the --auth-token" in warnings[0]
    assert not any("anyone who can connect" in w or "no --auth-token" in w for w in warnings)
    assert not any("s3cret" in w for w in warnings)  # the token is never printed in a warning
    warnings.clear()
    serve_app.run_server(str(checkpoint), port=8000, log=warnings.append, warn=warnings.append)
    assert warnings == ["vlkit serve: http://127.0.0.1:8000/ (Ctrl-C stops)"]
    assert serve_app.is_loopback("::1") and not serve_app.is_loopback("192.168.1.5")


# --- a real server ------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def memory_kb(pid: int, field: str) -> int:
    """VmRSS (now) or VmHWM (peak) of a process, from /proc (Linux)."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


@pytest.fixture(scope="module")
def server(checkpoint, index_dir):
    """`vlkit serve` on 127.0.0.1 with one model slot and a queue of two."""
    port = free_port()
    command = [sys.executable, "-m", "vlkit", "serve", "--model", str(checkpoint), "--index",
               str(index_dir), "--port", str(port), "--max-concurrent", "1", "--max-queue", "2",
               "--max-upload-mb", "2"]  # fmt: skip
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and process.poll() is None:
        try:
            if request(port, "GET", "/api/info")[0] == 200:
                break
        except OSError:
            time.sleep(0.2)
    assert process.poll() is None, process.stdout.read().decode()
    yield port, process
    process.terminate()
    process.wait(timeout=10)


def request(port, method, path, body=b"", headers=None, timeout=30):
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        connection.request(method, path, body=body, headers=headers or {})
        response = connection.getresponse()
        return response.status, response.headers, response.read()
    finally:
        connection.close()


def multipart(fields: dict, files: dict) -> tuple[bytes, dict]:
    boundary = "vlkit-test-boundary"
    parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode()
             for k, v in fields.items()]  # fmt: skip
    for name, (filename, data) in files.items():
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; '
                     f'filename="{filename}"\r\n\r\n'.encode() + data + b"\r\n")  # fmt: skip
    body = b"".join(parts) + f"--{boundary}--\r\n".encode()
    return body, {"Content-Type": f"multipart/form-data; boundary={boundary}"}


def one_line_error(status, body, expected):
    assert status == expected, body
    message = json.loads(body)["error"]
    assert "\n" not in message
    return message


def reset_peak_memory(pid: int) -> int:
    """Resets the process's peak RSS (VmHWM) where Linux allows it; returns the baseline."""
    try:
        with open(f"/proc/{pid}/clear_refs", "w") as clear:
            clear.write("5")
        return memory_kb(pid, "VmRSS")
    except OSError:
        return memory_kb(pid, "VmHWM")


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="memory is read from /proc")
@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_a_real_server_refuses_bombs_with_bounded_memory(server, bomb):
    port, process = server
    body, headers = multipart(LABELS, {"image": ("bomb.png", bomb)})
    before = reset_peak_memory(process.pid)
    started = time.perf_counter()
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda _: request(port, "POST", "/api/zeroshot", body, headers),
                                range(8)))  # fmt: skip
    elapsed = time.perf_counter() - started
    statuses = sorted(status for status, _, _ in answers)
    assert set(statuses) <= {413, 503} and 413 in statuses, statuses
    for status, _, answer in answers:
        assert "megapixels" in one_line_error(status, answer, 413) if status == 413 else True
    # Decoding one would allocate 144 MB (432 MB as RGB); eight took the old server to 9.5 GB.
    grown = memory_kb(process.pid, "VmHWM") - before
    assert grown < 100_000, f"peak RSS grew by {grown / 1000:.0f} MB"
    assert elapsed < 10
    # An oversized upload gets its 413 (not a reset connection) although the body is not read.
    big, headers = multipart(LABELS, {"image": ("big.png", b"\0" * 3_000_000)})
    status, _, answer = request(port, "POST", "/api/zeroshot", big, headers)
    assert "at most 2 MB" in one_line_error(status, answer, 413)
    # Host and origin over real HTTP.
    status, _, answer = request(port, "GET", "/api/images/0", headers={"Host": "attacker.example"})
    assert "not allowed" in one_line_error(status, answer, 400)
    status, _, answer = request(port, "POST", "/api/search", b'{"text": "a cat"}',
                                {"Content-Type": "application/json",
                                 "Origin": "http://attacker.example"})  # fmt: skip
    assert "cross-origin" in one_line_error(status, answer, 403)


def test_a_real_server_bounds_a_concurrent_flood(server, photos):
    port, process = server
    image = (photos / "astronaut.png").read_bytes()

    def classify(i):  # new labels each time: the classifier cache cannot help
        labels = ",".join(f"class {i} {j}" for j in range(100))
        body, headers = multipart(
            {"labels": labels, "templates": "cifar"}, {"image": ("a.png", image)}
        )
        started = time.perf_counter()
        status, answer_headers, answer = request(port, "POST", "/api/zeroshot", body, headers)
        return status, answer_headers, answer, time.perf_counter() - started

    started = time.perf_counter()
    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(classify, range(16)))
    elapsed = time.perf_counter() - started
    statuses = [status for status, *_ in answers]
    assert set(statuses) <= {200, 503}, statuses
    assert 1 <= statuses.count(200) <= 15 and statuses.count(503) >= 1, statuses
    for status, headers, body, seconds in answers:
        if status == 503:
            assert "server busy" in one_line_error(status, body, 503)
            assert headers["Retry-After"] == "2" and seconds < 5  # refused at once
    assert elapsed < 60
    assert process.poll() is None and request(port, "GET", "/api/info")[0] == 200


def test_the_token_comes_from_the_flag_or_the_environment(monkeypatch):
    from vlkit.cli import main

    calls = []
    monkeypatch.setattr("vlkit.serve.run_server", lambda *args, **kw: calls.append(kw["limits"]))
    monkeypatch.setenv("VLKIT_AUTH_TOKEN", "from-env")
    assert main(["serve", "--model", "x", "--allowed-host", "photos.lan"]) == 0
    assert main(["serve", "--model", "x", "--auth-token", "from-flag"]) == 0
    assert [limits.auth_token for limits in calls] == ["from-env", "from-flag"]
    assert calls[0].allowed_hosts == ("photos.lan",)


def test_allowed_hosts_default_to_the_bound_address_and_loopback():
    from vlkit.serve.app import serving_limits

    hosts = serving_limits("192.168.1.5", ServeLimits()).allowed_hosts
    assert hosts == ("localhost", "127.0.0.1", "::1", "192.168.1.5")
    assert socket.gethostname() in serving_limits("0.0.0.0", ServeLimits()).allowed_hosts
    extra = serving_limits("127.0.0.1", ServeLimits(allowed_hosts=("photos.lan",))).allowed_hosts
    assert extra[0] == "photos.lan" and "localhost" in extra
