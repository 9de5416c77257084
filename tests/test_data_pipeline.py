"""Pipelines: seeded order, disjoint covering shards, exact resume, correct packing."""

import json

import numpy as np
import pytest

from peft_jax.data import pipeline, preprocess, sources

import testdata

DATA = testdata.DATA
EOS, PAD = 1, 0


def _ids(iterator):
    return [int(x) for batch in iterator for x in np.ravel(batch["id"])]


def _numbered(n):
    return [{"id": np.int64(i)} for i in range(n)]


def test_seed_fixes_the_order():
    source = _numbered(50)
    run = lambda seed: _ids(pipeline.make_iterator(source, None, 5, seed, num_epochs=1))
    assert run(1) == run(1)
    assert run(1) != run(2)
    assert sorted(run(1)) == list(range(50))


def test_every_epoch_is_a_new_permutation_of_the_shard():
    ids = _ids(pipeline.make_iterator(_numbered(30), None, 3, seed=0, num_epochs=3))
    epochs = [ids[i * 30:(i + 1) * 30] for i in range(3)]
    assert all(sorted(e) == list(range(30)) for e in epochs)
    assert len({tuple(e) for e in epochs}) == 3


def test_two_hosts_see_disjoint_shards_that_cover_the_data():
    paths = sorted((DATA / "xlsum").glob("*_train.jsonl"))
    source = sources.JsonLinesSource(paths)
    seen = []
    for host in range(2):
        # Serbian Cyrillic and Latin share article ids: a record is its id and summary.
        it = pipeline.make_iterator(source, lambda ex: {"key": np.asarray(ex["id"] + "|" + ex["summary"])}, 1,
                                    seed=3, shard_index=host, shard_count=2, num_epochs=1, drop_remainder=False)
        seen.append([str(b["key"][0]) for b in it])
    all_ids = [source[i]["id"] + "|" + source[i]["summary"] for i in range(len(source))]
    assert len(set(all_ids)) == len(all_ids)
    assert not set(seen[0]) & set(seen[1])
    assert sorted(seen[0] + seen[1]) == sorted(all_ids) and len(all_ids) == 45 * 5


def _span_corruption_fn(tokens_per_doc=40):
    def fn(example, rng):
        doc = np.arange(example["id"] * 100 + 3, example["id"] * 100 + 3 + tokens_per_doc)
        out = preprocess.span_corruption_features(doc, rng, sentinel_ids=list(range(999, 899, -1)),
                                                  eos_id=EOS, pad_id=PAD, max_input_len=32)
        return {**out, "id": np.asarray(example["id"])}
    return pipeline.with_rng(fn)


def _assert_same_batches(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.keys() == y.keys()
        for k in x:
            np.testing.assert_array_equal(x[k], y[k], err_msg=k)


def test_checkpoint_restore_resumes_at_the_exact_next_example(tmp_path):
    make = lambda: pipeline.make_iterator(_numbered(23), _span_corruption_fn(), 4, seed=11, num_epochs=None)
    it = make()
    for _ in range(7):  # crosses an epoch boundary (23 examples, 4 per batch)
        next(it)
    pipeline.save_state(it, tmp_path / "data_state.json")
    expected = [next(it) for _ in range(9)]
    restored = pipeline.load_state(make(), tmp_path / "data_state.json")
    _assert_same_batches([next(restored) for _ in range(9)], expected)
    json.loads((tmp_path / "data_state.json").read_text())  # plain JSON


def test_batches_have_fixed_shapes_and_dtypes():
    it = pipeline.make_iterator(_numbered(10), _span_corruption_fn(200), 4, seed=0, num_epochs=2)
    batches = list(it)
    assert len(batches) == 5  # 20 examples, remainder dropped
    for batch in batches:
        assert batch["encoder_input_tokens"].shape == (4, 32) and batch["encoder_input_tokens"].dtype == np.int32
        assert batch["decoder_target_tokens"].shape == (4, preprocess.span_corruption_lengths(32)[1])


def _packing_source():
    rng = np.random.default_rng(0)
    return [{"id": i, "input": rng.integers(3, 50, rng.integers(1, 9)).tolist(),
             "target": rng.integers(3, 50, rng.integers(1, 5)).tolist()} for i in range(40)]


def _unpadded(example):
    return preprocess.seq2seq_features(example["input"], example["target"], 10, 6, eos_id=EOS, pad_id=PAD,
                                       pad=False)


PACKING = pipeline.Packing({"encoder": 16, "decoder": 10}, pad_id=PAD, num_bins=3)


def _segments(row, group, names):
    """Splits a packed row into its segments (by segment id) and checks the positions."""
    out = []
    for seg in range(1, int(row[f"{group}_segment_ids"].max()) + 1):
        where = row[f"{group}_segment_ids"] == seg
        assert where.any()
        np.testing.assert_array_equal(row[f"{group}_positions"][where], np.arange(where.sum()))
        out.append({n: row[n][where] for n in names})
    padding = row[f"{group}_segment_ids"] == 0
    assert (row[f"{group}_positions"][padding] == 0).all()
    return out


def test_packing_keeps_every_example_intact_exactly_once():
    source = _packing_source()
    rows = [r for b in pipeline.make_iterator(source, _unpadded, 2, seed=5, num_epochs=1, drop_remainder=False,
                                              packing=PACKING) for r in _unbatch(b)]
    expected = {(tuple(e["encoder_input_tokens"]), tuple(e["decoder_target_tokens"])): e
                for e in map(_unpadded, source)}
    found = []
    for row in rows:
        assert row["encoder_input_tokens"].shape == (16,) and row["decoder_target_tokens"].shape == (10,)
        enc = _segments(row, "encoder", ["encoder_input_tokens"])
        dec = _segments(row, "decoder", ["decoder_target_tokens", "decoder_input_tokens", "decoder_loss_weights"])
        assert len(enc) == len(dec) and (row["decoder_loss_weights"][row["decoder_segment_ids"] == 0] == 0).all()
        for e, d in zip(enc, dec):
            original = expected[(tuple(e["encoder_input_tokens"]), tuple(d["decoder_target_tokens"]))]
            # each segment's decoder inputs are its own targets shifted, starting from the start id
            np.testing.assert_array_equal(d["decoder_input_tokens"], original["decoder_input_tokens"])
            np.testing.assert_array_equal(d["decoder_loss_weights"], original["decoder_loss_weights"])
            found.append(id(original))
    assert sorted(found) == sorted(id(e) for e in expected.values())
    assert len(rows) < len(source)  # packing did pack


def _unbatch(batch):
    return [{k: v[i] for k, v in batch.items()} for i in range(len(next(iter(batch.values()))))]


def test_packed_iterator_resumes_exactly():
    make = lambda: pipeline.make_iterator(_packing_source(), _unpadded, 2, seed=5, packing=PACKING)
    it = make()
    for _ in range(4):
        next(it)
    state = json.loads(json.dumps(it.get_state()))
    expected = [next(it) for _ in range(6)]
    restored = make()
    restored.set_state(state)
    _assert_same_batches([next(restored) for _ in range(6)], expected)


def test_packing_prefix_lm_carries_causal_attention_per_segment():
    packing = pipeline.Packing({"decoder": 24}, pad_id=PAD, num_bins=2, causal_attention=True)
    fn = lambda ex: preprocess.prefix_lm_features(ex["input"], ex["target"], 16, eos_id=EOS, pad_id=PAD, pad=False)
    batch = next(pipeline.make_iterator(_packing_source(), fn, 2, seed=0, packing=packing))
    row = _unbatch(batch)[0]
    for seg in _segments(row, "decoder", ["decoder_causal_attention", "decoder_loss_weights"]):
        n_prefix = int(seg["decoder_causal_attention"].sum())
        assert seg["decoder_causal_attention"][:n_prefix].all()
        assert (seg["decoder_loss_weights"][:n_prefix - 1] == 0).all()


def test_packing_needs_unpadded_features_it_knows():
    fn = lambda ex: preprocess.lm_features(ex["input"], 8, eos_id=EOS, pad_id=PAD, pad=False)
    with pytest.raises(ValueError, match=r"packing needs feature\(s\) \['encoder_input_tokens'\]"):
        next(pipeline.make_iterator(_packing_source(), fn, 2, seed=0, packing=PACKING))
    with pytest.raises(ValueError, match="keys must be 'encoder' and/or 'decoder'"):
        pipeline.Packing({"inputs": 8}, pad_id=0)


def test_invalid_arguments_are_rejected(tmp_path):
    with pytest.raises(ValueError, match=r"shard_index must be in \[0, shard_count=2\)"):
        pipeline.make_iterator(_numbered(4), None, 1, 0, shard_index=2, shard_count=2)
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        pipeline.make_iterator(_numbered(4), None, 0, 0)
    with pytest.raises(sources.EmptySplitError, match="shard 2 would be empty"):
        pipeline.make_iterator(_numbered(2), None, 1, 0, shard_index=2, shard_count=3)
    with pytest.raises(sources.MissingDataError, match="iterator state file"):
        pipeline.load_state(pipeline.make_iterator(_numbered(4), None, 1, 0), tmp_path / "none.json")
