"""Training one PEFT module on a frozen base (a language module or a task module).

Run (about a minute on a laptop CPU, no downloads; the module lands in DIR/final_module):

  python launch/train.py --config=configs/train.py:model=mt5_tiny,peft=lora,objective=span_corruption \
      --config.num_steps=40 --workdir=DIR
  python launch/train.py --config=configs/train.py:model=palm_tiny,objective=causal_lm \
      --config.num_steps=40 --workdir=DIR

The argument after ':' is comma-separated key=value pairs:
  model      a preset of peft_jax.models.PRESETS (mt5_tiny, mt5_small..., palm_tiny, palm_8b)
  peft       lora | prompt | ia3 | adapter | sparse
  objective  span_corruption (mT5 language module), causal_lm / prefix_lm (decoder language module),
             seq2seq (summarization task module, labeled data)
  language   the data language (synthetic world: syn_en, syn_wes, syn_mid, ...; XL-Sum: english, ...)
  source     synthetic | text | xlsum | tokens (see peft_jax/train/inputs.py)
  runlocal   true | false: shrink lengths and batch for one CPU (default: true for *_tiny models)
Any field can then be overridden with --config.<field>=<value>.
"""

import ml_collections

from peft_jax import distributed
from peft_jax.train import config_lib

_ARG_KEYS = ("model", "peft", "objective", "language", "source", "runlocal")
_DEFAULT_OBJECTIVE = {"mt5": "span_corruption", "palm": "causal_lm"}
# Peak learning rates that work for each family with Adafactor (prompt tuning wants a large one).
_LEARNING_RATES = {"lora": 3e-3, "prompt": 0.3, "ia3": 1e-2, "adapter": 3e-3, "sparse": 3e-3}


def _parse(arg):
    """{'model': ..., ...} from 'model=mt5_tiny,peft=lora'; unknown keys are errors."""
    out = {}
    for part in filter(None, (arg or "").split(",")):
        key, _, value = part.partition("=")
        key = key.strip()
        if key not in _ARG_KEYS:
            raise ValueError(f"configs/train.py: unknown argument {key!r}; known: {', '.join(_ARG_KEYS)}")
        if not value.strip() and key != "runlocal":
            raise ValueError(f"configs/train.py: argument {key!r} needs a value ({key}=...)")
        out[key] = value.strip() if value else "true"
    return out


def get_config(arg=None):
    """The training config; see the module docstring for the argument string."""
    args = _parse(arg)
    model = args.get("model", "mt5_tiny")
    family = args.get("peft", "lora")
    runlocal = args.get("runlocal", str(model.endswith("_tiny"))).lower() in ("1", "true", "yes")
    objective = args.get("objective", _DEFAULT_OBJECTIVE.get(model.split("_")[0], "causal_lm"))

    c = ml_collections.ConfigDict()
    c.seed = 0  # data order, dropout and PEFT initialisation
    c.metadata = ml_collections.ConfigDict()  # extra entries recorded in the module file (e.g. the init regime)
    c.objective = objective  # span_corruption | causal_lm | prefix_lm | seq2seq
    c.num_steps = 200 if runlocal else 20_000  # optimizer steps (all phases together)
    c.batch_size = 16 if runlocal else 128  # global batch (examples), split over processes and data axes
    c.micro_batches = 1  # gradient accumulation: batch_size is processed in this many pieces
    c.z_loss = 1e-4  # coefficient of log(Z)^2 (PaLM); 0 disables it

    c.model = ml_collections.ConfigDict()
    c.model.name = model  # preset name (ignored when checkpoint is set)
    c.model.checkpoint = ""  # Hugging Face checkpoint directory of the frozen base; '' = random preset
    c.model.dtype = "float32"  # compute dtype (bfloat16 on accelerators); PEFT params stay float32
    c.model.init_seed = 0  # seed of a randomly initialised base (keeps its fingerprint stable across runs)

    # One section per PEFT family (peft.lora, peft.prompt, ...; only the one named by peft.family is used),
    # holding the defaults of its config dataclass, e.g. peft_jax.peft.LoraConfig: fields and meanings are
    # documented there. peft.sparse.dense_fraction: LT-SFT trains a dense delta on this share of the steps,
    # then keeps the top `density` entries of each target leaf, rewound to zero, and retrains them.
    c.peft = config_lib.peft_sections()
    c.peft.family = family  # lora | prompt | ia3 | adapter | sparse (or a registered family)
    c.peft.sharding = "replicated"  # replicated | logical (shard like the base dimension touched)

    c.optimizer = ml_collections.ConfigDict()
    c.optimizer.name = "adafactor"  # adafactor (T5 default) | adamw
    c.optimizer.learning_rate = _LEARNING_RATES.get(family, 1e-3)  # peak learning rate
    c.optimizer.schedule = "cosine"  # after warmup: constant | linear | cosine | rsqrt
    c.optimizer.warmup_steps = 10 if runlocal else 1000  # linear warmup from 0
    c.optimizer.end_lr_ratio = 0.1  # linear/cosine decay ends at peak * this
    c.optimizer.clip_norm = 1.0  # global gradient-norm clipping; 0 disables it
    c.optimizer.weight_decay = 0.0  # decoupled weight decay on the PEFT params
    c.optimizer.b1 = 0.9  # AdamW first-moment decay
    c.optimizer.b2 = 0.999  # AdamW second-moment decay
    c.optimizer.eps = 1e-8  # AdamW epsilon
    c.optimizer.adafactor_decay_rate = 0.8  # Adafactor second-moment decay exponent
    c.optimizer.adafactor_parameter_scale = False  # scale steps by parameter RMS (off: fresh LoRA B is 0)

    c.data = ml_collections.ConfigDict()
    c.data.source = args.get("source", "synthetic")  # synthetic | text | xlsum | tokens
    c.data.language = args.get("language", "syn_en")  # language of the text / summaries
    c.data.paths = ""  # text: file glob (e.g. tests/data/tatoeba/tatoeba.fra-eng.fra); xlsum: directory
    c.data.eval_paths = ""  # text: held-out files; '' holds out the first eval_examples lines
    c.data.world_seed = 0  # synthetic world seed (its words and examples)
    c.data.num_examples = 2000 if runlocal else 100_000  # synthetic/tokens: training examples generated
    c.data.eval_examples = 64  # synthetic/tokens: held-out examples; text: lines held out
    c.data.tokenizer = ""  # SentencePiece .model / HF tokenizer dir; '' trains one on the training text
    c.data.vocab_size = 512  # size of a trained tokenizer (a soft limit)
    c.data.extra_ids = 100  # sentinels <extra_id_i> for span corruption
    c.data.input_length = 64 if runlocal else 512  # encoder / decoder-only sequence length (tokens)
    c.data.target_length = 32 if runlocal else 84  # summary length (seq2seq)
    c.data.decoder_attention = "prefix"  # decoder-only seq2seq: prefix (article attended bidirectionally) | causal
    c.data.noise_density = 0.15  # span corruption: fraction of tokens masked (T5)
    c.data.mean_noise_span_length = 3.0  # span corruption: mean span length (T5)
    c.data.num_threads = 2  # grain reader threads per process

    c.mesh = ml_collections.ConfigDict()
    c.mesh.data = -1  # data-parallel axis size (-1: all devices left)
    c.mesh.fsdp = 1  # fully-sharded data-parallel axis (shards the base's embed dimension)
    c.mesh.model = 1  # tensor-parallel axis (heads, mlp, vocab)
    # Logical axis -> mesh axes; a dimension the mesh axes do not divide stays replicated.
    c.logical_axis_rules = (("batch", ("data", "fsdp")), ("embed", "fsdp"), ("heads", "model"),
                            ("kv_heads", None), ("mlp", "model"), ("vocab", "model"), ("relpos_buckets", None))

    c.log_every = 5 if runlocal else 50  # steps between metric records (JSON lines + TensorBoard)
    c.eval_every = 50 if runlocal else 1000  # steps between held-out evaluations; 0 disables them
    c.eval_steps = 2 if runlocal else 20  # held-out batches per evaluation
    c.checkpoint_every = 100 if runlocal else 1000  # steps between checkpoints (and one at the end)
    c.keep_checkpoints = 3  # the last K checkpoints are kept
    c.progress_bar = True  # tqdm bar on process 0
    c.tensorboard = True  # also write TensorBoard events (workdir/tensorboard)

    c.distributed = distributed.section()  # multi-host: --config.distributed.enabled=True (see peft_jax.distributed)
    return c
