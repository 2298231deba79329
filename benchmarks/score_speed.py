"""Scoring text vs `micro embed` on the same texts, and the HTTP server's overhead per request.

1. Throughput: `PersonalizedRewardModel.score` over every distinct (prompt, response) of a table with its
   contexts (so it runs the same forward passes as the cache: sequences, prompts, context + prompts) vs
   `embed_table` of that table into a fresh cache. Interleaved A B A B in one process; forward passes per
   second of each side and the median ratio (score / embed) with its range.
2. Server: POST /get_reward of `--request-rows` rows to `micro serve`'s server (a thread of this process,
   loopback). The overhead of a request is its round trip minus the time the server spent inside
   `model.score` for it (measured in the same request, so machine load cancels): HTTP, JSON both ways,
   parsing and checks. `model.score` called directly on the same rows is timed too, for scale.

    python benchmarks/score_speed.py --pairs 100 --rounds 3
    python benchmarks/score_speed.py --part server --pairs 20
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import torch

DATA = Path(os.environ.get("MICRO_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data")) / "helpsteer2_subset"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pairs", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--model", default="minilm")
    ap.add_argument("--request-rows", type=int, default=8)
    ap.add_argument("--requests", type=int, default=20)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--part", choices=("both", "throughput", "server"), default="both")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from micro.data import load_preferences
    from micro.embedcache import embed_table
    from micro.heads import MixtureConfig, run_fit_mixture
    from micro.reward import PersonalizedRewardModel

    table = load_preferences("helpsteer2", path=str(DATA)).sample(n=args.pairs, random_state=0).reset_index(drop=True)
    tmp = Path(tempfile.mkdtemp())
    first = embed_table(table, model=args.model, out=tmp / "c0.h5", progress=False, log=lambda *a: None)
    run_fit_mixture(tmp / "c0.h5", tmp / "run", MixtureConfig(k=4, epochs=1))
    model = PersonalizedRewardModel.from_run(tmp / "run", device="cpu")
    model.backbone.model  # load the weights before any clock starts
    assert model.router_input == "context", "the benchmark needs contexts so both sides run the same passes"
    # every distinct (prompt, response) with the contexts of its pairs: the cache's sequences + router inputs
    rows = {}
    for r in table.itertuples():
        for resp in (r.chosen, r.rejected):
            rows.setdefault((json.dumps(r.prompt), resp, r.context), (r.prompt, resp, r.context))
    prompts, responses, contexts = (list(x) for x in zip(*rows.values()))
    print(f"{len(table)} pairs, {len(prompts)} scored rows; cache forward passes {first.forward_sequences}")

    if args.part != "server":
        throughput(args, table, model, prompts, responses, contexts, tmp)
    if args.part != "throughput":
        server_overhead(args, model, prompts, responses, contexts)


def throughput(args, table, model, prompts, responses, contexts, tmp: Path) -> None:
    from micro.embedcache import embed_table

    embed_t, score_t, passes = [], [], {}
    for i in range(args.rounds):
        t = time.perf_counter()
        rep = embed_table(table, model=model.backbone, out=tmp / f"c{i + 1}.h5", progress=False, log=lambda *a: None)
        embed_t.append(time.perf_counter() - t)
        passes["embed"] = rep.forward_sequences
        n = [0]
        t = time.perf_counter()
        model.score(prompts, responses, contexts, on_batch=lambda k, total: n.__setitem__(0, total))
        score_t.append(time.perf_counter() - t)
        passes["score"] = n[0]
    e = [passes["embed"] / s for s in embed_t]
    s = [passes["score"] / x for x in score_t]
    ratio = [b / a for a, b in zip(e, s)]
    print(f"forward passes: embed {passes['embed']}, score {passes['score']}")
    print(f"embed  {np.median(e):8.1f} passes/s  (rounds: {', '.join(f'{x:.1f}' for x in e)})")
    print(f"score  {np.median(s):8.1f} passes/s  (rounds: {', '.join(f'{x:.1f}' for x in s)})")
    print(f"score / embed throughput: median {np.median(ratio):.3f} (range {min(ratio):.3f} - {max(ratio):.3f})")



def server_overhead(args, model, prompts, responses, contexts) -> None:
    from micro.reward.serve import make_server

    inside: list[float] = []

    def timed_score(p, r, c):
        t = time.perf_counter()
        out = model.score(p, r, c).tolist()
        inside.append(time.perf_counter() - t)
        return out

    server = make_server(timed_score, port=0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/get_reward"
    k = args.request_rows
    direct, http = [], []
    for j in range(args.requests):
        lo = (j * k) % max(1, len(prompts) - k)
        p, r, c = prompts[lo : lo + k], responses[lo : lo + k], contexts[lo : lo + k]
        body = json.dumps({"prompts": p, "responses": r, "contexts": c}).encode()
        for first in ((0, 1) if j % 2 else (1, 0)):  # alternate which goes first
            t = time.perf_counter()
            if first:
                with urllib.request.urlopen(urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})) as resp:
                    json.loads(resp.read())
                http.append(time.perf_counter() - t)
            else:
                model.score(p, r, c)
                direct.append(time.perf_counter() - t)
    server.shutdown()
    over = 1e3 * (np.asarray(http) - np.asarray(inside))
    print(f"server: {args.requests} requests of {k} rows ({len(body)} bytes each, last); direct score median "
          f"{1e3 * np.median(direct):.1f} ms, POST round trip median {1e3 * np.median(http):.1f} ms; overhead beyond "
          f"model.score median {np.median(over):.2f} ms (IQR {np.percentile(over, 25):.2f} - {np.percentile(over, 75):.2f}, "
          f"max {over.max():.2f} ms)")


if __name__ == "__main__":
    main()
