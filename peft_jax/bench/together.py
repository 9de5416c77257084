"""Modules trained together (one vmapped step over a module axis) against the same modules one after another.

  python launch/bench_together.py --config=configs/bench/together.py --workdir=/tmp/together

The setting is the embedded default's language stage: its tiny mT5 (random weights), LoRA on every
attention and MLP kernel, span corruption on synthetic unlabeled text of several languages, its batch
and lengths. For each K the K modules (languages × seeds) are trained once with `train` one after
another and once with `train_together`, in this process, alternating which goes first. Reported side by
side: wall time of the whole training (setup, compilation, steps, checkpoints, export), the median
step time per module-step, and the largest parameter difference between the two results (they must
agree: the same modules, not just the same speed). Writes `together.json` and `together.md`.
"""

from __future__ import annotations

import json
import os
import statistics
import time

import jax
import numpy as np

from peft_jax import data
from peft_jax.fileio import write_text
from peft_jax.models import get_model, native
from peft_jax.train import loop, reporting, together

COLUMNS = ("K", "steps", "one after another (s)", "together (s)", "speedup", "step / module, alone (ms)",
           "step / module, together (ms)", "max |Δ param|")


def _setup(config, workdir: str) -> tuple[str, str, list[str]]:
    """(tokenizer, base checkpoint, text file per language) in `workdir`: synthetic text, random base."""
    world = data.World(config.world_seed)
    text_dir = os.path.join(workdir, "text")
    world.write_unlabeled(text_dir, config.paragraphs, "train")
    langs = [lang.name for lang in world.languages[:config.languages]]
    files = [os.path.join(text_dir, f"{lang}_train.txt") for lang in langs]
    lines = [line.strip() for f in files for line in open(f, encoding="utf-8")]
    tok = str(data.train_sentencepiece(lines, os.path.join(workdir, "tok"), config.vocab_size, num_sentinels=32))
    model = get_model("mt5_tiny", vocab_size=data.load_tokenizer(tok).vocab_size, **dict(config.model))
    base = os.path.join(workdir, "base")
    native.save(base, model, model.init(jax.random.PRNGKey(0)))
    return tok, base, files


def _configs(config, tok: str, base: str, files: list[str], k: int) -> list:
    """K training configs: languages × seeds, the demo's language-module section otherwise."""
    out = []
    for i in range(k):
        c = config.train.copy_and_resolve_references()
        c.model.checkpoint, c.data.tokenizer = base, tok
        c.data.paths = files[i % len(files)]
        c.seed = i // len(files)
        out.append(c)
    return out


def _median_step_ms(workdir: str, k: int) -> float:
    """Median step time over the run's logged steps after the first, per module, in ms."""
    times = [r["step_time"] for s, r in sorted(reporting.read_metrics(workdir).items()) if "step_time" in r and s > 1]
    return 1000 * statistics.median(times) / k


def _max_diff(a, b) -> float:
    diffs = jax.tree.map(lambda x, y: float(np.max(np.abs(np.asarray(x) - np.asarray(y)))), a, b)
    return max(jax.tree.leaves(diffs))


def _one_k(config, workdir: str, tok: str, base: str, files: list[str], k: int, together_first: bool) -> dict:
    configs = _configs(config, tok, base, files, k)
    alone_dirs = [os.path.join(workdir, f"k{k}", f"alone_{i}") for i in range(k)]
    joint_dirs = [os.path.join(workdir, f"k{k}", f"together_{i}") for i in range(k)]

    def alone():
        t = time.perf_counter()
        results = [loop.train(c, d) for c, d in zip(configs, alone_dirs)]
        return time.perf_counter() - t, results

    def joint():
        t = time.perf_counter()
        results = together.train_together(configs, joint_dirs)
        return time.perf_counter() - t, results

    if together_first:
        (t_j, r_j), (t_a, r_a) = joint(), alone()
    else:
        (t_a, r_a), (t_j, r_j) = alone(), joint()
    return {"K": k, "steps": int(config.train.num_steps), "alone_s": t_a, "together_s": t_j, "speedup": t_a / t_j,
            "alone_step_ms": statistics.median(_median_step_ms(d, 1) for d in alone_dirs),
            "together_step_ms": _median_step_ms(joint_dirs[0], k),
            "max_param_diff": max(_max_diff(a.module.params, j.module.params) for a, j in zip(r_a, r_j))}


def run(config, workdir: str, log=print) -> list[dict]:
    """Runs every K of `config.ks`; writes together.json / together.md; returns the rows."""
    os.makedirs(workdir, exist_ok=True)
    tok, base, files = _setup(config, workdir)
    rows = []
    for i, k in enumerate(config.ks):
        rows.append(_one_k(config, workdir, tok, base, files, int(k), together_first=i % 2 == 1))
        log(f"[together] K={k}: " + json.dumps({n: round(v, 4) if isinstance(v, float) else v
                                                for n, v in rows[-1].items()}))
    write_text(os.path.join(workdir, "together.json"), json.dumps(rows, indent=1))
    cells = lambda r: (str(r["K"]), str(r["steps"]), f"{r['alone_s']:.1f}", f"{r['together_s']:.1f}",
                       f"{r['speedup']:.2f}×", f"{r['alone_step_ms']:.0f}", f"{r['together_step_ms']:.0f}",
                       f"{r['max_param_diff']:.1e}")
    table = "\n".join(["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
                      + ["| " + " | ".join(cells(r)) + " |" for r in rows])
    write_text(os.path.join(workdir, "together.md"), table + "\n")
    log(table)
    return rows
