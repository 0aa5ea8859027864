"""HTTP framing against a real uvicorn server on a real socket: what is answered before the
body is read (401, 413, 415), chunked bodies, and a 500 that keeps the connection."""

from __future__ import annotations

import http.client
import json
import socket
import threading
import time

import pytest
import uvicorn

from service.app import create_app
from core.settings import Settings
from tests.support import ADMIN_KEYS_SPEC, API_KEY, USE_KEYS_SPEC
from tests.support.images import digit_png
from tests.support.processes import free_port


@pytest.fixture
def server(tmp_path, tiny_checkpoint):
    settings = Settings(data_dir=tmp_path / "data", seed_checkpoint=tiny_checkpoint,
                        api_keys=USE_KEYS_SPEC, admin_keys=ADMIN_KEYS_SPEC, redis_url=None)
    app = create_app(settings)

    @app.get("/test-boom")  # an unforeseen bug in a route
    async def boom():
        raise RuntimeError("a bug")

    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning",
                            lifespan="on")
    instance = uvicorn.Server(config)
    thread = threading.Thread(target=instance.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not instance.started and time.monotonic() < deadline:
        time.sleep(0.05)
    assert instance.started
    yield port, app
    instance.should_exit = True
    thread.join(10)


def head_only(port: int, lines: list[str]) -> tuple[int, dict, bytes]:
    """Send the request line and headers only, no body byte, and read the answer: a server
    that waited for the body would time out here."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        return read_response(sock)


def read_response(sock) -> tuple[int, dict, bytes]:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, "connection closed before an answer"
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    status = int(head.split()[1])
    headers = {k.strip().lower(): v.strip() for k, _, v in
               (line.partition(":") for line in head.decode().split("\r\n")[1:])}
    length = int(headers.get("content-length", 0))
    while len(rest) < length:
        rest += sock.recv(65536)
    return status, headers, rest[:length]


def chunked(sock, payload: bytes, piece: int = 65536) -> None:
    for start in range(0, len(payload), piece):
        part = payload[start:start + piece]
        try:
            sock.sendall(f"{len(part):x}\r\n".encode() + part + b"\r\n")
        except (BrokenPipeError, ConnectionResetError):
            return  # the server answered and closed: that is the point
    sock.sendall(b"0\r\n\r\n")


@pytest.mark.parametrize("path", ["/train", "/generate", "/ood-score", "/datasets",
                                  "/models/demo/default"])
def test_no_key_is_401_before_the_body_is_read(server, path):
    port, _ = server
    method = "PUT" if path.startswith("/models") else "POST"
    for framing in ("Transfer-Encoding: chunked", "Content-Length: 900000"):
        status, headers, body = head_only(port, [
            f"{method} {path} HTTP/1.1", "Host: x", "Content-Type: application/json",
            framing])
        assert status == 401, body
        assert "API key" in json.loads(body)["detail"]
        assert headers["connection"] == "close"
    status, _, _ = head_only(port, [f"POST {path} HTTP/1.1", "Host: x", "X-API-Key: wrong-key",
                                    "Transfer-Encoding: chunked"])
    assert status == 401


@pytest.mark.parametrize("path, content_type", [
    ("/train", "text/plain"), ("/generate", "application/x-www-form-urlencoded"),
    ("/train", "multipart/form-data; boundary=x"), ("/ood-score", "application/json"),
    ("/datasets", "application/zip")])
def test_wrong_content_type_is_415_before_the_body_is_read(server, path, content_type):
    port, _ = server
    status, _, body = head_only(port, [f"POST {path} HTTP/1.1", "Host: x",
                                       f"X-API-Key: {API_KEY}", f"Content-Type: {content_type}",
                                       "Content-Length: 500000"])
    assert status == 415, body
    assert "expected" in json.loads(body)["detail"]


@pytest.mark.parametrize("path, method", [("/train", "POST"), ("/generate", "POST"),
                                          ("/models/demo/default", "PUT")])
def test_chunked_multipart_over_1_mib_to_a_json_route_is_413(server, path, method):
    port, _ = server
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall((f"{method} {path} HTTP/1.1\r\nHost: x\r\nX-API-Key: {API_KEY}\r\n"
                      "Content-Type: multipart/form-data; boundary=b\r\n"
                      "Transfer-Encoding: chunked\r\n\r\n").encode())
        chunked(sock, b"--b\r\n" + b"x" * (2 << 20))
        status, _, body = read_response(sock)
    assert status == 413, body
    # a small one is simply the wrong type
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall((f"{method} {path} HTTP/1.1\r\nHost: x\r\nX-API-Key: {API_KEY}\r\n"
                      "Content-Type: multipart/form-data; boundary=b\r\n"
                      "Transfer-Encoding: chunked\r\n\r\n").encode())
        chunked(sock, b"--b\r\n" + b"x" * 1000 + b"\r\n--b--\r\n")
        status, _, _ = read_response(sock)
    assert status == 415


def test_an_unforeseen_500_is_json_and_the_connection_stays_usable(server):
    port, _ = server
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    connection.request("GET", "/test-boom")
    response = connection.getresponse()
    assert response.status == 500
    assert response.getheader("content-type") == "application/json"
    assert json.loads(response.read()) == {"detail": "internal server error"}
    assert response.getheader("connection") != "close"
    sock = connection.sock
    connection.request("GET", "/healthz")  # the same socket, kept alive
    again = connection.getresponse()
    assert again.status == 200 and again.read()
    assert connection.sock is sock
    connection.close()


def test_valid_requests_still_pass_every_framing(server):
    port, _ = server
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    body = json.dumps({"dataset": "mnist5k", "preset": "tiny"}).encode()
    connection.request("POST", "/train", body=iter([body]), headers={
        "X-API-Key": API_KEY, "Content-Type": "application/json"},
        encode_chunked=True)
    response = connection.getresponse()
    assert response.status == 202, response.read()
    response.read()
    boundary = "bb"
    form = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"files\"; "
            f"filename=\"a.png\"\r\nContent-Type: image/png\r\n\r\n").encode() + digit_png() \
        + f"\r\n--{boundary}--\r\n".encode()
    connection.request("POST", "/ood-score?wait=0", body=form, headers={
        "Authorization": f"Bearer {API_KEY}",
        "Content-Type": f"multipart/form-data; boundary={boundary}"})
    response = connection.getresponse()
    assert response.status == 202, response.read()
    connection.close()
