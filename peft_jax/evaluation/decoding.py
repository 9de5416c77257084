"""Summaries of articles: the model's prompt features, fixed-shape batches, jitted decoding, detokenisation.

  decoder = Decoder.from_config(model, params, tok, config.decode)
  predictions, lengths = decoder(texts, peft)

`peft` is what `decode.generate` takes: None, one module, modules applied together, or a batched
module whose row i decodes text i. With `rows=`, text i is decoded with row `rows[i]` of a batched
module instead: a grid of G modules decodes G x n texts while only a decode batch of rows is ever
gathered, so memory does not grow with the number of texts (λ selection).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from peft_jax import peft as peft_lib
from peft_jax.decode import generate, trained_attention

# The settings of a config's `decode` block that are `decode.generate` keyword arguments.
GENERATE_OPTIONS = ("method", "max_decode_len", "num_beams", "length_penalty", "no_repeat_ngram_size",
                    "early_stopping", "temperature", "top_k", "top_p")


def generate_options(decode_config) -> dict[str, Any]:
    """The `generate` keyword arguments a `decode` config block sets; absent ones keep generate's defaults."""
    return {k: decode_config[k] for k in GENERATE_OPTIONS if k in decode_config}


def select_rows(peft, idx: np.ndarray):
    """Rows `idx` of a batched module (one module per example); any other `peft` applies to every row."""
    if isinstance(peft, peft_lib.PeftModule) and peft.batched:
        return peft.replace(params=jax.tree.map(lambda x: x[idx], peft.params))
    return peft


def _check_rows(peft, rows, n: int) -> np.ndarray:
    """The module row of each of `n` texts, checked against the batched module's size."""
    if rows is None:
        return np.arange(n)
    rows = np.asarray(rows)
    if rows.shape != (n,):
        raise ValueError(f"rows must give one module row per text: {n} texts, got shape {rows.shape}")
    if not (isinstance(peft, peft_lib.PeftModule) and peft.batched):
        raise ValueError("rows= selects rows of a batched module; this peft is not batched")
    size = jax.tree.leaves(peft.params)[0].shape[0]
    if n and (rows.min() < 0 or rows.max() >= size):
        raise ValueError(f"rows must lie in [0, {size}) for a batched module of {size} rows, "
                         f"got {rows.min()}..{rows.max()}")
    return rows


@dataclasses.dataclass(frozen=True, eq=False)  # compared by identity: it holds arrays
class Decoder:
    """Decodes texts with a base and PEFT modules in batches of one shape (one compilation per setting)."""

    model: Any
    params: Any
    tok: Any
    options: dict  # `decode.generate` keyword arguments
    max_input_len: int
    batch_size: int
    seed: int = 0  # sampling only: batch b draws from fold_in(PRNGKey(seed), its first example's index)

    @classmethod
    def from_config(cls, model, params, tok, decode_config, **options) -> "Decoder":
        """From a `decode` config block (configs/evaluate.py, configs/demo.py); `options` add generate kwargs."""
        return cls(model, params, tok, {**generate_options(decode_config), **options}, decode_config.max_input_len,
                   decode_config.batch_size, decode_config.get("seed", 0))

    def __call__(self, texts: Sequence[str], peft=None, rows: Sequence[int] | None = None
                 ) -> tuple[list[str], list[int]]:
        """Generated summaries and their token counts (EOS included), one per text.

        rows: for a batched `peft`, the module row of each text (default: row i for text i).
        """
        rows = _check_rows(peft, rows, len(texts))
        # Prompts attend to the article as the modules' training did (prefix LM or causal; recorded).
        feats = self.model.prompt_features([self.tok.encode(t) for t in texts], self.max_input_len,
                                           pad_id=self.tok.pad_id, eos_id=self.tok.eos_id,
                                           prefix=trained_attention(peft) == "prefix")
        preds, lengths, n, bs = [], [], len(texts), self.batch_size
        for start in range(0, n, bs):
            idx = np.minimum(np.arange(start, start + bs), n - 1)  # repeat the last row: one compiled shape
            batch = {k: jnp.asarray(v[idx]) for k, v in feats.items()}
            rng = jax.random.fold_in(jax.random.PRNGKey(self.seed), start)
            out = jax.device_get(generate(self.model, self.params, batch, select_rows(peft, rows[idx]), rng=rng,
                                          **self.options))
            keep = min(bs, n - start)
            for row, length in zip(out["tokens"][:keep], out["lengths"][:keep]):
                preds.append(self.tok.decode(row[:length].tolist()))
                lengths.append(int(length))
        return preds, lengths
