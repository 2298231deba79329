"""`micro embed` before and after a change, on a CPU: the whole `embed_table` path, interleaved A B A B.

The baseline is another commit of this repository (default: the merge base with `main`), unpacked with
`git archive` into a temporary folder; each side runs in its own subprocess (so the two `micro` packages
never meet), loads the backbone, embeds once to warm up and then times `--reps` runs of `embed_table`.
Rounds alternate baseline / current; each round gives the ratio baseline time / current time (> 1: the
current code is faster). Two backbones: the packaged MiniLM (encoder path) and a small random Llama
(decoder path: hidden 256, 4 layers, 512 positions, built with tests/test_embed.py's `build_tiny_llama`).
Table: random pairs of the shared HelpSteer2 subset.

    python benchmarks/decoder_path.py --pairs 60 --rounds 3
    python benchmarks/decoder_path.py --forward-only --pairs 60 --rounds 5

`--forward-only`: one process, the small Llama's batches through `Backbone.forward`, interleaved: the
previous decoder path (attention mask + KV cache) against the current one (no mask, no cache).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("MICRO_SHARED_DATA", ROOT.parents[1] / "shared" / "data")) / "helpsteer2_subset"

_WORKER = r"""
import json, sys, tempfile, time
from pathlib import Path
import torch
torch.set_num_threads(int(sys.argv[4]))
from micro.data import load_preferences
from micro.embedcache import embed_table, load_backbone
table = load_preferences("helpsteer2", path=sys.argv[2]).sample(n=int(sys.argv[3]), random_state=0).reset_index(drop=True)
bb = load_backbone(sys.argv[1], device="cpu")
bb.model
def once():
    with tempfile.TemporaryDirectory() as d:
        t0 = time.perf_counter()
        r = embed_table(table, model=bb, out=Path(d) / "c.h5", batch_tokens=int(sys.argv[5]), progress=False, log=lambda *a, **k: None)
        return time.perf_counter() - t0, r
once()
times = []
for _ in range(int(sys.argv[6])):
    t, r = once()
    times.append(t)
print("RESULT", json.dumps({"seconds": sorted(times)[len(times) // 2], "tokens": r.tokens, "batches": r.batches}))
"""


def unpack(ref: str, into: Path) -> Path:
    """The package as it was at `ref`, importable as `micro` from the returned folder."""
    pkg = into / "micro"
    pkg.mkdir(parents=True)
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", ref], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(pkg)], input=archive, check=True)
    return into


def run_side(pythonpath: Path | None, model: str, args) -> dict:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": str(args.threads)}
    if pythonpath is not None:
        env["PYTHONPATH"] = str(pythonpath)
    else:
        env.pop("PYTHONPATH", None)
    done = subprocess.run([sys.executable, "-c", _WORKER, model, str(args.data), str(args.pairs), str(args.threads),
                           str(args.batch_tokens), str(args.reps)], env=env, capture_output=True, text=True, cwd="/")
    if done.returncode != 0:
        raise RuntimeError(done.stderr[-3000:])
    return json.loads(done.stdout.split("RESULT", 1)[1])


def forward_only(args, llama: str) -> dict:
    import time

    import torch

    from micro.data import load_preferences
    from micro.embedcache import build_plan, load_backbone, make_batches

    torch.set_num_threads(args.threads)
    table = load_preferences("helpsteer2", path=str(args.data)).sample(n=args.pairs, random_state=0).reset_index(drop=True)
    bb = load_backbone(llama, device="cpu")
    plan = build_plan(table, bb)
    batches = make_batches(plan.lengths, args.batch_tokens)
    model = bb.model
    plain_forward = model.forward

    def with_cache(*a, **k):
        return plain_forward(*a, **{**k, "use_cache": True})

    def run(previous: bool):
        bb.mask_free = not previous
        model.forward = with_cache if previous else plain_forward
        t0 = time.perf_counter()
        for b in batches:
            sel = np.isin(plan.out_job, b)
            owners = np.argsort(b)[np.searchsorted(np.sort(b), plan.out_job[sel])]  # each output's place in b
            bb.forward([plan.ids[j] for j in b], None, plan.out_pos[sel], owners)
        return time.perf_counter() - t0

    run(False), run(True)  # warm-up
    ratios = []
    for r in range(args.rounds):
        prev, cur = run(True), run(False)
        ratios.append(prev / cur)
        print(f"forward round {r}: masked + KV cache {prev:.2f}s  mask-free, no cache {cur:.2f}s  ratio {ratios[-1]:.2f}x", flush=True)
    return {"tokens": int(plan.lengths.sum()), "batches": len(batches), "speedup_median": round(float(np.median(ratios)), 3),
            "speedup_min": round(min(ratios), 3), "speedup_max": round(max(ratios), 3)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--baseline", default=None, help="git ref of the baseline (default: merge base with main)")
    ap.add_argument("--data", default=str(DATA))
    ap.add_argument("--pairs", type=int, default=60)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--reps", type=int, default=1, help="timed embeds per subprocess (median)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch-tokens", type=int, default=2048)
    ap.add_argument("--models", default="minilm,llama", help="comma list of minilm, llama")
    ap.add_argument("--forward-only", action="store_true", help="the decoder forward alone, previous vs current path")
    args = ap.parse_args()
    if args.forward_only:
        with tempfile.TemporaryDirectory() as tmp:
            spec = importlib.util.spec_from_file_location("_embed_fixtures", ROOT / "tests" / "test_embed.py")
            fixtures = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(fixtures)
            llama = str(fixtures.build_tiny_llama(Path(tmp) / "llama", hidden=256, layers=4, positions=512))
            print(json.dumps({"pairs": args.pairs, "rounds": args.rounds, "forward_only": forward_only(args, llama)}, indent=1))
        return
    ref = args.baseline or subprocess.run(["git", "-C", str(ROOT), "merge-base", "HEAD", "main"], check=True,
                                          capture_output=True, text=True).stdout.strip()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        old = unpack(ref, tmp / "baseline")
        spec = importlib.util.spec_from_file_location("_embed_fixtures", ROOT / "tests" / "test_embed.py")
        fixtures = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(fixtures)
        models = {"minilm": "minilm", "llama": str(fixtures.build_tiny_llama(tmp / "llama", hidden=256, layers=4, positions=512))}
        results = {}
        for name in args.models.split(","):
            ratios, base_s, cur_s = [], [], []
            for r in range(args.rounds):
                a = run_side(old, models[name], args)
                b = run_side(None, models[name], args)
                base_s.append(a["seconds"])
                cur_s.append(b["seconds"])
                ratios.append(a["seconds"] / b["seconds"])
                print(f"{name} round {r}: baseline {a['seconds']:.2f}s  current {b['seconds']:.2f}s  ratio {ratios[-1]:.2f}x", flush=True)
            results[name] = {
                "baseline": ref[:10], "tokens": b["tokens"], "batches": b["batches"],
                "baseline_s_median": round(float(np.median(base_s)), 3), "current_s_median": round(float(np.median(cur_s)), 3),
                "speedup_median": round(float(np.median(ratios)), 3),
                "speedup_min": round(float(min(ratios)), 3), "speedup_max": round(float(max(ratios)), 3),
            }
        print(json.dumps({"pairs": args.pairs, "rounds": args.rounds, "threads": args.threads, "results": results}, indent=1))


if __name__ == "__main__":
    main()
