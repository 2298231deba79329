"""The plug-in hook of `micro adapt`: every scored method is a `Plugin`.

A method is one module with a `Plugin` subclass and one line in `micro.methods` (or a call to
`micro.methods.register` from outside micro). `run_adapt` builds one `Sweep` (the frozen margins, the
splits, the seeds: computed once), then calls each selected plug-in's `prepare(sweep)` once and its
`score(sweep, budget)` per budget, and records each call's seconds. A plug-in's options are a dataclass
(`Options`), filled from `AdaptConfig.options[key]` (`--set key.option=value`).

    from dataclasses import dataclass
    from micro.methods import Method, register
    from micro.router.plugin import Plugin

    class Prior(Plugin):            # the stage-1 router's routing, no budget
        def score(self, sweep, budget):
            weights = sweep.model.routing(sweep.test.prompt_inputs())
            return {s: (weights * sweep.test_margins).sum(-1) for s in sweep.seeds}

    register(Method("prior", "Prior", "stage-1 routing", 1, "budget", "micro", False, "mymodule:Prior"))
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, Callable, ClassVar

import numpy as np
import torch

from ..embedcache.handle import Cache
from ..embedcache.store import CacheSplit
from ..methods import method as method_entry
from .config import AdaptConfig
from .scores import Scores


@dataclass
class NoOptions:
    """A method without options."""


#: {seed: margins [n_test] (> 0: right; NaN: not scored) or {attribute id: accuracy}}
Scored = dict[int, Any]


class _Rows:
    """table[index[i]] gathered on indexing, so [n, d] router inputs are never materialised."""

    def __init__(self, table: torch.Tensor, index: torch.Tensor):
        self.table, self.index = table, index

    def __getitem__(self, idx) -> torch.Tensor:
        return self.table[self.index[idx]]


@dataclass
class Sweep:
    """What every method of one `micro adapt` run reads, computed once: the frozen stage-1 model and its
    margins, the splits, the seeds, and the scores being recorded."""

    config: AdaptConfig
    cache: Cache
    evaluate: Cache  # the cache whose test split is scored (`cache` itself without --eval-cache)
    run_dir: Path
    run_config: dict
    model: Any  # the frozen stage-1 MixtureRewardModel, masked heads applied
    train: CacheSplit
    test: CacheSplit
    eval_train: CacheSplit | None  # the eval cache's train split (the adapt cache's without --eval-cache); None: none
    augmented: bool  # heads score (context + prompt, response) embeddings
    train_margins: torch.Tensor  # [n_train, K]
    train_losses: torch.Tensor  # [n_train, K] BT losses (masked heads: inf)
    test_margins: torch.Tensor  # [n_test, K]
    scores: Scores
    out: Path
    log: Callable[[str], None]
    notes: list[str] = field(default_factory=list)
    shared: dict = field(default_factory=dict)

    @property
    def seeds(self) -> list[int]:
        return self.config.seed_values

    @property
    def contexts(self) -> bool:
        """Whether the pairs carry user contexts (else users are known by their attribute alone)."""
        return self.train.context_embedding is not None

    def inputs(self, split: CacheSplit) -> _Rows | torch.Tensor:
        """The router inputs of `split`: (context + prompt) rows, or the prompts where there are no contexts."""
        if split.context_embedding is None:
            return split.prompt_inputs()
        return _Rows(split.context_embedding, split.context_index)

    def once(self, key: str, make: Callable[[], Any]) -> Any:
        """make(), computed by the first method that asks for `key` and shared with the others."""
        if key not in self.shared:
            self.shared[key] = make()
        return self.shared[key]


@dataclass
class Budget:
    """One budget of a sweep: each seed's drawn pairs per attribute, and what methods share for it."""

    size: int
    draws: list[dict[int, np.ndarray]]  # per seed: {attribute id: train rows}
    at_random: list[dict[int, np.ndarray]]  # per seed: {attribute id: True where the pair is from the random order}
    shared: dict = field(default_factory=dict)

    def once(self, key: str, make: Callable[[], Any]) -> Any:
        if key not in self.shared:
            self.shared[key] = make()
        return self.shared[key]


class Plugin:
    """A method that `micro adapt` scores. Subclass it, set `Options` (a dataclass: the method's options
    and their one default) and implement `score`; `prepare` holds work that does not depend on the budget."""

    Options: ClassVar[type] = NoOptions
    #: the key of `AdaptConfig.options` this method reads (methods of one family share one)
    key: ClassVar[str | None] = None

    def __init__(self, name: str, options: Any):
        self.name, self.options = name, options

    def prepare(self, sweep: Sweep) -> None:
        """Once per sweep, before the first budget."""

    def score(self, sweep: Sweep, budget: Budget) -> Scored:
        raise NotImplementedError


def plugin_class(name: str) -> type[Plugin]:
    """The Plugin class registered for method `name`."""
    module, _, cls = method_entry(name).plugin.partition(":")
    found = getattr(importlib.import_module(module), cls)
    if not (isinstance(found, type) and issubclass(found, Plugin)):
        raise TypeError(f"method {name!r}: {module}:{cls} is not a micro.router.plugin.Plugin subclass")
    return found


def make_plugins(config: AdaptConfig) -> list[Plugin]:
    """The selected methods' plug-ins, each with its options; an option key or name no selected method
    has is refused in one line."""
    classes = {name: plugin_class(name) for name in config.method_names}
    keys = {cls.key or name for name, cls in classes.items()} | {"acquire"}
    unknown = sorted(set(config.options) - keys)
    if unknown:
        raise ValueError(f"options for {', '.join(unknown)}: no selected method reads them; option keys here: {', '.join(sorted(keys))}")
    return [cls(name, build_options(cls.Options, config.options.get(cls.key or name, {}), cls.key or name))
            for name, cls in classes.items()]


def build_options(cls: type, given: dict[str, Any], key: str) -> Any:
    """cls(**given), refusing an unknown option in one line that names the known ones."""
    names = {f.name for f in fields(cls)} if is_dataclass(cls) else set()
    unknown = sorted(set(given) - names)
    if unknown:
        raise ValueError(f"{key} has no option {', '.join(unknown)}; its options: {', '.join(sorted(names)) or 'none'}")
    return cls(**given)
