#!/usr/bin/env bash
# One prepared call for a lent GPU (about 10 minutes on one H100/H200): everything lands in $OUT.
#   1. benchmarks/gpu_embed.py: Llama-3.2-3B-shaped decoder, the whole `micro embed` path and the forward
#      alone, tokens/s and MFU against the card's peak (gpu_embed.json);
#   2. the same with --compile (bucketed batch shapes), under a time limit (gpu_embed_compile.json);
#   3. the text-scoring path (`micro score` with a run fitted on the smoke cache);
#   4. a torchrun smoke shaped like an 8-rank run: 2 ranks, `--device cuda:0` (each rank must still take
#      its own GPU, or share the one card), the cache compared with a one-process run.
#
#   OUT=/path/to/results bash benchmarks/gpu_pass.sh
#   OUT=/tmp/pass GPU_PASS_SMOKE=1 bash benchmarks/gpu_pass.sh      # CPU smoke with tiny settings
set -u
OUT=${OUT:?set OUT to the folder for the results}
mkdir -p "$OUT"
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
: > "$OUT/summary.txt"
failed=0

step() {  # step NAME SECONDS COMMAND...: run with a time limit, log to $OUT/NAME.log, note the outcome
  local name=$1 limit=$2; shift 2
  local start=$SECONDS
  timeout "$limit" "$@" > "$OUT/$name.log" 2>&1
  local rc=$?
  echo "$name: rc=$rc, $((SECONDS - start)) s  ($*)" | tee -a "$OUT/summary.txt"
  [ "$rc" -eq 0 ] || failed=1
}

if [ -n "${GPU_PASS_SMOKE:-}" ]; then
  DEVICE=cpu
  BENCH=(--device cpu --layers 2 --hidden 256 --pairs 16 --max-length 256)
  COMPILE_PAIRS=()  # inductor on a shared CPU takes minutes per shape: the smoke skips --compile
else
  DEVICE=cuda:0
  BENCH=(--pairs 1024)
  COMPILE_PAIRS=(--pairs 128)  # every width bucket compiles once: fewer pairs, fewer buckets
fi

{ nvidia-smi || true; "$PY" -c "import torch, transformers; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'transformers', transformers.__version__)"; } > "$OUT/env.txt" 2>&1

step gpu_embed 300 "$PY" benchmarks/gpu_embed.py "${BENCH[@]}" --out-json "$OUT/gpu_embed.json"
if [ ${#COMPILE_PAIRS[@]} -gt 0 ]; then
  step gpu_embed_compile 200 "$PY" benchmarks/gpu_embed.py "${BENCH[@]}" "${COMPILE_PAIRS[@]}" --compile --out-json "$OUT/gpu_embed_compile.json"
else
  echo "gpu_embed_compile: skipped in the CPU smoke" | tee -a "$OUT/summary.txt"
fi

# a tiny Llama reward model and a pairs file for the scoring and torchrun smokes
SMOKE="$OUT/smoke"
mkdir -p "$SMOKE"
"$PY" - "$SMOKE" > "$OUT/smoke_setup.log" 2>&1 <<'PYEOF'
import importlib.util, sys
from pathlib import Path
out = Path(sys.argv[1])
spec = importlib.util.spec_from_file_location("fixtures", "tests/test_embed.py")
fixtures = importlib.util.module_from_spec(spec)
spec.loader.exec_module(fixtures)
fixtures.build_tiny_llama(out / "llama", hidden=64, layers=2, positions=256)
fixtures.make_table(n_prompts=24, seed=1).to_json(out / "pairs.jsonl", orient="records", lines=True)
PYEOF

step torchrun_2_ranks 180 "$PY" -m torch.distributed.run --standalone --nproc_per_node=2 -m micro.cli embed \
  "$SMOKE/pairs.jsonl" --model "$SMOKE/llama" --out "$SMOKE/dist.h5" --device "$DEVICE" --batch-tokens 256 --json
step one_process 120 "$PY" -m micro.cli embed "$SMOKE/pairs.jsonl" --model "$SMOKE/llama" --out "$SMOKE/one.h5" \
  --device "$DEVICE" --batch-tokens 256 --json
step torchrun_equals_one_process 60 "$PY" - "$SMOKE/dist.h5" "$SMOKE/one.h5" <<'PYEOF'
import sys
import h5py, numpy as np
with h5py.File(sys.argv[1]) as a, h5py.File(sys.argv[2]) as b:
    for g in ("sequences", "prompts", "context_prompts"):
        x, y = a[g]["embedding"][()].astype(np.float32), b[g]["embedding"][()].astype(np.float32)
        print(g, x.shape, "max |diff|", float(np.abs(x - y).max()))
        np.testing.assert_allclose(x, y, atol=2e-2, rtol=2e-2)
    for name in ("chosen", "rejected", "prompt", "context_prompt"):
        np.testing.assert_array_equal(a["pairs"][name][()], b["pairs"][name][()])
print("equal")
PYEOF
# the text-scoring path: a run fitted on the one-process cache scores the same pairs from text
step fit_for_score 120 "$PY" -m micro.cli fit-mixture "$SMOKE/one.h5" --out "$SMOKE/run" --k 2 --epochs 2 --quiet
step score 120 "$PY" -m micro.cli score "$SMOKE/run" "$SMOKE/pairs.jsonl" --out "$SMOKE/scored.jsonl" --device "$DEVICE" ${SCORE_ARGS:-}
rm -f "$SMOKE"/llama/*.safetensors  # keep $OUT small: the logs, JSON and caches are what come back

echo "done: $( [ $failed -eq 0 ] && echo all steps passed || echo some steps failed, see the logs )" | tee -a "$OUT/summary.txt"
exit $failed
