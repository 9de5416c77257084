"""Deterministic, sharded, checkpointable input pipelines built on grain.

``make_iterator`` turns any random-access source (a list, ``sources.JsonLinesSource``,
``sources.RecordFileSource``, a TFDS data source ...) into batches of numpy feature
dicts:

    source --shard(shard_index::shard_count)--> shuffle(seed) --> repeat(num_epochs)
           --> preprocess --> [pack] --> batch

* the seed fixes the order; every epoch is a different permutation of the shard;
* each host only ever reads the records of its shard (strided: record ``i`` belongs
  to host ``i % shard_count``), so shards are disjoint and together cover the data;
* ``preprocess_fn(example)`` or, for random preprocessing such as span corruption,
  ``preprocess_fn(example, rng)`` wrapped with ``with_rng``; the rng is derived from the
  seed and the example's position, so a restored iterator reproduces it exactly;
* ``iterator.get_state()`` is a small JSON-serialisable dict; ``set_state`` on a fresh
  iterator built with the same arguments continues at the exact next batch
  (``save_state``/``load_state`` store it in a file next to a model checkpoint).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import pathlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import grain
import numpy as np

from peft_jax.data import sources


# The features packing concatenates, by stack; the first of each names its segment ids.
ENCODER_FEATURES = ("encoder_input_tokens",)
DECODER_FEATURES = ("decoder_target_tokens", "decoder_input_tokens", "decoder_loss_weights")


@dataclasses.dataclass(frozen=True)
class Packing:
    """Optional t5x-style packing of several short examples into each row.

    ``lengths`` gives the row length of the encoder features (key ``"encoder"``) and
    of the decoder features (key ``"decoder"``); preprocessing must then produce
    unpadded features (``pad=False``) no longer than these. Rows gain
    ``encoder_segment_ids``, ``encoder_positions``, ``decoder_segment_ids`` and
    ``decoder_positions``; segment ids count from 1 and 0 marks padding. Each
    example's ``decoder_input_tokens`` were shifted on their own, so every segment
    starts with the decoder start token as in t5x. ``num_bins`` rows are filled at a
    time (first fit), in the order the examples arrive. Set ``causal_attention`` to
    also pack the prefix-LM feature ``decoder_causal_attention``.
    """

    lengths: Mapping[str, int]
    pad_id: int
    num_bins: int = 8
    causal_attention: bool = False

    def __post_init__(self):
        if not self.lengths or not set(self.lengths) <= {"encoder", "decoder"}:
            raise ValueError(f"Packing.lengths keys must be 'encoder' and/or 'decoder', got {sorted(self.lengths)}")
        if self.num_bins < 1:
            raise ValueError(f"Packing.num_bins must be >= 1, got {self.num_bins}")

    def features(self) -> dict[str, int]:
        """Packed length of every feature."""
        names = {"encoder": ENCODER_FEATURES,
                 "decoder": DECODER_FEATURES + (("decoder_causal_attention",) if self.causal_attention else ())}
        return {f: self.lengths[group] for group in self.lengths for f in names[group]}


class _RandomFn(grain.transforms.RandomMap):
    """A grain random map calling ``fn(example, rng)``."""

    def __init__(self, fn: Callable[[Any, np.random.Generator], Any]):
        self.fn = fn

    def random_map(self, element, rng: np.random.Generator):
        """grain passes an rng derived from the seed and the element's position."""
        return self.fn(element, rng)


def with_rng(fn: Callable[[Any, np.random.Generator], Any]) -> grain.transforms.RandomMap:
    """Marks ``fn(example, rng)`` as a random preprocessing step (e.g. span corruption)."""
    return _RandomFn(fn)


def _check_args(source: Sequence[Any], batch_size: int, shard_index: int, shard_count: int,
                num_epochs: int | None) -> None:
    """Rejects arguments that would give empty, overlapping or ill-shaped batches."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if not 0 <= shard_index < shard_count:
        raise ValueError(f"shard_index must be in [0, shard_count={shard_count}), got {shard_index}")
    if num_epochs is not None and num_epochs < 1:
        raise ValueError(f"num_epochs must be None (forever) or >= 1, got {num_epochs}")
    if len(source) < shard_count:
        raise sources.EmptySplitError(f"{len(source)} record(s) cannot feed {shard_count} shards: "
                                      f"shard {shard_index} would be empty")


def shard_and_order(source: Sequence[Any], seed: int, *, shard_index: int = 0, shard_count: int = 1,
                    num_epochs: int | None = None, shuffle: bool = True) -> grain.MapDataset:
    """This host's records in the seeded order of every epoch (a lazy random-access dataset)."""
    dataset = grain.MapDataset.source(source)[shard_index::shard_count]
    if shuffle:
        dataset = dataset.shuffle(seed=seed)
    # repeat() re-seeds the upstream shuffle per epoch: a new permutation each epoch.
    return dataset.repeat(num_epochs)


def _apply(dataset: grain.MapDataset, fn: Callable | grain.transforms.RandomMap | None,
           seed: int) -> grain.MapDataset:
    """Applies plain or random (``with_rng``) preprocessing."""
    if fn is None:
        return dataset
    if isinstance(fn, grain.transforms.RandomMap):
        return dataset.random_map(fn, seed=seed)
    return dataset.map(fn)


def _packed(dataset: grain.IterDataset, packing: Packing, seed: int) -> grain.IterDataset:
    """First-fit packing with grain, renamed to the t5x feature names."""
    lengths = packing.features()
    anchors = {"encoder": ENCODER_FEATURES[0], "decoder": DECODER_FEATURES[0]}
    anchors = {group: anchors[group] for group in packing.lengths}
    padding = {k: (packing.pad_id if k.endswith("_tokens") else 0) for k in lengths}
    packed = grain.experimental.FirstFitPackIterDataset(
        dataset.map(functools.partial(_select, names=tuple(lengths))), length_struct=lengths,
        num_packing_bins=packing.num_bins, seed=seed, shuffle_bins=False,
        meta_features=[k for k in lengths if k not in anchors.values()], padding_struct=padding)
    return packed.map(functools.partial(_rename_packed, anchors=anchors))


def _select(example: Mapping[str, np.ndarray], names: tuple[str, ...]) -> dict[str, np.ndarray]:
    """Keeps the packed features; a missing one is a clear error, not a shape mismatch later."""
    missing = [n for n in names if n not in example]
    if missing:
        raise ValueError(f"packing needs feature(s) {missing}; preprocessing produced {sorted(example)}")
    return {n: example[n] for n in names}


def _rename_packed(row: dict[str, np.ndarray], anchors: Mapping[str, str]) -> dict[str, np.ndarray]:
    """grain names segment ids after one feature; t5x names them after the stack."""
    row = dict(row)
    for group, anchor in anchors.items():
        row[f"{group}_segment_ids"] = row.pop(f"{anchor}_segment_ids")
        row[f"{group}_positions"] = row.pop(f"{anchor}_positions")
    return row


def make_dataset(source: Sequence[Any], preprocess_fn: Callable | grain.transforms.RandomMap | None,
                 batch_size: int, seed: int, *, shard_index: int = 0, shard_count: int = 1,
                 num_epochs: int | None = None, shuffle: bool = True, drop_remainder: bool = True,
                 packing: Packing | None = None, num_threads: int = 2) -> grain.IterDataset:
    """The grain dataset behind ``make_iterator`` (same arguments)."""
    _check_args(source, batch_size, shard_index, shard_count, num_epochs)
    dataset = shard_and_order(source, seed, shard_index=shard_index, shard_count=shard_count,
                              num_epochs=num_epochs, shuffle=shuffle)
    dataset = _apply(dataset, preprocess_fn, seed)
    options = grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=max(2 * batch_size, 8))
    if packing is None:
        return dataset.batch(batch_size, drop_remainder=drop_remainder).to_iter_dataset(options)
    rows = _packed(dataset.to_iter_dataset(options), packing, seed)
    return rows.batch(batch_size, drop_remainder=drop_remainder)


def make_iterator(source: Sequence[Any], preprocess_fn: Callable | grain.transforms.RandomMap | None,
                  batch_size: int, seed: int, shard_index: int = 0, shard_count: int = 1,
                  num_epochs: int | None = None, **kwargs) -> grain.DatasetIterator:
    """A checkpointable iterator over batches (dicts of numpy arrays) of this host's shard.

    Args:
      source: random-access records (``len`` and ``[i]``).
      preprocess_fn: ``example -> features`` or ``with_rng(fn(example, rng))``; None keeps records.
      batch_size: examples (or packed rows) per batch on this host.
      seed: fixes the shuffle of every epoch and the rng of random preprocessing.
      shard_index, shard_count: this host's shard, e.g. ``jax.process_index()``/``process_count()``.
      num_epochs: passes over the shard; None repeats forever.
      **kwargs: ``shuffle``, ``drop_remainder`` (default True: fixed batch shapes),
        ``packing`` (a ``Packing``), ``num_threads``.

    Returns:
      A grain iterator with ``get_state()``/``set_state()``.
    """
    return iter(make_dataset(source, preprocess_fn, batch_size, seed, shard_index=shard_index,
                             shard_count=shard_count, num_epochs=num_epochs, **kwargs))


def save_state(iterator: grain.DatasetIterator, path: str | os.PathLike) -> None:
    """Writes the iterator position as JSON (atomically: write then rename)."""
    path = pathlib.Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(iterator.get_state(), sort_keys=True), encoding="utf-8")
    os.replace(tmp, path)


def load_state(iterator: grain.DatasetIterator, path: str | os.PathLike) -> grain.DatasetIterator:
    """Moves a fresh iterator (same arguments as the saved one) to the saved position."""
    path = pathlib.Path(path)
    if not path.is_file():
        raise sources.MissingDataError(f"iterator state file {str(path)!r} not found")
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise sources.MalformedRecordError(f"{path}: not a JSON iterator state ({err.msg})") from None
    iterator.set_state(state)
    return iterator
