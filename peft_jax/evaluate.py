"""Evaluation on XL-Sum of a frozen base with (composed) PEFT modules: decode, score, tables, plot.

  rows = evaluate(config, workdir)          # config: configs/evaluate.py

Writes to `workdir`:
  predictions/<language>.jsonl   one line per example: id, prediction, reference, num_tokens
  results.csv, results.md        one row per language: ROUGE-1/2/L F1 with bootstrap intervals,
                                 ROUGE-Lsum, wrong-language rate, mean generated tokens
  results.png                    ROUGE-L per language with its interval
  config.json                    the configuration that produced them

Everything is deterministic for a given config: decoding is greedy or beam search
(or sampling from `decode.seed`), and the bootstrap is seeded.
"""

from __future__ import annotations

import csv
import io
import json
import os
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from peft_jax import data, languages, metrics
from peft_jax import peft as peft_lib
from peft_jax.decode import generate
from peft_jax.models import get_model, load_pretrained

CSV_COLUMNS = ("language", "system", "num_examples", "rouge1", "rouge1_low", "rouge1_high", "rouge2", "rouge2_low",
               "rouge2_high", "rougeL", "rougeL_low", "rougeL_high", "rougeLsum", "wrong_language_rate",
               "mean_tokens")


class EvalConfigError(ValueError):
    """An evaluation setting is missing or inconsistent."""


# ------------------------------------------------------------------------ inputs
def load_base(base, tok):
    """(model, params): a checkpoint directory (HF or native), or a randomly initialised preset."""
    if base.checkpoint:
        model, params = load_pretrained(base.checkpoint, compute_dtype=base.dtype)
        if tok.vocab_size > model.config.vocab_size:
            raise EvalConfigError(f"tokenizer has {tok.vocab_size} ids but base {base.checkpoint} only "
                                  f"{model.config.vocab_size}: they do not belong together")
        if tok.pad_id != model.config.pad_id:
            raise EvalConfigError(f"tokenizer pad id {tok.pad_id} != base pad id {model.config.pad_id} "
                                  f"({base.checkpoint}): padding would be attended to")
        return model, params
    # A random base (smoke tests, timing): its vocabulary and special ids follow the tokenizer.
    model = get_model(base.preset, vocab_size=tok.vocab_size, pad_id=tok.pad_id, eos_id=tok.eos_id,
                      dtype=base.dtype)
    return model, model.init(jax.random.PRNGKey(base.init_seed))


def module_paths(spec: str) -> list[str]:
    """Comma-separated module files -> list (empty: the base model alone)."""
    return [p.strip() for p in spec.split(",") if p.strip()]


def load_modules(spec: str, params: dict):
    """The modules applied together, in order (adapters stack MAD-X style), each checked against the base."""
    modules = [peft_lib.load(path, base_params=params) for path in module_paths(spec)]
    return None if not modules else modules[0] if len(modules) == 1 else modules


def system_name(config) -> str:
    """The label of the evaluated system: config.name, else the module file stems joined by '+'."""
    if config.name:
        return config.name
    stems = [os.path.splitext(os.path.basename(p))[0] for p in module_paths(config.modules)]
    return "+".join(stems) if stems else "base"


def read_examples(d, language: str) -> list[dict]:
    """The first `d.max_examples` (0: all) XL-Sum examples of one language and split."""
    out = []
    for ex in data.xlsum(d.xlsum_dir, language, d.split):
        out.append(ex)
        if len(out) == d.max_examples:
            break
    return out


def prompt_features(model, tok, texts: Sequence[str], max_input_len: int) -> dict[str, np.ndarray]:
    """Encoder inputs (text + EOS) or decoder-only prompts ([start] + text + EOS, as prefix-LM training)."""
    if model.family == "encoder_decoder":
        rows = [data.preprocess.pad_to(data.preprocess.trim_and_append_eos(tok.encode(t), max_input_len, tok.eos_id),
                                       max_input_len, tok.pad_id) for t in texts]
        return {"encoder_input_tokens": np.stack(rows)}
    # prefix_lm_features shifts [inputs, EOS, targets] right behind a start token (the pad id).
    prompts = [[tok.pad_id] + tok.encode(t)[: max_input_len - 2] + [tok.eos_id] for t in texts]
    tokens = np.full((len(prompts), max_input_len), tok.pad_id, np.int32)
    for i, p in enumerate(prompts):
        tokens[i, : len(p)] = p
    return {"decoder_input_tokens": tokens, "decoder_prompt_lengths": np.array([len(p) for p in prompts], np.int32)}


# ---------------------------------------------------------------------- decoding
def decode_texts(model, params, modules, tok, texts: Sequence[str], d) -> tuple[list[str], list[int]]:
    """Generated summaries and their token counts; batches have one shape (the last is padded)."""
    feats = prompt_features(model, tok, texts, d.max_input_len)
    kw = dict(method=d.method, max_decode_len=d.max_decode_len, num_beams=d.num_beams,
              length_penalty=d.length_penalty, no_repeat_ngram_size=d.no_repeat_ngram_size,
              early_stopping=d.early_stopping, temperature=d.temperature, top_k=d.top_k, top_p=d.top_p,
              eos_id=tok.eos_id)
    preds, lengths, n = [], [], len(texts)
    for start in range(0, n, d.batch_size):
        idx = np.minimum(np.arange(start, start + d.batch_size), n - 1)  # repeat the last row: one compiled shape
        batch = {k: jnp.asarray(v[idx]) for k, v in feats.items()}
        rng = jax.random.fold_in(jax.random.PRNGKey(d.seed), start)
        out = jax.device_get(generate(model, params, batch, modules, rng=rng, **kw))
        keep = min(d.batch_size, n - start)
        for row, length in zip(out["tokens"][:keep], out["lengths"][:keep]):
            preds.append(tok.decode(row[:length].tolist()))
            lengths.append(int(length))
    return preds, lengths


# ----------------------------------------------------------------------- scoring
def score_language(language: str, system: str, preds: list[str], refs: list[str], lengths: list[int], e) -> dict:
    """One results row: ROUGE F1 with percentile-bootstrap intervals, wrong-language rate, mean length."""
    r = metrics.rouge(preds, refs, lang=language, tokenization=e.tokenization, spm_path=e.spm_path or None,
                      per_example=True)
    row = {"language": language, "system": system, "num_examples": len(preds), "rougeLsum": r["rougeLsum"],
           "wrong_language_rate": metrics.wrong_language_rate(preds, language, identifier=e.identifier or None),
           "mean_tokens": float(np.mean(lengths))}
    for key in ("rouge1", "rouge2", "rougeL"):
        row[key], row[key + "_low"], row[key + "_high"] = metrics.bootstrap_ci(
            r["per_example"][key], num_samples=e.bootstrap_samples, seed=e.seed)
    return row


# ----------------------------------------------------------------------- outputs
def write_predictions(path: str, examples: list[dict], preds: list[str], lengths: list[int]) -> None:
    """JSON lines: id, prediction, reference (the gold summary), num_tokens."""
    with open(path, "w", encoding="utf-8") as f:
        for ex, pred, n in zip(examples, preds, lengths):
            f.write(json.dumps({"id": ex["id"], "prediction": pred, "reference": ex["summary"], "num_tokens": n},
                               ensure_ascii=False) + "\n")


def to_csv(rows: Sequence[dict]) -> str:
    """All columns, full precision."""
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=CSV_COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()


def to_markdown(rows: Sequence[dict]) -> str:
    """ROUGE F1 x100 with 95% intervals, one line per language."""
    lines = ["| language | system | n | ROUGE-1 | ROUGE-2 | ROUGE-L | ROUGE-Lsum | wrong lang. | tokens |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        ci = lambda k: f"{100 * r[k]:.2f} [{100 * r[k + '_low']:.2f}, {100 * r[k + '_high']:.2f}]"
        lines.append(f"| {r['language']} | {r['system']} | {r['num_examples']} | {ci('rouge1')} | {ci('rouge2')} "
                     f"| {ci('rougeL')} | {100 * r['rougeLsum']:.2f} | {100 * r['wrong_language_rate']:.0f}% "
                     f"| {r['mean_tokens']:.1f} |")
    return "\n".join(lines) + "\n"


def bar_plot(rows: Sequence[dict], path: str, metric: str = "rougeL") -> None:
    """One bar per language (metric F1 x100) with its bootstrap interval."""
    import matplotlib  # pylint: disable=import-outside-toplevel

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel

    values = np.array([100 * r[metric] for r in rows])
    err = np.array([[100 * r[metric] - 100 * r[metric + "_low"] for r in rows],
                    [100 * r[metric + "_high"] - 100 * r[metric] for r in rows]])
    fig, ax = plt.subplots(figsize=(max(4.0, 0.8 * len(rows) + 2), 3.5))
    ax.bar(np.arange(len(rows)), values, yerr=err, capsize=3)
    ax.set_xticks(np.arange(len(rows)), [r["language"] for r in rows], rotation=45, ha="right")
    ax.set_ylim(0, max(1.0, 1.15 * float(np.max(values + err[1]))))  # zero scores still get a readable axis
    ax.set_ylabel(f"{metric} F1 x100")
    ax.set_title(f"{rows[0]['system']} (95% bootstrap interval)" if rows else metric)
    fig.tight_layout()
    fig.savefig(path, dpi=100, metadata={"Software": None})  # no version stamp: identical runs, identical files
    plt.close(fig)


def write_results(workdir: str, rows: Sequence[dict], config) -> None:
    """results.md, results.csv, results.png and config.json."""
    with open(os.path.join(workdir, "results.md"), "w", encoding="utf-8") as f:
        f.write(f"# XL-Sum {config.data.split}: {rows[0]['system']}\n\n"
                f"ROUGE F1 x100 ({config.eval.tokenization} tokenization) with 95% bootstrap intervals.\n\n")
        f.write(to_markdown(rows))
    with open(os.path.join(workdir, "results.csv"), "w", encoding="utf-8") as f:
        f.write(to_csv(rows))
    bar_plot(rows, os.path.join(workdir, "results.png"))
    with open(os.path.join(workdir, "config.json"), "w", encoding="utf-8") as f:
        f.write(config.to_json(indent=1, sort_keys=True) + "\n")


# -------------------------------------------------------------------------- main
def check_config(config) -> list[str]:
    """The canonical names of the languages to evaluate; missing settings are clear errors."""
    if not config.data.tokenizer:
        raise EvalConfigError("set --config.data.tokenizer=PATH (SentencePiece model or HF tokenizer directory)")
    if not config.data.xlsum_dir:
        raise EvalConfigError("set --config.data.xlsum_dir=DIR (XL-Sum files <language>_<split>.jsonl)")
    if config.decode.batch_size < 1 or config.data.max_examples < 0:
        raise EvalConfigError(f"decode.batch_size must be >= 1 and data.max_examples >= 0, got "
                              f"{config.decode.batch_size} and {config.data.max_examples}")
    names = [languages.resolve(code.strip()).name for code in config.data.languages.split(",") if code.strip()]
    if not names:
        raise EvalConfigError("set --config.data.languages to one or more XL-Sum languages, e.g. 'english,hindi'")
    return names


def evaluate(config, workdir: str) -> list[dict]:
    """Decodes and scores every language of the config; writes predictions, tables and the plot; returns rows."""
    names = check_config(config)
    tok = data.load_tokenizer(config.data.tokenizer, extra_ids=config.data.extra_ids)
    model, params = load_base(config.base, tok)
    modules = load_modules(config.modules, params)
    system = system_name(config)
    os.makedirs(os.path.join(workdir, "predictions"), exist_ok=True)
    rows = []
    for language in names:
        examples = read_examples(config.data, language)
        preds, lengths = decode_texts(model, params, modules, tok, [ex["text"] for ex in examples], config.decode)
        write_predictions(os.path.join(workdir, "predictions", f"{language}.jsonl"), examples, preds, lengths)
        rows.append(score_language(language, system, preds, [ex["summary"] for ex in examples], lengths,
                                   config.eval))
        logging.info("%s: %d examples, ROUGE-L %.4f", language, len(examples), rows[-1]["rougeL"])
    write_results(workdir, rows, config)
    return rows
