"""The reward server against hostile clients, on a real server bound to 127.0.0.1 (a free port), stopped by
each test: no or negative Content-Length, deep nesting, invalid conversations, idle and surplus connections."""

import json
import socket
import threading
import time

import pytest

from micro.reward import serve


@pytest.fixture
def server(monkeypatch):
    monkeypatch.setattr(serve, "READ_TIMEOUT", 0.5)
    monkeypatch.setattr(serve, "MAX_CONNECTIONS", 4)
    srv = serve.make_server(lambda p, r, c: [float(len(x)) for x in r], host="127.0.0.1", port=0, max_request_bytes=1000)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv.server_address[1]
    srv.shutdown()
    srv.server_close()


def _raw(port, request: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(request)
        s.shutdown(socket.SHUT_WR)
        return b"".join(iter(lambda: s.recv(65536), b""))


def _post(port, body: bytes, length: str | None = None) -> tuple[int, dict]:
    head = b"POST /get_reward HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
    if length is not None:
        head += f"Content-Length: {length}\r\n".encode()
    reply = _raw(port, head + b"\r\n" + body)
    status = int(reply.split(b" ", 2)[1])
    return status, json.loads(reply.split(b"\r\n\r\n", 1)[1] or b"{}")


def test_a_valid_request_is_scored(server):
    body = json.dumps({"prompts": ["p", [{"role": "user", "content": "q"}]], "responses": ["ab", "abc"]}).encode()
    assert _post(server, body, str(len(body))) == (200, {"rewards": [2.0, 3.0]})


@pytest.mark.parametrize("length", [None, "-1", "x"])
def test_a_missing_or_negative_content_length_is_refused(server, length):
    status, reply = _post(server, b"{}" * 100, length)
    assert status == 411 and "Content-Length" in reply["error"]


def test_a_body_over_the_limit_is_refused_unread(server):
    status, reply = _post(server, b"", "5000")
    assert status == 413 and "limit of 1000" in reply["error"]


def test_deep_nesting_is_refused(server):
    body = b'{"prompts": ' + b"[" * 200 + b"]" * 200 + b', "responses": []}'
    status, reply = _post(server, body, str(len(body)))
    assert status == 400 and "nested deeper" in reply["error"]
    assert serve._depth(b'{"a": "[[[[[[[[[[[[[[[[[[[[[[["}') == 1  # brackets inside strings do not count


@pytest.mark.parametrize("prompt", [[], [{"role": "user", "content": 3}], [{"role": "hacker", "content": "x"}], ["x"], 5])
def test_invalid_conversations_are_refused(server, prompt):
    body = json.dumps({"prompts": [prompt], "responses": ["r"]}).encode()
    status, reply = _post(server, body, str(len(body)))
    assert status == 400 and "prompt 0 must be" in reply["error"]


def test_idle_connections_are_closed_and_surplus_ones_refused(server):
    baseline = threading.active_count()  # this process's threads before the connections (other tests' included)
    idle = [socket.create_connection(("127.0.0.1", server), timeout=5) for _ in range(8)]
    try:
        for s in idle:
            s.sendall(b"POST /get_reward HTTP/1.1\r\n")  # half-sent
        time.sleep(0.2)
        assert threading.active_count() <= baseline + 4  # at most MAX_CONNECTIONS handlers
        closed_early = sum(s.recv(1) == b"" for s in idle[4:])
        assert closed_early == 4
        time.sleep(1.0)  # past READ_TIMEOUT: the half-sent requests are dropped
        assert all(s.recv(65536) == b"" for s in idle[:4])  # closed by the server
        deadline = time.monotonic() + 5  # their handler threads end (on a busy machine, a moment later)
        while threading.active_count() > baseline and time.monotonic() < deadline:
            time.sleep(0.05)
        assert threading.active_count() <= baseline
        body = b'{"prompts": ["p"], "responses": ["r"]}'
        assert _post(server, body, str(len(body)))[0] == 200  # the server still answers
    finally:
        for s in idle:
            s.close()
