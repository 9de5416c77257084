"""Training inputs: the iterator protocol the loop consumes and the config's `data` section.

The loop needs an iterator of host batches (dicts of numpy arrays with t5x
names) that can report and restore its position:

    batch = next(it); state = it.get_state(); it.set_state(state)

Each process gets only its rows of the global batch. Sources:

  synthetic  the embedded multilingual world of `peft_jax.data.World` (no files)
  text       plain-text / JSON-lines files (`data.paths`, a glob), e.g. tests/data/tatoeba/*
  xlsum      an XL-Sum directory in its released layout (`data.paths`)
  tokens     random token sequences held in memory (`ArrayIterator`): a tiny
             memorisable task whose global batches do not depend on the
             number of processes, for tests and benchmarks
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import tempfile
from typing import Any, Callable, Protocol, Sequence

import jax
import numpy as np

from peft_jax import data as data_lib
from peft_jax.data import preprocess
from peft_jax.decode.settings import ATTENTION_KEY, ATTENTION_MODES
from peft_jax.fileio import atomic_write
from peft_jax.models import Model
from peft_jax.train import config_lib, losses

SOURCES = ("synthetic", "text", "xlsum", "tokens")


class BatchIterator(Protocol):
    """What the training loop consumes."""

    def __next__(self) -> dict[str, np.ndarray]: ...

    def get_state(self) -> dict: ...

    def set_state(self, state: dict) -> None: ...


class ArrayIterator:
    """Global batches drawn from in-memory examples; yields this process's `rows` of each.

    Global batch b holds examples order[b*B:(b+1)*B] of the concatenated,
    per-epoch seeded permutations, so every process agrees on it and a run on
    any number of processes sees the same global batches.
    """

    def __init__(self, features: dict[str, np.ndarray], global_batch_size: int, rows: slice | None = None,
                 seed: int = 0, shuffle: bool = True):
        sizes = {k: len(v) for k, v in features.items()}
        if len(set(sizes.values())) != 1:
            raise ValueError(f"all features need the same number of examples, got {sizes}")
        self.features = {k: np.asarray(v) for k, v in features.items()}
        self.num_examples = next(iter(sizes.values()))
        self.batch_size, self.seed, self.shuffle = global_batch_size, seed, shuffle
        self.rows = rows or slice(0, global_batch_size)
        self.position = 0

    def __iter__(self):
        return self

    def _order(self, epoch: int) -> np.ndarray:
        if not self.shuffle:
            return np.arange(self.num_examples)
        return np.random.default_rng([self.seed, epoch]).permutation(self.num_examples)

    def __next__(self) -> dict[str, np.ndarray]:
        start = self.position * self.batch_size
        ids = np.arange(start + self.rows.start, start + self.rows.stop)
        epochs = ids // self.num_examples
        orders = {int(e): self._order(int(e)) for e in np.unique(epochs)}  # a batch spans at most a few epochs
        idx = np.asarray([orders[int(e)][i % self.num_examples] for e, i in zip(epochs, ids)], np.int64)
        self.position += 1
        return {k: v[idx] for k, v in self.features.items()}

    def get_state(self) -> dict:
        return {"position": self.position}

    def set_state(self, state: dict) -> None:
        self.position = int(state["position"])


def memorisable_features(model, objective: str, *, num_examples: int, length: int, vocab_size: int,
                         seed: int = 0, eos_id: int = 1, pad_id: int = 0, prefix: bool = True) -> dict[str, np.ndarray]:
    """A tiny learnable task: random token sequences and a fixed function of them.

    `model`: a model, model class or family name (a model also gives its start token). Causal LM: the
    sequence itself; every other objective: the input and its reversal as the model's (input, target)
    pair features (`prefix`: see `Model.pair_features`). Tokens avoid the special ids (pad, eos, unk)
    at the bottom of the vocabulary.
    """
    contract = losses.model_contract(model)
    losses.required_keys(contract, objective)
    start = model.decoder_start_id if isinstance(model, Model) else None
    rng = np.random.default_rng(seed)
    half = max(1, length // 2 - 1)
    rows = []
    for _ in range(num_examples):
        ids = rng.integers(3, vocab_size, size=half)
        if objective == "causal_lm":
            rows.append(preprocess.lm_features(ids, length, eos_id=eos_id, pad_id=pad_id, decoder_start_id=start))
        else:
            rows.append(contract.pair_features(ids, ids[::-1], length, half + 1, eos_id=eos_id, pad_id=pad_id,
                                               decoder_start_id=start, prefix=prefix))
    return {k: np.stack([r[k] for r in rows]) for k in rows[0]}


def attends_prefix(cfg, model, objective: str) -> bool:
    """`data.decoder_attention` checked: True for 'prefix' (the input attended bidirectionally, t5x's prefix
    LM), False for 'causal' (causal attention everywhere; the loss stays on the target)."""
    mode = cfg.get("decoder_attention", "prefix")
    if mode not in ATTENTION_MODES:
        raise config_lib.ConfigError(f"data.decoder_attention={mode!r}; expected one of {ATTENTION_MODES}")
    if mode == "causal" and "encoder_input_tokens" in losses.required_keys(model, objective):
        raise config_lib.ConfigError(f"data.decoder_attention='causal' applies to decoder-only models; objective "
                                     f"{objective!r} on the {losses.model_contract(model).family} model reads its "
                                     "input with a bidirectional encoder")
    return mode == "prefix"


def module_metadata(cfg, model, objective: str) -> dict:
    """What a trained module records about the layout decoding must reproduce: for decoder-only seq2seq,
    the attention over the input (`decode.ATTENTION_KEY`), which `generate` checks."""
    if objective != "seq2seq" or "decoder_causal_attention" not in losses.required_keys(model, objective):
        return {}
    return {ATTENTION_KEY: "prefix" if attends_prefix(cfg, model, objective) else "causal"}


# ----------------------------------------------------------------------------- text sources
class _Slice:
    """Records [start, stop) of a random-access source (a held-out split carved from one source)."""

    def __init__(self, source, start: int, stop: int):
        self.source, self.start, self.stop = source, start, min(stop, len(source))
        if self.stop <= self.start:
            raise data_lib.EmptySplitError(f"no records in [{start}, {stop}) of a source of {len(source)}")

    def __len__(self) -> int:
        return self.stop - self.start

    def __getitem__(self, i: int):
        return self.source[self.start + i]


def _records(cfg, split: str, labeled: bool) -> Sequence[Any]:
    """Random-access records (str for unlabeled text, XL-Sum dicts for summarization) of a split."""
    if cfg.source == "synthetic":
        world = data_lib.World(cfg.world_seed)
        n = cfg.num_examples if split == "train" else cfg.eval_examples
        wsplit = "train" if split == "train" else "validation"
        if labeled:
            return world.summarization(cfg.language, wsplit, n)
        return world.unlabeled(cfg.language, n, wsplit)
    if cfg.source == "xlsum":
        return data_lib.xlsum_source(cfg.paths, cfg.language, "train" if split == "train" else "validation")
    if cfg.source == "text":
        if split != "train" and cfg.eval_paths:
            return data_lib.TextLinesSource(data_lib.sources.expand_paths(cfg.eval_paths))
        src = data_lib.TextLinesSource(data_lib.sources.expand_paths(cfg.paths))
        # Without eval files the first `eval_examples` lines are held out.
        return _Slice(src, 0, cfg.eval_examples) if split != "train" else _Slice(src, cfg.eval_examples, len(src))
    raise ValueError(f"data.source must be one of {SOURCES}, got {cfg.source!r}")


def _texts_for_tokenizer(cfg, labeled: bool, limit: int = 20000) -> list[str]:
    recs = _records(cfg, "train", labeled)
    out = []
    for i in range(min(len(recs), limit)):
        r = recs[i]
        out.extend([r["text"], r["summary"]] if isinstance(r, dict) else [r])
    return out


def build_tokenizer(cfg, objective: str, workdir: str | None):
    """The tokenizer of `cfg.tokenizer`, or a SentencePiece model trained on the training text.

    A trained model is kept at workdir/tokenizer.model (written once by process
    0) and reused on resume, so restarted runs keep the same ids.
    """
    if cfg.source == "tokens":
        return None
    if cfg.tokenizer:
        return data_lib.load_tokenizer(cfg.tokenizer, extra_ids=cfg.extra_ids)
    saved = pathlib.Path(workdir or tempfile.mkdtemp()) / "tokenizer.model"
    if saved.is_file():
        return data_lib.load_tokenizer(saved)
    with tempfile.TemporaryDirectory() as tmp:
        # Training is deterministic, so every process builds the same model without waiting for another.
        path = data_lib.train_sentencepiece(_texts_for_tokenizer(cfg, objective == "seq2seq"),
                                            os.path.join(tmp, "tok"), cfg.vocab_size, num_sentinels=cfg.extra_ids)
        if jax.process_index() == 0 and workdir:
            atomic_write(saved, lambda t: pathlib.Path(t).write_bytes(path.read_bytes()), overwrite=True)
        return data_lib.load_tokenizer(path)


def _text_of(record) -> str:
    return record["text"] if isinstance(record, dict) else record


def _preprocess_fn(cfg, model, objective: str, tok) -> Callable:
    """record -> features for one objective (span corruption draws its spans from the pipeline rng).

    Every decoder sequence starts with the model's start token (`Model.decoder_start_id`: the
    checkpoint's BOS for a decoder-only base, the decoder start token for an encoder-decoder).
    """
    ids = lambda text: tok.encode(text)
    kw = dict(eos_id=tok.eos_id, pad_id=tok.pad_id)
    start = dict(decoder_start_id=model.decoder_start_id)
    if objective == "span_corruption":
        sentinels = tok.sentinel_ids()
        fn = lambda r, rng: preprocess.span_corruption_features(
            ids(_text_of(r)), rng, sentinel_ids=sentinels, max_input_len=cfg.input_length,
            noise_density=cfg.noise_density, mean_noise_span_length=cfg.mean_noise_span_length, **kw)
        return data_lib.with_rng(fn)
    if objective == "causal_lm":
        return lambda r: preprocess.lm_features(ids(_text_of(r)), cfg.input_length, **kw, **start)
    if objective == "prefix_lm":  # unlabeled text: the first half is the prefix, the rest the target
        return lambda r: _split_prefix_lm(ids(_text_of(r)), cfg.input_length, {**kw, **start})
    prefix = attends_prefix(cfg, model, objective)
    return lambda r: model.pair_features(ids(r["text"]), ids(r["summary"]), cfg.input_length, cfg.target_length,
                                         prefix=prefix, **kw, **start)


def _split_prefix_lm(ids: list[int], length: int, kw: dict) -> dict:
    ids = ids[: max(2, length - 2)]
    cut = max(1, len(ids) // 2)
    return preprocess.prefix_lm_features(ids[:cut], ids[cut:], length, max_target_len=max(1, length // 2), **kw)


@dataclasses.dataclass(frozen=True)
class Shard:
    """Which rows of the global batch this process feeds."""

    rows: slice
    global_batch_size: int

    def __post_init__(self):
        if not 0 <= self.rows.start < self.rows.stop <= self.global_batch_size:
            raise ValueError(f"shard rows {self.rows.start}:{self.rows.stop} do not lie inside a global batch of "
                             f"{self.global_batch_size}")

    @property
    def local_batch_size(self) -> int:
        """Rows of the global batch that this process feeds."""
        return self.rows.stop - self.rows.start

    @property
    def index_count(self) -> tuple[int, int]:
        """(shard index, shard count) for pipelines that split records across processes."""
        n = self.local_batch_size
        return self.rows.start // n, self.global_batch_size // n


def make_iterator(cfg, model, objective: str, tok, shard: Shard, split: str, seed: int) -> BatchIterator:
    """The batch iterator of a split: 'train' is shuffled, 'eval' keeps the held-out records in order."""
    losses.required_keys(model, objective)
    train = split == "train"
    if cfg.source == "tokens":
        feats = memorisable_features(model, objective, num_examples=cfg.num_examples if train else cfg.eval_examples,
                                     length=cfg.input_length, vocab_size=model.config.vocab_size,
                                     seed=seed if train else seed + 1, eos_id=model.config.eos_id,
                                     pad_id=model.config.pad_id, prefix=attends_prefix(cfg, model, objective))
        return ArrayIterator(feats, shard.global_batch_size, shard.rows, seed=seed, shuffle=train)
    records = _records(cfg, split, labeled=objective == "seq2seq")
    fn = _preprocess_fn(cfg, model, objective, tok)
    index, count = shard.index_count
    # Both splits repeat: evaluation takes its first eval_steps batches in file order, however small the split.
    return data_lib.make_iterator(records, fn, shard.local_batch_size, seed, shard_index=index, shard_count=count,
                                  num_epochs=None, shuffle=train, num_threads=cfg.num_threads)
