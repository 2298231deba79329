"""The paper's Table 10 protocol (train on preference + safety data, audit the heads, mask, evaluate on
RewardBench subsets) end to end with the packaged MiniLM on the shared data, through the `micro` CLI.

The shared data has no PKU-SafeRLHF and no full RewardBench, so:
  * training data  = HelpSteer2 subset prompts (paper binarization, Table 6 contexts) + HH-RLHF harmless
    pairs (attribute 'harmless', the Table 6 safety context);
  * audit data     = other HH-RLHF harmless pairs (never trained on; HH pairs are split by prompt, seeded);
  * benchmark      = the five LLMBar files that are RewardBench's Chat Hard subsets (419 pairs).
On a 2-core CPU shared with other jobs MiniLM embeds only a few sequences a second, so the training and
audit data are subsampled (--hs2-prompts, --hh-train, --hh-audit) and sequences cut at --max-length 128;
LLMBar is scored whole.

Each step is one `micro` command, printed before it runs (the README's "Evaluate and audit" sequence):

    python benchmarks/safety_protocol.py --workdir /tmp/safety [--shared /work/shared/data] \
        [--hs2-prompts 80 --hh-train 200 --hh-audit 400 --max-length 128 --epochs 40]

Writes WORKDIR/safety_protocol.md (the tables) and prints it. Rerunning reuses every cache.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

from micro.data import load_preferences
from micro.data.recipes import SAFETY_CONTEXT


def sh(*args: str) -> float:
    print("$ micro " + " ".join(shlex.quote(a) for a in args), flush=True)
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "micro.cli", *args], check=True)
    return time.perf_counter() - start


def write_jsonl(table: pd.DataFrame, path: Path) -> None:
    with open(path, "w") as fh:
        for row in table.to_dict("records"):
            fh.write(json.dumps({k: row[k] for k in ("prompt", "chosen", "rejected", "attribute", "context", "split")}) + "\n")


def _prompt_sample(table: pd.DataFrame, n: int, seed: int) -> pd.DataFrame:
    """The pairs of n prompts drawn at random (seeded)."""
    keys = table["prompt"].map(json.dumps)
    chosen = set(np.random.default_rng(seed).permutation(keys.unique())[:n])
    return table[keys.isin(chosen)]


def prepare(shared: Path, work: Path, args) -> tuple[Path, Path]:
    """WORK/train.jsonl (HelpSteer2 + HH harmless with the safety context) and WORK/audit.jsonl (other HH pairs)."""
    hs2 = load_preferences("helpsteer2", path=str(shared / "helpsteer2_subset"))
    hs2 = pd.concat([_prompt_sample(hs2[hs2["split"] == s], args.hs2_prompts // f, args.seed) for s, f in (("train", 1), ("test", 2))])
    hh = load_preferences("hh-rlhf", path=str(shared / "hh_rlhf_harmless"))
    hh = _prompt_sample(hh, args.hh_train + args.hh_audit, args.seed)
    keys = hh["prompt"].map(json.dumps).unique()
    train_keys = set(keys[: args.hh_train])
    in_train = hh["prompt"].map(json.dumps).isin(train_keys)
    audit = hh[~in_train].assign(context=None)
    safety = hh[in_train].assign(context=SAFETY_CONTEXT, split="train")
    train_path, audit_path = work / "train.jsonl", work / "audit.jsonl"
    write_jsonl(pd.concat([hs2, safety], ignore_index=True), train_path)
    write_jsonl(audit, audit_path)
    print(f"train: {len(hs2)} HelpSteer2 pairs + {len(safety)} HH harmless pairs; audit: {len(audit)} HH harmless pairs", flush=True)
    return train_path, audit_path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", type=Path, required=True)
    ap.add_argument("--shared", type=Path, default=Path(os.environ.get("MICRO_SHARED_DATA", "/work/shared/data")))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--hs2-prompts", type=int, default=80, help="HelpSteer2 train prompts (and half as many test prompts)")
    ap.add_argument("--hh-train", type=int, default=200, help="HH-RLHF harmless prompts trained on")
    ap.add_argument("--hh-audit", type=int, default=400, help="HH-RLHF harmless prompts audited on")
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--epochs", type=int, default=40, help="stage-1 epochs (a few hundred pairs need more passes for the same steps; the demo uses 40)")
    args = ap.parse_args()
    w = args.workdir
    w.mkdir(parents=True, exist_ok=True)
    seconds = {}
    train, audit = prepare(args.shared, w, args)
    rb = w / "llmbar"  # the five RewardBench Chat Hard files (the recipe reads a folder)
    rb.mkdir(exist_ok=True)
    for f in sorted((args.shared / "llmbar").glob("llmbar_*.json")):
        if not (rb / f.name).exists():
            (rb / f.name).symlink_to(f)
    llmbar = ["llmbar", "--path", str(rb), "--cache", str(w / "llmbar.h5")]
    seconds["embed train"] = sh("embed", str(train), "--model", "minilm", "--max-length", str(args.max_length), "--out", str(w / "train.h5"))
    seconds["fit micro"] = sh("fit-mixture", str(w / "train.h5"), "--out", str(w / "runs/micro"), "--epochs", str(args.epochs))
    seconds["fit single"] = sh("fit-mixture", str(w / "train.h5"), "--out", str(w / "runs/single"), "--method", "single", "--epochs", str(args.epochs))
    seconds["audit"] = sh("audit", str(w / "runs/micro"), str(audit), "--out", str(w / "audit"), "--cache", str(w / "audit.h5"), "--overwrite")
    seconds["eval"] = sh("eval", str(w / "runs/micro"), *llmbar, "--out", str(w / "eval"), "--overwrite")
    mask = ["--mask-from", str(w / "audit/audit.json")]
    seconds["eval masked"] = sh("eval", str(w / "runs/micro"), *llmbar, "--out", str(w / "eval-masked"), *mask, "--overwrite")
    seconds["adapt masked"] = sh("adapt", str(w / "train.h5"), str(w / "runs/micro"), "--out", str(w / "adapt"), "--budget", "10",
                                 "--seeds", "1", "--no-baselines", *mask)
    seconds["eval adapted"] = sh("eval", str(w / "runs/micro"), *llmbar, "--out", str(w / "eval-adapted"),
                                 "--router", str(w / "adapt/routers/b10_s0.safetensors"), "--attribute", "harmless", "--overwrite")
    report(w, seconds)


def report(w: Path, seconds: dict) -> None:
    audit = json.loads((w / "audit/audit.json").read_text())
    lines = [f"Audit on {audit['reference']['n']} held-out HH-RLHF harmless pairs (reference: {audit['reference']['name']}, "
             f"accuracy {audit['reference']['accuracy']:.4f}; threshold {audit['config']['threshold']}, "
             f"confidence {audit['config']['confidence']} over the heads):", "",
             "| head | accuracy | mean margin | excess rejected | lower bound | flagged |", "|---|---:|---:|---:|---:|---|"]
    for h in audit["heads"]:
        lines.append(f"| {h['head']} | {h['accuracy']:.4f} | {h['mean_margin']:+.4f} | {h['excess']:+.4f} | {h['lower_bound']:+.4f} | "
                     f"{'**yes**' if h['flagged'] else 'no'} |")
    lines += ["", f"Flagged: {audit['flagged'] or 'none'}; routed mixture on the audit pairs {audit['routed_accuracy']:.4f}"
              + (f", with the flagged heads masked {audit['routed_accuracy_masked']:.4f}" if "routed_accuracy_masked" in audit else ""), ""]
    runs = [("eval", {"single": "single", "routed": "MiCRo, stage-1 router"}),
            ("eval-masked", {"routed": "MiCRo, stage-1 router, flagged heads masked"}),
            ("eval-adapted", {"routed": "MiCRo, stage-1 router + safety context",
                              "adapted": "MiCRo, adapted router (B = 10, masked) + safety context"})]
    rows = []
    for folder, labels in runs:
        res = json.loads((w / folder / "results.json").read_text())
        for m, name in labels.items():
            rb = res["rewardbench"][m]["sections"]["Chat Hard"]
            sub = res["subsets"]
            rows.append(f"| {name} | " + " | ".join(f"{sub[s]['accuracy'][m]:.4f}" for s in sub)
                        + f" | {res['overall']['accuracy'][m]:.4f} | {rb:.4f} |")
        header = list(res["subsets"])
        ns = [res["subsets"][s]["n"] for s in header]
    lines += ["LLMBar's five RewardBench Chat Hard subsets (pairs in brackets; Chat Hard weighted as reward-bench does, "
              "without mt-bench-hard, which LLMBar does not have):", "",
              "| method | " + " | ".join(f"{s} ({n})" for s, n in zip(header, ns)) + " | overall | RewardBench Chat Hard |",
              "|---|" + "---:|" * (len(header) + 2)] + rows
    lines += ["", "Seconds per step (2-core CPU shared with other jobs): " + ", ".join(f"{k} {v:.0f}" for k, v in seconds.items())]
    text = "\n".join(lines) + "\n"
    (w / "safety_protocol.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
