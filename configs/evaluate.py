"""XL-Sum evaluation of a frozen base with (composed) PEFT modules.

Run (XL-Sum protocol: beam 4, length penalty 0.6, no-repeat-ngram 2, 512 source / 84 summary tokens):

  python launch/evaluate.py --config=configs/evaluate.py --workdir=DIR \
      --config.base.checkpoint=runs/base --config.modules=runs/sum_sw.safetensors \
      --config.data.tokenizer=runs/base/spiece.model --config.data.xlsum_dir=data/xlsum \
      --config.data.languages=swahili,hindi

Runs on a laptop CPU in seconds, no downloads (a random mt5_tiny base, the XL-Sum samples in tests/data, 2
examples per language, greedy decoding of 16 tokens):

  python launch/evaluate.py --config=configs/evaluate.py:runlocal --workdir=/tmp/eval

`--config.modules` takes comma-separated module files (written by `peft.save` or launch/compose.py)
applied together in that order; empty evaluates the base alone.
"""

import os

import ml_collections

from peft_jax import distributed

_SAMPLES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "data")  # in-repo samples


def get_config(arg=None):
    """The evaluation config; `arg == 'runlocal'` shrinks it for one CPU."""
    if arg not in (None, "", "runlocal"):
        raise ValueError(f"configs/evaluate.py: unknown argument {arg!r}; use ':runlocal' or nothing")
    runlocal = arg == "runlocal"
    c = ml_collections.ConfigDict()
    c.modules = ""  # comma-separated module files applied together; '' = the base alone
    c.name = ""  # label of the system in tables and plots; '' = module file names joined by '+', or 'base'

    c.base = ml_collections.ConfigDict()
    c.base.checkpoint = ""  # Hugging Face or native checkpoint directory; '' = a random `preset`
    c.base.preset = "mt5_tiny"  # peft_jax.models.PRESETS name, used only without a checkpoint
    c.base.init_seed = 0  # seed of the random preset
    c.base.dtype = "float32"  # compute dtype (bfloat16 on accelerators)

    c.data = ml_collections.ConfigDict()
    c.data.xlsum_dir = os.path.join(_SAMPLES, "xlsum") if runlocal else ""  # <language>_<split>.jsonl files
    c.data.split = "test"  # train | validation | test
    c.data.languages = "english,hindi" if runlocal else "english"  # XL-Sum names or ISO codes, comma-separated
    c.data.max_examples = 2 if runlocal else 0  # per language; 0 = the whole split
    c.data.tokenizer = os.path.join(_SAMPLES, "tokenizers", "t5_english_32k.model") if runlocal else ""
    c.data.extra_ids = 0  # sentinel ids appended to the tokenizer (100 for mT5 vocabularies)

    c.decode = ml_collections.ConfigDict()
    c.decode.method = "greedy" if runlocal else "beam"  # greedy | sample | beam
    c.decode.num_beams = 4  # beam size
    c.decode.length_penalty = 0.6  # HF alpha: score = log-prob / length ** alpha
    c.decode.early_stopping = False  # HF semantics: False | True | 'never'
    c.decode.no_repeat_ngram_size = 2  # 0 disables n-gram blocking
    c.decode.max_decode_len = 16 if runlocal else 84  # generated tokens (EOS included)
    c.decode.max_input_len = 64 if runlocal else 512  # source tokens (EOS included)
    c.decode.batch_size = 2 if runlocal else 16  # examples per jitted decode call
    c.decode.temperature = 1.0  # sampling only
    c.decode.top_k = 0  # sampling only; 0 = no top-k filter
    c.decode.top_p = 1.0  # sampling only; 1 = no nucleus filter
    c.decode.seed = 0  # sampling only

    c.eval = ml_collections.ConfigDict()
    c.eval.tokenization = "xlsum"  # xlsum (XL-Sum's official scorer) | multilingual (clean) | sentencepiece | default
    c.eval.spm_path = ""  # SentencePiece model for tokenization='sentencepiece'
    c.eval.identifier = "langid"  # language identifier of the wrong-language rate; '' = script check only
    c.eval.bootstrap_samples = 100 if runlocal else 1000  # resamples of the confidence intervals
    c.eval.seed = 0  # bootstrap seed
    c.distributed = distributed.section()  # multi-host: process 0 evaluates, the others wait
    return c
