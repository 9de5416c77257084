"""Results over seeds: the summary's statistics against direct NumPy computations, verdicts that need every
seed to agree, and a tiny end-to-end run over two seeds sharing one base."""

import csv
import importlib.util
import pathlib

import numpy as np
import pytest

from peft_jax import metrics
from peft_jax.evaluation import seeds
from peft_jax.metrics.multiple_testing import adjust_p_values
from peft_jax.pipeline import experiment, multi_seed

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _rows():
    """Per-seed rows of two languages × (task_only, analogy) × 3 seeds with per-example scores."""
    rng = np.random.default_rng(0)
    rows = []
    for lang, shift in (("syn_a", 0.2), ("syn_b", 0.0)):
        for s in range(3):
            base = rng.uniform(0.1, 0.4, 30)
            for recipe, scores in (("task_only", base), ("analogy", np.clip(base + shift + rng.normal(0, .02, 30), 0, 1))):
                rows.append({"language": lang, "recipe": recipe, "seed": s, "num_examples": 30,
                             "rouge1": float(scores.mean()) + 0.1, "rouge2": float(scores.mean()) / 2,
                             "rougeL": float(scores.mean()), "per_example_rougeL": scores.tolist(),
                             "wrong_language_rate": 0.0})
                rows[-1].update({f"{k}{end}": rows[-1][k] + d for k in ("rouge1", "rouge2", "rougeL")
                                 for end, d in (("_low", -0.01), ("_high", 0.01))})
    return rows


def test_summary_statistics_equal_direct_numpy_computations():
    rows = _rows()
    summary = {(r["language"], r["recipe"]): r for r in seeds.summarize(rows, bootstrap_samples=200, seed=3)}
    cell = [r for r in rows if r["language"] == "syn_a" and r["recipe"] == "analogy"]
    base = [r for r in rows if r["language"] == "syn_a" and r["recipe"] == "task_only"]
    got = summary[("syn_a", "analogy")]
    values = np.array([r["rougeL"] for r in cell])
    assert got["rougeL_mean"] == pytest.approx(values.mean(), abs=1e-15)
    assert got["rougeL_std"] == pytest.approx(np.std(values, ddof=1), abs=1e-15)
    pooled = np.concatenate([r["per_example_rougeL"] for r in cell])
    assert (got["rougeL_low"], got["rougeL_high"]) == metrics.bootstrap_ci(pooled, num_samples=200, seed=3)[1:]
    pooled_base = np.concatenate([r["per_example_rougeL"] for r in base])
    assert got["p_value"] == metrics.paired_bootstrap(pooled, pooled_base, num_samples=200, seed=3)["p_value"]
    assert got["delta_rougeL"] == pytest.approx(np.mean(values - [r["rougeL"] for r in base]), abs=1e-15)
    compared = [r for r in summary.values() if "p_value" in r]
    assert [r["p_adjusted"] for r in compared] == adjust_p_values([r["p_value"] for r in compared], "holm")
    assert got["verdict"] == "better" and summary[("syn_b", "analogy")]["verdict"] == "no difference"
    assert "verdict" not in summary[("syn_a", "task_only")]


@pytest.mark.parametrize("deltas, p, expected", [([0.1, 0.2, 0.05], 0.01, "better"), ([-0.1, -0.2, -0.05], 0.01, "worse"),
                                                 ([0.1, -0.01, 0.2], 0.001, "no difference"),
                                                 ([0.1, 0.2, 0.3], 0.2, "no difference")])
def test_a_verdict_needs_the_sign_on_every_seed_and_a_small_adjusted_p(deltas, p, expected):
    assert seeds.verdict(deltas, p) == expected


def _demo(**overrides):
    spec = importlib.util.spec_from_file_location("cfg_demo", ROOT / "configs" / "demo.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    c = module.get_config("runlocal")
    c.target_languages, c.labeled_languages, c.recipes = ("syn_mod",), ("syn_en",), ("task_only", "analogy")
    c.lambdas, c.world.n_unlabeled, c.world.n_train, c.world.n_validation, c.world.n_test = (1.0,), 60, 40, 4, 4
    c.eval.n_validation = c.eval.n_test = 4
    c.base.pretrain.steps = c.lang_train.num_steps = c.task_train.num_steps = 2
    c.lang_train.batch_size = c.task_train.batch_size = 4
    c.lang_train.data.eval_examples = c.task_train.data.eval_examples = 4
    c.eval.bootstrap_samples = 50
    for key, value in overrides.items():
        c[key] = value
    return c


def test_two_seeds_run_one_seed_each_on_the_first_seeds_base_and_write_the_summary(tmp_path):
    """multi_seed.run around a stand-in run of the seeds that records their configs and returns scored rows."""
    seen = []

    def run_seeds(plan, log):
        seen.extend((s, config.seed, tuple(config.seeds), config.base.checkpoint, config.tokenizer.path, workdir)
                    for s, config, workdir in plan)
        return [{"rows": [r for r in _rows() if r["language"] == "syn_a" and r["seed"] == 0],
                 "sweeps": {"analogy": {"syn_a": [(0.5, 0.1 + 0.02 * i), (1.0, 0.2 - 0.04 * i)]}}}
                for i, _ in enumerate(plan)]

    rows = multi_seed.run(_demo(seeds=(0, 5)), str(tmp_path), run_seeds, log=lambda _: None)
    first = str(tmp_path / "seed_0")
    assert seen == [(0, 0, (), "", "", first),
                    (5, 5, (), f"{first}/base", f"{first}/tokenizer.model", str(tmp_path / "seed_5"))]
    assert sorted({r["seed"] for r in rows}) == [0, 5]
    with open(tmp_path / "results.csv", encoding="utf-8") as f:
        per_seed = list(csv.DictReader(f))
    assert [(r["recipe"], r["seed"]) for r in per_seed] == [("task_only", "0"), ("analogy", "0"),
                                                           ("task_only", "5"), ("analogy", "5")]
    with open(tmp_path / "summary.csv", encoding="utf-8") as f:
        summary = list(csv.DictReader(f))
    assert [(r["language"], r["recipe"], r["num_seeds"]) for r in summary] == [("syn_a", "task_only", "2"),
                                                                               ("syn_a", "analogy", "2")]
    assert summary[1]["verdict"] in ("better", "worse", "no difference") and summary[1]["p_adjust"] == "holm"
    md = (tmp_path / "results.md").read_text(encoding="utf-8")
    assert "2 seeds (0, 5)" in md and "λ protocol: target_oracle" in md and "## Per seed" in md
    assert (tmp_path / "results_by_language.png").stat().st_size > 0
    # λ sweeps over seeds: mean ± sample std of (10, 12) and (20, 16) ROUGE-L ×100, and their plot.
    assert "| syn_a | 11.0 ± 1.4 | 18.0 ± 2.8 |" in md and "mean ± std over seeds; each seed's chosen λ" in md
    assert (tmp_path / "lambda_sweep.png").stat().st_size > 0
    with pytest.raises(ValueError, match="seeds must be distinct integers"):
        experiment.run(_demo(seeds=(1, 1)), str(tmp_path / "again"), log=lambda _: None)


def test_the_seed_configs_differ_only_in_seed_base_and_tokenizer():
    config = _demo(seeds=(0, 1))
    later = multi_seed.seed_config(config, 1, "/w/seed_0")
    diff = {k for k, v in later.items() if v != config[k]}
    assert diff == {"seed", "seeds", "base", "tokenizer"} and later.base.pretrain == config.base.pretrain


def test_a_relative_workdir_gives_every_seed_the_same_absolute_tokenizer_and_base(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    plan = multi_seed.plan(_demo(seeds=(0, 1, 2)), "runs/demo")
    assert [w for _, _, w in plan] == [str(tmp_path / "runs" / "demo" / f"seed_{s}") for s in (0, 1, 2)]
    first = tmp_path / "runs" / "demo" / "seed_0"
    assert {(c.tokenizer.path, c.base.checkpoint) for _, c, _ in plan[1:]} == {(f"{first}/tokenizer.model",
                                                                                 f"{first}/base")}
