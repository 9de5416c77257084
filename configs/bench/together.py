"""Modules trained together against one after another, on the embedded default's language stage.

  python launch/bench_together.py --config=configs/bench/together.py --workdir=/tmp/together
  python launch/bench_together.py --config=configs/bench/together.py:runlocal --workdir=/tmp/together_tiny

K = 4 is the demo's language modules of one seed, K = 12 those of three seeds (see peft_jax/bench/together.py).
"""

import importlib.util
import pathlib

import ml_collections


def _demo(arg: str):
    spec = importlib.util.spec_from_file_location("_demo_cfg", pathlib.Path(__file__).parents[1] / "demo.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg)


def get_config(arg: str = ""):
    if arg not in (None, "", "runlocal"):
        raise ValueError(f"configs/bench/together.py: unknown argument {arg!r}; use ':runlocal' or nothing")
    runlocal = arg == "runlocal"
    demo = _demo("runlocal" if runlocal else "")
    c = ml_collections.ConfigDict()
    c.world_seed = 0
    c.languages = 4  # languages of the synthetic world whose text is used (module i: language i mod 4, seed i // 4)
    c.paragraphs = 200 if runlocal else 2000  # unlabeled paragraphs per language
    c.vocab_size = 1200
    c.model = demo.base.pretrain.overrides  # the demo's tiny mT5
    c.train = demo.lang_train  # the demo's language-module section (batch, lengths, optimizer, LoRA)
    c.train.num_steps = 3 if runlocal else 40
    c.train.checkpoint_every = 1000
    c.train.log_every = 1
    c.train.data.extra_ids = 0  # the trained vocabulary has its own sentinel pieces (as in the demo)
    c.ks = (2,) if runlocal else (4, 12)
    if runlocal:
        c.train.batch_size, c.train.data.input_length = 4, 32
        c.model = ml_collections.ConfigDict(dict(d_model=32, d_kv=8, d_ff=64, num_heads=4, num_layers=1,
                                                 num_decoder_layers=1, dropout_rate=0.0))
    return c
