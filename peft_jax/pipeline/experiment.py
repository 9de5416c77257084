"""The zero-shot language-and-task-arithmetic experiment as resumable stages.

  data        the embedded synthetic world written in the XL-Sum layout (real runs: given paths)
  tokenizer   a SentencePiece model trained on the unlabeled text (real runs: the mT5 vocabulary)
  base        a tiny base pre-trained with span corruption (real runs: a released checkpoint)
  lang/<ℓ>    a language module per language on unlabeled text (span corruption / LM)
  task/<ℓ>    a task module per labeled language on summarization
  select/<t>  λ grids on the target's validation split, all λ decoded in one batch of per-example modules
  evaluate/<t> every recipe decoded on the target's test split and scored (ROUGE, CI, wrong language)
  report      results.md / results.csv / plots, printed

Decoding, scoring, bootstrap and the results writers are `peft_jax.evaluation`'s, the same path as
launch/evaluate.py. Each stage is skipped when its marker exists (see `runner`), training stages
resume from their own checkpoints, and everything is seeded, so an interrupted run finishes with
the same results.
"""

from __future__ import annotations

import copy
import functools
import json
import os

import jax
import jax.numpy as jnp
import numpy as np

from peft_jax import compose, data, evaluation, languages, peft
from peft_jax.fileio import atomic_write
from peft_jax.models import get_model, load_pretrained, native
from peft_jax.pipeline.pretrain import pretrain
from peft_jax.pipeline.runner import Stages, workdir_lock
from peft_jax.train.loop import train
from peft_jax.tree import flatten

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
    cfg = copy.deepcopy(config.lang_train if kind == "lang" else config.task_train)
    cfg.model.checkpoint = base_path
    cfg.data.tokenizer = tok_path
    cfg.data.extra_ids = config.tokenizer.extra_ids
    cfg.data.language = lang
    cfg.data.paths = text_path(paths, lang) if kind == "lang" else paths["xlsum_dir"]
    cfg.seed = config.seed
    cfg.distributed = config.distributed  # the one multi-host switch reaches every training stage
    run_dir = os.path.join(workdir, "train", f"{kind}_{lang}")
    train(cfg, run_dir)
    return os.path.join(run_dir, "final_module")


# ------------------------------------------------------------------------------- context
class Context:
    """Everything the compose / evaluate stages share: base, tokenizer, modules, decoder, scoring."""

    def __init__(self, config, paths: dict, tok_path: str, base_path: str, modules: dict[str, str]):
        self.config, self.paths = config, paths
        self.tok = data.load_tokenizer(tok_path, extra_ids=config.tokenizer.extra_ids)
        self.model, self.params = load_pretrained(base_path)
        self.modules = {k: peft.load(v, base_params=self.params) for k, v in modules.items()}
        self.world = _world(config)
        # No eos_id option: generation stops at the base's own EOS (the tokenizer's for a trained or released base).
        self.decoder = evaluation.Decoder.from_config(self.model, self.params, self.tok, config.decode)
        e = config.eval
        # The world's identifier knows its made-up languages; it says None for text it cannot place.
        ident = (lambda t: self.world.identify(t) or "und") if self.world is not None else "langid"
        self.scoring = evaluation.Scoring(tokenization=e.tokenization, spm_path=e.spm_path or None,
                                          identifier=ident, bootstrap_samples=e.bootstrap_samples, seed=config.seed)

    def examples(self, lang: str, split: str, n: int) -> list[dict]:
        """The first `n` examples of `lang`'s XL-Sum split."""
        return evaluation.read_examples(self.paths["xlsum_dir"], lang, split, n)

    def decode(self, examples: list[dict], pefts) -> list[str]:
        """Summaries for `examples`; `pefts` is one module / list of modules, or a batched module (row i)."""
        return self.decoder([ex["text"] for ex in examples], pefts)[0]


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


def _grid(ctx: Context, recipe: str, target: str, lams) -> peft.PeftModule:
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
        scores = [ctx.scoring.rouge(preds[g * n:(g + 1) * n], refs, target)["rougeL"] for g in range(len(lams))]
        best = int(np.argmax(scores))
        out[recipe] = {"lambdas": lams, "rougeL": scores, "best": lams[best]}
    return out


def evaluate_target(ctx: Context, workdir: str, target: str, sweeps: dict) -> list[dict]:
    """Decodes the target's test split with every recipe; writes predictions; returns table rows."""
    c = ctx.config
    examples = ctx.examples(target, "test", c.eval.n_test)
    pred_dir = os.path.join(workdir, "predictions")
    os.makedirs(pred_dir, exist_ok=True)
    rows, per_example = [], {}
    for recipe in c.recipes:
        lam = sweeps.get(recipe, {}).get("best")
        row, per_example[recipe] = evaluation.run_system(ctx.decoder, ctx.scoring, target, examples,
                                                         recipe_modules(ctx, recipe, target, lam),
                                                         os.path.join(pred_dir, f"{target}.{recipe}.jsonl"))
        rows.append({"recipe": recipe, "lambda": lam, **row})
    base = per_example.get("task_only")
    for row in rows:
        if base is not None and row["recipe"] != "task_only":
            row.update(ctx.scoring.compare(per_example[row["recipe"]], base))
    return rows


def sweeps_by_recipe(sweeps: dict) -> dict[str, dict[str, list[tuple[float, float]]]]:
    """{target: {recipe: sweep}} -> {recipe: {target: [(λ, validation ROUGE-L)]}}."""
    by_recipe: dict[str, dict] = {}
    for target, s in sweeps.items():
        for recipe, r in s.items():
            by_recipe.setdefault(recipe, {})[target] = list(zip(r["lambdas"], r["rougeL"]))
    return by_recipe


def write_report(workdir: str, rows: list[dict], sweeps: dict) -> str:
    """results.md (recipes table, then the λ sweeps), results.csv and the plots; returns the recipes table."""
    table = evaluation.markdown_table(evaluation.RECIPE_TABLE, rows)
    by_recipe = sweeps_by_recipe(sweeps)
    evaluation.write_markdown(os.path.join(workdir, "results.md"), "Results",
                              "ROUGE F1 ×100 with 95% bootstrap intervals; ΔL: paired bootstrap against task_only.",
                              table + evaluation.sweep_section(by_recipe))
    evaluation.write_csv(os.path.join(workdir, "results.csv"), rows, evaluation.RECIPE_CSV_COLUMNS)
    evaluation.bar_plot(rows, os.path.join(workdir, "results_by_language.png"), series="recipe",
                        title="Zero-shot summarization by recipe (95% bootstrap CI)")
    if by_recipe:
        evaluation.sweep_plot(by_recipe, os.path.join(workdir, "lambda_sweep.png"), "validation ROUGE-L ×100")
    return table


# ---------------------------------------------------------------------------------- run
class ConfigMismatchError(ValueError):
    """A workdir's finished stages came from another config."""


def check_config(config, workdir: str) -> None:
    """Records the config on the first run; refuses to resume a workdir with a different one."""
    path = os.path.join(workdir, "config.json")
    current = json.loads(config.to_json_best_effort(sort_keys=True))
    current.pop("distributed", None)  # how processes meet (a coordinator port) is not part of the experiment
    if not os.path.exists(path):
        atomic_write(path, lambda tmp: open(tmp, "w").write(json.dumps(current, indent=1, sort_keys=True)))
        return
    with open(path, encoding="utf-8") as f:
        saved = json.load(f)
    if saved != current:
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
