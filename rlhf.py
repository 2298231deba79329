"""Hook a micro reward into RLHF trainers.

TRL (GRPOTrainer's `reward_funcs`):

    from micro.rlhf import trl_reward_function
    reward = trl_reward_function("runs/micro", router="adapt/routers/b50_s0.safetensors", context_column="context")
    trainer = GRPOTrainer(model=..., reward_funcs=[reward], train_dataset=dataset_with_a_context_column, ...)

OpenRLHF (remote reward model): `micro serve RUN --router R` and `--remote_rm_url http://127.0.0.1:5000/get_reward`.

Online users: pass `store=` (a micro.reward.users.UserStore, the database `micro serve --users` writes) and a
dataset column `user_column` (default "user"): each row is scored with that user's current Hedge weights
(reread on every call, so feedback sent meanwhile counts); unknown users and rows without one score as before.
A prompt the policy's chat template already rendered is recovered to its plain conversation first.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence


def _text(completion: Any) -> str:
    """A completion as text: a string, or a conversation whose assistant turns are joined."""
    if isinstance(completion, str):
        return completion
    return "".join(str(m["content"]) for m in completion if m.get("role", "assistant") == "assistant")


def trl_reward_function(run_dir: str | None = None, router: str | None = None, *, attribute: str | None = None,
                        context: str | None = None, context_column: str | None = "context",
                        heads_mask: Sequence[int] | None = None, device: str | None = None, model: Any = None,
                        store: Any = None, user_column: str | None = "user") -> Callable[..., list[float]]:
    """A callable `(prompts, completions, **kwargs) -> list[float]` for TRL's `reward_funcs`.

    Prompts and completions may be plain strings or conversations (lists of {role, content}), as TRL
    passes them. The user context of each row comes from the dataset column `context_column`, which TRL
    passes through kwargs; rows without one (or no such column) use the fixed `context`. `model` reuses an
    already loaded PersonalizedRewardModel instead of loading `run_dir`.
    """
    from .reward.templates import plain_rows

    if model is None:
        from .reward import PersonalizedRewardModel

        if run_dir is None:
            raise ValueError("give run_dir (a `micro fit-mixture` run) or model (a PersonalizedRewardModel)")
        model = PersonalizedRewardModel.from_run(run_dir, router=router, attribute=attribute, heads_mask=heads_mask, device=device)

    def micro_reward(prompts: list, completions: list, **kwargs: Any) -> list[float]:
        column = kwargs.get(context_column) if context_column else None
        if column is not None and len(column) != len(prompts):
            raise ValueError(f"column {context_column!r} has {len(column)} values for {len(prompts)} prompts")
        contexts = [c if isinstance(c, str) and c.strip() else context for c in column] if column is not None else None
        if contexts is None and context is not None:
            contexts = [context] * len(prompts)
        prompts, responses = plain_rows(list(prompts), [_text(c) for c in completions])
        return [float(r) for r in model.score(prompts, responses, contexts, users=_users(kwargs, len(prompts)))]

    def _users(kwargs: dict, n: int) -> list | None:
        ids = kwargs.get(user_column) if (store is not None and user_column) else None
        if ids is None:
            return None
        if len(ids) != n:
            raise ValueError(f"column {user_column!r} has {len(ids)} values for {n} prompts")
        states = store.get_many([u for u in ids if isinstance(u, str) and u])
        return [states.get(u) if isinstance(u, str) else None for u in ids]

    micro_reward.model = model  # type: ignore[attr-defined]
    return micro_reward
