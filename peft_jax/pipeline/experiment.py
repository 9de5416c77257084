"""The zero-shot language-and-task-arithmetic experiment as resumable stages.

  data        the embedded synthetic world written in the XL-Sum layout (real runs: given paths)
  tokenizer   a SentencePiece model trained on the unlabeled text (real runs: the mT5 vocabulary)
  base        a tiny base pre-trained with span corruption (real runs: a released checkpoint)
  lang/<ℓ>    a language module per language on unlabeled text (span corruption / LM)
  task/<ℓ>    a task module per labeled language on summarization
  select/<t>  λ grids on the target's validation split, all λ decoded in one batch of per-example modules
  evaluate/<t> every recipe decoded on the target's test split and scored (ROUGE, CI, wrong language)
  report      results.md / results.csv / plots, printed

Each stage is skipped when its marker exists (see `runner`), training stages resume from their own
checkpoints, and everything is seeded, so an interrupted run finishes with the same results.
"""

from __future__ import annotations

import copy
import functools
import json
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from peft_jax import compose, data, metrics, peft
from peft_jax.pipeline import report
from peft_jax.pipeline.runner import Stages, workdir_lock

RECIPES = ("task_only", "add", "weighted", "analogy", "stack", "multi_source")


# ----------------------------------------------------------------------------------- data
def _world(config):
    return data.World(config.world.seed) if config.data.kind == "synthetic" else None


def prepare_data(config, workdir: str) -> dict:
    """Writes the synthetic world (XL-Sum layout + unlabeled text) or checks the given paths."""
    if config.data.kind != "synthetic":
        return {"xlsum_dir": config.data.xlsum_dir, "text_paths": config.data.text_paths,
                "text_overrides": dict(config.data.text_overrides)}
    world = _world(config)
    root = os.path.join(workdir, "data")
    w = config.world
    world.write_xlsum_layout(os.path.join(root, "xlsum"), w.n_train, w.n_validation, w.n_test)
    world.write_unlabeled(os.path.join(root, "text"), w.n_unlabeled, "train")
    world.write_unlabeled(os.path.join(root, "text"), w.n_validation, "validation")
    return {"xlsum_dir": os.path.join(root, "xlsum"), "text_paths": os.path.join(root, "text", "{language}_train.txt")}


def text_path(paths: dict, lang: str) -> str:
    """The unlabeled-text path of `lang`: '{language}', '{iso1}', '{iso3}' in the pattern are filled in."""
    from peft_jax import languages

    if lang in paths.get("text_overrides", {}):
        return paths["text_overrides"][lang]
    l = languages.resolve(lang)
    return paths["text_paths"].format(language=lang, name=l.name, iso1=l.iso1 or l.iso3, iso3=l.iso3)


def _languages(config) -> list[str]:
    return list(dict.fromkeys([config.source_language, *config.target_languages]))


def prepare_tokenizer(config, workdir: str, paths: dict) -> str:
    """The configured SentencePiece model, or one trained on all languages' unlabeled text."""
    if config.tokenizer.path:
        return config.tokenizer.path
    texts = []
    for lang in _languages(config) + list(config.labeled_languages):
        with open(text_path(paths, lang), encoding="utf-8") as f:
            texts.extend(line.strip() for line in f)
    prefix = os.path.join(workdir, "tokenizer")
    return str(data.train_sentencepiece(texts, prefix, config.tokenizer.vocab_size,
                                        num_sentinels=config.tokenizer.num_sentinels))


def prepare_base(config, workdir: str, paths: dict, tok_path: str, log) -> str:
    """The base checkpoint: given, or pre-trained here on every language's unlabeled text."""
    if config.base.checkpoint:
        return config.base.checkpoint
    from peft_jax.models import get_model, native
    from peft_jax.pipeline.pretrain import pretrain

    tok = data.load_tokenizer(tok_path, extra_ids=config.tokenizer.extra_ids)
    p = config.base.pretrain
    model = get_model(p.preset, vocab_size=tok.vocab_size, **dict(p.overrides))
    params, curve = model.init(jax.random.PRNGKey(config.seed)), []
    if p.steps > 0:  # steps=0: a random base (the runlocal paths of the real configs)
        docs = []
        for lang in sorted(set(_languages(config)) | set(config.labeled_languages)):
            with open(text_path(paths, lang), encoding="utf-8") as f:
                docs.extend(np.asarray(tok.encode(line.strip()), np.int32) for line in f if line.strip())
        sentinels = tok.sentinel_ids(config.tokenizer.num_sentinels)
        fn = data.with_rng(functools.partial(data.span_corruption_features, sentinel_ids=sentinels,
                                             eos_id=tok.eos_id, pad_id=tok.pad_id, max_input_len=p.input_length))
        batches = data.make_iterator(docs, fn, p.batch_size, seed=config.seed)
        params, curve = pretrain(model, params, batches, steps=p.steps, learning_rate=p.learning_rate, log=log)
    path = os.path.join(workdir, "base")
    native.save(path, model, params)
    with open(os.path.join(path, "pretrain_curve.json"), "w") as f:
        json.dump(curve, f)
    return path


# ------------------------------------------------------------------------------ training
def train_module(config, workdir: str, kind: str, lang: str, paths: dict, tok_path: str, base_path: str) -> str:
    """Trains the language ('lang') or task ('task') module of `lang`; returns its module file."""
    from peft_jax.train.loop import train

    cfg = copy.deepcopy(config.lang_train if kind == "lang" else config.task_train)
    cfg.model.checkpoint = base_path
    cfg.data.tokenizer = tok_path
    cfg.data.extra_ids = config.tokenizer.extra_ids
    cfg.data.language = lang
    cfg.data.paths = text_path(paths, lang) if kind == "lang" else paths["xlsum_dir"]
    cfg.seed = config.seed
    run_dir = os.path.join(workdir, "train", f"{kind}_{lang}")
    train(cfg, run_dir)
    return os.path.join(run_dir, "final_module")


# ------------------------------------------------------------------------------- context
class Context:
    """Everything the compose / evaluate stages share: base, tokenizer, modules, decoding settings."""

    def __init__(self, config, paths: dict, tok_path: str, base_path: str, modules: dict[str, str]):
        from peft_jax import load_pretrained

        self.config, self.paths = config, paths
        self.tok = data.load_tokenizer(tok_path, extra_ids=config.tokenizer.extra_ids)
        self.model, self.params = load_pretrained(base_path)
        self.modules = {k: peft.load(v, base_params=self.params) for k, v in modules.items()}
        self.world = _world(config)

    def examples(self, lang: str, split: str, n: int) -> list[dict]:
        out = []
        for ex in data.xlsum(self.paths["xlsum_dir"], lang, split):
            out.append(ex)
            if len(out) == n:
                break
        return out

    def features(self, examples: list[dict]) -> dict[str, np.ndarray]:
        """Encoder inputs (mT5) or right-padded prompts with their lengths (decoder-only)."""
        d, tok = self.config.decode, self.tok
        if self.model.family == "encoder_decoder":
            rows = [data.seq2seq_features(tok.encode(ex["text"]), [], d.max_input_len, 1, eos_id=tok.eos_id,
                                          pad_id=tok.pad_id)["encoder_input_tokens"] for ex in examples]
            return {"encoder_input_tokens": np.stack(rows)}
        prompts = [[tok.pad_id] + tok.encode(ex["text"])[: d.max_input_len - 2] + [tok.eos_id] for ex in examples]
        width = d.max_input_len
        toks = np.full((len(prompts), width), tok.pad_id, np.int32)
        for i, p in enumerate(prompts):
            toks[i, : len(p)] = p
        return {"decoder_input_tokens": toks, "decoder_prompt_lengths": np.array([len(p) for p in prompts], np.int32)}

    def decode(self, examples: list[dict], pefts) -> list[str]:
        """Summaries for `examples`; `pefts` is one module / list of modules, or a batched module (row i)."""
        d = self.config.decode
        feats = self.features(examples)
        n, bs = len(examples), d.batch_size
        out = []
        for start in range(0, n, bs):
            idx = np.minimum(np.arange(start, start + bs), n - 1)  # pad the last batch: one compiled shape
            batch = {k: jnp.asarray(v[idx]) for k, v in feats.items()}
            mod = _rows(pefts, idx)
            res = _generate(self.model, self.params, batch, mod, d)
            toks = np.asarray(res["tokens"])[: min(bs, n - start)]
            out.extend(self.tok.decode(t.tolist()) for t in toks)
        return out

    def score(self, lang: str, predictions: list[str], references: list[str]) -> dict:
        e = self.config.eval
        r = metrics.rouge(predictions, references, lang=lang, tokenization=e.tokenization,
                          spm_path=self.config.eval.spm_path or None, per_example=True)
        # The world's identifier knows its made-up languages; it says None for text it cannot place.
        ident = (lambda t: self.world.identify(t) or "und") if self.world is not None else "langid"
        r["wrong_language_rate"] = metrics.wrong_language_rate(predictions, lang, identifier=ident)
        return r


def _rows(pefts, idx):
    """Rows `idx` of a batched module; other modules pass through."""
    if isinstance(pefts, peft.Module) and pefts.batched:
        return pefts.replace(params=jax.tree.map(lambda x: x[idx], pefts.params))
    return pefts


def _generate(model, params, batch, module, d):
    from peft_jax.decode import generate

    return generate(model, params, batch, peft=module, method=d.method, max_decode_len=d.max_decode_len,
                    num_beams=d.num_beams, length_penalty=d.length_penalty,
                    no_repeat_ngram_size=d.no_repeat_ngram_size)


# ------------------------------------------------------------------------------ recipes
def recipe_modules(ctx: Context, recipe: str, target: str, lam: float | None):
    """The module (or modules applied together) of one recipe for `target`."""
    c, m = ctx.config, ctx.modules
    task, lang_t, lang_s = m[f"task/{c.source_language}"], m.get(f"lang/{target}"), m.get(f"lang/{c.source_language}")
    s = c.strategy
    if recipe == "task_only":
        return task
    if recipe == "add":
        return compose.add(task, lang_t, strategy=s)
    if recipe == "weighted":
        return compose.weighted(task, lang_t, lam, strategy=s)
    if recipe == "analogy":
        return compose.analogy(task, lang_t, lang_s, lam, strategy=s)
    if recipe == "stack":
        return compose.stack(lang_t, task)
    if recipe == "multi_source":
        tasks = {k.split("/", 1)[1]: v for k, v in m.items() if k.startswith("task/")}
        return compose.multi_source(tasks, target, by=c.multi_source_by, lang_module=lang_t,
                                    lang_weight=c.multi_source_lang_weight, strategy=s)
    raise ValueError(f"unknown recipe {recipe!r}; known: {RECIPES}")


def _grid(ctx: Context, recipe: str, target: str, lams) -> peft.Module:
    """All λ of a recipe as one batched module (one vmapped composition)."""
    c, m = ctx.config, ctx.modules
    task, lang_t, lang_s = m[f"task/{c.source_language}"], m[f"lang/{target}"], m[f"lang/{c.source_language}"]
    if recipe == "weighted":
        return compose.combine_grid([task, lang_t], [[l, 1.0 - l] for l in lams], c.strategy)
    return compose.combine_grid([task, lang_t, lang_s], [[1.0, l, -l] for l in lams], c.strategy)


def select_lambda(ctx: Context, target: str) -> dict:
    """Validation ROUGE-L of every λ of each λ recipe, decoded in one pass of per-example modules."""
    c = ctx.config
    examples = ctx.examples(target, "validation", c.eval.n_validation)
    refs = [ex["summary"] for ex in examples]
    lams = [float(x) for x in c.lambdas]
    out = {}
    for recipe in [r for r in c.recipes if r in ("weighted", "analogy")]:
        grid = _grid(ctx, recipe, target, lams)
        n = len(examples)
        rows = grid.replace(params=jax.tree.map(lambda x: jnp.repeat(x, n, axis=0), grid.params))
        preds = ctx.decode(examples * len(lams), rows)  # row g*n + i: example i under λ_g
        scores = [metrics.rouge(preds[g * n:(g + 1) * n], refs, lang=target, tokenization=c.eval.tokenization,
                                spm_path=c.eval.spm_path or None)["rougeL"] for g in range(len(lams))]
        best = int(np.argmax(scores))
        out[recipe] = {"lambdas": lams, "rougeL": scores, "best": lams[best]}
    return out


def evaluate_target(ctx: Context, workdir: str, target: str, sweeps: dict) -> list[dict]:
    """Decodes the target's test split with every recipe; writes predictions; returns table rows."""
    c = ctx.config
    examples = ctx.examples(target, "test", c.eval.n_test)
    refs = [ex["summary"] for ex in examples]
    rows, per_example = [], {}
    pred_dir = os.path.join(workdir, "predictions")
    os.makedirs(pred_dir, exist_ok=True)
    for recipe in c.recipes:
        lam = sweeps.get(recipe, {}).get("best")
        preds = ctx.decode(examples, recipe_modules(ctx, recipe, target, lam))
        with open(os.path.join(pred_dir, f"{target}.{recipe}.jsonl"), "w", encoding="utf-8") as f:
            for ex, p in zip(examples, preds):
                f.write(json.dumps({"id": ex["id"], "prediction": p, "reference": ex["summary"]},
                                   ensure_ascii=False) + "\n")
        s = ctx.score(target, preds, refs)
        per_example[recipe] = s["per_example"]
        row = {"language": target, "recipe": recipe, "lambda": lam, "num_examples": len(examples),
               "wrong_language_rate": s["wrong_language_rate"], "rougeLsum": s["rougeLsum"]}
        for key in ("rouge1", "rouge2", "rougeL"):
            row[key], row[key + "_low"], row[key + "_high"] = metrics.bootstrap_ci(
                s["per_example"][key], num_samples=c.eval.bootstrap_samples, seed=c.seed)
        rows.append(row)
    base = per_example.get("task_only")
    for row in rows:
        if base is not None and row["recipe"] != "task_only":
            t = metrics.paired_bootstrap(per_example[row["recipe"]]["rougeL"], base["rougeL"],
                                         num_samples=c.eval.bootstrap_samples, seed=c.seed)
            row["delta_rougeL"], row["p_value"] = t["delta"], t["p_value"]
    return rows


def write_report(workdir: str, rows: list[dict], sweeps: dict) -> str:
    md, _ = report.write_results(workdir, rows)
    report.bar_plot(rows, os.path.join(workdir, "results_by_language.png"))
    by_recipe: dict[str, dict] = {}
    for target, s in sweeps.items():
        for recipe, r in s.items():
            by_recipe.setdefault(recipe, {})[target] = list(zip(r["lambdas"], r["rougeL"]))
    if by_recipe:
        report.sweep_plot(by_recipe, os.path.join(workdir, "lambda_sweep.png"), "validation ROUGE-L ×100")
        with open(os.path.join(workdir, "results.md"), "a", encoding="utf-8") as f:
            f.write("\n## λ sweeps (validation ROUGE-L ×100; the chosen λ is used on test)\n\n")
            for recipe, per_lang in by_recipe.items():
                lams = [l for l, _ in next(iter(per_lang.values()))]
                f.write(f"\n{recipe}\n\n| language | " + " | ".join(f"λ={l:g}" for l in lams) + " |\n")
                f.write("|---|" + "---|" * len(lams) + "\n")
                for lang, pts in sorted(per_lang.items()):
                    f.write(f"| {lang} | " + " | ".join(f"{100 * v:.1f}" for _, v in pts) + " |\n")
    return md


# ---------------------------------------------------------------------------------- run
class ConfigMismatchError(ValueError):
    """A workdir's finished stages came from another config."""


def check_config(config, workdir: str) -> None:
    """Records the config on the first run; refuses to resume a workdir with a different one."""
    path = os.path.join(workdir, "config.json")
    current = json.loads(config.to_json_best_effort(sort_keys=True))
    if not os.path.exists(path):
        from peft_jax.peft.io import atomic_write

        atomic_write(path, lambda tmp: open(tmp, "w").write(json.dumps(current, indent=1, sort_keys=True)))
        return
    with open(path, encoding="utf-8") as f:
        saved = json.load(f)
    if saved != current:
        from peft_jax.tree import flatten

        a, b = flatten(saved), flatten(current)
        diff = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
        raise ConfigMismatchError(f"workdir {workdir} holds a run of another config (differs in {diff[:8]}); "
                                  "resume with the same config or use another --workdir")


def run(config, workdir: str, log=print) -> list[dict]:
    """Runs (or resumes) the whole experiment in `workdir`; returns the results rows."""
    workdir = os.path.abspath(workdir)
    with workdir_lock(workdir):
        check_config(config, workdir)
        st = Stages(workdir, log)
        _world(config)  # registers the synthetic languages in this process
        paths = st.run("data", lambda: prepare_data(config, workdir))
        tok_path = st.run("tokenizer", lambda: prepare_tokenizer(config, workdir, paths))
        base_path = st.run("base", lambda: prepare_base(config, workdir, paths, tok_path, log))
        modules = {}
        for kind, langs in (("lang", _languages(config)), ("task", config.labeled_languages)):
            for lang in langs:
                modules[f"{kind}/{lang}"] = st.run(
                    f"{kind}/{lang}", lambda k=kind, l=lang: train_module(config, workdir, k, l, paths, tok_path,
                                                                           base_path))
        ctx = Context(config, paths, tok_path, base_path, modules)
        sweeps = {t: st.run(f"select/{t}", lambda t=t: select_lambda(ctx, t)) for t in config.target_languages}
        rows = []
        for t in config.target_languages:
            rows.extend(st.run(f"evaluate/{t}", lambda t=t: evaluate_target(ctx, workdir, t, sweeps[t])))
        md = write_report(workdir, rows, sweeps)
        log("\n" + md)
        return rows
