"""GPU embedding throughput on a Llama-3.2-3B-shaped decoder (random weights): the whole `micro embed` path
and the forward alone, tokens/s and model FLOP utilisation against the peak of the card found.

Builds LlamaModel(hidden 3072, 28 layers, 24 heads, 8 KV heads, FFN 8192, vocab 128256) in bf16 with SDPA
attention directly on the device and a Llama-3-style chat tokenizer (a small BPE, tests/test_embed.py), then:

1. whole path: `embed_table` on a synthetic preference table (log-normal prompt and response lengths,
   shared prompts) -- render, tokenize, plan, forward, part files, streamed merge -- timed end to end;
2. forward alone: the same plan's batches through `Backbone.prepare` / `Backbone.run`, one sync at the end.

MFU counts the real tokens' FLOPs only (padding is waste, not work): 2 x matmul parameters per token plus
causal attention. `--compile` runs both under torch.compile with bucketed batch shapes.

    python benchmarks/gpu_embed.py --out-json result.json                 # H100/H200, a few minutes
    python benchmarks/gpu_embed.py --device cpu --layers 2 --hidden 256 --pairs 24 --max-length 256   # smoke
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

ROOT = Path(__file__).resolve().parents[1]

#: bf16 dense tensor-core peak (no sparsity) in TFLOP/s, most specific name first. Sources: NVIDIA's data
#: sheets -- H200 (SXM 989, NVL 835: "1,979 / 1,671 TFLOPS with sparsity", nvidia.com/en-us/data-center/h200),
#: H100 (SXM 989, NVL 835, PCIe 756: "1,979 / 1,671 / 1,513 with sparsity", nvidia.com/en-us/data-center/h100),
#: A100 (312, "624 with sparsity", A100 data sheet), L40S (362, L40S data sheet), A10 (125, A10 data sheet).
PEAKS = (
    ("H200 NVL", 835.0), ("H200", 989.0),
    ("H100 NVL", 835.0), ("H100 PCIe", 756.0), ("H100", 989.0),
    ("A100", 312.0), ("L40S", 362.0), ("A10", 125.0),
)


def peak_tflops(device: torch.device) -> tuple[str, float | None]:
    if device.type != "cuda":
        return "cpu", None
    name = torch.cuda.get_device_name(device)
    for key, value in PEAKS:
        if key in name:
            return name, value
    return name, None


def forward_flops(lengths: np.ndarray, n_layers: int, hidden: int, ffn: int, heads: int, kv_heads: int) -> float:
    """Forward FLOPs of the real tokens: 2 x matmul params per token + causal attention scores/values."""
    head_dim = hidden // heads
    per_layer = hidden * hidden * 2 + hidden * kv_heads * head_dim * 2 + 3 * hidden * ffn  # q,o + k,v + MLP
    dense = 2.0 * n_layers * per_layer * lengths.sum()
    attention = 2.0 * n_layers * hidden * (lengths.astype(np.float64) ** 2).sum()  # QK^T + AV, causal half of 4
    return dense + attention


def synthetic_table(pairs: int, words: list[str], max_words: int, seed: int) -> pd.DataFrame:
    """Preference pairs with log-normal lengths (prompt median ~150 words, responses ~300), 2 pairs a prompt."""
    rng = np.random.default_rng(seed)

    def text(median):
        n = int(np.clip(rng.lognormal(np.log(median), 0.8), 4, max_words))
        return " ".join(rng.choice(words, size=n))

    rows = []
    for i in range(pairs):
        if i % 2 == 0:
            prompt = text(150) + "?"
        rows.append(dict(prompt=prompt, chosen=text(300), rejected=text(300), attribute="a", context=None, split="train"))
    return pd.DataFrame(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--layers", type=int, default=28)
    ap.add_argument("--hidden", type=int, default=3072, help="3072 = Llama-3.2-3B (FFN 8192/3072 x hidden)")
    ap.add_argument("--pairs", type=int, default=1024, help="preference pairs (about 2 x pairs forward sequences)")
    ap.add_argument("--max-length", type=int, default=4096)
    ap.add_argument("--batch-tokens", type=int, default=None, help="default: EmbedConfig's for the device")
    ap.add_argument("--dtype", default=None, help="bf16 (default on cuda) / fp32 (default on cpu)")
    ap.add_argument("--compile", action="store_true", help="torch.compile with bucketed batch shapes")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out-json", default=None)
    args = ap.parse_args()

    from transformers import AutoTokenizer, LlamaConfig, LlamaModel

    from micro.embedcache import EmbedConfig, build_plan, embed_table
    from micro.embedcache.backbone import Backbone, parse_dtype
    from micro.embedcache.batches import batch_shape, make_batches

    device = torch.device(args.device)
    dtype = parse_dtype(args.dtype, device)
    batch_tokens = EmbedConfig(batch_tokens=args.batch_tokens).batch_tokens_for(device.type)
    spec = importlib.util.spec_from_file_location("_embed_fixtures", ROOT / "tests" / "test_embed.py")
    fixtures = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fixtures)
    work = Path(tempfile.mkdtemp(prefix="gpu_embed_"))
    tok = AutoTokenizer.from_pretrained(fixtures.build_tiny_llama(work / "tok", positions=args.max_length))
    heads = max(args.hidden // 128, 1)
    ffn = args.hidden * 8192 // 3072
    cfg = LlamaConfig(hidden_size=args.hidden, intermediate_size=ffn, num_hidden_layers=args.layers, num_attention_heads=heads,
                      num_key_value_heads=max(heads // 3, 1), vocab_size=128256, max_position_embeddings=131072,
                      rope_theta=500000.0, tie_word_embeddings=True, attn_implementation="sdpa")
    t0 = time.perf_counter()
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float32 if device.type == "cpu" else dtype)
    with torch.device(device):
        model = LlamaModel(cfg).eval()
    torch.set_default_dtype(old)
    build_s = time.perf_counter() - t0
    bb = Backbone(model_id="random-llama-3.2-3b-shape", load_path="", tokenizer=tok, config=cfg, kind="decoder",
                  pooling="last", template=tok.chat_template, max_length=args.max_length, revision=None,
                  hidden_size=args.hidden, device=device, dtype=dtype, _model=model)
    if args.compile:
        bb.compile()
    table = synthetic_table(args.pairs, list(fixtures.WORDS), args.max_length, args.seed)
    plan = build_plan(table, bb)
    lengths = plan.lengths
    flops = forward_flops(lengths, args.layers, args.hidden, ffn, heads, max(heads // 3, 1))
    card, peak = peak_tflops(device)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    # forward alone: the plan's batches, prepared and launched back to back, one sync at the end
    batches = make_batches(lengths, batch_tokens, bucketed=args.compile)
    order = np.argsort(plan.out_job, kind="stable")
    starts = np.searchsorted(plan.out_job[order], np.arange(plan.n_jobs + 1))

    def forward_all(bs):
        outs = []
        for b in bs:
            o = np.concatenate([order[starts[j] : starts[j + 1]] for j in b])
            owners = np.argsort(b)[np.searchsorted(np.sort(b), plan.out_job[o])]
            rows, width = batch_shape(lengths, b, batch_tokens) if args.compile else (None, None)
            outs.append(bb.run(bb.prepare([plan.jobs.ids(j) for j in b], None, plan.out_pos[o], owners, rows=rows, width=width)))
        return outs

    t0 = time.perf_counter()
    forward_all(batches)  # warm-up: kernels, allocator, compiled shapes (includes the longest batch)
    sync()
    warm_s = time.perf_counter() - t0
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    forward_all(batches)
    sync()
    forward_s = time.perf_counter() - t0

    # the whole `micro embed` path: plan, forward, parts (writer thread), streamed merge
    t0 = time.perf_counter()
    report = embed_table(table, EmbedConfig(batch_tokens=batch_tokens, compile=args.compile, progress=False),
                         model=bb, out=work / "cache.h5", log=lambda *a, **k: None)
    sync()
    whole_s = time.perf_counter() - t0
    padded = sum(len(b) * int(lengths[b].max()) for b in batches)
    tokens = int(lengths.sum())

    def rate(secs):
        return {"seconds": round(secs, 2), "sequences_per_s": round(plan.n_jobs / secs, 1),
                "tokens_per_s": round(tokens / secs, 0), "achieved_tflops": round(flops / secs / 1e12, 2),
                "mfu": round(flops / secs / 1e12 / peak, 3) if peak else None}

    result = {
        "device": card,
        "peak_bf16_dense_tflops": peak,
        "dtype": str(dtype).replace("torch.", ""),
        "compile": args.compile,
        "layers": args.layers,
        "hidden": args.hidden,
        "params_b": round(sum(p.numel() for p in model.parameters()) / 1e9, 3),
        "build_s": round(build_s, 1),
        "pairs": args.pairs,
        "sequences": int(plan.n_jobs),
        "tokens": tokens,
        "mean_length": round(float(lengths.mean()), 1),
        "max_length": int(lengths.max()),
        "batch_tokens": batch_tokens,
        "batches": len(batches),
        "padding_fraction": round(1 - tokens / padded, 4),
        "warmup_s": round(warm_s, 1),
        "forward_only": rate(forward_s),
        "whole_embed_path": rate(whole_s),
        "embed_report": {k: report.to_dict()[k] for k in ("sequences", "batches", "tokens", "padding_fraction", "seconds")},
        "peak_memory_gib": round(torch.cuda.max_memory_allocated(device) / 2**30, 1) if device.type == "cuda" else None,
    }
    print(json.dumps(result, indent=1))
    if args.out_json:
        Path(args.out_json).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
