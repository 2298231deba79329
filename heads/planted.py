"""`micro simulate`: a cache drawn from a planted mixture of BT models, with the truth stored beside it.

Group g has a reward direction u_g (unit vector) and scores a pair by s_g = scale * u_g . (e_w - e_l).
Regime 'prompt' (the paper's): each pair is labeled by ONE group z ~ p(g|x) = (1-floor) softmax(A x) + floor/G,
so the prompt hints at the group, with overlap. Regime 'shared' (conflicting groups): the SAME (prompt,
response, response) triples are labeled by every group, independently of the prompt (p(g|x) = 1/G), and
the groups' directions are centred before normalising (`conflict`), so they sum to ~0 and disagree: no
single BT direction explains much (one head, or a prompt-routed mixture, sits near 50 % on average) and
only the context tells the groups apart. In both, attribute = context = the labeling group, and the
(context + prompt) router input is the prompt embedding plus the group's context vector. Labels are
sampled from sigmoid(s_z). With `decisive` = q only a share q of the response pairs differ in the span
of the centred group directions (by a larger margin); every group scores the others alike. With `spread` = s
each pair's difference gains s z_g u_g (z_g ~ N(0, 1), its own random stream) for every group g that labels
it, so the differences vary along the group directions (their principal directions, drm's heads, find them);
without it a group shows only in the labels. With `contexts` off the cache has no context text or
(context + prompt) embeddings, as `micro embed` writes for data without a context column; the attribute
column (the labelling group, the user id) stays. The two fields are recorded only when set, so a cache of the
defaults is byte-identical with one written before they existed.

The truth lives in the HDF5 group "simulation" (readers of the cache ignore it): directions [G, d],
mixing matrix A [G, d], context vectors [G, d], and per pair its group, p(g|x) [n, G] and the scores of
every group for the stored orientation s_g(chosen - rejected) [n, G].
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch

from ..embedcache.store import CacheError, CacheSplit, read_extra_group, read_meta, write_cache
from ..outputs import diff_fields, refuse_existing, writing_file
from .config import SimulateConfig


@dataclass
class SimulationTruth:
    """The planted model behind a simulated cache; per-pair arrays are indexed by the cache's pair row."""

    regime: str
    directions: np.ndarray  # [G, d] unit reward directions u_g
    scale: float  # s_g = scale * u_g . diff
    mixing: np.ndarray  # [G, d] A in p(g|x) = (1-floor) softmax(A x) + floor/G (zeros in 'shared')
    weight_floor: float
    context_vectors: np.ndarray  # [G, d] added to the prompt embedding for the (context + prompt) input
    pair_group: np.ndarray  # [n_pairs] group that labeled each pair
    pair_weights: np.ndarray  # [n_pairs, G] p(g | prompt of the pair)
    pair_scores: np.ndarray  # [n_pairs, G] s_g(chosen, rejected) for the stored orientation
    params: dict

    @property
    def groups(self) -> int:
        return int(self.directions.shape[0])


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(-1, keepdims=True)


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * z))


def simulate(out: str | os.PathLike, config: SimulateConfig | None = None, *, overwrite: bool = False,
             **fields: Any) -> SimulationTruth:
    """Write a simulated cache to `out` and return its truth.

    `config` (default `SimulateConfig()`, whose field docstrings say what each one does) with `fields`
    replacing some of its fields, e.g. `simulate(out, groups=4, regime="shared")`. The cache records the
    resolved config (`conflict` decided by the regime, `pairs` as drawn). An existing `out` made with other
    parameters (or not by `simulate`) is refused unless `overwrite`; the file is written beside `out` and
    renamed into place, under a lock (one writer at a time).
    """
    config = replace(config or SimulateConfig(), **fields).resolved()
    return _simulate(Path(out), config, overwrite)


def _existing_params(out: Path) -> dict | None:
    """The parameters of a simulated cache at `out` (None: not a cache `simulate` wrote)."""
    try:
        return json.loads(read_meta(out).get("simulation") or "null")
    except (CacheError, ValueError):
        return None


def _draw(c: SimulateConfig) -> SimpleNamespace:
    """Every array of a planted cache, drawn from `c.seed` in a fixed order (the same seed, the same cache)."""
    seed, regime, scale, weight_floor, conflict = c.seed, c.regime, c.scale, c.weight_floor, c.conflict
    rng = np.random.default_rng(seed)
    G, d = c.groups, c.dim
    directions = rng.normal(size=(G, d))
    if G > 1 and conflict:
        directions = directions - conflict * directions.mean(0, keepdims=True)
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    context_vectors = rng.normal(size=(G, d)) * c.context_scale

    triples = c.pairs if regime == "prompt" else c.pairs // G
    n_prompts = max(2, math.ceil(triples / c.pairs_per_prompt))
    prompt_emb = rng.normal(size=(n_prompts, d))
    triple_prompt = np.arange(triples) % n_prompts
    rng.shuffle(triple_prompt)
    response_emb = rng.normal(size=(2 * triples, d))
    a, b = np.arange(0, 2 * triples, 2), np.arange(1, 2 * triples, 2)
    if G > 1 and c.decisive is not None:  # rare decisive pairs: move e_b so only they differ in the groups' span
        basis = np.linalg.svd(directions - directions.mean(0), full_matrices=False)[2][: G - 1]  # [G-1, d]
        along = (response_emb[a] - response_emb[b]) @ basis.T @ basis
        factor = np.where(rng.random(triples) < c.decisive, 1 / math.sqrt(c.decisive), 0.0)
        response_emb[b] += (1 - factor)[:, None] * along

    if regime == "prompt":
        mixing = rng.normal(size=(G, d)) * (c.sharpness / math.sqrt(d))
        prompt_weights = (1 - weight_floor) * _softmax(prompt_emb @ mixing.T) + weight_floor / G
        # one labeling group per triple, drawn from p(g | x)
        u = rng.random(triples)[:, None]
        group = (u > np.cumsum(prompt_weights[triple_prompt], axis=1)).sum(1).clip(max=G - 1)
        triple_of_pair = np.arange(triples)
    else:
        mixing = np.zeros((G, d))
        prompt_weights = np.full((n_prompts, G), 1.0 / G)
        group = np.tile(np.arange(G), triples)
        triple_of_pair = np.repeat(np.arange(triples), G)
    if c.spread:  # each pair varies along the directions of the groups that label it (its own stream: every
        # other draw is the one without spread)
        labels_it = np.ones((triples, G)) if regime == "shared" else np.eye(G)[group]
        z = np.random.default_rng([seed, 1]).normal(size=(triples, G)) * c.spread * labels_it
        response_emb[a] += 0.5 * z @ directions
        response_emb[b] -= 0.5 * z @ directions
    scores_ab = scale * (response_emb[a] - response_emb[b]) @ directions.T  # [triples, G]
    n = len(group)
    s_ab = scores_ab[triple_of_pair]  # [n, G] scores for the (a, b) orientation
    a_wins = rng.random(n) < _sigmoid(s_ab[np.arange(n), group])
    chosen = np.where(a_wins, a[triple_of_pair], b[triple_of_pair])
    rejected = np.where(a_wins, b[triple_of_pair], a[triple_of_pair])
    pair_scores = np.where(a_wins[:, None], s_ab, -s_ab)
    prompt = triple_prompt[triple_of_pair]

    test_prompts = rng.permutation(n_prompts)[: max(1, int(round(c.test_fraction * n_prompts)))]
    split = np.isin(prompt, test_prompts).astype(np.int64)
    context_prompt_emb = (prompt_emb[:, None, :] + context_vectors[None, :, :]).reshape(-1, d)

    return SimpleNamespace(**{k: v for k, v in locals().items() if k != "c"})


def _simulate(out: Path, config: SimulateConfig, overwrite: bool) -> SimulationTruth:
    c, x = config, _draw(config)
    G, regime = c.groups, c.regime
    names = [f"group{g}" for g in range(G)]
    params = {**c.to_dict(), "pairs": int(x.n)}  # the resolved config, with the pairs drawn
    truth = SimulationTruth(
        regime=regime,
        directions=x.directions,
        scale=float(c.scale),
        mixing=x.mixing,
        weight_floor=float(c.weight_floor if regime == "prompt" else 1.0),
        context_vectors=x.context_vectors,
        pair_group=x.group.astype(np.int64),
        pair_weights=x.prompt_weights[x.prompt],
        pair_scores=x.pair_scores,
        params=params,
    )
    with writing_file(out, overwrite=overwrite, what="cache", existing=lambda: _same_simulation(out, params)) as tmp:
        _write(tmp, x, truth, names)
    return truth


def _same_simulation(out: Path, params: dict) -> None:
    """Refuse an existing `out` that is not a simulated cache of these parameters (the same one is redrawn)."""
    old = _existing_params(out)
    if old is None:
        refuse_existing(out, "a file that `micro simulate` did not write", ["not a simulated cache"])
    defaults = asdict(SimulateConfig())  # a field a cache does not record (added since, or at its default): the default
    old, new = {**defaults, **old}, {**defaults, **json.loads(json.dumps(params))}
    if old != new:
        refuse_existing(out, "a simulated cache", diff_fields(old, new))


def _write(out: Path, x: SimpleNamespace, truth: SimulationTruth, names: list[str]) -> None:
    """The cache file of a drawn simulation, written straight into `out` (the writer's temporary file)."""
    params, G, n_prompts, triples = truth.params, len(names), x.n_prompts, x.triples
    pairs = {"chosen": x.chosen, "rejected": x.rejected, "prompt": x.prompt, "attribute": x.group, "split": x.split}
    contexts, context_prompts = [], None  # no contexts: as `micro embed` writes data without a context column
    if params.get("contexts", True):
        pairs.update(context_prompt=x.prompt * G + x.group, context=x.group)
        contexts = [f"{name}: judge responses the way annotator group {g} does" for g, name in enumerate(names)]
        context_prompts = {
            "embedding": x.context_prompt_emb,
            "prompt": np.repeat(np.arange(n_prompts), G),
            "context": np.tile(np.arange(G), n_prompts),
        }
    write_cache(
        out,
        atomic=False,
        meta={
            "model_id": "simulate",
            "model_revision": f"seed{params['seed']}",
            "pooling": "planted",
            "max_length": 0,
            "template": f"simulate-{truth.regime}",
            "source_sha256": hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest(),
            "simulation": json.dumps(params),
        },
        sequences={
            "embedding": x.response_emb,
            "prompt": np.repeat(x.triple_prompt, 2),
            "text": [f"response {i}" for i in range(2 * triples)],
        },
        prompts={"embedding": x.prompt_emb, "text": [f"prompt {p}" for p in range(n_prompts)]},
        pairs=pairs,
        attributes=names,
        splits=["train", "test"],
        contexts=contexts,
        context_prompts=context_prompts,
        extra_groups={
            "simulation": {
                "directions": x.directions,
                "mixing": x.mixing,
                "context_vectors": x.context_vectors,
                "pair_group": truth.pair_group,
                "pair_weights": truth.pair_weights,
                "pair_scores": x.pair_scores,
                "params": [json.dumps({**params, "weight_floor_effective": truth.weight_floor})],
            }
        },
    )


def load_truth(path: str | os.PathLike) -> SimulationTruth:
    """The planted model of a cache written by `simulate`."""
    g = read_extra_group(path, "simulation")
    if g is None:
        raise ValueError(f"{path} was not written by `micro simulate` (no 'simulation' group)")
    params = json.loads(g["params"][0])
    return SimulationTruth(
        regime=params["regime"],
        directions=g["directions"],
        scale=float(params["scale"]),
        mixing=g["mixing"],
        weight_floor=float(params["weight_floor_effective"]),
        context_vectors=g["context_vectors"],
        pair_group=g["pair_group"],
        pair_weights=g["pair_weights"],
        pair_scores=g["pair_scores"],
        params=params,
    )


def _rows(truth: SimulationTruth, split: CacheSplit | None) -> np.ndarray:
    if split is None:
        return np.arange(len(truth.pair_group))
    if split.pair_rows is None:
        raise ValueError("this split has no pair_rows; load it with load_split to compare with the truth")
    return np.asarray(split.pair_rows)


def _mixture_prob(truth: SimulationTruth, rows: np.ndarray) -> np.ndarray:
    """P(chosen > rejected | prompt) under the true mixture (the group unknown)."""
    return (truth.pair_weights[rows] * _sigmoid(truth.pair_scores[rows])).sum(1)


def _group_prob(truth: SimulationTruth, rows: np.ndarray) -> np.ndarray:
    """P(chosen > rejected | prompt, true group)."""
    return _sigmoid(truth.pair_scores[rows, truth.pair_group[rows]])


def bayes_accuracy(truth: SimulationTruth, split: CacheSplit | None = None, with_context: bool = False, *, realised: bool = False) -> float:
    """Accuracy of the Bayes-optimal rule on the split's pairs.

    with_context: the true group is known (the true group's BT rule); else only the prompt (the rule
    follows the true mixture probability sum_g p(g|x) sigma(s_g)). realised=False gives the expected
    accuracy mean max(p, 1-p); realised=True scores the rule on the labels actually drawn (same label
    noise as a model evaluated on the split, so differences are less noisy).
    """
    rows = _rows(truth, split)
    p = _group_prob(truth, rows) if with_context else _mixture_prob(truth, rows)
    if realised:
        return float((p > 0.5).mean())
    return float(np.maximum(p, 1 - p).mean())


def _entropy(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, 1e-12, 1 - 1e-12)
    return -(p * np.log(p) + (1 - p) * np.log(1 - p))


def bayes_loss(truth: SimulationTruth, split: CacheSplit | None = None, with_context: bool = False) -> float:
    """Expected cross-entropy (nats) of the Bayes predictor: with the group known, or from the prompt only."""
    rows = _rows(truth, split)
    if with_context:
        return float((truth.pair_weights[rows] * _entropy(_sigmoid(truth.pair_scores[rows]))).sum(1).mean())
    return float(_entropy(_mixture_prob(truth, rows)).mean())


def theorem_bound(truth: SimulationTruth, split: CacheSplit | None = None) -> dict:
    """Theorem 3.2 for the planted parameters on the split's pairs (cross-entropy in nats).

    With sigma_k = sigmoid(s_k) and gamma_k(x) = p(k|x) >= rho, the proof (Pinsker, KL >= 2 (p-q)^2) gives
    for ANY predictor that does not see the group:
        L_CE >= H + 2 rho K E_x,pair Var_k[sigma_k],   H = E sum_k gamma_k h(sigma_k)
    (Var_k over the K groups with equal weight; h the binary entropy). `gap` = 2 rho K E Var_k; H is the
    loss of the oracle that knows the group. `tight_bound` replaces rho K Var_k by the gamma-weighted variance.
    Note: the bound holds for a prompt-routed mixture too (it never sees the group); what separates the
    mixture from one BT head is that it can reach the prompt-only Bayes loss (`bayes_loss_prompt`).
    """
    rows = _rows(truth, split)
    sig = _sigmoid(truth.pair_scores[rows])
    w = truth.pair_weights[rows]
    K = truth.groups
    rho = float(w.min())
    var_uniform = float(sig.var(axis=1).mean())
    mean_w = (w * sig).sum(1, keepdims=True)
    var_weighted = float((w * (sig - mean_w) ** 2).sum(1).mean())
    H = float((w * _entropy(sig)).sum(1).mean())
    return {
        "rho": rho,
        "K": K,
        "variance": var_uniform,
        "entropy": H,
        "gap": 2 * rho * K * var_uniform,
        "bound": H + 2 * rho * K * var_uniform,
        "tight_bound": H + 2 * var_weighted,
        "bayes_loss_prompt": float(_entropy(mean_w[:, 0]).mean()),
    }


def match_heads(truth: SimulationTruth, head_vectors: torch.Tensor | np.ndarray) -> dict:
    """Match heads to planted groups (Hungarian on cosine); returns {"head": [G], "cosine": [G]}."""
    from scipy.optimize import linear_sum_assignment

    heads = np.asarray(head_vectors.detach().cpu() if isinstance(head_vectors, torch.Tensor) else head_vectors, dtype=np.float64)
    heads = heads / np.linalg.norm(heads, axis=1, keepdims=True).clip(min=1e-12)
    cos = truth.directions @ heads.T  # [G, K]
    g_idx, k_idx = linear_sum_assignment(-cos)
    order = np.argsort(g_idx)
    return {"head": k_idx[order].tolist(), "cosine": cos[g_idx[order], k_idx[order]].tolist()}
