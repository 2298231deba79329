"""Stage-1 step-loop speed, measured side by side in one run (interleaved rounds, one thread):

    python benchmarks/fit_step_speed.py                  # 23.5K x 3072, K = 10: products / new / autograd / default
    python benchmarks/fit_step_speed.py --rounds 1 --pairs 6000

Per round, on a planted HelpSteer2-shaped cache (`simulate`, 5 groups, 3 pairs per prompt, 10 % test):
- `products`: the bare matrix products of the same number of steps (router layer forward and weight
  gradient, head margins and their gradient) on pre-gathered batches: the floor any step loop pays;
- `fit-4-epochs`: `fit_mixture(MixtureConfig(epochs=4))`, the hand-written stacked step;
- `autograd-4-epochs`: the same fit with `reference=True` (autograd on losses.py + fused AdamW: the step
  loop stage 1 used before);
- `default`: `fit_mixture(MixtureConfig())`, early stopping with 4 restarts (stop_on 'later-plateau');
- `nll-stop`: the same with `stop_on="nll"` (the plain held-out NLL alone: the default before 'later-plateau');
- `warm-refit`: the default with `refit_warm=0.25` (the refit continues the kept weights for a quarter of
  the steps instead of training the initialisation again).
Times are CPU seconds of this process (`time.process_time`, one thread), so other jobs on a shared
machine do not inflate them. Prints each timing, the ratios fit/products and autograd/fit, each early-stopping fit over both 4-epoch fits, and the largest
weight difference between the two 4-epoch fits (same init, same batches: float tolerance).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

from micro.embedcache import load_split
from micro.heads import MixtureConfig, evaluate, fit_mixture, simulate


#: the early-stopping fits timed beside the fixed ones: the default, and the plain held-out NLL stop
EARLY = {"default": MixtureConfig(), "nll-stop": MixtureConfig(stop_on="nll"), "warm-refit": MixtureConfig(refit_warm=0.25)}


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
    args = p.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "hs2.h5"
        simulate(path, groups=5, dim=args.dim, pairs=args.pairs, pairs_per_prompt=3, test_fraction=0.1)
        train, test = load_split(path, "train"), load_split(path, "test")
    fixed = MixtureConfig(epochs=4)
    steps = 4 * -(-len(train) // fixed.batch_size)
    print(json.dumps({"train_pairs": len(train), "d": args.dim, "k": fixed.k, "steps_4_epochs": steps, "torch": torch.__version__}), flush=True)
    times: dict[str, list[float]] = {"products": [], "fit-4-epochs": [], "autograd-4-epochs": [], **{name: [] for name in EARLY}}
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
        if not args.no_default:
            for name, config in EARLY.items():
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
    for name in EARLY:
        if name in med:
            summary[f"{name}_over_autograd_4_epochs"] = round(med[name] / med["autograd-4-epochs"], 2)
            summary[f"{name}_over_fit_4_epochs"] = round(med[name] / med["fit-4-epochs"], 2)
    print(json.dumps(summary), flush=True)


if __name__ == "__main__":
    main()
