"""`micro serve --users`: users personalized online over real HTTP (servers bound to 127.0.0.1 on a free port,
stopped by each test) with a real SQLite file and a real Postgres server (conftest's postgres_url).

Exactness (replayed /feedback = batch Hedge within 1e-6), durability (SIGKILL right after a 200, then a
restarted server has the update), concurrency (8 clients x 50 pairs for one user = a sequential replay;
two server processes on one Postgres see each other's updates), malformed requests change nothing, the
bearer token guards every endpoint, and the payloads OpenRLHF's client and TRL's reward call build score
as the plain prompt and response do.
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch

from micro.reward import PersonalizedRewardModel
from micro.reward.app import create_app
from micro.reward.config import ServeConfig
from micro.reward.serve import open_store
from micro.router.hedge import context_log_weights, head_losses, hedge_log_weights

_spec = importlib.util.spec_from_file_location("_reward_fixtures", Path(__file__).with_name("test_reward.py"))
fx = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(fx)


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory) -> Path:
    return fx.build_tiny_llama(tmp_path_factory.mktemp("tiny_llama"), fx.TEMPLATE)


@pytest.fixture(scope="module")
def run(tiny_llama, tmp_path_factory) -> Path:
    return fx._fit(tmp_path_factory.mktemp("online_run"), str(tiny_llama), fx.make_table())[1]


@pytest.fixture(scope="module")
def model(run) -> PersonalizedRewardModel:
    return PersonalizedRewardModel.from_run(run, device="cpu")


def _pairs(attribute: str = "brief") -> list[dict]:
    t = fx.make_table()
    t = t[(t["split"] == "train") & (t["attribute"] == attribute)]
    return [dict(prompt=p, chosen=c, rejected=r) for p, c, r in zip(t["prompt"], t["chosen"], t["rejected"])]


# ---- HTTP helpers ---------------------------------------------------------------------------------------
def _call(url: str, method: str = "GET", body: object = None, token: str | None = None, raw: bytes | None = None) -> tuple[int, dict]:
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {token}"} if token else {})}
    req = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            text = resp.read()
            return resp.status, (json.loads(text) if resp.headers.get_content_type() == "application/json" else {"text": text.decode()})
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


@contextmanager
def live(app):
    """The app served by uvicorn in this process on 127.0.0.1 (a free port); stopped on exit."""
    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()


@contextmanager
def serving(model, users_url=None, **kwargs):
    store = open_store(model, users_url) if users_url else None
    try:
        with live(create_app(model, store=store, **kwargs)) as url:
            yield url, store
    finally:
        if store is not None:
            store.close()


def _spawn(run: Path, *users_urls: str) -> list[tuple[subprocess.Popen, str]]:
    """`micro serve RUN --users URL --port 0` for each URL, started together; (process, base URL) of each."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    procs = [subprocess.Popen([sys.executable, "-m", "micro.cli", "serve", str(run), "--users", u, "--port", "0", "--device", "cpu"],
                              stderr=subprocess.PIPE, text=True, env=env) for u in users_urls]
    started = []
    for proc in procs:
        line = ""
        while "serving rewards on" not in line:
            line = proc.stderr.readline()
            assert line or proc.poll() is None, f"server exited before listening: {proc.stderr.read()[-2000:]}"
        started.append((proc, line.split("serving rewards on ")[1].strip().rsplit("/", 1)[0]))
    return started


def _batch_log_weights(model, pairs) -> torch.Tensor:
    margins = model.head_margins([p["prompt"] for p in pairs], [p["chosen"] for p in pairs], [p["rejected"] for p in pairs])
    return context_log_weights(head_losses(torch.from_numpy(margins)), model.user_rate)


# ---- exactness ------------------------------------------------------------------------------------------
def test_feedback_replayed_one_pair_at_a_time_equals_batch_hedge(model, users_url):
    pairs = _pairs("brief")
    with serving(model, users_url) as (url, store):
        for i, pair in enumerate(pairs):
            code, state = _call(f"{url}/feedback", "POST", {"user": "alice", **pair})
            assert code == 200 and state["pairs"] == i + 1
        code, state = _call(f"{url}/users/alice")
        batch = _batch_log_weights(model, pairs)
        online = hedge_log_weights(torch.tensor(state["losses"], dtype=torch.float64), state["pairs"], model.user_rate)
        np.testing.assert_allclose(online.numpy(), batch.numpy(), atol=1e-6)
        np.testing.assert_allclose(state["weights"], batch.softmax(-1).numpy(), atol=1e-6)

        prompts, responses = [p["prompt"] for p in pairs[:4]], [p["chosen"] for p in pairs[:4]]
        code, out = _call(f"{url}/get_reward", "POST", {"prompts": prompts, "responses": responses, "user": "alice"})
        assert code == 200
        mine = model.for_user(store, "alice").score(prompts, responses)
        np.testing.assert_allclose(out["rewards"], mine, atol=1e-5)
        assert not np.allclose(mine, model.score(prompts, responses), atol=1e-4)  # her weights moved her reward
        code, out = _call(f"{url}/get_reward", "POST", {"prompts": prompts, "responses": responses, "user": "nobody"})
        np.testing.assert_allclose(out["rewards"], model.score(prompts, responses), atol=1e-5)  # unknown: as today

        from micro.rlhf import trl_reward_function

        reward = trl_reward_function(model=model, store=store, context_column=None)
        np.testing.assert_allclose(reward(prompts, responses, user=["alice"] * 4, trainer_state=None), mine, atol=1e-5)


def test_a_users_context_routes_their_rows(model, tmp_path):
    pairs = _pairs("detailed")[:3]
    with serving(model, str(tmp_path / "u.db")) as (url, store):
        code, out = _call(f"{url}/feedback", "POST", [{"user": "bob", "context": fx.CONTEXTS["detailed"], **p} for p in pairs])
        assert code == 200 and out["users"][0]["pairs"] == 3 and out["users"][0]["context"] == fx.CONTEXTS["detailed"]
        prompts, responses = [p["prompt"] for p in pairs], [p["chosen"] for p in pairs]
        code, got = _call(f"{url}/get_reward", "POST", {"prompts": prompts, "responses": responses, "user": ["bob", None, "bob"]})
        state = store.get("bob")
        np.testing.assert_allclose(got["rewards"], model.score(prompts, responses, users=[state, None, state]), atol=1e-5)


# ---- the RLHF clients' exact payloads -------------------------------------------------------------------
def _openrlhf_payload(tok, conversations, responses):
    """What OpenRLHF's SingleTurnAgentExecutor posts: prompt = the policy's chat template with the generation
    prompt; query = decode(prompt ids + response ids (ending in EOS), skip_special_tokens=False)."""
    prompts, queries = [], []
    for messages, response in zip(conversations, responses):
        prompt = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        prompt_ids = tok(prompt, add_special_tokens=False)["input_ids"]
        action_ids = tok(response, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        query = tok.decode(prompt_ids + action_ids, skip_special_tokens=False)
        assert query == prompt + response + tok.eos_token  # the tokenizer's special tokens round-trip
        prompts.append(prompt)
        queries.append(query)
    return {"query": queries, "prompts": prompts, "labels": [""] * len(prompts)}


def test_openrlhf_and_trl_payloads_score_as_the_plain_rows(model, tiny_llama):
    from transformers import AutoTokenizer

    from micro.rlhf import trl_reward_function

    tok = AutoTokenizer.from_pretrained(tiny_llama)
    table = fx.make_table()
    plain = table["prompt"].tolist()[:3] + [table["prompt"].iloc[-1]]  # three strings and a multi-turn conversation
    plain.append([{"role": "system", "content": "be brief"}, {"role": "user", "content": "tell me about the sky"}])
    responses = table["chosen"].tolist()[: len(plain)]
    conversations = [[{"role": "user", "content": p}] if isinstance(p, str) else p for p in plain]
    expected = model.score(plain, responses)
    payload = _openrlhf_payload(tok, conversations, responses)
    chatml = "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n" + plain[0] + "<|im_end|>\n<|im_start|>assistant\n"
    with serving(model) as (url, _):
        code, out = _call(f"{url}/get_reward", "POST", payload)
        assert code == 200
        np.testing.assert_allclose(out["rewards"], expected, atol=1e-5)
        code, out = _call(f"{url}/get_reward", "POST", {"query": payload["query"]})  # older clients send the query alone
        np.testing.assert_allclose(out["rewards"], expected, atol=1e-5)
        code, out = _call(f"{url}/get_reward", "POST", {"query": [chatml + responses[0] + "<|im_end|>"], "prompts": [chatml]})
        np.testing.assert_allclose(out["rewards"], expected[:1], atol=1e-5)  # another policy's template
    twice = model.score(payload["prompts"], [r + tok.eos_token for r in responses])
    assert np.abs(twice - expected).max() > 1e-3  # what rendering the prompt a second time would have given

    reward = trl_reward_function(model=model)
    completions = [[{"role": "assistant", "content": r}] for r in responses]  # TRL's conversational call
    got = reward(prompts=conversations, completions=completions, completion_ids=[[1, 2]] * len(plain), trainer_state=None)
    np.testing.assert_allclose(got, expected, atol=1e-5)
    got = reward(prompts=payload["prompts"], completions=responses, completion_ids=[[1]] * len(plain), trainer_state=None)
    np.testing.assert_allclose(got, expected, atol=1e-5)  # a dataset of already-rendered prompts


# ---- malformed requests, limits, auth -------------------------------------------------------------------
def test_malformed_requests_change_nothing_and_name_the_field(model, tmp_path):
    pair = _pairs()[0]
    with serving(model, str(tmp_path / "u.db"), max_request_bytes=4000) as (url, store):
        assert _call(f"{url}/feedback", "POST", {"user": "carol", **pair})[0] == 200
        before = store.get("carol")
        for body, status, needle in (
            ({"user": "carol", "prompt": pair["prompt"], "chosen": "x"}, 422, "rejected"),
            ({"user": "carol", **pair, "chosen": 3}, 422, "chosen"),
            ({"user": "carol", **pair, "extra": 1}, 422, "extra"),
            ({"user": "x" * 129, **pair}, 422, "user"),
            ({"user": "carol", **pair, "prompt": [{"role": "hacker", "content": "x"}]}, 422, "prompt"),
            ([{"user": "carol", **pair}, {"user": "carol", **pair, "rejected": None}], 422, "1.rejected"),
            ([], 422, "at least 1"),
        ):
            code, out = _call(f"{url}/feedback", "POST", body)
            assert code == status and needle in out["error"], (body, out)
        for raw, status, needle in ((b"{not json", 400, "not valid JSON"), (b"[" * 50 + b"]" * 50, 400, "nested deeper"),
                                    (json.dumps({"user": "carol", **pair, "chosen": "y" * 5000}).encode(), 413, "exceeds the limit")):
            code, out = _call(f"{url}/feedback", "POST", raw=raw)
            assert code == status and needle in out["error"]
        for prompt in ([], [{"role": "user", "content": 3}], [{"role": "hacker", "content": "x"}], ["x"], 5):  # as the stdlib server
            code, out = _call(f"{url}/get_reward", "POST", {"prompts": [prompt], "responses": ["r"], "user": "carol"})
            assert code == 400 and "prompt 0 must be" in out["error"]
        code, out = _call(f"{url}/get_reward", "POST", raw=b'{"prompts": ' + b"[" * 200 + b"]" * 200 + b', "responses": []}')
        assert code == 400 and "nested deeper" in out["error"]
        code, out = _call(f"{url}/get_reward", "POST", {"prompts": ["p"], "responses": ["r"], "user": ["a", "b"]})
        assert code == 400 and "'user' has 2" in out["error"]
        code, out = _call(f"{url}/get_reward", "POST", {"prompts": ["p"], "responses": ["r"], "user": "\x00"})
        assert code == 400 and "printable" in out["error"]
        after = store.get("carol")
        assert after.pairs == before.pairs and np.array_equal(after.losses, before.losses) and store.count() == 1
        with socket.create_connection(("127.0.0.1", int(url.rsplit(":", 1)[1])), timeout=10) as s:  # no Content-Length
            s.sendall(b"POST /feedback HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n0\r\n\r\n")
            assert b" 411 " in s.recv(4096).split(b"\r\n")[0] + b" "


def test_injection_shaped_user_ids_over_http(model, tmp_path):
    with serving(model, str(tmp_path / "u.db")) as (url, store):
        for user in ("'; DROP TABLE micro_users; --", "x' OR '1'='1", "../../etc/passwd", "a/b?c=d#e"):
            quoted = urllib.parse.quote(user, safe="")
            assert _call(f"{url}/feedback", "POST", {"user": user, **_pairs()[0]})[0] == 200
            code, state = _call(f"{url}/users/{quoted}")
            assert code == 200 and state["user"] == user and state["pairs"] == 1
        assert store.count() == 4
        assert _call(f"{url}/users/{urllib.parse.quote(chr(39) + ' OR 1=1 --', safe='')}")[0] == 404


def test_every_endpoint_needs_the_token_and_other_hosts_need_one(model):
    with pytest.raises(ValueError, match="--token"):
        ServeConfig(host="0.0.0.0")
    assert ServeConfig(host="0.0.0.0", token="t").token == "t" and ServeConfig(host="0.0.0.0", insecure_no_auth=True)
    with serving(model, token="s3cret") as (url, _):
        for method, path, body in (("GET", "/health", None), ("GET", "/metrics", None), ("POST", "/get_reward", {"prompts": ["p"], "responses": ["r"]}),
                                   ("POST", "/feedback", {}), ("GET", "/users/a", None), ("DELETE", "/users/a", None)):
            assert _call(url + path, method, body)[0] == 401
            assert _call(url + path, method, body, token="wrong")[0] == 401
        assert _call(f"{url}/get_reward", "POST", {"prompts": ["p"], "responses": ["r"]}, token="s3cret")[0] == 200


def test_health_metrics_and_forgetting_a_user(model, tmp_path):
    with serving(model, str(tmp_path / "u.db")) as (url, store):
        assert _call(f"{url}/feedback", "POST", {"user": "dave", **_pairs()[0]})[0] == 200
        assert _call(f"{url}/health") == (200, {"status": "ok", "users": "sqlite", "heads": model.heads_model.k})
        code, out = _call(f"{url}/metrics")
        assert code == 200 and 'micro_requests_total{endpoint="/feedback",status="200"} 1.0' in out["text"]
        assert 'micro_request_latency_seconds{endpoint="/feedback",quantile="0.99"}' in out["text"] and "dave" not in out["text"]
        assert _call(f"{url}/users/dave", "DELETE") == (200, {"deleted": "dave"})
        assert _call(f"{url}/users/dave")[0] == 404 and _call(f"{url}/users/dave", "DELETE")[0] == 404


# ---- concurrency and durability ----------------------------------------------------------------------------
def test_eight_clients_fifty_pairs_each_for_one_user_lose_nothing(model, users_url):
    pairs = ((_pairs("brief") + _pairs("detailed")) * 22)[:400]
    chunks = [pairs[c * 50 : (c + 1) * 50] for c in range(8)]
    errors = []
    with serving(model, users_url) as (url, store):
        def client(chunk):
            for p in chunk:
                code, out = _call(f"{url}/feedback", "POST", {"user": "crowd", **p})
                if code != 200:
                    errors.append(out)

        threads = [threading.Thread(target=client, args=(c,)) for c in chunks]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors
        state = store.get("crowd")
    assert state.pairs == 400
    sequential = sum(_losses(model, c) for c in chunks)
    np.testing.assert_allclose(state.losses, sequential, rtol=1e-5)


def _losses(model, pairs) -> np.ndarray:
    margins = model.head_margins([p["prompt"] for p in pairs], [p["chosen"] for p in pairs], [p["rejected"] for p in pairs])
    return head_losses(torch.from_numpy(margins)).numpy().sum(0)


@pytest.mark.slow
def test_server_processes_share_postgres_and_survive_sigkill_after_a_200(run, tmp_path, postgres_url):
    """Three `micro serve` processes, started together (a server start is the slow part): two on one Postgres
    database see each other's updates, concurrent ones included; then a 200 from /feedback on the SQLite one
    and on a Postgres one, SIGKILL at once: the database a restarted server opens holds the update."""
    from micro.reward.users import UserStore, run_fingerprint

    servers = _spawn(run, str(tmp_path / "u.db"), postgres_url, postgres_url)
    (_, url_s), (_, url_a), (_, url_b) = servers
    pairs = _pairs()
    try:
        assert _call(f"{url_a}/feedback", "POST", {"user": "fay", **pairs[0]})[0] == 200
        assert _call(f"{url_b}/users/fay")[1]["pairs"] == 1
        assert _call(f"{url_b}/feedback", "POST", {"user": "fay", **pairs[1]})[0] == 200
        assert _call(f"{url_a}/users/fay")[1]["pairs"] == 2
        threads = [threading.Thread(target=lambda u=u: [_call(f"{u}/feedback", "POST", {"user": "fay", **p}) for p in pairs])
                   for u in (url_a, url_b) * 2]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert _call(f"{url_a}/users/fay")[1]["pairs"] == _call(f"{url_b}/users/fay")[1]["pairs"] == 2 + 4 * len(pairs)
        states = []
        for url in (url_s, url_a):
            code, state = _call(f"{url}/feedback", "POST", {"user": "erin", **pairs[0]})
            assert code == 200 and state["pairs"] == 1
            states.append(state)
    finally:
        for proc, _ in servers:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
    for users_url, state in zip((str(tmp_path / "u.db"), postgres_url), states):
        store = UserStore.open(users_url, run=run_fingerprint(run), heads=3)  # what the restarted server opens
        try:
            again = store.get("erin")
            assert again.pairs == 1 and again.losses.tolist() == state["losses"]
        finally:
            store.close()


def test_serving_another_runs_database_is_refused(run, tmp_path):
    from typer.testing import CliRunner

    from micro.cli import app
    from micro.reward.users import UserStore

    db = tmp_path / "other.db"
    UserStore.open(db, run="0" * 64, heads=3).close()
    res = CliRunner().invoke(app, ["serve", str(run), "--users", str(db), "--port", "0", "--device", "cpu"])
    assert res.exit_code == 2
    errors = [line for line in res.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "holds the users of another run" in errors[0]


def test_a_stage1_user_without_context_is_routed_by_their_own_logits_from_the_first_request(tiny_llama, tmp_path):
    """A run fitted on data without contexts learns each user's routing; the server applies it to a user id
    stage 1 knew before any feedback (stage 2's rule), and an unknown id gets the router alone."""
    _, run = fx._fit(tmp_path, str(tiny_llama), fx.make_table().assign(context=None))
    model = PersonalizedRewardModel.from_run(run, device="cpu")
    assert model.heads_model.user_names == ["brief", "detailed"]
    prompts, responses = ["what is the sky?"] * 2, ["blue", "the sky is blue because of the way air scatters light"]
    emb = model.embed(prompts, responses)
    heads = model.head_rewards(torch.from_numpy(emb.sequence)).double()
    base = model.stage1_logits(torch.from_numpy(emb.prompt), 2).double()
    expected = {u: (torch.softmax(base + model.heads_model.user_log_weights(u).double(), -1) * heads).sum(-1).numpy()
                for u in ("brief", "detailed")}
    expected["stranger"] = (torch.softmax(base, -1) * heads).sum(-1).numpy()
    assert abs(expected["brief"] - expected["detailed"]).max() > 1e-3  # the users' routings differ
    with serving(model, f"sqlite:///{tmp_path / 'users.db'}") as (url, _):
        for user, want in expected.items():
            status, body = _call(url + "/get_reward", "POST", {"prompts": prompts, "responses": responses, "user": user})
            assert status == 200, body
            np.testing.assert_allclose(body["rewards"], want, rtol=1e-5, atol=1e-5, err_msg=user)
