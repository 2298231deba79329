"""Online users on the demo data through a real `micro serve --users` (real HTTP, real database).

    python benchmarks/online.py curve   --out bench-online          # learning curve -> curve.md, curve.png
    python benchmarks/online.py latency --out bench-online [--postgres URL]   # latency / throughput -> latency.md

Both build (once) a MiniLM cache of the demo data and a `micro fit-mixture --method micro` run in OUT.

curve: each demo group is one user with no context; its training pairs (seeded shuffle) are sent one at a
time to POST /feedback, and after n = 0, 1, 2, 5, 10, 25, 50 pairs the group's test pairs are scored with
POST /get_reward {"user": ...}: accuracy = share of test pairs whose chosen response gets the higher
reward. Beside it, batch Hedge: the same first n pairs' head losses summed in one call
(context_log_weights) and the test pairs scored in-process with those weights.

latency: 100,000 users are written to the database first; then 1 and 8 concurrent clients send /feedback
(one pair) and /get_reward (one row, a random known user) requests over keep-alive connections. Each
reply carries the seconds its batch spent in the model (X-Backbone-Seconds) and waited for it
(X-Queue-Seconds: the window and earlier batches); overhead = client latency - backbone - queue (HTTP,
JSON, validation, database). The database calls alone are also timed in-process. Throughput of
/get_reward with 8 clients: micro-batching (window 5 ms) vs one request per forward (--max-batch-rows 1).
Postgres: --postgres URL, or a throwaway server started with initdb/pg_ctl when the binaries exist.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np

GRID = (0, 1, 2, 5, 10, 25, 50)


def prepare(out: Path) -> tuple[Path, "object"]:
    """(run dir, demo table): the MiniLM cache and the micro run, built once."""
    from micro.data import load_preferences

    table = load_preferences("demo")
    run = out / "run"
    if not (run / "model.safetensors").exists():
        from micro.embedcache import embed_table
        from micro.heads import MixtureConfig, run_fit_mixture

        out.mkdir(parents=True, exist_ok=True)
        embed_table(table, model="minilm", out=out / "demo.h5", progress=False, log=lambda *a: None, overwrite=True)
        run_fit_mixture(out / "demo.h5", run, MixtureConfig(method="micro"), overwrite=True)
    return run, table


def spawn(run: Path, users: str, *extra: str) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen([sys.executable, "-m", "micro.cli", "serve", str(run), "--users", users, "--port", "0", "--device", "cpu", *extra],
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    line = ""
    while "serving rewards on" not in line:
        line = proc.stderr.readline()
        if not line and proc.poll() is not None:
            raise RuntimeError("server exited before listening")
    threading.Thread(target=lambda: [None for _ in proc.stderr], daemon=True).start()  # keep its stderr drained
    return proc, line.split("serving rewards on ")[1].strip().rsplit("/", 1)[0]


def post(url: str, body: object, conn=None) -> tuple[dict, float, float, float]:
    """(reply, seconds, backbone seconds, queue seconds); `conn` an http.client connection to reuse (keep-alive)."""
    import http.client
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    own = conn is None
    conn = conn or http.client.HTTPConnection(parts.hostname, parts.port, timeout=600)
    data = json.dumps(body).encode()
    start = time.perf_counter()
    conn.request("POST", parts.path, body=data, headers={"Content-Type": "application/json"})
    resp = conn.getresponse()
    reply = json.loads(resp.read())
    seconds = time.perf_counter() - start
    if resp.status != 200:
        raise RuntimeError(f"{url}: {resp.status} {reply}")
    if own:
        conn.close()
    return reply, seconds, float(resp.getheader("X-Backbone-Seconds", "0")), float(resp.getheader("X-Queue-Seconds", "0"))


# ---- learning curve --------------------------------------------------------------------------------------
def curve(out: Path, max_pairs: int, seed: int) -> str:
    import torch

    from micro.reward import PersonalizedRewardModel
    from micro.reward.users import UserState
    from micro.router.hedge import head_losses

    run, table = prepare(out)
    model = PersonalizedRewardModel.from_run(run, device="cpu")
    db = out / "curve-users.db"
    for suffix in ("", "-wal", "-shm"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)
    proc, url = spawn(run, str(db))
    rows = []
    try:
        for group in sorted(table["attribute"].unique()):
            train = table[(table["attribute"] == group) & (table["split"] == "train")].sample(frac=1.0, random_state=seed).head(max_pairs)
            test = table[(table["attribute"] == group) & (table["split"] == "test")]
            tp, tc, tr = test["prompt"].tolist(), test["chosen"].tolist(), test["rejected"].tolist()
            margins = model.head_margins(train["prompt"].tolist(), train["chosen"].tolist(), train["rejected"].tolist())
            losses = head_losses(torch.from_numpy(margins)).numpy()
            sent, user = 0, f"group:{group}"
            for n in GRID:
                for _, r in train.iloc[sent:n].iterrows():
                    post(f"{url}/feedback", {"user": user, "prompt": r["prompt"], "chosen": r["chosen"], "rejected": r["rejected"]})
                sent = n
                reply, *_ = post(f"{url}/get_reward", {"prompts": tp + tp, "responses": tc + tr, "user": user})
                r = np.asarray(reply["rewards"])
                online = float(np.mean(r[: len(tp)] > r[len(tp):]))
                state = None if n == 0 else UserState(user, losses[:n].sum(0), n, None, 0.0)
                b = model.score(tp + tp, tc + tr, users=[state] * (2 * len(tp)) if state else None)
                batch = float(np.mean(b[: len(tp)] > b[len(tp):]))
                rows.append({"group": group, "n": n, "online": online, "batch": batch})
                print(json.dumps(rows[-1]), flush=True)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    (out / "curve.json").write_text(json.dumps(rows, indent=1))
    return _curve_table(rows, out)


def _curve_table(rows: list[dict], out: Path) -> str:
    lines = ["| pairs per user n | " + " | ".join(str(n) for n in GRID) + " |", "|---|" + "---|" * len(GRID)]
    for key, name in (("online", "online (/feedback one at a time)"), ("batch", "batch Hedge, same pairs")):
        lines.append(f"| {name} | " + " | ".join(f"{np.mean([r[key] for r in rows if r['n'] == n]):.3f}" for n in GRID) + " |")
    gap = max(abs(r["online"] - r["batch"]) for r in rows)
    lines.append(f"\nmean test accuracy over {len({r['group'] for r in rows})} groups; largest per-group |online - batch| = {gap:.4f}")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(5, 3.2))
        for key in ("online", "batch"):
            ax.plot(GRID, [np.mean([r[key] for r in rows if r["n"] == n]) for n in GRID], marker="o", label=key)
        ax.set_xscale("symlog", linthresh=1)
        ax.set_xlabel("labelled pairs per user")
        ax.set_ylabel("test accuracy")
        ax.legend()
        fig.tight_layout()
        fig.savefig(out / "curve.png", dpi=120)
    except ImportError:
        pass
    text = "\n".join(lines)
    (out / "curve.md").write_text(text + "\n")
    return text


# ---- latency -------------------------------------------------------------------------------------------
def populate(store, users: int, heads: int) -> None:
    """`users` users with one pair each, written in bulk (one transaction)."""
    rng = np.random.default_rng(0)
    now = time.time()
    with store._write() as conn:
        for start in range(0, users, 5000):
            params = [(f"bench-{i}", json.dumps(rng.exponential(size=heads).tolist()), 1, None, now) for i in range(start, min(users, start + 5000))]
            cur = conn.cursor()
            cur.executemany(store.dialect.sql("INSERT INTO micro_users (user_id, losses, pairs, context, updated_at) VALUES (?, ?, ?, ?, ?) "
                                              "ON CONFLICT (user_id) DO NOTHING"), params)


def measure(url: str, table, clients: int, per_client: int, endpoint: str, users: int) -> dict:
    """Latency split of `clients` concurrent keep-alive clients: total, backbone (the request's batch in the
    model), queue (waiting for the model: the window and earlier batches), and the rest = overhead."""
    import http.client
    from urllib.parse import urlsplit

    rows = table[table["split"] == "train"].to_dict("records")
    results: list[tuple[float, float, float]] = []
    lock = threading.Lock()
    host, port = urlsplit(url).hostname, urlsplit(url).port

    def client(c: int):
        rng, conn = random.Random(c), http.client.HTTPConnection(host, port, timeout=600)
        for _ in range(per_client):
            r, user = rng.choice(rows), f"bench-{rng.randrange(users)}"
            if endpoint == "feedback":
                body = {"user": user, "prompt": r["prompt"], "chosen": r["chosen"], "rejected": r["rejected"]}
            else:
                body = {"prompts": [r["prompt"]], "responses": [r["chosen"]], "user": user}
            _, seconds, backbone, queued = post(f"{url}/{endpoint}", body, conn)
            with lock:
                results.append((seconds, backbone, queued))
        conn.close()

    start = time.perf_counter()
    threads = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    total, backbone, queued = (np.array(x) for x in zip(*results))
    q = lambda x, p: float(np.percentile(x, p) * 1000)  # noqa: E731
    rest = total - backbone - queued
    return {"endpoint": endpoint, "clients": clients, "requests": len(results), "p50_ms": q(total, 50), "p99_ms": q(total, 99),
            "backbone_p50_ms": q(backbone, 50), "backbone_p99_ms": q(backbone, 99), "queue_p50_ms": q(queued, 50), "queue_p99_ms": q(queued, 99),
            "overhead_p50_ms": q(rest, 50), "overhead_p99_ms": q(rest, 99), "req_per_s": len(results) / wall}


def database_ops(store, users: int, heads: int, n: int = 300) -> dict:
    """p50/p99 ms of the database calls a request makes, in-process on the populated database."""
    rng = random.Random(0)
    timings = {"add_pairs (feedback)": [], "get_many (get_reward)": []}
    for _ in range(n):
        user = f"bench-{rng.randrange(users)}"
        t = time.perf_counter()
        store.add_pairs(user, np.ones((1, heads)))
        timings["add_pairs (feedback)"].append(time.perf_counter() - t)
        t = time.perf_counter()
        store.get_many([f"bench-{rng.randrange(users)}"])
        timings["get_many (get_reward)"].append(time.perf_counter() - t)
    return {k: (float(np.percentile(v, 50) * 1000), float(np.percentile(v, 99) * 1000)) for k, v in timings.items()}


def latency(out: Path, postgres: str | None, users: int, per_client: int) -> str:
    from micro.reward import PersonalizedRewardModel
    from micro.reward.serve import open_store

    run, table = prepare(out)
    model = PersonalizedRewardModel.from_run(run, device="cpu")
    pg = None
    if postgres is None:
        pg = start_postgres()
        postgres = pg[0] if pg else None
    backends = {"sqlite": str(out / "latency-users.db")} | ({"postgres": postgres} if postgres else {})
    for suffix in ("", "-wal", "-shm"):
        Path(f"{backends['sqlite']}{suffix}").unlink(missing_ok=True)
    results, dbops = [], {}
    try:
        for name, url_db in backends.items():
            store = open_store(model, url_db)
            if store.count() < users:
                populate(store, users, model.heads_model.k)
            print(f"{name}: {store.count()} users", flush=True)
            dbops[name] = database_ops(store, users, model.heads_model.k)
            print(json.dumps(dbops[name]), flush=True)
            store.close()
            proc, url = spawn(run, url_db)
            try:
                measure(url, table, 1, 5, "get_reward", users)  # warm-up
                for endpoint in ("feedback", "get_reward"):
                    for clients in (1, 8):
                        r = {"database": name, **measure(url, table, clients, per_client if clients == 1 else max(5, per_client // 2), endpoint, users)}
                        results.append(r)
                        print(json.dumps(r), flush=True)
            finally:
                proc.terminate()
                proc.wait(timeout=30)
        throughput = {}
        for label, extra in (("micro-batching (window 5 ms)", ("--batch-window-ms", "5")), ("one request per forward", ("--max-batch-rows", "1", "--batch-window-ms", "0"))):
            proc, url = spawn(run, backends["sqlite"], *extra)
            try:
                measure(url, table, 1, 5, "get_reward", users)
                throughput[label] = measure(url, table, 8, per_client, "get_reward", users)["req_per_s"]
            finally:
                proc.terminate()
                proc.wait(timeout=30)
    finally:
        if pg:
            stop_postgres(pg)
    (out / "latency.json").write_text(json.dumps({"latency": results, "throughput": throughput, "database_ops": dbops}, indent=1))
    lines = ["| database | endpoint | clients | p50 ms | p99 ms | backbone p50 / p99 ms | queue p50 / p99 ms | overhead p50 / p99 ms |",
             "|---|---|---|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r['database']} | /{r['endpoint']} | {r['clients']} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} | "
                     f"{r['backbone_p50_ms']:.1f} / {r['backbone_p99_ms']:.1f} | {r['queue_p50_ms']:.1f} / {r['queue_p99_ms']:.1f} | "
                     f"{r['overhead_p50_ms']:.1f} / {r['overhead_p99_ms']:.1f} |")
    lines += ["", "| database, 100,000 users | call | p50 ms | p99 ms |", "|---|---|---|---|"]
    lines += [f"| {db} | {op} | {a:.2f} | {b:.2f} |" for db, ops in dbops.items() for op, (a, b) in ops.items()]
    lines += ["", "| /get_reward, 8 clients | requests/s |", "|---|---|"] + [f"| {k} | {v:.1f} |" for k, v in throughput.items()]
    text = "\n".join(lines)
    (out / "latency.md").write_text(text + "\n")
    return text


def start_postgres():
    """(url, data dir, pg_ctl prefix) of a throwaway Postgres server, or None without the binaries."""
    import pwd
    import shutil
    import socket

    bindirs = [Path(os.path.realpath(shutil.which("pg_ctl"))).parent] if shutil.which("pg_ctl") else []
    bindirs += sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)
    bindir = next((b for b in bindirs if (b / "initdb").exists()), None)
    if bindir is None:
        print("no PostgreSQL binaries: Postgres skipped", flush=True)
        return None
    root = Path(tempfile.mkdtemp(prefix="micro-bench-pg-"))
    prefix = []
    if os.geteuid() == 0:
        user = pwd.getpwnam("postgres")
        os.chown(root, user.pw_uid, user.pw_gid)
        prefix = ["runuser", "-u", "postgres", "--"]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    subprocess.run(prefix + [str(bindir / "initdb"), "-D", str(root / "data"), "-A", "trust", "-U", "postgres", "--no-sync"], check=True, capture_output=True)
    subprocess.run(prefix + [str(bindir / "pg_ctl"), "-D", str(root / "data"), "-o", f"-p {port} -k {root} -c listen_addresses=127.0.0.1",
                             "-l", str(root / "log"), "-w", "start"], check=True, capture_output=True)
    return f"postgresql://postgres@127.0.0.1:{port}/postgres", root, prefix, bindir


def stop_postgres(pg) -> None:
    import shutil

    _, root, prefix, bindir = pg
    subprocess.run(prefix + [str(bindir / "pg_ctl"), "-D", str(root / "data"), "-m", "fast", "-w", "stop"], capture_output=True)
    shutil.rmtree(root, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("what", choices=("curve", "latency"))
    parser.add_argument("--out", default="bench-online")
    parser.add_argument("--max-pairs", type=int, default=max(GRID))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--postgres", default=None, help="a postgresql:// URL (default: start a throwaway server)")
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--per-client", type=int, default=30)
    args = parser.parse_args()
    out = Path(args.out)
    text = curve(out, args.max_pairs, args.seed) if args.what == "curve" else latency(out, args.postgres, args.users, args.per_client)
    print(text)


if __name__ == "__main__":
    main()
