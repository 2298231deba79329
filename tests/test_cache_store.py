"""The cache format: what is written is what is read, and unusable files are refused clearly."""

import h5py
import numpy as np
import pytest

from micro.embedcache import CacheError, check_compatible, load_split, load_texts, read_meta, write_cache

META = {"model_id": "toy", "model_revision": "r1", "pooling": "last", "max_length": 16, "template": "none"}


def _toy_cache(path, with_context=True):
    rng = np.random.default_rng(0)
    seq = rng.normal(size=(6, 4)).astype(np.float16)
    prompts = rng.normal(size=(2, 4))
    pairs = {
        "chosen": [0, 2, 4, 1],
        "rejected": [1, 3, 5, 0],
        "prompt": [0, 0, 1, 0],
        "attribute": [0, 1, 0, 1],
        "split": [0, 0, 1, 1],
    }
    ctx = {}
    if with_context:
        ctx = dict(
            contexts=["likes short", "likes long"],
            context_prompts={"embedding": rng.normal(size=(3, 4)), "prompt": [0, 0, 1], "context": [0, 1, 0]},
        )
        pairs |= {"context_prompt": [0, 1, 2, 1], "context": [0, 1, 0, 1]}
    write_cache(
        path,
        meta=META,
        sequences={"embedding": seq, "prompt": [0, 0, 0, 0, 1, 1], "text": list("abcdef")},
        prompts={"embedding": prompts, "text": ["p0", "p1"]},
        pairs=pairs,
        attributes=["short", "long"],
        splits=["train", "test"],
        **ctx,
    )
    return seq


def test_split_diff_is_chosen_minus_rejected(tmp_path):
    seq = _toy_cache(tmp_path / "c.h5").astype(np.float32)
    train = load_split(tmp_path / "c.h5", "train")
    assert len(train) == 2 and train.hidden_size == 4
    np.testing.assert_allclose(train.diff.numpy(), seq[[0, 2]] - seq[[1, 3]])
    assert train.attribute.tolist() == [0, 1]
    assert train.context_inputs().shape == (2, 4)
    test = load_split(tmp_path / "c.h5", "test")
    np.testing.assert_allclose(test.diff.numpy(), seq[[4, 1]] - seq[[5, 0]])
    assert test.prompt_inputs().shape == (2, 4)
    only_long = load_split(tmp_path / "c.h5", "train", attributes=["long"])
    assert only_long.attribute.tolist() == [1]


def test_pair_differences_across_row_blocks_and_shared_tables(tmp_path):
    """Pairs whose rows fall in different read blocks get the same differences; one Cache's splits share one
    copy of the prompt and context tables, equal to the file's."""
    from micro.embedcache.handle import Cache
    from micro.embedcache.store import _pair_difference

    seq = _toy_cache(tmp_path / "c.h5").astype(np.float32)
    chosen, rejected = np.array([0, 2, 4, 1, 5]), np.array([1, 3, 5, 0, 0])
    with h5py.File(tmp_path / "c.h5") as f:
        for block in (1, 2, 4, 32768):
            np.testing.assert_array_equal(_pair_difference(f["sequences/embedding"], chosen, rejected, block), seq[chosen] - seq[rejected])
        prompts, contexts = f["prompts/embedding"][()].astype(np.float32), f["context_prompts/embedding"][()].astype(np.float32)
    cache = Cache(tmp_path / "c.h5")
    train, test = cache.split("train"), cache.split("test")
    assert train.prompt_embedding is test.prompt_embedding and train.context_embedding is test.context_embedding
    np.testing.assert_array_equal(train.prompt_embedding.numpy(), prompts)
    np.testing.assert_array_equal(test.context_embedding.numpy(), contexts)


def test_texts_round_trip(tmp_path):
    _toy_cache(tmp_path / "c.h5")
    table = load_texts(tmp_path / "c.h5", "train")
    assert table["chosen"].tolist() == ["a", "c"]
    assert table["context"].tolist() == ["likes short", "likes long"]


def test_missing_context_is_refused(tmp_path):
    _toy_cache(tmp_path / "c.h5", with_context=False)
    with pytest.raises(CacheError, match="no context"):
        load_split(tmp_path / "c.h5", "train").context_inputs()


def test_unfinished_and_corrupt_files_are_refused(tmp_path):
    _toy_cache(tmp_path / "c.h5")
    with h5py.File(tmp_path / "c.h5", "a") as f:
        f.attrs["complete"] = False
    with pytest.raises(CacheError, match="unfinished"):
        read_meta(tmp_path / "c.h5")
    (tmp_path / "bad.h5").write_bytes(b"\x89HDF\r\n\x1a\n" + b"\0" * 100)
    with pytest.raises(CacheError, match="not a readable HDF5"):
        read_meta(tmp_path / "bad.h5")
    with pytest.raises(CacheError, match="does not exist"):
        read_meta(tmp_path / "nope.h5")


def test_unknown_split_lists_the_real_ones(tmp_path):
    _toy_cache(tmp_path / "c.h5")
    with pytest.raises(CacheError, match=r"no split 'dev'; it has \['train', 'test'\]"):
        load_split(tmp_path / "c.h5", "dev")


def test_foreign_backbone_names_the_field():
    with pytest.raises(CacheError, match="model_id: expected 'a', found 'b'"):
        check_compatible({"model_id": "a"}, {"model_id": "b"}, what="cache x.h5")
