"""Features follow t5x; span corruption follows the T5 definition on fixed seeds."""

import collections
import itertools

import numpy as np
import pytest

from peft_jax.data import preprocess

EOS, PAD = 1, 0
SENTINELS = list(range(999, 899, -1))  # <extra_id_i> = 999 - i, like vocab_size - 1 - i


def test_seq2seq_features_follow_t5x():
    f = preprocess.seq2seq_features([5, 6, 7], [8, 9], 6, 4, eos_id=EOS, pad_id=PAD)
    np.testing.assert_array_equal(f["encoder_input_tokens"], [5, 6, 7, EOS, PAD, PAD])
    np.testing.assert_array_equal(f["decoder_target_tokens"], [8, 9, EOS, PAD])
    np.testing.assert_array_equal(f["decoder_input_tokens"], [PAD, 8, 9, EOS])  # shifted padded targets
    np.testing.assert_array_equal(f["decoder_loss_weights"], [1, 1, 1, 0])
    assert f["encoder_input_tokens"].dtype == np.int32 and f["decoder_loss_weights"].dtype == np.float32


def test_truncation_keeps_eos_and_xlsum_defaults_are_512_84():
    f = preprocess.seq2seq_features(list(range(3, 1003)), list(range(3, 203)), eos_id=2, pad_id=0)
    assert f["encoder_input_tokens"].shape == (512,) and f["decoder_target_tokens"].shape == (84,)
    np.testing.assert_array_equal(f["encoder_input_tokens"][-2:], [513, 2])
    np.testing.assert_array_equal(f["decoder_target_tokens"][-2:], [85, 2])
    assert f["decoder_loss_weights"].sum() == 84


def test_decoder_start_and_padding_use_the_given_ids():
    f = preprocess.seq2seq_features([4], [5], 3, 3, eos_id=2, pad_id=7, decoder_start_id=9)
    np.testing.assert_array_equal(f["encoder_input_tokens"], [4, 2, 7])
    np.testing.assert_array_equal(f["decoder_input_tokens"], [9, 5, 2])
    unpadded = preprocess.seq2seq_features([4], [5], 3, 3, eos_id=2, pad_id=7, pad=False)
    np.testing.assert_array_equal(unpadded["decoder_input_tokens"], [7, 5])


def test_lm_features_predict_every_token_and_eos():
    f = preprocess.lm_features([5, 6], 4, eos_id=EOS, pad_id=PAD)
    np.testing.assert_array_equal(f["decoder_target_tokens"], [5, 6, EOS, PAD])
    np.testing.assert_array_equal(f["decoder_input_tokens"], [PAD, 5, 6, EOS])
    np.testing.assert_array_equal(f["decoder_loss_weights"], [1, 1, 1, 0])


def test_prefix_lm_attends_prefix_plus_start_and_scores_targets_only():
    f = preprocess.prefix_lm_features([5, 6, 7], [8, 9], 8, eos_id=EOS, pad_id=PAD)
    np.testing.assert_array_equal(f["decoder_target_tokens"], [5, 6, 7, EOS, 8, 9, EOS, PAD])
    np.testing.assert_array_equal(f["decoder_input_tokens"], [PAD, 5, 6, 7, EOS, 8, 9, EOS])
    np.testing.assert_array_equal(f["decoder_loss_weights"], [0, 0, 0, 0, 1, 1, 1, 0])
    # inputs (3 tokens + EOS) + 1 shifted-in start token: 5 bidirectional positions.
    np.testing.assert_array_equal(f["decoder_causal_attention"], [1, 1, 1, 1, 1, 0, 0, 0])


def test_prefix_lm_truncates_inputs_before_targets():
    f = preprocess.prefix_lm_features(list(range(10, 30)), list(range(40, 50)), 16, eos_id=EOS, pad_id=PAD,
                                      max_target_len=6, pad=False)
    np.testing.assert_array_equal(f["decoder_target_tokens"][-6:], [40, 41, 42, 43, 44, EOS])
    assert len(f["decoder_target_tokens"]) == 16 and f["decoder_target_tokens"][9] == EOS
    assert f["decoder_causal_attention"].sum() == 11
    with pytest.raises(ValueError, match="max_target_len must be in"):
        preprocess.prefix_lm_features([1], [2], 4, eos_id=EOS, pad_id=PAD, max_target_len=4)


def test_bad_ids_are_rejected():
    with pytest.raises(ValueError, match="non-negative"):
        preprocess.seq2seq_features([-1], [2], eos_id=EOS, pad_id=PAD)
    with pytest.raises(ValueError, match="1-D sequence of integers"):
        preprocess.lm_features([[1, 2]], 4, eos_id=EOS, pad_id=PAD)


# --- span corruption ------------------------------------------------------------------------

def _t5_counts(length, density, mean):
    """The T5 formulas, written out independently (float32 rounding, half to even)."""
    length = max(length, 2)
    noise = min(max(int(np.rint(np.float32(length) * np.float32(density))), 1), length - 1)
    spans = max(int(np.rint(np.float32(noise) / np.float32(mean))), 1)
    return noise, spans


def _runs(mask):
    return [(bool(k), len(list(g))) for k, g in itertools.groupby(mask)]


@pytest.mark.parametrize("length", [2, 3, 10, 57, 100, 568])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_noise_mask_has_t5_noise_count_and_span_count(length, seed):
    mask = preprocess.random_spans_noise_mask(length, np.random.default_rng(seed), 0.15, 3.0)
    noise, spans = _t5_counts(length, 0.15, 3.0)
    runs = _runs(mask)
    assert mask.shape == (length,) and mask.sum() == noise
    assert sum(1 for is_noise, _ in runs if is_noise) == spans
    assert not mask[0] and mask[-1]  # starts with non-noise, ends with noise
    assert len(runs) == 2 * spans  # strictly alternating spans


def test_noise_mask_equals_t5_interleaving_of_the_two_partitions():
    rng, replay = np.random.default_rng(7), np.random.default_rng(7)
    mask = preprocess.random_spans_noise_mask(100, rng, 0.15, 3.0)
    noise, spans = _t5_counts(100, 0.15, 3.0)
    noise_lengths = preprocess.random_segmentation(noise, spans, replay)
    keep_lengths = preprocess.random_segmentation(100 - noise, spans, replay)
    expected = []
    for keep, drop in zip(keep_lengths, noise_lengths):
        expected += [False] * keep + [True] * drop
    assert mask.tolist() == expected


def test_one_token_sequence_follows_t5_padding_to_two():
    mask = preprocess.random_spans_noise_mask(1, np.random.default_rng(0))
    assert mask.tolist() == [False]
    inputs, targets = preprocess.span_corruption([42], np.random.default_rng(0), sentinel_ids=SENTINELS)
    assert inputs.tolist() == [42] and targets.tolist() == [SENTINELS[0]]


def test_random_segmentation_is_uniform_over_compositions():
    rng = np.random.default_rng(0)
    counts = collections.Counter(tuple(preprocess.random_segmentation(5, 3, rng)) for _ in range(6000))
    # 5 items in 3 non-empty parts: C(4, 2) = 6 compositions, 1000 expected each.
    assert set(counts) == {(1, 1, 3), (1, 3, 1), (3, 1, 1), (1, 2, 2), (2, 1, 2), (2, 2, 1)}
    assert all(880 <= c <= 1120 for c in counts.values()), counts  # > 4 standard deviations


def _reconstruct(inputs, targets):
    """Puts the target spans back in place of the sentinels of the inputs."""
    spans, current = {}, None
    for token in targets.tolist():
        if token in SENTINELS:
            current = token
            spans[current] = []
        else:
            spans[current].append(token)
    out = []
    for token in inputs.tolist():
        out += spans[token] if token in SENTINELS else [token]
    return out


@pytest.mark.parametrize("seed", range(5))
def test_span_corruption_reconstructs_the_original_with_sentinels_in_order(seed):
    ids = list(range(10, 210))
    inputs, targets = preprocess.span_corruption(ids, np.random.default_rng(seed), sentinel_ids=SENTINELS)
    noise, spans = _t5_counts(len(ids), 0.15, 3.0)
    sentinels_in = [t for t in inputs.tolist() if t in SENTINELS]
    assert sentinels_in == SENTINELS[:spans]
    assert [t for t in targets.tolist() if t in SENTINELS] == SENTINELS[:spans]
    assert targets[0] == SENTINELS[0]
    assert len(inputs) == len(ids) - noise + spans and len(targets) == noise + spans
    assert _reconstruct(inputs, targets) == ids


def test_span_corruption_is_deterministic_for_a_seed():
    ids = list(range(10, 400))
    a = preprocess.span_corruption(ids, np.random.default_rng(3), sentinel_ids=SENTINELS)
    b = preprocess.span_corruption(ids, np.random.default_rng(3), sentinel_ids=SENTINELS)
    c = preprocess.span_corruption(ids, np.random.default_rng(4), sentinel_ids=SENTINELS)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not np.array_equal(a[0], c[0])


def test_span_corruption_lengths_match_t5_random_spans_helper():
    assert preprocess.span_corruption_lengths(512, 0.15, 3.0) == (568, 114)
    for inputs_length in (64, 128, 512, 1024):
        tokens, targets = preprocess.span_corruption_lengths(inputs_length)
        noise, spans = _t5_counts(tokens, 0.15, 3.0)
        assert tokens - noise + spans + 1 <= inputs_length and targets == noise + spans + 1
        noise, spans = _t5_counts(tokens + 1, 0.15, 3.0)
        assert tokens + 1 - noise + spans + 1 > inputs_length  # the next length no longer fits


def test_span_corruption_features_fill_the_budget_without_truncation():
    doc = list(range(3, 2003))
    f = preprocess.span_corruption_features(doc, np.random.default_rng(0), sentinel_ids=SENTINELS, eos_id=EOS,
                                            pad_id=PAD, max_input_len=512)
    assert f["encoder_input_tokens"].shape == (512,) and f["decoder_target_tokens"].shape == (114,)
    n_in = int((f["encoder_input_tokens"] != PAD).sum())
    n_out = int(f["decoder_loss_weights"].sum())
    assert f["encoder_input_tokens"][n_in - 1] == EOS and f["decoder_target_tokens"][n_out - 1] == EOS
    chunk = _reconstruct(f["encoder_input_tokens"][: n_in - 1], f["decoder_target_tokens"][: n_out - 1])
    assert len(chunk) == 568 and chunk == list(range(chunk[0], chunk[0] + 568))  # one contiguous chunk


def test_too_few_sentinels_and_bad_noise_settings_are_rejected():
    with pytest.raises(ValueError, match=r"spans need \d+ sentinels, only 1 given"):
        preprocess.span_corruption(list(range(100)), np.random.default_rng(0), sentinel_ids=[999])
    with pytest.raises(ValueError, match="noise_density must be in"):
        preprocess.random_spans_noise_mask(10, np.random.default_rng(0), noise_density=1.5)
    with pytest.raises(ValueError, match="at least one token"):
        preprocess.span_corruption([], np.random.default_rng(0), sentinel_ids=SENTINELS)


def test_prefix_lm_with_a_fixed_input_budget_cuts_the_input_alike_whatever_the_target_length():
    article = list(range(10, 30))
    prompts = set()
    for summary in ([40], list(range(40, 45))):
        f = preprocess.prefix_lm_features(article, summary, 16, eos_id=EOS, pad_id=PAD, max_target_len=6,
                                          max_input_len=9, decoder_start_id=3)
        prompts.add(tuple(f["decoder_input_tokens"][:10]))
        assert f["decoder_causal_attention"].sum() == 10  # start + 8 article tokens + EOS
    # Without max_input_len a short summary leaves the article more room: the cut depends on the summary.
    free = [preprocess.prefix_lm_features(article, s, 16, eos_id=EOS, pad_id=PAD, max_target_len=6)
            ["decoder_causal_attention"].sum() for s in ([40], list(range(40, 45)))]
    assert free[0] != free[1]
    assert prompts == {tuple([3] + article[:8] + [EOS])}
    assert np.array_equal(preprocess.decoder_prompt(article, 10, start_id=3, eos_id=EOS), list(prompts)[0])
    with pytest.raises(ValueError, match="max_input_len must be in"):
        preprocess.prefix_lm_features(article, [40], 16, eos_id=EOS, pad_id=PAD, max_target_len=6, max_input_len=11)


def test_prefix_lm_in_causal_mode_keeps_the_loss_on_the_targets_and_no_prefix():
    f = preprocess.prefix_lm_features([5, 6, 7], [8, 9], 8, eos_id=EOS, pad_id=PAD, prefix=False)
    np.testing.assert_array_equal(f["decoder_causal_attention"], np.zeros(8))
    np.testing.assert_array_equal(f["decoder_loss_weights"], [0, 0, 0, 0, 1, 1, 1, 0])
