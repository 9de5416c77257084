"""Case 2: prompt tuning and (IA)^3 on mT5-small, and LoRA on a PaLM-sized decoder-only model.

The decoder (peft_jax's palm_small dims: d_model 512, 16 layers, 8 query heads and one KV head,
SwiGLU, tied 250,112-token embedding) is compared in the Llama layout (sequential block), the one
transformers has: LlamaForCausalLM with num_key_value_heads=1, over 596-token sequences.

  python launch/benchmark.py --config=configs/bench/train_peft_types.py --workdir=/tmp/bench_train_peft_types
  python launch/benchmark.py --config=configs/bench/train_peft_types.py:runlocal \
      --workdir=/tmp/bench_train_peft_types_tiny  # tiny shapes

Every field of peft_jax.bench.cases.base_config can be overridden, e.g. --config.reps=3.
"""

from peft_jax.bench import cases


def get_config(arg=None):
    """The benchmark config; ':runlocal' shrinks every shape to seconds on a laptop."""
    config = cases.base_config(tiny=cases.parse_arg(arg, "configs/bench/train_peft_types.py"))
    config.cases = ("train_prompt", "train_ia3", "train_decoder")
    return config
