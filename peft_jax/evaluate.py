"""Evaluation on XL-Sum of a frozen base with (composed) PEFT modules: decode, score, tables, plot.

  rows = evaluate(config, workdir)          # config: configs/evaluate.py

Writes to `workdir`:
  predictions/<language>.jsonl   one line per example: id, prediction, reference, num_tokens
  results.csv, results.md        one row per language: ROUGE-1/2/L F1 with bootstrap intervals,
                                 ROUGE-Lsum, wrong-language rate, mean generated tokens
  results.png                    ROUGE-L per language with its interval
  config.json                    the configuration that produced them

`workdir` may be a local directory or a `gs://` URL, and so may the module files, the tokenizer,
a native base checkpoint and the XL-Sum directory (read through `etils.epath`).

Everything is deterministic for a given config: decoding is greedy or beam search
(or sampling from `decode.seed`), and the bootstrap is seeded. Decoding, scoring and the
writers are `peft_jax.evaluation`'s, shared with the pipeline.
"""

from __future__ import annotations

import os
from typing import Sequence

import jax
from absl import logging

from peft_jax import data, evaluation, languages, metrics
from peft_jax import peft as peft_lib
from peft_jax.fileio import workdir_path, write_text
from peft_jax.models import get_model, load_pretrained

CSV_COLUMNS = evaluation.SYSTEM_CSV_COLUMNS


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


def scoring_settings(e) -> evaluation.Scoring:
    """The scoring settings of a config's `eval` block."""
    return evaluation.Scoring(tokenization=e.tokenization, spm_path=e.spm_path or None,
                              identifier=e.identifier or None, bootstrap_samples=e.bootstrap_samples, seed=e.seed)


# ----------------------------------------------------------------------- outputs
def write_results(workdir: str, rows: Sequence[dict], config) -> None:
    """results.md, results.csv, results.png and config.json."""
    system = rows[0]["system"]
    evaluation.write_markdown(os.path.join(workdir, "results.md"), f"XL-Sum {config.data.split}: {system}",
                              f"ROUGE F1 x100 with 95% bootstrap intervals. Scorer: "
                              f"{metrics.scorer_name(config.eval.tokenization)}.", evaluation.markdown_table(evaluation.SYSTEM_TABLE, rows))
    evaluation.write_csv(os.path.join(workdir, "results.csv"), rows, CSV_COLUMNS)
    evaluation.bar_plot(rows, os.path.join(workdir, "results.png"), series="system",
                        title=f"{system} (95% bootstrap interval)")
    write_text(os.path.join(workdir, "config.json"), config.to_json(indent=1, sort_keys=True) + "\n")


# -------------------------------------------------------------------------- main
def evaluate(config, workdir: str) -> list[dict]:
    """Decodes and scores every language of the config; writes predictions, tables and the plot; returns rows."""
    names = check_config(config)
    workdir = os.fspath(workdir_path(workdir))  # refuses an empty path and a URL without a file-system backend
    tok = data.load_tokenizer(config.data.tokenizer, extra_ids=config.data.extra_ids)
    model, params = load_base(config.base, tok)
    modules = load_modules(config.modules, params)
    decoder = evaluation.Decoder.from_config(model, params, tok, config.decode, eos_id=tok.eos_id)
    scoring = scoring_settings(config.eval)
    system = system_name(config)
    rows = []
    for language in names:
        examples = evaluation.read_examples(config.data.xlsum_dir, language, config.data.split,
                                            config.data.max_examples)
        row, _ = evaluation.run_system(decoder, scoring, language, examples, modules,
                                       os.path.join(workdir, "predictions", f"{language}.jsonl"))
        rows.append({"system": system, **row})
        logging.info("%s: %d examples, ROUGE-L %.4f", language, len(examples), row["rougeL"])
    write_results(workdir, rows, config)
    return rows
