"""Stage 1 with user ids and no contexts (docs/users.md): does each user's own routing find the groups that
share their prompts?

    python benchmarks/users.py --out /tmp/users.md                 # planted x 3 seeds + demo x 3 fit seeds, ~25 min on 1 thread
    python benchmarks/users.py --skip-demo --seeds 1 --pairs 2000  # a quick look

Two kinds of data, both without contexts, where the attribute is the user (annotator group) id:
 - planted: `simulate(regime="shared", groups=G, pairs=P, dim=D, seed=s, contexts=False)`: every group labels
   the same triples with its own centred BT direction, so the prompt says nothing about the group;
 - demo: the built-in demo table (8 groups, 4 tastes) with its context column emptied, embedded with the
   packaged MiniLM (`embed_table(..., model="minilm")`, what `micro embed` writes for such data); each stage-1
   seed is a fresh fit on the same cache (--demo-cache reuses a cache built before).
For each, stage 1 is fitted with the defaults and three designs:
 - off: `MixtureConfig(router_input="prompt")`, stage 1 as it was (the prompt router alone);
 - users: `MixtureConfig()` (router_input 'auto' routes by user here): f(g) = softmax(b + u_g), the router's
   last bias plus the user's logits, the same for every prompt (the design kept);
 - users+prompt: the same with `micro.heads.stack.USERS_READ_PROMPT = True`: softmax(router(x) + u_g).
Columns: 'best' the stage-1 best head per group (paper Figure 2), 'own' the accuracy of the seen user's own
routing (each pair of user g routed by the user's logits), 'router' the router alone (a user the run has
not seen), 'oracle' a BT head per group on all of its training pairs (router/baselines.py fit_oracle_head,
the `oracle` method's default grid), 'truth' (planted only) each group's own planted rule on its test pairs. All on
the test split; means over the groups, then mean ± sample std over the seeds. 'search steps': the early-stopped
search's steps (before the refit), 's / fit' the wall time of one fit.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

from _common import add_output_options, finish, start_clock, work_folder
from micro.embedcache import load_split
from micro.heads import MixtureConfig, evaluate, fit_mixture, simulate

DESIGNS = ("off", "users", "users+prompt")
COLUMNS = ("best", "own", "router")


def fit_design(train, design: str, seed: int, user_scale: float | None = None):
    """The stage-1 model of one design (the module constants restored afterwards)."""
    from micro.heads import stack as stack_module

    before = stack_module.USERS_READ_PROMPT, stack_module.USER_SCALE
    stack_module.USERS_READ_PROMPT = design == "users+prompt"
    stack_module.USER_SCALE = before[1] if user_scale is None else user_scale
    try:
        return fit_mixture(train, MixtureConfig(seed=seed, router_input="prompt" if design == "off" else "auto"))
    finally:
        stack_module.USERS_READ_PROMPT, stack_module.USER_SCALE = before


@torch.no_grad()
def scores(model, test) -> dict[str, list[float]]:
    """{column: [per group]} of one fitted model on the test split."""
    from micro.embedcache.rows import user_rows

    per = evaluate(model, test, "prompt")["per_attribute"]
    margins = test.diff @ model.head_vectors().T
    alone = (model.log_weights(test.prompt_inputs()).exp() * margins).sum(-1)
    users = user_rows(test, model.user_names) if model.user_names else None
    own = (model.log_weights(test.prompt_inputs(), users).exp() * margins).sum(-1)
    out = {c: [] for c in COLUMNS}
    for a, name in enumerate(test.attributes):
        mask = test.attribute == a
        out["best"].append(per[name]["best_accuracy"])
        out["own"].append(float((own[mask] > 0).float().mean()))
        out["router"].append(float((alone[mask] > 0).float().mean()))
    return out


def oracle(train, test) -> list[float]:
    from micro.router.baselines import fit_oracle_head
    from micro.router.methods.upper import OracleOptions

    grid = OracleOptions().grid
    return [float(((test.diff[test.attribute == a] @ fit_oracle_head(train.diff[train.attribute == a], grid)[0]) > 0).float().mean())
            for a in range(len(test.attributes))]


def one_cache(train, test, seed: int, designs: list[str], user_scale: float | None, truth=None) -> dict:
    """{"oracle": [G], "truth": [G] or None, design: {column: [G], "seconds"}} of one cache and fit seed."""
    row = {"oracle": oracle(train, test), "truth": None}
    if truth is not None:
        rows, groups = test.pair_rows, test.attribute.numpy()
        row["truth"] = [float((truth.pair_scores[rows[groups == g], g] > 0).mean()) for g in range(truth.groups)]
    for design in designs:
        start = time.perf_counter()
        model = fit_design(train, design, seed, user_scale)
        row[design] = {**scores(model, test), "seconds": time.perf_counter() - start, "steps": model.fit_record.steps}
        print(f"  {design}: best {np.mean(row[design]['best']):.3f} own {np.mean(row[design]['own']):.3f} "
              f"router {np.mean(row[design]['router']):.3f} ({row[design]['seconds']:.0f} s)", file=sys.stderr, flush=True)
    return row


def planted(seed: int, args, work: Path) -> tuple:
    path = work / f"shared_{seed}.h5"
    truth = simulate(path, regime="shared", groups=args.groups, pairs=args.pairs, dim=args.dim, seed=seed, contexts=False, overwrite=True)
    return load_split(path, "train"), load_split(path, "test"), truth


def demo_cache(args, work: Path) -> Path:
    """The demo table without its context column, embedded with the packaged MiniLM (or --demo-cache)."""
    if args.demo_cache:
        return Path(args.demo_cache)
    from micro.data import load_preferences, table_sha256
    from micro.embedcache import embed_table

    table = load_preferences("demo").assign(context=None)  # the context column empty, as in data without one
    path = work / "demo-no-context.h5"
    embed_table(table, model="minilm", out=path, source_sha256=table_sha256(table), log=lambda *a: None, overwrite=True)
    return path


def fingerprints(work: Path) -> str:
    """sha256 (16 hex) of the weights of fits whose result must not change with users: run it under two versions
    of micro (PYTHONPATH) and compare the lines."""
    import dataclasses
    import hashlib

    def digest(model) -> str:
        state = model.state_dict()
        return hashlib.sha256(b"".join(state[k].numpy().tobytes() for k in sorted(state))).hexdigest()[:16]

    simulate(work / "ctx.h5", regime="prompt", groups=3, pairs=1500, dim=16, seed=3, overwrite=True)
    simulate(work / "plain.h5", regime="shared", groups=3, pairs=1500, dim=16, seed=3, overwrite=True)
    ctx, plain = load_split(work / "ctx.h5", "train"), load_split(work / "plain.h5", "train")
    plain = dataclasses.replace(plain, context_index=torch.full_like(plain.context_index, -1), context_embedding=None)
    fits = {"contexts, default": (ctx, MixtureConfig()), "contexts, linear 3 epochs": (ctx, MixtureConfig(router="linear", epochs=3)),
            "contexts, paper": (ctx, MixtureConfig.paper(k=3, epochs=2)), "no contexts, paper": (plain, MixtureConfig.paper(k=4, epochs=3))}
    fits["no contexts, prompt router"] = (plain, MixtureConfig(router_input="prompt", epochs=3))
    return "\n".join(f"{name}: {digest(fit_mixture(split, config))}" for name, (split, config) in fits.items())


def _ms(values: list[float]) -> str:
    return f"{statistics.mean(values):.3f}" + (f" ± {statistics.stdev(values):.3f}" if len(values) > 1 else "")


def table(title: str, rows: list[dict], names: list[str]) -> str:
    """The summary (mean over groups, mean ± std over seeds) and the per-group table (means over seeds)."""
    has_truth, designs = rows[0]["truth"] is not None, [d for d in DESIGNS if d in rows[0]]
    head = ["design", *COLUMNS, "oracle"] + (["truth"] if has_truth else []) + ["search steps", "s / fit"]
    lines = [f"### {title}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for design in designs:
        cells = [_ms([float(np.mean(r[design][c])) for r in rows]) for c in COLUMNS]
        cells.append(_ms([float(np.mean(r["oracle"])) for r in rows]))
        if has_truth:
            cells.append(_ms([float(np.mean(r["truth"])) for r in rows]))
        lines.append(f"| {design} | " + " | ".join(cells) + f" | {statistics.mean(r[design]['steps'] for r in rows):.0f} "
                     f"| {statistics.mean(r[design]['seconds'] for r in rows):.0f} |")
    columns = [(f"{c} {d}", d, c) for d, c in (("off", "best"), ("users", "best"), ("users", "own"), ("users+prompt", "own")) if d in designs]
    head = ["group", *(name for name, _, _ in columns), "oracle"] + (["truth"] if has_truth else [])
    lines += ["", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for g, name in enumerate(names):
        cells = [f"{np.mean([r[d][c][g] for r in rows]):.3f}" for _, d, c in columns] + [f"{np.mean([r['oracle'][g] for r in rows]):.3f}"]
        if has_truth:
            cells.append(f"{np.mean([r['truth'][g] for r in rows]):.3f}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, default=3, help="planted cache seeds, and stage-1 fit seeds on the demo")
    p.add_argument("--groups", type=int, default=4)
    p.add_argument("--pairs", type=int, default=6000)
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--skip-planted", action="store_true")
    p.add_argument("--skip-demo", action="store_true")
    p.add_argument("--demo-cache", default=None, help="a demo cache without contexts built before (else built in the work folder)")
    p.add_argument("--designs", default=",".join(DESIGNS), help=f"a comma list of {', '.join(DESIGNS)}")
    p.add_argument("--user-scale", type=float, default=None, help="micro.heads.stack.USER_SCALE for the fits (default: its value)")
    p.add_argument("--fingerprints", action="store_true", help="only print a hash of the weights of fits that must not change "
                   "(contexts: default, linear, paper; no contexts: paper, and router_input 'prompt')")
    p.add_argument("--threads", type=int, default=1)
    add_output_options(p)
    args = p.parse_args()
    start = start_clock(args)
    designs = [d for d in args.designs.split(",") if d]
    if set(designs) - set(DESIGNS):
        p.error(f"--designs: unknown {sorted(set(designs) - set(DESIGNS))}")
    text = f"command: python benchmarks/{Path(sys.argv[0]).name} {' '.join(sys.argv[1:])}\n\n"
    with work_folder(args) as work:
        if args.fingerprints:
            return print(fingerprints(work))
        if not args.skip_planted:
            rows = []
            for seed in range(args.seeds):
                print(f"planted shared seed {seed}", file=sys.stderr, flush=True)
                train, test, truth = planted(seed, args, work)
                rows.append(one_cache(train, test, seed, designs, args.user_scale, truth))
            text += table(f"planted shared, {args.groups} groups, {args.pairs} pairs x d {args.dim}, no contexts, {args.seeds} cache seeds",
                          rows, test.attributes) + "\n"
        if not args.skip_demo:
            cache = demo_cache(args, work)
            train, test = load_split(cache, "train"), load_split(cache, "test")
            rows = []
            for seed in range(args.seeds):
                print(f"demo fit seed {seed}", file=sys.stderr, flush=True)
                rows.append(one_cache(train, test, seed, designs, args.user_scale))
            text += table(f"demo without contexts ({len(train)} train pairs, MiniLM d {train.hidden_size}), {args.seeds} stage-1 seeds",
                          rows, test.attributes) + "\n"
    finish(text + "settings; ", args, start)


if __name__ == "__main__":
    main()
