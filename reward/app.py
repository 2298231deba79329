"""The FastAPI app of `micro serve` (extra `micro[serve]`): OpenRLHF's /get_reward plus online users.

    POST   /get_reward   {"query": [...], "prompts": [...]} | {"prompts", "responses", "contexts"?}, "user"?: id or [id|null]
    POST   /feedback     {"user", "prompt", "chosen", "rejected", "context"?} or a list of them
    GET    /users/{id}   a user's state: pairs, Hedge weights, summed losses, context, updated_at
    DELETE /users/{id}   forget the user
    GET    /health, /metrics

Every request passes one middleware: bearer token (constant-time compare) when one is set, a
Content-Length no larger than the limit on POST (411 / 413, the body unread), metrics. Bodies are
parsed before anything is written, so a malformed request (400 / 422 naming the field) never changes
state. Scoring and feedback embedding go through one micro-batching worker (batching.py); database
calls run in the thread pool.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import time
from contextlib import asynccontextmanager
from typing import Annotated, Any, Literal, Union

from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from .batching import Batcher
from .config import ServeConfig
from .metrics import Metrics
from .templates import plain_row
from .serve import MAX_DEPTH, RequestError, _depth, parse_reward_request
from .users import MAX_USER_ID, UserStore, check_user_id

#: Most pairs one /feedback request may carry.
MAX_FEEDBACK_PAIRS = 1024


def _user_id(value: str) -> str:
    return check_user_id(value)


UserId = Annotated[str, Field(min_length=1, max_length=MAX_USER_ID), AfterValidator(_user_id)]


class Message(BaseModel):
    model_config = ConfigDict(extra="forbid")
    role: Literal["system", "user", "assistant"]
    content: str


class Feedback(BaseModel):
    """One labelled pair of a user: `chosen` was preferred to `rejected` for `prompt`."""

    model_config = ConfigDict(extra="forbid")
    user: UserId
    prompt: Union[str, Annotated[list[Message], Field(min_length=1)]]
    chosen: str
    rejected: str
    context: str | None = None


FEEDBACK_LIST = TypeAdapter(Annotated[list[Feedback], Field(min_length=1, max_length=MAX_FEEDBACK_PAIRS)])


def parse_feedback(data: Any) -> Feedback | list[Feedback]:
    """One pair (a JSON object) or a list of them; pydantic's ValidationError names the bad field."""
    return FEEDBACK_LIST.validate_python(data) if isinstance(data, list) else Feedback.model_validate(data)


def _error(status: int, message: str, **extra: Any) -> JSONResponse:
    return JSONResponse({"error": message, **extra}, status_code=status)


def _json_body(body: bytes) -> Any:
    if _depth(body) > MAX_DEPTH:
        raise RequestError(f"body is nested deeper than {MAX_DEPTH} levels")
    try:
        return json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise RequestError(f"body is not valid JSON ({exc})") from None


def create_app(model: Any, *, store: UserStore | None = None, context: str | None = None, token: str | None = None,
               max_request_bytes: int = ServeConfig.max_request_bytes, batch_window_ms: float = ServeConfig.batch_window_ms,
               max_batch_rows: int = ServeConfig.max_batch_rows, keep_text: bool = False) -> FastAPI:
    """The app serving `model` (a PersonalizedRewardModel), with users in `store` when given."""
    batcher = Batcher(model, window=batch_window_ms / 1000.0, max_rows=max_batch_rows)

    @asynccontextmanager
    async def lifespan(_app):
        yield
        batcher.close()

    app = FastAPI(title="micro reward server", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)
    metrics = Metrics()
    app.state.batcher, app.state.store, app.state.metrics = batcher, store, metrics
    app.add_middleware(Guard, metrics=metrics, token=token, max_request_bytes=max_request_bytes)
    _reward_routes(app, model, store, batcher, context)
    _user_routes(app, model, store, batcher, keep_text)
    _ops_routes(app, model, store, metrics)
    return app


class Guard:
    """Pure ASGI middleware (cheaper than BaseHTTPMiddleware): refusals before the body is read, then metrics."""

    def __init__(self, app, *, metrics: Metrics, token: str | None, max_request_bytes: int):
        self.app, self.metrics, self.max_request_bytes = app, metrics, max_request_bytes
        self.expected = None if token is None else f"Bearer {token}".encode()

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start, status = time.perf_counter(), [500]

        async def sending(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        refusal = _refuse(Request(scope), self.expected, self.max_request_bytes)
        await (refusal if refusal is not None else self.app)(scope, receive, sending)
        route = scope.get("route")
        self.metrics.observe(getattr(route, "path", "other"), status[0], time.perf_counter() - start)


def _refuse(request: Request, expected: bytes | None, max_request_bytes: int) -> JSONResponse | None:
    """The response refusing this request before its body is read (auth, Content-Length), or None."""
    if expected is not None:
        given = request.headers.get("authorization", "").encode()
        if not hmac.compare_digest(given, expected):
            return JSONResponse({"error": "missing or wrong bearer token (Authorization: Bearer TOKEN)"}, status_code=401,
                                headers={"WWW-Authenticate": "Bearer"})
    if request.method == "POST":
        try:
            length = int(request.headers.get("content-length", ""))
        except ValueError:
            length = -1
        if length < 0:
            return _error(411, "a Content-Length header with a non-negative length is required")
        if length > max_request_bytes:
            return JSONResponse({"error": f"request of {length} bytes exceeds the limit of {max_request_bytes}; "
                                          "send fewer rows per request or raise --max-request-bytes"},
                                status_code=413, headers={"Connection": "close"})
    return None


def _reward_routes(app: FastAPI, model: Any, store: UserStore | None, batcher: Batcher, context: str | None) -> None:
    @app.post("/get_reward")
    async def get_reward(request: Request):
        try:
            req = parse_reward_request(await request.body(), context)
        except RequestError as exc:
            return _error(400, str(exc))
        n = len(req.prompts)
        users = [None] * n
        if req.users is not None:
            if store is None:
                return _error(400, "'user' needs a server that keeps users: start micro serve with --users DATABASE")
            states = await run_in_threadpool(store.get_many, [u for u in req.users if u is not None])
            users = [None if u is None else model.user_or_stage1(states.get(u), u) for u in req.users]
        try:
            result = await asyncio.wrap_future(batcher.submit("score", req.prompts, req.responses, req.contexts or [None] * n, users))
        except ValueError as exc:  # e.g. a conversation the template cannot render
            return _error(400, str(exc))
        return JSONResponse({"rewards": [float(r) for r in result.values]}, headers=_timing(result))


def _user_routes(app: FastAPI, model: Any, store: UserStore | None, batcher: Batcher, keep_text: bool) -> None:
    import torch

    from ..router.hedge import head_losses

    rate, masked = model.user_rate, model.heads_mask

    @app.post("/feedback")
    async def feedback(request: Request):
        if store is None:
            return _error(400, "/feedback needs a server that keeps users: start micro serve with --users DATABASE")
        try:
            parsed = parse_feedback(_json_body(await request.body()))
        except RequestError as exc:
            return _error(400, str(exc))
        except ValidationError as exc:
            return _error(422, _validation_message(exc), detail=json.loads(exc.json(include_url=False, include_input=False)))
        pairs = parsed if isinstance(parsed, list) else [parsed]
        try:
            result = await asyncio.wrap_future(batcher.submit("margins", [plain_row(_plain(p.prompt), "")[0] for p in pairs],
                                                              [p.chosen for p in pairs], [p.rejected for p in pairs]))
        except ValueError as exc:
            return _error(400, str(exc))
        losses = head_losses(torch.from_numpy(result.values)).numpy()
        states = await run_in_threadpool(_write_feedback, store, pairs, losses, keep_text)
        body = [s.to_dict(rate, masked) for s in states]
        return JSONResponse(body[0] if not isinstance(parsed, list) else {"users": body}, headers=_timing(result))

    @app.get("/users/{user_id:path}")
    async def get_user(user_id: str):
        state = await run_in_threadpool(store.get, user_id) if store is not None else None
        if state is None:
            return _error(404, f"no user {user_id!r}" if store is not None else "this server keeps no users (--users)")
        body = state.to_dict(rate, masked)
        if keep_text:
            body["texts"] = await run_in_threadpool(store.pairs_of, user_id)
        return body

    @app.delete("/users/{user_id:path}")
    async def delete_user(user_id: str):
        if store is None or not await run_in_threadpool(store.delete, user_id):
            return _error(404, f"no user {user_id!r}")
        return {"deleted": user_id}


def _timing(result) -> dict[str, str]:
    """Headers splitting the latency: seconds in the model (its batch) and waiting for it."""
    return {"X-Backbone-Seconds": f"{result.backbone_seconds:.6f}", "X-Queue-Seconds": f"{result.queue_seconds:.6f}"}


def _write_feedback(store: UserStore, pairs: list[Feedback], losses, keep_text: bool) -> list:
    """One transaction per user (in order of first appearance); the users' new states."""
    order: dict[str, list[int]] = {}
    for i, p in enumerate(pairs):
        order.setdefault(p.user, []).append(i)
    states = []
    for user, rows in order.items():
        contexts = [pairs[i].context for i in rows if pairs[i].context is not None]
        texts = [(_plain(pairs[i].prompt), pairs[i].chosen, pairs[i].rejected, pairs[i].context) for i in rows] if keep_text else None
        states.append(store.add_pairs(user, losses[rows], context=contexts[-1] if contexts else None, texts=texts))
    return states


def _plain(prompt: Any) -> Any:
    return prompt if isinstance(prompt, str) else [m.model_dump() for m in prompt]


def _validation_message(exc: ValidationError) -> str:
    first = exc.errors()[0]
    where = ".".join(str(x) for x in first["loc"]) or "body"
    return f"{where}: {first['msg']}" + (f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else "")


def _ops_routes(app: FastAPI, model: Any, store: UserStore | None, metrics: Metrics) -> None:
    @app.get("/health")
    async def health():
        return {"status": "ok", "users": None if store is None else store.dialect.name, "heads": model.heads_model.k}

    @app.get("/metrics")
    async def prometheus():
        return Response(metrics.text(), media_type="text/plain; version=0.0.4; charset=utf-8")
