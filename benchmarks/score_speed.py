"""Scoring text vs `micro embed` on the same texts, and the HTTP server's overhead per request.

1. Throughput: `PersonalizedRewardModel.score` over every distinct (prompt, response) of a table with its
   contexts (so it runs the same forward passes as the cache: sequences, prompts, context + prompts) vs
   `embed_table` of that table into a fresh cache. Interleaved A B A B in one process; forward passes per
   second of each side and the median ratio (score / embed) with its range.
2. Server: one POST /get_reward of `--request-rows` rows to `micro serve`'s server (a thread of this
   process, loopback) vs `model.score` on the same rows; interleaved; the median difference in ms is the
   server's overhead per request beyond the forward pass (JSON both ways, HTTP, parsing).

    python benchmarks/score_speed.py --pairs 200 --rounds 3
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
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from micro.data import load_preferences
    from micro.embedcache import embed_table
    from micro.heads import MixtureConfig, run_fit_mixture
    from micro.reward import PersonalizedRewardModel
    from micro.reward.serve import make_server

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

    server = make_server(lambda p, r, c: model.score(p, r, c).tolist(), port=0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/get_reward"
    k = args.request_rows
    direct, http = [], []
    for j in range(args.requests):
        lo = (j * k) % max(1, len(prompts) - k)
        p, r, c = prompts[lo : lo + k], responses[lo : lo + k], contexts[lo : lo + k]
        t = time.perf_counter()
        model.score(p, r, c)
        direct.append(time.perf_counter() - t)
        body = json.dumps({"prompts": p, "responses": r, "contexts": c}).encode()
        t = time.perf_counter()
        with urllib.request.urlopen(urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})) as resp:
            json.loads(resp.read())
        http.append(time.perf_counter() - t)
    server.shutdown()
    diff = np.asarray(http) - np.asarray(direct)
    print(f"server: {args.requests} requests of {k} rows; direct score median {1e3 * np.median(direct):.1f} ms, "
          f"POST median {1e3 * np.median(http):.1f} ms; overhead median {1e3 * np.median(diff):.2f} ms "
          f"(IQR {1e3 * np.percentile(diff, 25):.2f} - {1e3 * np.percentile(diff, 75):.2f} ms)")


if __name__ == "__main__":
    main()
