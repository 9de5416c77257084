"""The zero-shot language-and-task-arithmetic experiment as resumable stages.

  data        the embedded synthetic world written in the XL-Sum layout (real runs: given paths)
  tokenizer   a SentencePiece model trained on the unlabeled text (real runs: the mT5 vocabulary)
  base        a tiny base pre-trained with span corruption (real runs: a released checkpoint)
  lang/<ℓ>    a language module per language on unlabeled text (span corruption / LM)
  task/<ℓ>    a task module per labeled language on summarization
  select/...  λ grids decoded in one pass of per-example module rows, under the config's λ protocol
              (`lambdas`: fixed, source_validation on labeled pseudo-targets, or the target_oracle)
  evaluate/<t> every recipe decoded on the target's test split and scored (ROUGE, CI, wrong language)
  report      results.md / results.csv / plots, printed

Decoding, scoring, bootstrap and the results writers are `peft_jax.evaluation`'s, the same path as
launch/evaluate.py. Each stage is skipped when its marker exists (see `runner`), training stages
resume from their own checkpoints, and everything is seeded, so an interrupted run finishes with
the same results.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import functools
import json
import os

import jax
import ml_collections
import numpy as np

from peft_jax import compose, data, evaluation, languages, metrics, peft
from peft_jax.fileio import local_path, read_json, workdir_path, write_text
from peft_jax.models import PRESETS, get_model, load_pretrained, native
from peft_jax.models.base import tokenizer_ids
from peft_jax.pipeline import init_regime, lambdas, multi_seed
from peft_jax.pipeline.modules import Job, train_all
from peft_jax.pipeline.pretrain import pretrain
from peft_jax.pipeline.runner import Stages, workdir_lock
from peft_jax.train import config_lib
from peft_jax.train.loop import train
from peft_jax.tree import flatten

RECIPES = ("task_only", "add", "weighted", "analogy", "stack", "multi_source")


# ----------------------------------------------------------------------------------- data
def _world(config):
    return data.World(config.world.seed) if config.data.kind == "synthetic" else None


def prepare_data(config, workdir: str) -> dict:
    """Writes the synthetic world (XL-Sum layout + unlabeled text) or checks the given paths."""
    if config.data.kind != "synthetic":
        paths = {"xlsum_dir": config.data.xlsum_dir, "text_paths": config.data.text_paths,
                 "text_overrides": dict(config.data.text_overrides)}
        for lang in _languages(config):  # a missing text file fails now, not after hours of training
            if languages.has_unlabeled_text(lang) or lang in paths["text_overrides"]:
                try:
                    data.sources.expand_paths(text_path(paths, lang))
                except data.MissingDataError as err:
                    raise data.MissingDataError(f"unlabeled text of {lang} (data.text_paths): {err}") from None
        return paths
    world = _world(config)
    root = os.path.join(workdir, "data")
    w = config.world
    with local_path(root, upload=True) as local:  # the world writes local files; a gs:// workdir gets them uploaded
        world.write_xlsum_layout(os.path.join(local, "xlsum"), w.n_train, w.n_validation, w.n_test)
        world.write_unlabeled(os.path.join(local, "text"), w.n_unlabeled, "train")
        world.write_unlabeled(os.path.join(local, "text"), w.n_validation, "validation")
    return {"xlsum_dir": os.path.join(root, "xlsum"), "text_paths": os.path.join(root, "text", "{language}_train.txt")}


def text_path(paths: dict, lang: str) -> str:
    """The unlabeled-text path of `lang`: '{language}', '{iso1}', '{iso3}' and '{mc4}' in the pattern are filled in.

    '{mc4}' is the language's code in mC4's file names (resources/unlabeled_text.tsv: `zh` for both Chinese
    standards, `sr` for both Serbian scripts; the language stage keeps each to its own script).
    """
    if lang in paths.get("text_overrides", {}):
        return paths["text_overrides"][lang]
    l = languages.resolve(lang)
    pattern = paths["text_paths"]
    mc4 = data.sources.mc4_code(l) if "{mc4}" in pattern else None  # refuses a language mC4 does not have
    return pattern.format(language=lang, name=l.name, iso1=l.iso1 or l.iso3, iso3=l.iso3, mc4=mc4)


def _languages(config) -> list[str]:
    """The languages that get a language module: source, targets and λ's pseudo-targets that have text.

    A language without unlabeled text (resources/unlabeled_text.tsv, unless `data.text_overrides` gives
    some) gets no module; the recipes that need one are skipped for it with a note in the table.
    """
    extra = lambdas.pseudo_targets(config) if (config.lambda_protocol == "source_validation"
                                                and lambdas.recipes_with_lambda(config)) else []
    wanted = dict.fromkeys([config.source_language, *config.target_languages, *extra])
    return [lang for lang in wanted if lambdas.has_text(config, lang)]


def prepare_tokenizer(config, workdir: str, paths: dict) -> str:
    """The configured SentencePiece model, or one trained on all languages' unlabeled text."""
    if config.tokenizer.path:
        return config.tokenizer.path
    texts = []
    for lang in _languages(config) + list(config.labeled_languages):  # the source's text counts twice
        texts.extend(line.strip() for line in data.sources.text_lines([text_path(paths, lang)]))
    prefix = os.path.join(workdir, "tokenizer")
    return str(data.train_sentencepiece(texts, prefix, config.tokenizer.vocab_size,
                                        num_sentinels=config.tokenizer.num_sentinels))


def prepare_base(config, workdir: str, paths: dict, tok_path: str, log) -> str:
    """The base checkpoint: given, or pre-trained here on every language's unlabeled text."""
    if config.base.checkpoint:
        return config.base.checkpoint
    tok = data.load_tokenizer(tok_path, extra_ids=config.tokenizer.extra_ids)
    p = config.base.pretrain
    # The tokenizer's pad / EOS / BOS: sequences start with its BOS and generation stops at its EOS.
    ids = tokenizer_ids(PRESETS[p.preset], tok) if p.preset in PRESETS else {}
    model = get_model(p.preset, vocab_size=tok.vocab_size, **{**ids, **dict(p.overrides)})
    params, curve = model.init(jax.random.PRNGKey(config.seed)), []
    if p.steps > 0:  # steps=0: a random base (the runlocal paths of the real configs)
        docs = []
        for lang in sorted(set(_languages(config)) | set(config.labeled_languages)):
            docs.extend(np.asarray(tok.encode(line.strip()), np.int32)
                        for line in data.sources.text_lines([text_path(paths, lang)]) if line.strip())
        sentinels = tok.sentinel_ids(config.tokenizer.num_sentinels)
        fn = data.with_rng(functools.partial(data.span_corruption_features, sentinel_ids=sentinels,
                                             eos_id=tok.eos_id, pad_id=tok.pad_id, max_input_len=p.input_length))
        batches = data.make_iterator(docs, fn, p.batch_size, seed=config.seed)
        params, curve = pretrain(model, params, batches, steps=p.steps, learning_rate=p.learning_rate, log=log)
    path = os.path.join(workdir, "base")
    native.save(path, model, params)
    write_text(os.path.join(path, "pretrain_curve.json"), json.dumps(curve))
    return path


# ------------------------------------------------------------------------------ training
def module_dir(workdir: str, kind: str, lang: str) -> str:
    """The training run directory of the language ('lang') or task ('task') module of `lang`."""
    return os.path.join(workdir, "train", f"{kind}_{lang}")


def module_config(config, workdir: str, kind: str, lang: str, paths: dict, tok_path: str, base_path: str):
    """(training config, run directory) of the language ('lang') or task ('task') module of `lang`.

    For a language module on real text this prepares its text (script filter, decontamination) first.
    """
    cfg = copy.deepcopy(config.lang_train if kind == "lang" else config.task_train)
    cfg.model.checkpoint = base_path
    cfg.data.tokenizer = tok_path
    cfg.data.extra_ids = config.tokenizer.extra_ids
    cfg.data.language = lang
    cfg.data.paths = paths["xlsum_dir"]
    cfg.seed = init_regime.module_seed(config.seed, kind, lang, config.shared_init)
    cfg.metadata = ml_collections.ConfigDict({"shared_init": bool(config.shared_init), "run_seed": int(config.seed)})
    cfg.distributed = config.distributed  # the one multi-host switch reaches every training stage
    run_dir = module_dir(workdir, kind, lang)
    if kind == "lang" and config.data.kind == "synthetic":
        cfg.data.paths = text_path(paths, lang)
    elif kind == "lang":  # real text: in the language's script, without XL-Sum's evaluation data, counted
        data.language_text.require_unlabeled_text(lang, given=lang in paths.get("text_overrides", {}))
        cfg.data.paths = str(data.language_text.prepare_language_text(
            lang, text_path(paths, lang), run_dir, xlsum_dir=paths["xlsum_dir"],
            max_kept=cfg.num_steps * cfg.batch_size + cfg.data.eval_examples))  # enough for the whole run
    return cfg, run_dir


def train_module(config, workdir: str, kind: str, lang: str, paths: dict, tok_path: str, base_path: str) -> str:
    """Trains the language ('lang') or task ('task') module of `lang` alone; returns its module file."""
    cfg, run_dir = module_config(config, workdir, kind, lang, paths, tok_path, base_path)
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
        weights = None if c.multi_source_weights == "uniform" else c.multi_source_weights
        return compose.multi_source(tasks, target, by=c.multi_source_by, k=c.multi_source_k or None,
                                    weights=weights, lang_module=lang_t, lang_weight=c.multi_source_lang_weight,
                                    strategy=s)
    raise ValueError(f"unknown recipe {recipe!r}; known: {RECIPES}")


# The language modules each recipe composes: the target's, and for analogy the source's too.
_LANG_MODULES = {"add": ("target",), "weighted": ("target",), "analogy": ("target", "source"), "stack": ("target",),
                 "multi_source": ("target",)}


def _skip_note(ctx: Context, recipe: str, target: str) -> str | None:
    """Why `recipe` cannot run for `target` (no language module, no related labeled language), or None."""
    c = ctx.config
    for role in _LANG_MODULES.get(recipe, ()):
        lang = target if role == "target" else c.source_language
        if f"lang/{lang}" not in ctx.modules:
            return f"skipped: no unlabeled text for {lang}, so no language module (resources/unlabeled_text.tsv)"
    if recipe != "multi_source":
        return None
    tasks = [k.split("/", 1)[1] for k in ctx.modules if k.startswith("task/")]
    try:
        related = compose.related_languages(target, tasks, by=c.multi_source_by, k=c.multi_source_k or None)
    except compose.TypologyError as e:
        return f"skipped: {e}"
    if not related:
        return f"skipped: no labeled language shares the {c.multi_source_by} of {target}"
    return None


def evaluate_target(ctx: Context, workdir: str, target: str, selection: dict | None) -> list[dict]:
    """Decodes the target's test split with every recipe; writes predictions; returns table rows."""
    c = ctx.config
    examples = ctx.examples(target, "test", c.eval.n_test)
    pred_dir = os.path.join(workdir, "predictions")  # created by its first file's write (local or gs://)
    rows, per_example = [], {}
    for recipe in c.recipes:
        note = _skip_note(ctx, recipe, target)
        if note is not None:
            rows.append({"language": target, "recipe": recipe, "note": note})
            continue
        lam = lambdas.chosen(c, selection, recipe)
        row, per_example[recipe] = evaluation.run_system(ctx.decoder, ctx.scoring, target, examples,
                                                         recipe_modules(ctx, recipe, target, lam),
                                                         os.path.join(pred_dir, f"{target}.{recipe}.jsonl"))
        rows.append({"recipe": recipe, "lambda": lam, "lambda_protocol": c.lambda_protocol if lam is not None
                     else None, **row, "per_example_rougeL": [float(x) for x in per_example[recipe]["rougeL"]]})
    base = per_example.get("task_only")
    for row in rows:
        if base is not None and row["recipe"] in per_example and row["recipe"] != "task_only":
            row.update(ctx.scoring.compare(per_example[row["recipe"]], base))
    return rows


def write_report(config, workdir: str, rows: list[dict], selections: dict, init_report: dict) -> str:
    """results.md (recipes table, then the λ sweeps), results.csv and the plots; returns the recipes table."""
    table = evaluation.markdown_table(evaluation.RECIPE_TABLE, rows)
    by_recipe = lambdas.sweeps_for_report(selections)
    intro = ("ROUGE F1 ×100 with 95% bootstrap intervals; ΔL: recipe − task_only, with the two-sided paired "
             f"bootstrap p and that p adjusted across the table ({config.eval.get('p_adjust', 'holm')}). One seed: "
             f"differences are screening, not verdicts. Scorer: {metrics.scorer_name(config.eval.tokenization)}. "
             + lambdas.describe(config))
    evaluation.write_markdown(os.path.join(workdir, "results.md"), "Results", intro,
                              table + evaluation.sweep_section(by_recipe) + init_regime.markdown(init_report))
    evaluation.write_csv(os.path.join(workdir, "results.csv"), rows, evaluation.RECIPE_CSV_COLUMNS)
    scored = [r for r in rows if "rougeL" in r]
    evaluation.bar_plot(scored, os.path.join(workdir, "results_by_language.png"), series="recipe",
                        title="Zero-shot summarization by recipe (95% bootstrap CI)")
    if by_recipe:
        evaluation.sweep_plot(by_recipe, os.path.join(workdir, "lambda_sweep.png"), "validation ROUGE-L ×100")
    return table


def select(config, st: Stages, ctx: Context) -> dict:
    """The λ selections the protocol asks for: {target: selection}, {"source": selection} or {}."""
    if not lambdas.recipes_with_lambda(config) or config.lambda_protocol == "fixed":
        return {}
    if config.lambda_protocol == "source_validation":
        return {"source": st.run("select/source", lambda: lambdas.select_on_sources(ctx))}
    return {t: st.run(f"select/{t}", lambda t=t: lambdas.select_on_target(ctx, t)) for t in config.target_languages}


# ---------------------------------------------------------------------------------- run
class ConfigMismatchError(ValueError):
    """A workdir's finished stages came from another config."""


def check_config(config, workdir: str) -> None:
    """Records the config on the first run; refuses to resume a workdir with a different one."""
    path = os.path.join(workdir, "config.json")
    current = json.loads(config.to_json_best_effort(sort_keys=True))
    current.pop("distributed", None)  # how processes meet (a coordinator port) is not part of the experiment
    current.pop("dry_run_chip", None)  # nor the chip a dry run compares memory against
    if not workdir_path(path).exists():
        write_text(path, json.dumps(current, indent=1, sort_keys=True), overwrite=False)
        return
    saved = read_json(path)
    if saved != current:
        empty = lambda x: x == {} or x == []  # an empty section is a difference too
        a, b = flatten(saved, is_leaf=empty), flatten(current, is_leaf=empty)
        diff = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
        raise ConfigMismatchError(f"workdir {workdir} holds a run of another config (differs in {diff[:8]}); "
                                  "resume with the same config or use another --workdir")


def run(config, workdir: str, log=print) -> list[dict]:
    """Runs (or resumes) the whole experiment in `workdir`; returns the results rows.

    With `config.seeds` (e.g. (0, 1, 2)) every module is trained and scored once per seed, each seed in
    `workdir/seed_<s>/` on one shared base and tokenizer, and `workdir` gets the per-seed rows and the
    summary across seeds (`multi_seed`). Every seed's modules of one kind train together
    (`config.modules_per_step`, `pipeline.modules`).
    """
    if config.get("seeds"):
        return multi_seed.run(config, workdir, run_seeds, log)
    return run_one(config, workdir, log)


def run_one(config, workdir: str, log=print) -> list[dict]:
    """One seed of the experiment (`config.seed`) in `workdir`; returns the results rows."""
    return run_seeds([(config.seed, config, workdir)], log)[0]["rows"]


@dataclasses.dataclass
class SeedRun:
    """One seed's run, opened: its config, workdir, stages and the data, tokenizer and base it uses."""

    config: ml_collections.ConfigDict
    workdir: str
    st: Stages
    paths: dict
    tok_path: str
    base_path: str


def run_seeds(plan: list[tuple], log=print) -> list[dict]:
    """Runs (or resumes) each (seed, one-seed config, workdir) of `plan`.

    Returns per seed {"rows": its results rows, "sweeps": {recipe: {language: [(λ, validation ROUGE-L)]}}}.

    Each later seed's config may name files the earlier ones make (the first seed's tokenizer and
    base), so the seeds are opened in order; then all their modules train, and each is evaluated.
    """
    with contextlib.ExitStack() as stack:
        runs = [stack.enter_context(_opened(config, workdir, log)) for _, config, workdir in plan]
        per_run = [_jobs(r, len(plan) > 1) for r in runs]
        files = iter(train_all([j for jobs in per_run for j in jobs], plan[0][1].get("modules_per_step", 1), log))
        trained = [{j.name: next(files) for j in jobs} for jobs in per_run]
        return [_evaluate_run(r, m, log) for r, m in zip(runs, trained)]


def _jobs(r: SeedRun, label: bool) -> list[Job]:
    """The language and task modules of one seed's run, as training jobs."""
    c = r.config
    out = []
    for kind, langs in (("lang", _languages(c)), ("task", c.labeled_languages)):
        for lang in langs:
            make = functools.partial(module_config, c, r.workdir, kind, lang, r.paths, r.tok_path, r.base_path)
            module_file = os.path.join(module_dir(r.workdir, kind, lang), "final_module")
            out.append(Job(r.st, f"{kind}/{lang}", make, module_file, f"seed {c.seed} {kind}/{lang}" if label else ""))
    return out


@contextlib.contextmanager
def _opened(config, workdir: str, log):
    """A one-seed run with its lock held and its data, tokenizer and base stages done."""
    lambdas.check(config)
    for section in ("lang_train", "task_train"):  # bad training values stop the run before any stage
        try:
            config_lib.check_values(config[section])
        except config_lib.ConfigError as e:
            raise config_lib.ConfigError(f"{section}: {e}") from None
    workdir = os.fspath(workdir_path(workdir))  # a local path made absolute, or a URL whose backend is installed
    writer = jax.process_index() == 0  # process 0 holds the lock and writes; the others train with it
    with workdir_lock(workdir, hold=writer) as lock:
        if writer:
            check_config(config, workdir)
        st = Stages(workdir, log, guard=lock.check if lock else None)
        _world(config)  # registers the synthetic languages in this process
        paths = st.run("data", lambda: prepare_data(config, workdir))
        tok_path = st.run("tokenizer", lambda: prepare_tokenizer(config, workdir, paths))
        base_path = st.run("base", lambda: prepare_base(config, workdir, paths, tok_path, log))
        yield SeedRun(config, workdir, st, paths, tok_path, base_path)


def _evaluate_run(r: SeedRun, trained: dict[str, str], log) -> dict:
    """λ selection, evaluation of every target and the report of one seed's run, from its trained modules."""
    config, workdir, st = r.config, r.workdir, r.st
    writer = jax.process_index() == 0
    ctx = Context(config, r.paths, r.tok_path, r.base_path, trained) if writer else None
    seeds = {name: init_regime.module_seed(config.seed, *name.split("/"), config.shared_init) for name in trained}
    init_report = st.run("init", lambda: init_regime.report(config, ctx.model, ctx.params, ctx.modules, seeds))
    selections = select(config, st, ctx)
    rows = []
    for t in config.target_languages:
        selection = selections.get("source", selections.get(t))
        rows.extend(st.run(f"evaluate/{t}", lambda t=t, s=selection: evaluate_target(ctx, workdir, t, s)))
    evaluation.adjust_table(rows, config.eval.get("p_adjust", "holm"))
    if writer:
        log("\n" + write_report(config, workdir, rows, selections, init_report))
    return {"rows": rows, "sweeps": lambdas.sweeps_for_report(selections)}
