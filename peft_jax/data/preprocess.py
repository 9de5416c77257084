"""Token ids -> model features with the t5x names, plus T5's span-corruption objective.

Feature dicts hold numpy arrays (int32 tokens, float32 weights) of fixed length when
``pad=True``. With ``pad=False`` they keep their natural length, which is what packing
(``pipeline.Packing``) consumes; packed rows add ``*_segment_ids``/``*_positions``.

* encoder-decoder (mT5): ``encoder_input_tokens``, ``decoder_input_tokens``,
  ``decoder_target_tokens``, ``decoder_loss_weights``;
* decoder-only (PaLM-style): ``decoder_input_tokens``, ``decoder_target_tokens``,
  ``decoder_loss_weights`` and, for a prefix LM, ``decoder_causal_attention``.

Truncation keeps EOS: a sequence longer than its budget loses its tail, not its EOS
(seqio's ``append_eos_after_trim``). ``decoder_input_tokens`` are the targets shifted
right, starting with ``decoder_start_id`` (default: the pad id; 0 for T5).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

XLSUM_MAX_INPUT_LEN = 512  # XL-Sum's mT5 fine-tuning: source tokens
XLSUM_MAX_TARGET_LEN = 84  # ... and summary tokens


def as_ids(ids: Sequence[int] | np.ndarray, name: str = "ids") -> np.ndarray:
    """Validates a 1-D sequence of non-negative token ids and returns it as int32."""
    arr = np.asarray(ids)
    if arr.size == 0:
        return np.zeros(0, np.int32)
    if arr.ndim != 1 or not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"{name} must be a 1-D sequence of integers, got shape {arr.shape} dtype {arr.dtype}")
    if arr.min() < 0:
        raise ValueError(f"{name} must be non-negative token ids, got {int(arr.min())}")
    return arr.astype(np.int32)


def trim_and_append_eos(ids: Sequence[int] | np.ndarray, max_len: int, eos_id: int) -> np.ndarray:
    """``ids[:max_len - 1] + [eos_id]``: at most ``max_len`` tokens, always ending in EOS."""
    if max_len < 1:
        raise ValueError(f"max_len must be >= 1, got {max_len}")
    return np.concatenate([as_ids(ids)[: max_len - 1], np.asarray([eos_id], np.int32)])


def pad_to(x: np.ndarray, length: int, value: float | int) -> np.ndarray:
    """Right-pads a 1-D array to ``length`` with ``value``."""
    if len(x) > length:
        raise ValueError(f"sequence of length {len(x)} does not fit length {length}")
    return np.concatenate([x, np.full(length - len(x), value, x.dtype)])


def shift_right(tokens: np.ndarray, start_id: int) -> np.ndarray:
    """Autoregressive inputs: ``[start_id] + tokens[:-1]``."""
    return np.concatenate([np.asarray([start_id], np.int32), tokens[:-1]]).astype(np.int32)


def _finish(targets: np.ndarray, extra: Mapping[str, np.ndarray], length: int, pad_id: int,
            start_id: int, pad: bool) -> dict[str, np.ndarray]:
    """Builds decoder features from unpadded targets and per-position extras."""
    if pad:
        # t5x shifts the *padded* targets, so padding positions follow the same rule.
        targets = pad_to(targets, length, pad_id)
        extra = {k: pad_to(v, length, 0) for k, v in extra.items()}
    return {"decoder_target_tokens": targets, "decoder_input_tokens": shift_right(targets, start_id), **extra}


def seq2seq_features(input_ids: Sequence[int], target_ids: Sequence[int],
                     max_input_len: int = XLSUM_MAX_INPUT_LEN, max_target_len: int = XLSUM_MAX_TARGET_LEN, *,
                     eos_id: int, pad_id: int, decoder_start_id: int | None = None,
                     pad: bool = True) -> dict[str, np.ndarray]:
    """Encoder-decoder features: inputs + EOS for the encoder, targets + EOS for the decoder.

    ``decoder_loss_weights`` is 1.0 on every real target position including EOS.
    """
    encoder = trim_and_append_eos(input_ids, max_input_len, eos_id)
    targets = trim_and_append_eos(target_ids, max_target_len, eos_id)
    start = pad_id if decoder_start_id is None else decoder_start_id
    features = _finish(targets, {"decoder_loss_weights": np.ones(len(targets), np.float32)},
                       max_target_len, pad_id, start, pad)
    features["encoder_input_tokens"] = pad_to(encoder, max_input_len, pad_id) if pad else encoder
    return features


def lm_features(ids: Sequence[int], max_len: int, *, eos_id: int, pad_id: int,
                decoder_start_id: int | None = None, pad: bool = True) -> dict[str, np.ndarray]:
    """Causal language-model features: predict every token of ``ids`` + EOS."""
    targets = trim_and_append_eos(ids, max_len, eos_id)
    start = pad_id if decoder_start_id is None else decoder_start_id
    return _finish(targets, {"decoder_loss_weights": np.ones(len(targets), np.float32)},
                   max_len, pad_id, start, pad)


def prefix_lm_features(input_ids: Sequence[int], target_ids: Sequence[int], max_len: int, *,
                       eos_id: int, pad_id: int, max_target_len: int | None = None,
                       max_input_len: int | None = None, decoder_start_id: int | None = None,
                       input_eos: bool = True, prefix: bool = True, pad: bool = True) -> dict[str, np.ndarray]:
    """Prefix-LM features for a decoder-only model: ``[inputs (+EOS), targets + EOS]``.

    The loss covers the targets only. ``decoder_causal_attention`` is 1 on the first
    ``len(inputs) + 1`` positions (t5x semantics: the prefix of ``decoder_input_tokens``
    including the shifted-in start token), which the model attends bidirectionally;
    ``prefix=False`` keeps it all 0 (causal attention everywhere, the loss still on the targets).
    Targets get up to ``max_target_len`` tokens (default ``max_len // 2``); inputs (EOS included)
    up to ``max_input_len`` (default: whatever the targets leave, so the split depends on the
    target's length). A fixed ``max_input_len`` gives every example the same input budget, the one a
    decoding prompt can reproduce without knowing the target.
    """
    target_budget = max_len // 2 if max_target_len is None else max_target_len
    if not 1 <= target_budget < max_len:
        raise ValueError(f"max_target_len must be in [1, max_len={max_len}), got {target_budget}")
    targets = trim_and_append_eos(target_ids, target_budget, eos_id)
    budget = max_len - len(targets)
    if max_input_len is not None:
        if not 1 <= max_input_len <= max_len - target_budget:
            raise ValueError(f"max_input_len must be in [1, max_len - max_target_len = {max_len - target_budget}], "
                             f"got {max_input_len}")
        budget = max_input_len
    inputs = trim_and_append_eos(input_ids, budget, eos_id) if input_eos else as_ids(input_ids)[:budget]
    n_in, n_out = len(inputs), len(targets)
    extra = {
        "decoder_loss_weights": np.concatenate([np.zeros(n_in), np.ones(n_out)]).astype(np.float32),
        "decoder_causal_attention": (np.arange(n_in + n_out) < (n_in + 1 if prefix else 0)).astype(np.int32),
    }
    start = pad_id if decoder_start_id is None else decoder_start_id
    return _finish(np.concatenate([inputs, targets]), extra, max_len, pad_id, start, pad)


def decoder_prompt(input_ids: Sequence[int], length: int, *, start_id: int, eos_id: int) -> np.ndarray:
    """A decoder-only generation prompt ``[start_id] + inputs[:length - 2] + [eos_id]``: exactly the first
    ``len(prompt)`` tokens of ``prefix_lm_features(..., max_input_len=length - 1, decoder_start_id=start_id)``'s
    ``decoder_input_tokens``, so decoding continues where training's targets begin."""
    return np.concatenate([np.asarray([start_id], np.int32), trim_and_append_eos(input_ids, length - 1, eos_id)])


# --- Span corruption (Raffel et al. 2020, t5.data.preprocessors) ----------------------------

def _check_noise(noise_density: float, mean_noise_span_length: float) -> None:
    """Rejects settings for which T5's span arithmetic is undefined."""
    if not 0.0 < noise_density < 1.0:
        raise ValueError(f"noise_density must be in (0, 1), got {noise_density}")
    if mean_noise_span_length < 1.0:
        raise ValueError(f"mean_noise_span_length must be >= 1, got {mean_noise_span_length}")


def random_segmentation(num_items: int, num_segments: int, rng: np.random.Generator) -> np.ndarray:
    """Lengths of a uniformly random partition of ``num_items`` into ``num_segments`` non-empty parts.

    As in T5: shuffle ``num_segments - 1`` segment starts among the ``num_items - 1``
    gaps, so every composition is equally likely.
    """
    if not 1 <= num_segments <= num_items:
        raise ValueError(f"cannot split {num_items} items into {num_segments} non-empty segments")
    starts = rng.permutation(np.arange(num_items - 1) < num_segments - 1)
    segment_id = np.cumsum(np.concatenate([[0], starts.astype(np.int64)]))
    return np.bincount(segment_id, minlength=num_segments)


def noise_span_counts(length: int, noise_density: float = 0.15,
                      mean_noise_span_length: float = 3.0) -> tuple[int, int]:
    """``(num_noise_tokens, num_noise_spans)`` of T5's ``random_spans_noise_mask``.

    T5 rounds in float32 (half to even); a span count above the number of noise or
    non-noise tokens, where T5 itself would fail, is capped.
    """
    _check_noise(noise_density, mean_noise_span_length)
    length = max(length, 2)
    num_noise = int(np.round(np.float32(length) * np.float32(noise_density)))
    num_noise = min(max(num_noise, 1), length - 1)
    num_spans = max(int(np.round(np.float32(num_noise) / np.float32(mean_noise_span_length))), 1)
    return num_noise, min(num_spans, num_noise, length - num_noise)


def random_spans_noise_mask(length: int, rng: np.random.Generator, noise_density: float = 0.15,
                            mean_noise_span_length: float = 3.0) -> np.ndarray:
    """Boolean noise mask of T5 span corruption: alternating non-noise/noise spans.

    The mask starts with a non-noise span and ends with a noise span; the noise spans
    and the non-noise spans are independent uniformly random partitions.
    """
    padded_length = max(length, 2)  # T5 pads a 1-token sequence to 2 and cuts the mask back
    num_noise, num_spans = noise_span_counts(length, noise_density, mean_noise_span_length)
    noise_lengths = random_segmentation(num_noise, num_spans, rng)
    nonnoise_lengths = random_segmentation(padded_length - num_noise, num_spans, rng)
    interleaved = np.stack([nonnoise_lengths, noise_lengths], axis=1).reshape(-1)
    span_starts = np.cumsum(interleaved)[:-1]
    indicator = np.zeros(padded_length, np.int64)
    indicator[span_starts] = 1
    return (np.cumsum(indicator) % 2 == 1)[:length]


def replace_spans_with_sentinels(ids: np.ndarray, mask: np.ndarray, sentinel_ids: Sequence[int]) -> np.ndarray:
    """Replaces each masked span by the next sentinel (``sentinel_ids[0]``, ``[1]``, ...)."""
    previous = np.concatenate([[False], mask[:-1]])
    first = mask & ~previous
    num_spans = int(first.sum())
    if num_spans > len(sentinel_ids):
        raise ValueError(f"{num_spans} spans need {num_spans} sentinels, only {len(sentinel_ids)} given")
    span_index = np.cumsum(first) - 1
    sentinels = np.asarray(list(sentinel_ids) or [0], np.int32)
    out = np.where(first, sentinels[np.clip(span_index, 0, len(sentinels) - 1)], ids)
    return out[~(mask & previous)].astype(np.int32)


def span_corruption(ids: Sequence[int], rng: np.random.Generator, noise_density: float = 0.15,
                    mean_noise_span_length: float = 3.0, *, sentinel_ids: Sequence[int]
                    ) -> tuple[np.ndarray, np.ndarray]:
    """T5 span corruption of one token sequence; returns ``(inputs, targets)`` without EOS.

    Inputs keep the non-noise tokens and put sentinel ``i`` where noise span ``i`` was;
    targets are each sentinel followed by the span it replaced. ``sentinel_ids[i]`` is
    the id of ``<extra_id_i>`` (``Tokenizer.sentinel_ids()``). Deterministic given ``rng``.
    """
    ids = as_ids(ids)
    if len(ids) == 0:
        raise ValueError("span corruption needs at least one token")
    mask = random_spans_noise_mask(len(ids), rng, noise_density, mean_noise_span_length)
    return (replace_spans_with_sentinels(ids, mask, sentinel_ids),
            replace_spans_with_sentinels(ids, ~mask, sentinel_ids))


def span_corruption_lengths(inputs_length: int = XLSUM_MAX_INPUT_LEN, noise_density: float = 0.15,
                            mean_noise_span_length: float = 3.0) -> tuple[int, int]:
    """``(tokens_length, targets_length)`` so corrupted inputs + EOS fill ``inputs_length``.

    T5's ``random_spans_helper``: the longest raw chunk whose corrupted inputs
    (non-noise tokens, one sentinel per span, EOS) fit, and the matching target length.
    """
    _check_noise(noise_density, mean_noise_span_length)

    def lengths(tokens_length: int) -> tuple[int, int]:
        """(inputs, targets) lengths after corrupting ``tokens_length`` tokens, EOS included."""
        num_noise = int(round(tokens_length * noise_density))
        num_spans = int(round(num_noise / mean_noise_span_length))
        return tokens_length - num_noise + num_spans + 1, num_noise + num_spans + 1

    tokens_length = inputs_length - 1
    while lengths(tokens_length + 1)[0] <= inputs_length:
        tokens_length += 1
    targets_length = lengths(tokens_length)[1]
    if noise_density == 0.5 and targets_length > inputs_length:
        tokens_length, targets_length = tokens_length - 1, targets_length - 1
    return tokens_length, targets_length


def span_corruption_features(ids: Sequence[int], rng: np.random.Generator, *, sentinel_ids: Sequence[int],
                             eos_id: int, pad_id: int, max_input_len: int = XLSUM_MAX_INPUT_LEN,
                             noise_density: float = 0.15, mean_noise_span_length: float = 3.0,
                             pad: bool = True) -> dict[str, np.ndarray]:
    """Encoder-decoder features of span corruption on one document.

    A document longer than ``tokens_length`` (``span_corruption_lengths``) contributes a
    random chunk of that length, so inputs fill ``max_input_len`` as in T5 pre-training.
    """
    tokens_length, targets_length = span_corruption_lengths(max_input_len, noise_density, mean_noise_span_length)
    ids = as_ids(ids)
    if len(ids) > tokens_length:
        start = int(rng.integers(0, len(ids) - tokens_length + 1))
        ids = ids[start:start + tokens_length]
    inputs, targets = span_corruption(ids, rng, noise_density, mean_noise_span_length, sentinel_ids=sentinel_ids)
    return seq2seq_features(inputs, targets, max_input_len, targets_length, eos_id=eos_id, pad_id=pad_id, pad=pad)
