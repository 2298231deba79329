"""Stage-1 step-loop speed, measured side by side in one run (interleaved rounds, one thread):

    python benchmarks/fit_step_speed.py                  # 23.5K x 3072, K = 10: products / new / autograd / default
    python benchmarks/fit_step_speed.py --rounds 1 --pairs 6000

Per round, on a planted HelpSteer2-shaped cache (`simulate`, 5 groups, 3 pairs per prompt, 10 % test):
- `products`: the bare matrix products of the same number of steps (router layer forward and weight
  gradient, head margins and their gradient) on pre-gathered batches: the floor any step loop pays;
- `fit-4-epochs`: `fit_mixture(MixtureConfig(epochs=4))`, the hand-written stacked step;
- `autograd-4-epochs`: the same fit with `reference=True` (autograd on losses.py + fused AdamW: the step
  loop stage 1 used before);
- `default`: `fit_mixture(MixtureConfig())`, early stopping with 4 restarts per head scale (1, 0.01; stop_on 'later-plateau')
  and one start per scale without the router regulariser (`alpha_alternatives`, `alpha_restarts`; it trains on
  beside alpha's best start when it leads there by one standard error), the batch grown with the cache (128 here);
- `batch-32`: the default with `batch_size=32` (the default before the batch grew with the cache);
- `refit-best`: the default with `refit_se=0` (the refit as long as the best step, not the last evaluation
  within one standard error of it: the default before);
- `one-scale`: the default with `head_init=(1.0,)` (the restarts with the usual initialisation only, the
  default before both head scales);
- `nll-stop`: the same with `stop_on="nll"` (the plain held-out NLL alone: the default before 'later-plateau');
- `warm-refit`: the default with `refit_warm=0.25` (the refit continues the kept weights for a quarter of
  the steps instead of training the initialisation again);
- `one-alpha`: the default with `alpha_alternatives=()` (the router regulariser's weight `alpha` only: the default
  before the weight was chosen on one held-out slice);
- `before-4-epochs`: the 4-epoch fit of the code as it was before stage 1 stopped on evidence (commit
  `--before`, 1e2c90f: its default was this fixed fit), extracted with `git archive` and run in a child
  process on the same cache (one thread, CPU seconds of the fit alone). This is the "current 4-epoch fit"
  the convergence issue compares the default with; `--before ''` skips it.
Times are CPU seconds of this process (`time.process_time`, one thread), so other jobs on a shared
machine do not inflate them. Prints each timing, the ratios fit/products and autograd/fit, each early-stopping fit over both 4-epoch fits, and the largest
weight difference between the two 4-epoch fits (same init, same batches: float tolerance).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import torch

from micro.embedcache import load_split
from micro.heads import MixtureConfig, evaluate, fit_mixture, simulate


#: the early-stopping fits timed beside the fixed ones: the default, and the plain held-out NLL stop
EARLY = {"default": MixtureConfig(), "batch-32": MixtureConfig(batch_size=32), "nll-stop": MixtureConfig(stop_on="nll"),
         "warm-refit": MixtureConfig(refit_warm=0.25), "one-scale": MixtureConfig(head_init=(1.0,)),
         "refit-best": MixtureConfig(refit_se=0.0), "one-alpha": MixtureConfig(alpha_alternatives=())}


def products(steps: int, batch: int, d: int, k: int, hidden: int) -> float:
    g = torch.Generator().manual_seed(0)
    x, diff = torch.randn(batch, d, generator=g), torch.randn(batch, d, generator=g)
    w1, heads = torch.randn(d, hidden, generator=g), torch.randn(d, k, generator=g)
    g_hidden, g_margins = torch.randn(batch, hidden, generator=g), torch.randn(batch, k, generator=g)
    t = time.process_time()
    for _ in range(steps):
        x @ w1  # router layer forward
        x.T @ g_hidden  # its weight gradient
        diff @ heads  # head margins
        diff.T @ g_margins  # head gradient
    return time.process_time() - t


#: the child process that times the earlier code's 4-epoch fit (its package first on sys.path)
BEFORE_FIT = """
import json, sys, time, torch
sys.path.insert(0, sys.argv[1])
import micro
from micro.embedcache import load_split
from micro.heads import MixtureConfig, evaluate, fit_mixture
assert micro.__file__.startswith(sys.argv[1]), micro.__file__
torch.set_num_threads(1)
train, test = load_split(sys.argv[2], "train"), load_split(sys.argv[2], "test")
t = time.process_time()
model = fit_mixture(train, MixtureConfig(epochs=4))
seconds = time.process_time() - t
print(json.dumps({"seconds": seconds, "routed_acc": evaluate(model, test, "context")["average"]["routed_accuracy"]}))
"""


def extract(rev: str, into: Path) -> Path:
    """The package as it was at commit `rev` (this repository's `git archive`), as `into/micro`."""
    repo = Path(__file__).resolve().parents[1]
    tar = subprocess.run(["git", "-C", str(repo), "archive", rev], check=True, capture_output=True).stdout
    with tarfile.open(fileobj=io.BytesIO(tar)) as t:
        t.extractall(into / "micro", filter="data")
    return into


def before_fit(root: Path, cache: Path) -> tuple[float, float]:
    """(CPU seconds, routed test accuracy) of the earlier code's 4-epoch fit, in a child process."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", BEFORE_FIT, str(root), str(cache)], check=True, capture_output=True, text=True, env=env, cwd=root)
    row = json.loads(out.stdout.strip().splitlines()[-1])
    return row["seconds"], row["routed_acc"]


def timed_fit(train, config: MixtureConfig, **kw):
    t = time.process_time()
    model = fit_mixture(train, config, **kw)
    return time.process_time() - t, model


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pairs", type=int, default=26100, help="pairs in the simulated cache (26.1K: ~23.5K train)")
    p.add_argument("--dim", type=int, default=3072)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--no-default", action="store_true", help="skip the early-stopping fits")
    p.add_argument("--early", default=",".join(EARLY), help=f"the early-stopping fits to time, comma-separated (of {', '.join(EARLY)})")
    p.add_argument("--before", default="1e2c90f", help="commit whose 4-epoch fit is timed beside ('' skips it)")
    args = p.parse_args()
    early = {name: EARLY[name] for name in args.early.split(",") if name} if not args.no_default else {}
    if set(args.early.split(",")) - set(EARLY) - {""}:
        p.error(f"--early: unknown fits {sorted(set(args.early.split(',')) - set(EARLY) - {''})}; choose from {', '.join(EARLY)}")
    torch.set_num_threads(1)
    tmp = tempfile.TemporaryDirectory()
    path = Path(tmp.name) / "hs2.h5"
    simulate(path, groups=5, dim=args.dim, pairs=args.pairs, pairs_per_prompt=3, test_fraction=0.1)
    train, test = load_split(path, "train"), load_split(path, "test")
    before = extract(args.before, Path(tmp.name) / "before") if args.before else None
    fixed = MixtureConfig(epochs=4).resolved(train)
    steps = 4 * -(-len(train) // fixed.batch_size)
    print(json.dumps({"train_pairs": len(train), "d": args.dim, "k": fixed.k, "steps_4_epochs": steps, "torch": torch.__version__}), flush=True)
    times: dict[str, list[float]] = {"products": [], "fit-4-epochs": [], "autograd-4-epochs": [], "before-4-epochs": [], **{name: [] for name in early}}
    for r in range(args.rounds):
        times["products"].append(products(steps, fixed.batch_size, args.dim, fixed.k, fixed.hidden))
        s, new = timed_fit(train, fixed)
        times["fit-4-epochs"].append(s)
        s, ref = timed_fit(train, fixed, reference=True)
        times["autograd-4-epochs"].append(s)
        diff = max(float((a - b).abs().max()) for a, b in zip(new.state_dict().values(), ref.state_dict().values()))
        acc = [evaluate(m, test, "context")["average"]["routed_accuracy"] for m in (new, ref)]
        row = {"round": r, **{k: round(v[-1], 2) for k, v in times.items() if v}, "max_weight_diff": diff,
               "routed_acc_fit": round(acc[0], 4), "routed_acc_autograd": round(acc[1], 4)}
        if before is not None:
            s, acc_before = before_fit(before, path)
            times["before-4-epochs"].append(s)
            row.update({"before-4-epochs": round(s, 2), "routed_acc_before": round(acc_before, 4)})
        if early:
            for name, config in early.items():
                s, model = timed_fit(train, config)
                times[name].append(s)
                rec, res = model.fit_record, evaluate(model, test, "context")["average"]
                row.update({name: round(s, 2), f"{name}_steps": rec.steps + rec.refit_steps, f"{name}_best_step": rec.best_step,
                            f"{name}_kept": rec.kept_criterion, f"{name}_routed_acc": round(res["routed_accuracy"], 4),
                            f"{name}_best_acc": round(res["best_accuracy"], 4)})
        print(json.dumps(row), flush=True)
    med = {k: statistics.median(v) for k, v in times.items() if v}
    summary = {
        "median_seconds": {k: round(v, 2) for k, v in med.items()},
        "fit_over_products": round(med["fit-4-epochs"] / med["products"], 2),
        "autograd_over_products": round(med["autograd-4-epochs"] / med["products"], 2),
        "autograd_over_fit (old/new)": round(med["autograd-4-epochs"] / med["fit-4-epochs"], 2),
    }
    for name in early:
        if name in med:
            summary[f"{name}_over_autograd_4_epochs"] = round(med[name] / med["autograd-4-epochs"], 2)
            summary[f"{name}_over_fit_4_epochs"] = round(med[name] / med["fit-4-epochs"], 2)
            if "before-4-epochs" in med:
                summary[f"{name}_over_before_4_epochs"] = round(med[name] / med["before-4-epochs"], 2)
    print(json.dumps(summary), flush=True)
    tmp.cleanup()


if __name__ == "__main__":
    main()
