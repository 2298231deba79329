"""GPU embedding throughput of micro's forward path on a Llama-3.2-3B-shaped decoder (random weights).

Builds LlamaModel(hidden 3072, 28 layers, 24 heads, 8 KV heads, FFN 8192, vocab 128256) in bf16 with
SDPA attention directly on the device, draws a realistic length mix of (prompt + response) sequences
(log-normal, median ~500 tokens, clipped to [32, max length]), batches them the way `micro embed` does
(length-sorted, token budget) and runs them through `Backbone.forward` (the code the cache uses).
Reports tokens/s, sequences/s, padding and model FLOP utilisation against the card's bf16 dense peak.

    python benchmarks/gpu_embed.py                           # H100/H200, < 3 minutes
    python benchmarks/gpu_embed.py --device cpu --layers 2 --sequences 16 --max-length 256   # smoke
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

#: bf16 dense tensor-core peak (no sparsity), TFLOP/s.
PEAKS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "A10": 125.0}


def peak_tflops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key, value in PEAKS.items():
        if key in name:
            if key == "H100" and "PCIe" in name:
                return 756.0
            return value
    return None


def forward_flops(lengths: np.ndarray, n_layers: int, hidden: int, ffn: int, heads: int, kv_heads: int) -> float:
    """Forward FLOPs of the real tokens: 2 x matmul params per token + causal attention scores/values."""
    head_dim = hidden // heads
    per_layer = hidden * hidden * 2 + hidden * kv_heads * head_dim * 2 + 3 * hidden * ffn  # q,o + k,v + MLP
    dense = 2.0 * n_layers * per_layer * lengths.sum()
    attention = 2.0 * n_layers * hidden * (lengths.astype(np.float64) ** 2).sum()  # QK^T + AV, causal half of 4
    return dense + attention


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--layers", type=int, default=28)
    ap.add_argument("--sequences", type=int, default=2048)
    ap.add_argument("--max-length", type=int, default=4096)
    ap.add_argument("--batch-tokens", type=int, default=32768)
    ap.add_argument("--dtype", default=None, help="bf16 (default on cuda) / fp32 (default on cpu)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    from transformers import LlamaConfig, LlamaModel

    from micro.embedcache.backbone import Backbone, parse_dtype
    from micro.embedcache.plan import make_batches

    device = torch.device(args.device)
    dtype = parse_dtype(args.dtype, device)
    cfg = LlamaConfig(hidden_size=3072, intermediate_size=8192, num_hidden_layers=args.layers, num_attention_heads=24,
                      num_key_value_heads=8, vocab_size=128256, max_position_embeddings=131072, rope_theta=500000.0,
                      tie_word_embeddings=True, attn_implementation="sdpa")
    t0 = time.perf_counter()
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    with torch.device(device):
        model = LlamaModel(cfg).eval()
    torch.set_default_dtype(old)
    build_s = time.perf_counter() - t0
    n_params = sum(p.numel() for p in model.parameters())

    class _Tok:
        pad_token_id = 0

    bb = Backbone(model_id="random-llama-3.2-3b-shape", load_path="", tokenizer=_Tok(), config=cfg, kind="decoder",
                  pooling="last", template="none", max_length=args.max_length, revision=None, hidden_size=3072,
                  device=device, dtype=dtype, _model=model)
    rng = np.random.default_rng(args.seed)
    lengths = np.clip(rng.lognormal(np.log(500), 0.8, size=args.sequences), 32, args.max_length).astype(np.int64)
    ids = [rng.integers(1, cfg.vocab_size, size=n).astype(np.int32) for n in lengths]
    batches = make_batches(lengths, args.batch_tokens)
    padded = sum(len(b) * int(lengths[b].max()) for b in batches)

    def run(bs):
        for b in bs:
            pos = lengths[b] - 1
            bb.forward([ids[j] for j in b], None, pos, np.arange(len(b)))

    run(batches[:2])  # warm-up: kernels, allocator (includes the longest batch)
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    run(batches)
    if device.type == "cuda":
        torch.cuda.synchronize()
    secs = time.perf_counter() - t0
    flops = forward_flops(lengths, args.layers, 3072, 8192, 24, 8)
    peak = peak_tflops(device)
    result = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "dtype": str(dtype).replace("torch.", ""),
        "layers": args.layers,
        "params_b": round(n_params / 1e9, 3),
        "build_s": round(build_s, 1),
        "sequences": int(args.sequences),
        "tokens": int(lengths.sum()),
        "mean_length": round(float(lengths.mean()), 1),
        "batches": len(batches),
        "padding_fraction": round(1 - lengths.sum() / padded, 4),
        "seconds": round(secs, 2),
        "sequences_per_s": round(args.sequences / secs, 1),
        "tokens_per_s": round(lengths.sum() / secs, 0),
        "achieved_tflops": round(flops / secs / 1e12, 1),
        "mfu": round(flops / secs / 1e12 / peak, 3) if peak else None,
        "peak_memory_gib": round(torch.cuda.max_memory_allocated(device) / 2**30, 1) if device.type == "cuda" else None,
    }
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
