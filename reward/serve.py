"""An HTTP reward server speaking OpenRLHF's remote reward-model protocol (standard library only).

    POST /get_reward  {"query": [...], "prompts": [...]}                  response = query minus its prompt prefix
                      {"prompts": [...], "responses": [...], "contexts": [...]}   contexts optional
    -> 200 {"rewards": [...]}
    -> 400 {"error": "..."} on malformed JSON, nesting deeper than MAX_DEPTH, wrong types (a conversation is a
       non-empty list of {role: system|user|assistant, content: string}) or mismatched lengths;
       411 without a (non-negative) Content-Length; 413 over the size limit (the body is then not read)
    GET  /health      -> {"status": "ok"}

Requests are scored one at a time (the model is not shared between threads); the listener is threaded so a
slow client does not block the others while they upload. A connection idle for READ_TIMEOUT seconds is
closed, and at most MAX_CONNECTIONS are served at once (more are closed at once).
"""

from __future__ import annotations

import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from dataclasses import dataclass
from typing import Any, Callable

from .config import ServeConfig
from .templates import plain_rows, split_query
from .users import check_user_id

#: Default request-size limit (bytes), host and port: ServeConfig's.
MAX_REQUEST_BYTES = ServeConfig.max_request_bytes


#: Deepest JSON nesting a request may have, seconds a connection may sit idle, connections served at once.
MAX_DEPTH = 16
READ_TIMEOUT = 30.0
MAX_CONNECTIONS = 64
ROLES = ("system", "user", "assistant")
_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"')


class RequestError(ValueError):
    """A request the server answers with 400 and this message."""


@dataclass
class RewardRequest:
    """A parsed /get_reward body: plain prompts and responses (rendered prompts recovered), contexts, users."""

    prompts: list[Any]
    responses: list[str]
    contexts: list[str | None] | None
    users: list[str | None] | None


def parse_request(body: bytes, default_context: str | None = None) -> tuple[list[Any], list[str], list[str | None] | None]:
    """(prompts, responses, contexts) of a /get_reward body; RequestError says what is wrong."""
    req = parse_reward_request(body, default_context)
    return req.prompts, req.responses, req.contexts


def parse_reward_request(body: bytes, default_context: str | None = None) -> RewardRequest:
    """The RewardRequest of a /get_reward body; RequestError says what is wrong. A prompt already rendered
    by a chat template (OpenRLHF sends the policy's) becomes its plain conversation (templates.py)."""
    if _depth(body) > MAX_DEPTH:
        raise RequestError(f"body is nested deeper than {MAX_DEPTH} levels")
    try:
        data = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise RequestError(f"body is not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise RequestError("body must be a JSON object with 'query' and 'prompts', or 'prompts' and 'responses'")
    prompts, responses = _rows(data)
    _same_length(prompts, responses, "prompts", "responses")
    for i, p in enumerate(prompts):
        if not (isinstance(p, str) or (isinstance(p, list) and p and all(
                isinstance(m, dict) and m.get("role") in ROLES and isinstance(m.get("content"), str) for m in p))):
            raise RequestError(f"prompt {i} must be a string or a conversation (a non-empty list of {{role, content}}, role "
                               f"one of {', '.join(ROLES)}, content a string)")
    prompts, responses = plain_rows(prompts, responses)
    return RewardRequest(prompts, responses, _contexts(data, len(prompts), default_context), _users(data, len(prompts)))


def _rows(data: dict) -> tuple[list, list[str]]:
    """(prompts, responses): given, or the queries minus their prompts (a query alone is split after the
    generation header of its chat format)."""
    if "responses" in data:
        return _list(data, "prompts"), _list(data, "responses", str)
    if "query" not in data:
        raise RequestError("give 'responses' (with 'prompts') or 'query' (with 'prompts')")
    queries = _list(data, "query", str)
    if data.get("prompts") is None:
        split = [split_query(q) for q in queries]
        if any(s is None for s in split):
            raise RequestError(f"query {[s is None for s in split].index(True)} has no 'prompts' and no chat format micro recognises; "
                               "send 'prompts' with the queries")
        return [s[0] for s in split], [s[1] for s in split]
    prompts = _list(data, "prompts")
    _same_length(prompts, queries, "prompts", "query")
    responses = []
    for i, (q, p) in enumerate(zip(queries, prompts)):
        if not isinstance(p, str) or not q.startswith(p):
            raise RequestError(f"query {i} does not start with prompt {i}; the response is the query minus its prompt")
        responses.append(q[len(p):])
    return prompts, responses


def _contexts(data: dict, n: int, default_context: str | None) -> list[str | None] | None:
    if data.get("contexts") is not None:
        contexts = _list(data, "contexts")
        _same_length([None] * n, contexts, "prompts", "contexts")
        if any(c is not None and not isinstance(c, str) for c in contexts):
            raise RequestError("contexts must be strings or null")
        return contexts if default_context is None else [default_context if c is None else c for c in contexts]
    return None if default_context is None else [default_context] * n


def _users(data: dict, n: int) -> list[str | None] | None:
    """'user': one id for every row, or a list of ids (or nulls) one per row."""
    user = data.get("user")
    if user is None:
        return None
    users = [user] * n if isinstance(user, str) else user
    if not isinstance(users, list):
        raise RequestError("'user' must be a user id (string) or a list of ids (or nulls), one per row")
    _same_length([None] * n, users, "prompts", "user")
    for u in users:
        if u is not None:
            try:
                check_user_id(u)
            except ValueError as exc:
                raise RequestError(f"'user': {exc}") from None
    return users


def _depth(body: bytes) -> int:
    """How deeply the JSON in `body` nests lists and objects (brackets inside strings do not count)."""
    depth = deepest = 0
    for char in re.sub(rb"[^\[\]{}]", b"", _STRING.sub(b'""', body)):
        if char in b"[{":
            depth += 1
            deepest = max(deepest, depth)
        elif char in b"]}":
            depth -= 1
    return deepest


def _list(data: dict, key: str, kind: type | None = None) -> list:
    value = data.get(key)
    if not isinstance(value, list):
        raise RequestError(f"'{key}' must be a JSON list")
    if kind is not None and any(not isinstance(v, kind) for v in value):
        raise RequestError(f"every item of '{key}' must be a string")
    return value


def _same_length(a: list, b: list, name_a: str, name_b: str) -> None:
    if len(a) != len(b):
        raise RequestError(f"'{name_a}' has {len(a)} items but '{name_b}' has {len(b)}; they must match")


def make_server(score: Callable[[list, list, list | None], list[float]], *, host: str = ServeConfig.host, port: int = ServeConfig.port,
                context: str | None = None, max_request_bytes: int = MAX_REQUEST_BYTES, log: Callable[[str], None] | None = None) -> ThreadingHTTPServer:
    """A server (not started: call serve_forever) answering /get_reward with score(prompts, responses, contexts)."""
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        timeout = READ_TIMEOUT  # an idle or half-sent request is closed after this

        def _send(self, code: int, payload: dict) -> None:
            body = json.dumps(payload).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
            if self.path.rstrip("/") == "/health":
                self._send(200, {"status": "ok"})
            else:
                self._send(404, {"error": f"no such endpoint {self.path}; POST /get_reward"})

        def do_POST(self) -> None:  # noqa: N802
            if self.path.rstrip("/") != "/get_reward":
                self.close_connection = True
                return self._send(404, {"error": f"no such endpoint {self.path}; POST /get_reward"})
            try:
                length = int(self.headers.get("Content-Length", ""))
            except ValueError:
                length = -1
            if length < 0:
                self.close_connection = True
                return self._send(411, {"error": "a Content-Length header with a non-negative length is required"})
            if length > max_request_bytes:
                self.close_connection = True  # the body is not read: do not reuse the connection
                return self._send(413, {"error": f"request of {length} bytes exceeds the limit of {max_request_bytes}; "
                                                 "send fewer rows per request or raise --max-request-bytes"})
            try:
                prompts, responses, contexts = parse_request(self.rfile.read(length), context)
            except RequestError as exc:
                return self._send(400, {"error": str(exc)})
            try:
                with lock:
                    rewards = [float(r) for r in score(prompts, responses, contexts)] if prompts else []
            except ValueError as exc:  # e.g. a conversation the template cannot render
                return self._send(400, {"error": str(exc)})
            self._send(200, {"rewards": rewards})

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
            if log is not None:
                log("%s - %s" % (self.address_string(), format % args))

    return _BoundedServer((host, port), Handler)


class _BoundedServer(ThreadingHTTPServer):
    """A threading server that serves at most MAX_CONNECTIONS connections at once and closes the rest."""

    daemon_threads = True

    def __init__(self, *args, **kwargs):
        self.slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
        super().__init__(*args, **kwargs)

    def process_request(self, request, client_address):
        if not self.slots.acquire(blocking=False):
            self.shutdown_request(request)
            return
        super().process_request(request, client_address)

    def process_request_thread(self, request, client_address):
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.slots.release()


def serve(model, *, host: str = ServeConfig.host, port: int = ServeConfig.port, context: str | None = None,
          max_request_bytes: int = MAX_REQUEST_BYTES, log: Callable[[str], None] | None = print, users: str | None = None,
          keep_text: bool = False, token: str | None = None, batch_window_ms: float = ServeConfig.batch_window_ms,
          max_batch_rows: int = ServeConfig.max_batch_rows) -> None:
    """Serve `model` (a PersonalizedRewardModel) until interrupted: the FastAPI app (app.py: users, feedback,
    micro-batching, metrics) when micro[serve] is installed, else this module's standard-library server
    (/get_reward and /health only)."""
    try:
        import uvicorn  # noqa: F401

        from .app import create_app
    except ImportError:
        if users or token:
            raise ValueError("--users and --token need the web stack: pip install 'micro[serve]'") from None
        return _serve_stdlib(model, host=host, port=port, context=context, max_request_bytes=max_request_bytes, log=log)
    store = open_store(model, users, keep_text) if users else None
    app = create_app(model, store=store, context=context, token=token, max_request_bytes=max_request_bytes,
                     batch_window_ms=batch_window_ms, max_batch_rows=max_batch_rows, keep_text=keep_text)
    try:
        run_app(app, host=host, port=port, log=log)
    finally:
        if store is not None:
            store.close()


def open_store(model, url: str, keep_text: bool = False):
    """The UserStore at `url` for `model`'s run (refused when it holds another run's users)."""
    from .users import UserStore, run_fingerprint

    return UserStore.open(url, run=run_fingerprint(model.source["run_dir"]), heads=model.heads_model.k, keep_text=keep_text)


def run_app(app, *, host: str, port: int, log: Callable[[str], None] | None = print) -> None:
    """Run an ASGI app with uvicorn on host:port (0: a free port, printed) until SIGINT/SIGTERM."""
    import socket

    import uvicorn

    # proto=IPPROTO_TCP: asyncio sets TCP_NODELAY only on sockets that say they are TCP; without it a keep-alive
    # client waits ~40 ms (Nagle + delayed ACK) for the body written after the headers
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(1024)  # connections made before uvicorn starts wait in the backlog
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False, timeout_keep_alive=int(READ_TIMEOUT),
                                           limit_concurrency=MAX_CONNECTIONS * 4))
    if log is not None:
        log(f"serving rewards on http://{host}:{sock.getsockname()[1]}/get_reward")
    server.run(sockets=[sock])


def _serve_stdlib(model, *, host: str, port: int, context: str | None, max_request_bytes: int, log: Callable[[str], None] | None) -> None:
    server = make_server(lambda p, r, c: model.score(p, r, c).tolist(), host=host, port=port, context=context,
                         max_request_bytes=max_request_bytes, log=log)
    if log is not None:
        log(f"serving rewards on http://{host}:{server.server_address[1]}/get_reward")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
