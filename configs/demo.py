"""The embedded default: language and task arithmetic on the synthetic multilingual world.

  python launch/pipeline.py --config=configs/demo.py --workdir=runs/demo

No downloads: the pipeline writes the synthetic world (six made-up languages in three families, see
docs/synthetic_world.md), trains a SentencePiece vocabulary on it, pre-trains a tiny mT5-style base
with span corruption, trains LoRA language modules (span corruption on unlabeled text) and task
modules (summarization, labels only in syn_en, syn_mid, syn_eas), composes them with every recipe
(λ chosen on validation) and scores zero-shot summaries in syn_wes, syn_mod, syn_eos.
Three seeds by default (every module trained and scored once per seed, verdicts that must hold on
every seed); the budget below is what fits three seeds in about 13 minutes on a 2-core CPU.
`configs/demo.py:runlocal` shrinks everything to a smoke test of one seed (about a minute).
"""

import importlib.util
import pathlib

import ml_collections

from peft_jax import distributed


def _train_config(arg: str):
    """configs/train.py's get_config (the training knobs of every module stage)."""
    spec = importlib.util.spec_from_file_location("_train_cfg", pathlib.Path(__file__).with_name("train.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg)


def get_config(arg: str = ""):
    if arg not in (None, "", "runlocal"):
        raise ValueError(f"configs/demo.py: unknown argument {arg!r}; use ':runlocal' or nothing")
    runlocal = arg == "runlocal"
    c = ml_collections.ConfigDict()
    c.seed = 0  # every stage's seed (data order, initialisation, bootstrap)
    # Several seeds, e.g. (0, 1, 2): every module is trained and scored once per seed (workdir/seed_<s>/) and
    # results.md / summary.csv give mean ± std over seeds and verdicts that must hold on every seed.
    c.seeds = () if runlocal else (0, 1, 2)
    # True: every module stage trains with `seed`, so all LoRA modules start from the same A (param
    # arithmetic then approximates exact ΔW arithmetic); False: a seed per module stage derived from
    # `seed` and the stage name. results.md reports A's drift and the param-vs-exact gap either way.
    c.shared_init = True
    # How many modules of one kind (languages × seeds) train together in one jitted step over a module axis,
    # reading the base once for all of them (peft_jax/pipeline/modules.py); 0: all of a kind, 1: one by one.
    c.modules_per_step = 0 if runlocal else 4
    c.source_language = "syn_en"  # the labeled source language (task module trained here)
    c.target_languages = ("syn_wes", "syn_mod", "syn_eos")  # zero-shot targets: no training labels
    c.labeled_languages = ("syn_en", "syn_mid", "syn_eas")  # task modules (multi-source uses the related ones)
    c.recipes = ("task_only", "add", "weighted", "analogy", "stack", "multi_source")
    c.strategy = "param"  # composition strategy for LoRA (param = the paper's element-wise arithmetic)
    # How λ of the weighted / analogy recipes is chosen (peft_jax/pipeline/lambdas.py): fixed (lambda_fixed),
    # source_validation (on labeled languages other than the source: no target labels) or target_oracle
    # (on each target's gold validation summaries: an upper bound, not zero-shot). The synthetic demo keeps
    # the oracle so that its table shows how far the best λ goes; every XL-Sum config is zero-shot.
    c.lambda_protocol = "target_oracle"
    c.lambdas = (0.25, 0.5, 0.75, 1.0)  # λ grid of the selection protocols
    c.weighted_lambdas = ()  # weighted's own grid (λ=1 is task_only); () uses lambdas
    c.lambda_fixed = ml_collections.ConfigDict({"weighted": 0.5, "analogy": 1.0})  # lambda_protocol='fixed'
    c.multi_source_by = "family"  # related-language criterion: family | genus | script | typology
    c.multi_source_k = 0  # at most this many related labeled languages (0: all); typology needs k >= 1
    c.multi_source_weights = "uniform"  # uniform | similarity (proportional to typological similarity)
    c.multi_source_lang_weight = 1.0  # weight of the target's language module in multi_source

    c.data = ml_collections.ConfigDict()
    c.data.kind = "synthetic"  # synthetic | xlsum
    c.data.xlsum_dir = ""  # xlsum: directory in the released layout
    c.data.text_paths = ""  # xlsum: unlabeled text per language; '{language}', '{iso1}', '{iso3}' are filled in
    c.data.text_overrides = ml_collections.ConfigDict()  # {language: path} where the pattern does not fit

    c.world = ml_collections.ConfigDict()
    c.world.seed = 0  # the synthetic world's words and examples
    c.world.n_unlabeled = 300 if runlocal else 4000  # unlabeled paragraphs per language
    c.world.n_train = 200 if runlocal else 3000  # labeled articles per labeled language
    c.world.n_validation = 16 if runlocal else 48  # validation articles per language (λ selection)
    c.world.n_test = 16 if runlocal else 150  # test articles per language

    c.tokenizer = ml_collections.ConfigDict()
    c.tokenizer.path = ""  # SentencePiece model; '' trains one on the unlabeled text
    c.tokenizer.vocab_size = 1200  # size of the trained vocabulary (soft limit)
    c.tokenizer.num_sentinels = 32  # <extra_id_i> pieces for span corruption
    c.tokenizer.extra_ids = 0  # sentinel ids appended after the vocabulary (mT5: 100); ours has pieces

    c.base = ml_collections.ConfigDict()
    c.base.checkpoint = ""  # a base checkpoint; '' pre-trains one here
    c.base.pretrain = ml_collections.ConfigDict()
    c.base.pretrain.preset = "mt5_tiny"
    c.base.pretrain.overrides = ml_collections.ConfigDict(  # a tiny mT5: 3+3 layers, width 128
        dict(d_model=128, d_kv=32, d_ff=256, num_heads=4, num_layers=3, num_decoder_layers=3, dropout_rate=0.0))
    c.base.pretrain.steps = 40 if runlocal else 1200  # full-parameter span-corruption steps
    c.base.pretrain.batch_size = 32
    c.base.pretrain.learning_rate = 3e-3
    c.base.pretrain.input_length = 64

    lora = r".*(attention|self_attention|encoder_decoder_attention|mlp)/\w+$"
    c.lang_train = _train_config("model=mt5_tiny,peft=lora,objective=span_corruption,source=text")
    c.lang_train.num_steps = 20 if runlocal else 120
    c.lang_train.batch_size = 32 if runlocal else 16
    c.lang_train.peft.lora.targets = lora
    c.lang_train.data.input_length = 64
    c.lang_train.progress_bar = False
    c.lang_train.eval_every = 0  # held-out loss is not needed to compose; the λ sweep uses validation ROUGE
    c.task_train = _train_config("model=mt5_tiny,peft=lora,objective=seq2seq,source=xlsum")
    c.task_train.num_steps = 20 if runlocal else 160
    c.task_train.batch_size = 32 if runlocal else 16
    c.task_train.peft.lora.targets = lora
    c.task_train.data.input_length = 96
    c.task_train.data.target_length = 24
    c.task_train.progress_bar = False
    c.task_train.eval_every = 0

    c.decode = ml_collections.ConfigDict()
    c.decode.method = "greedy"  # greedy | beam | sample
    c.decode.max_input_len = 96  # article tokens
    c.decode.max_decode_len = 24  # summary tokens
    c.decode.num_beams = 4
    c.decode.length_penalty = 0.6
    c.decode.no_repeat_ngram_size = 0
    c.decode.batch_size = 64

    c.eval = ml_collections.ConfigDict()
    c.eval.n_validation = c.world.n_validation
    c.eval.n_test = c.world.n_test
    c.eval.tokenization = "multilingual"  # xlsum (XL-Sum's official scorer) | multilingual | sentencepiece | default
    c.eval.spm_path = ""  # sentencepiece tokenization: the model to split with
    c.eval.bootstrap_samples = 1000
    c.eval.p_adjust = "holm"  # adjustment of the p-values against task_only across a table (holm | bh)
    c.eval.alpha = 0.05  # over seeds: level of the better / worse verdicts (on adjusted p)
    c.dry_run_chip = "v4"  # launch/pipeline.py --dry_run: <chip>[:<devices>][@<GiB>], chip v4 | v5e | v5p | h100

    # One switch for every stage: the pipeline joins the other processes once and each training stage
    # runs with this section (launch/tpu/tpu.py run sets --config.distributed.enabled=True).
    c.distributed = distributed.section()
    return c
