"""Export one user's reward as a standard model directory that loads without micro.

A fixed user (a micro-refine head, one stage-1 head, a single/static run) has one reward direction w,
and the reward is w . e(text), e the backbone's embedding. That is exactly a sequence classifier:

- decoder backbones (last-token pooling): `AutoModelForSequenceClassification` of the backbone's family
  (GRM-Llama3.2-3B -> LlamaForSequenceClassification) with the backbone's weights and score = w
  (num_labels 1, no bias, a pad token distinct from the end-of-turn token so the last real token is
  read). Its tokenizer is the backbone's, with two changes so the usual recipe reproduces micro's
  reward: the chat template pins the date micro renders with (Llama 3 templates print today's date),
  and the tokenizer adds no special tokens itself (the template already writes the BOS token).
- sentence-transformers encoders (mean pooling, e.g. MiniLM): no standard classifier pools by the mean,
  so the export is a sentence-transformers model (the backbone's modules) plus a Dense(d -> 1, no bias)
  module holding w; `SentenceTransformer(DIR).encode([(prompt, response)])` gives the reward.
Any other encoder is refused.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from .config import ExportConfig
from ..outputs import writing_dir
from .model import PersonalizedRewardModel

#: micro's rendering for a decoder without a chat template (Backbone.render_prompt / render_response with
#: template "none") as a chat template, so `apply_chat_template` gives the text micro scores.
PLAIN_TEMPLATE = (
    "{{- bos_token or '' }}"
    "{%- if messages[-1]['role'] == 'assistant' %}{%- set turns = messages[:-1] %}{%- else %}{%- set turns = messages %}{%- endif %}"
    "{%- if turns | length == 1 and turns[0]['role'] == 'user' %}{{- turns[0]['content'] }}"
    "{%- else %}{%- for m in turns %}{{- m['role'] + ': ' + m['content'] }}{%- if not loop.last %}{{- '\n' }}{%- endif %}{%- endfor %}{%- endif %}"
    "{{- '\n\n' }}"
    "{%- if messages[-1]['role'] == 'assistant' %}{{- messages[-1]['content'] + (eos_token or '') }}{%- endif %}"
)
#: The file in an export directory that holds the resolved ExportConfig (`micro export --config` reads it).
EXPORT_CONFIG = "micro_export.json"
#: Probe rows the export checks itself on (reward from the written files == micro's reward).
PROBE = [("What is the capital of France?", "Paris."), ("Write a haiku about rain.", "Soft rain on the roof,\nthe gutters hum a low tune.")]


def export_model(model: PersonalizedRewardModel, out: str | os.PathLike, *, overwrite: bool = False,
                 check: bool = True) -> dict[str, Any]:
    """Write the fixed-user reward of `model` to `out` (see module doc); returns what the model card says.

    check: reload the written directory with plain transformers / sentence-transformers and compare its
    rewards on two probe rows with micro's (recorded in the card). Raises ValueError when the reward
    depends on the prompt or context (a routed model: use `model.save_pretrained`) or when the backbone
    cannot be expressed as a standard model. The folder is written whole (micro.outputs.writing_dir).
    """
    kind = _export_kind(model)
    with writing_dir(out, overwrite=overwrite, what="export directory") as tmp:
        return _export_into(model, kind, tmp, check)


def _export_kind(model: PersonalizedRewardModel) -> str:
    bb = model.backbone
    if bb.kind == "decoder" and bb.pooling == "last":
        return "transformers"
    if bb.kind == "encoder" and _is_sentence_transformers(bb.load_path):
        return "sentence-transformers"
    raise ValueError(f"cannot export {bb.model_id} ({bb.kind}, pooling {bb.pooling}) as a standard model: only decoders "
                     "with last-token pooling and sentence-transformers encoders can be; use "
                     "PersonalizedRewardModel.save_pretrained (micro's format) or `micro serve`")


def _export_into(model: PersonalizedRewardModel, kind: str, out: Path, check: bool) -> dict[str, Any]:
    head = model.fixed_head()
    info = _export_decoder(model, head, out) if kind == "transformers" else _export_sentence_transformers(model, head, out)
    info["format"] = kind
    if check:
        info["check"] = _check(model, out, kind)
    (out / "README.md").write_text(model_card(model, info))
    return info


def run_export(run_dir: str | os.PathLike, out: str | os.PathLike, config: ExportConfig | None = None, *,
               overwrite: bool = False) -> dict[str, Any]:
    """`micro export`: the model `config` picks from run `run_dir`, written to `out` in `config.format`
    (hf: `export_model`; micro: `PersonalizedRewardModel.save_pretrained`), with the resolved config in
    `out/micro_export.json`. Returns what was written (the model card's facts for hf). The folder is refused
    before any work when it exists (without `overwrite`) or overlaps the run or the router, and is written
    whole under its lock."""
    config = config or ExportConfig()
    inputs = [run_dir, getattr(config, "router", None)]
    with writing_dir(out, overwrite=overwrite, what="export directory", inputs=inputs) as tmp:
        if config.method is not None:  # ExportConfig allows only `single`
            cfg = Path(run_dir) / "config.json"
            found = json.loads(cfg.read_text()).get("config", {}).get("method") if cfg.exists() else None
            if found != "single":
                raise ValueError(f"--method single: {run_dir} is a {found!r} run, not a `micro fit-mixture --method single` run")
        model = config.load_model(str(run_dir))
        if config.format == "micro":
            model.save_pretrained(tmp, overwrite=True)
            info: dict[str, Any] = {"format": "micro"}
        else:
            info = _export_into(model, _export_kind(model), tmp, config.check)
        resolved = {"run": str(Path(run_dir).resolve()), "config": config.to_dict()}
        (tmp / EXPORT_CONFIG).write_text(json.dumps(resolved, indent=2) + "\n")
    return info


def _is_sentence_transformers(path: str) -> bool:
    return (Path(path) / "modules.json").exists()


def _pad_token_id(tokenizer, closing: list[int]) -> int:
    """A pad id that never ends a scored sequence: the classifier reads the last token that is not padding."""
    avoid = set(closing) | {tokenizer.eos_token_id, tokenizer.bos_token_id}
    if tokenizer.pad_token_id is not None and tokenizer.pad_token_id not in avoid:
        return int(tokenizer.pad_token_id)
    specials = sorted(set(tokenizer.all_special_ids) | {i for i, t in tokenizer.added_tokens_decoder.items() if t.special})
    preferred = [i for i in specials if i not in avoid and "pad" in tokenizer.convert_ids_to_tokens(i).lower()]
    others = [i for i in specials if i not in avoid and "reserved" in tokenizer.convert_ids_to_tokens(i).lower()]
    for i in preferred + others:
        return int(i)
    raise ValueError("the backbone's tokenizer has no special token that can serve as padding (its pad token is the "
                     "end-of-sequence token); add a pad token to the backbone and rebuild the cache")


def _export_decoder(model: PersonalizedRewardModel, head: torch.Tensor, out: Path) -> dict[str, Any]:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from transformers.utils import logging as hf_logging

    bb = model.backbone
    tok = AutoTokenizer.from_pretrained(bb.load_path, trust_remote_code=bb.trust_remote_code)
    changes = []
    if bb.template == "none":
        tok.chat_template = PLAIN_TEMPLATE
        changes.append("the backbone has no chat template; the exported one writes what micro renders: BOS, the prompt "
                       "(a conversation as `role: content` lines), a blank line, the response, EOS")
    if isinstance(tok.chat_template, str) and "date_string" in tok.chat_template:
        from ..embedcache.backbone import TEMPLATE_DATE

        tok.chat_template = "{%- set date_string = \"" + TEMPLATE_DATE + "\" %}" + tok.chat_template
        changes.append(f"the chat template pins the date to {TEMPLATE_DATE} (micro renders every Llama 3 prompt with it; "
                       "the original template prints today's date)")
    if tok("x")["input_ids"] != tok("x", add_special_tokens=False)["input_ids"]:
        _no_special_tokens(tok)
        changes.append("the tokenizer adds no special tokens of its own: the chat template already writes them "
                       "(the original tokenizer would add a second BOS token to a rendered chat)")
    closing = tok.apply_chat_template([{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}], tokenize=False)
    closing_ids = tok(closing[closing.rfind("y") + 1 :], add_special_tokens=False)["input_ids"] if closing.rfind("y") >= 0 else []
    pad = _pad_token_id(tok, closing_ids)
    if tok.pad_token_id != pad:
        changes.append(f"pad token {tok.convert_ids_to_tokens(pad)!r} (the classifier reads the last token that is not padding, "
                       "so padding must differ from the end-of-turn token)")
        tok.pad_token = tok.convert_ids_to_tokens(pad)
    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # the new score layer is reported as "newly initialized": we set it below
    try:
        seq = AutoModelForSequenceClassification.from_pretrained(
            bb.load_path, num_labels=1, dtype="auto", ignore_mismatched_sizes=True, trust_remote_code=bb.trust_remote_code)
    finally:
        hf_logging.set_verbosity(level)
    score = getattr(seq, "score", None)
    if not isinstance(score, torch.nn.Linear) or score.bias is not None or score.in_features != head.numel():
        raise ValueError(f"{type(seq).__name__} has no bias-free `score` layer of width {head.numel()}; cannot write the head into it")
    with torch.no_grad():
        score.weight.copy_(head.reshape(1, -1).to(score.weight.dtype))
    seq.config.pad_token_id = pad
    seq.config.id2label, seq.config.label2id = {0: "reward"}, {"reward": 0}
    seq.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    return {"class": type(seq).__name__, "dtype": str(score.weight.dtype).replace("torch.", ""), "changes": changes}


def _no_special_tokens(tok) -> None:
    """Make a fast tokenizer add nothing around the text (the chat template writes BOS itself)."""
    from tokenizers import processors

    backend = tok.backend_tokenizer
    if hasattr(tok, "add_bos_token"):
        try:
            tok.add_bos_token = False
            tok.add_eos_token = False
        except AttributeError:
            pass
    if tok("x")["input_ids"] != tok("x", add_special_tokens=False)["input_ids"]:
        backend.post_processor = processors.TemplateProcessing(single="$A", pair="$A $B:1", special_tokens=[])
    if tok("x")["input_ids"] != tok("x", add_special_tokens=False)["input_ids"]:
        raise ValueError("could not stop the backbone's tokenizer from adding special tokens")


def _export_sentence_transformers(model: PersonalizedRewardModel, head: torch.Tensor, out: Path) -> dict[str, Any]:
    from sentence_transformers import SentenceTransformer

    try:
        from sentence_transformers.sentence_transformer.modules import Dense
    except ImportError:  # sentence-transformers < 6
        from sentence_transformers.models import Dense

    bb = model.backbone
    st = SentenceTransformer(bb.load_path, device="cpu")
    dense = Dense(head.numel(), 1, bias=False, activation_function=torch.nn.Identity())
    with torch.no_grad():
        dense.linear.weight.copy_(head.reshape(1, -1).float())
    st.append(dense)
    st.max_seq_length = bb.max_length
    st.save(str(out))
    return {"class": "SentenceTransformer + Dense(d -> 1)", "dtype": "float32", "changes": [
        "a Dense(d -> 1, no bias, identity activation) module after the backbone's pooling holds the reward head"]}


@torch.no_grad()
def _check(model: PersonalizedRewardModel, out: Path, kind: str) -> dict[str, Any]:
    prompts, responses = [p for p, _ in PROBE], [r for _, r in PROBE]
    expected = model.score(prompts, responses).tolist()
    got = exported_rewards(out, prompts, responses, kind=kind)
    return {"micro": expected, "exported": got, "max_abs_diff": max(abs(a - b) for a, b in zip(expected, got))}


@torch.no_grad()
def exported_rewards(directory: str | os.PathLike, prompts: list[str], responses: list[str], *, kind: str = "transformers") -> list[float]:
    """Rewards from an exported directory the way a user without micro computes them (the card's recipe)."""
    if kind == "sentence-transformers":
        from sentence_transformers import SentenceTransformer

        st = SentenceTransformer(str(directory), device="cpu")
        return [float(x) for x in st.encode(list(zip(prompts, responses)), convert_to_numpy=True)[:, 0]]
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(directory)
    rm = AutoModelForSequenceClassification.from_pretrained(directory, dtype=torch.float32).eval()
    out = []
    for p, r in zip(prompts, responses):
        text = tok.apply_chat_template([{"role": "user", "content": p}, {"role": "assistant", "content": r}], tokenize=False)
        out.append(float(rm(**tok(text, return_tensors="pt")).logits[0, 0]))
    return out


def _accuracy(model: PersonalizedRewardModel) -> dict[str, Any] | None:
    """Measured accuracy of the exported user from the files micro wrote (adapt results or stage-1 metrics)."""
    src = model.source
    if src.get("attribute") and src.get("router"):
        results = Path(src["router"]).parent.parent / "results.json"
        meta = model.router_meta
        method = "micro-refine" if src.get("refine", True) else "micro"
        if results.exists():
            for r in json.loads(results.read_text()).get("records", []):
                if (r["method"], r["budget"], r["seed"], r["attribute"]) == (method, meta.get("budget"), meta.get("seed"), src["attribute"]):
                    return {"what": f"{method} test accuracy on {src['attribute']!r} at budget {r['budget']}, seed {r['seed']} "
                                    "(this router)", "accuracy": r["accuracy"], "pairs": r["pairs"], "file": str(results)}
        return None
    metrics = Path(src["run_dir"]) / "metrics.json"
    if not metrics.exists():
        return None
    m = json.loads(metrics.read_text())
    per = m.get("test", {}).get("per_attribute", {})
    if src.get("head") is not None:
        return {"what": f"stage-1 head {src['head']} test accuracy per attribute",
                "accuracy": {a: v["head_accuracy"][src["head"]] for a, v in per.items()}, "file": str(metrics)}
    return {"what": f"{m.get('method')} run, routed test accuracy per attribute",
            "accuracy": {a: v["routed_accuracy"] for a, v in per.items()}, "file": str(metrics)}


def model_card(model: PersonalizedRewardModel, info: dict[str, Any]) -> str:
    """README.md of an export: provenance, measured accuracy, exact usage and what micro renders differently."""
    d = model.describe()
    bb = d["backbone"]
    src = d["source"]
    user = (f"micro-refine head of attribute `{src['attribute']}` (router `{src['router']}`)" if src.get("attribute") and src.get("refine", True)
            else f"micro for attribute `{src['attribute']}`: the router `{src['router']}` times its Hedge weights" if src.get("attribute")
            else f"stage-1 head {src['head']}" if src.get("head") is not None
            else f"the `{(d['run_config'] or {}).get('method')}` run's reward")
    if info["format"] == "transformers":
        usage = (
            "```python\nimport torch\nfrom transformers import AutoModelForSequenceClassification, AutoTokenizer\n\n"
            "tok = AutoTokenizer.from_pretrained(DIR)\nrm = AutoModelForSequenceClassification.from_pretrained(DIR)\n"
            "text = tok.apply_chat_template([{\"role\": \"user\", \"content\": prompt},\n"
            "                                {\"role\": \"assistant\", \"content\": response}], tokenize=False)\n"
            "with torch.no_grad():\n    reward = rm(**tok(text, return_tensors=\"pt\")).logits[0, 0].item()\n```\n")
        renders = (
            "micro renders a prompt as the backbone's chat template with a generation prompt and appends the response "
            "part of the same template, tokenized without extra special tokens; the usage above gives the same tokens. "
            "Differences: a context is prepended to the last user turn (`context\\n\\nprompt`); over the maximum "
            f"length ({bb['max_length']} tokens) micro cuts the prompt from its start and keeps the response, where "
            "this model would need the caller to truncate.")
    else:
        usage = ("```python\nfrom sentence_transformers import SentenceTransformer\n\n"
                 "rm = SentenceTransformer(DIR)\nreward = rm.encode([(prompt, response)])[0, 0]\n```\n")
        renders = ("micro encodes (prompt, response) as the tokenizer's text pair, mean-pooled as the backbone's "
                   "sentence-transformers modules say; a conversation prompt is flattened to `role: content` lines and a "
                   "context is prepended to the last user turn (`context\\n\\nprompt`). Over the maximum length "
                   f"({bb['max_length']} tokens) micro cuts the prompt from its start, sentence-transformers the longer side.")
    lines = [
        "---", "library_name: " + info["format"], "tags: [reward-model, micro, personalized-reward]", "---", "",
        "# Personalized reward model (micro export)", "",
        f"One user's reward from a micro run: {user}. The reward is `w . e(prompt, response)`, `e` the frozen backbone's "
        f"embedding ({bb['pooling']} pooling) and `w` the head stored in this model's score layer. Only differences "
        "between responses to the same prompt are meaningful.", "",
        "## Usage", "", usage,
        "## What micro renders", "", renders, "",
    ]
    if info.get("changes"):
        lines += ["Changed from the backbone's files so the usage above reproduces micro's reward:", ""]
        lines += [f"- {c}" for c in info["changes"]] + [""]
    if info.get("check"):
        c = info["check"]
        lines += ["## Check", "", f"Written by micro and reloaded with the usage above: largest |reward difference| on "
                  f"{len(c['micro'])} probe rows = {c['max_abs_diff']:.3g} (weights stored as {info['dtype']}).", ""]
    acc = _accuracy(model)
    lines += ["## Provenance", "",
              f"- backbone: `{bb['model_id']}` revision `{bb['model_revision'] or 'unknown'}`, {bb['backbone_kind']}, "
              f"pooling {bb['pooling']}, hidden size {bb['hidden_size']}, max length {bb['max_length']}",
              f"- exported class: {info['class']}",
              f"- user: {user}" + (f"; heads masked: {d['heads_mask']}" if d["heads_mask"] else ""),
              "- measured accuracy: " + (json.dumps(acc) if acc else "not recorded"), "",
              "Cache identity, run configuration and router:", "", "```json",
              json.dumps({"cache": d["cache"], "run_config": d["run_config"], "router": d["router"], "source": src}, indent=2),
              "```", ""]
    return "\n".join(lines)
