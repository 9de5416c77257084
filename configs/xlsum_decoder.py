"""The real experiment with a decoder-only base (PaLM-style; Llama / Gemma checkpoints load too).

  python launch/pipeline.py --config=configs/xlsum_decoder.py \
      --config.base.checkpoint=/ckpt/gemma-2b --config.tokenizer.path=/ckpt/gemma-2b/tokenizer.model \
      --config.data.xlsum_dir=/data/xlsum --config.data.text_paths='/data/mc4/c4-{mc4}.tfrecord-*.json.gz' \
      --workdir=/mnt/disks/runs/xlsum_gemma

Language modules: next-token prediction (causal LM) on unlabeled text; task module: prefix LM on
XL-Sum English (article as the bidirectional prefix, summary as the target;
`--config.task_train.data.decoder_attention=causal` trains with causal attention everywhere instead, the
loss still on the summary only). The module records which, and decoding reads the article prompt with
that same attention (`generate` refuses the other). Every sequence starts with the checkpoint's BOS
(Llama 1, Gemma 2; its EOS for a base without one), and the article gets one budget in training and
decoding: `[BOS] + article + [EOS]` fills `decode.max_input_len` = input_length - target_length
positions. Everything else as configs/xlsum_mt5.py (same arguments, same `runlocal` switch, which uses
a tiny random PaLM-style base).
"""

import importlib.util
import pathlib

_HERE = pathlib.Path(__file__).resolve().parent


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"_cfg_{name}", _HERE / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def get_config(arg: str = ""):
    c = _load("xlsum_mt5").get_config(arg)
    runlocal = "runlocal" in (arg or "")
    c.base.pretrain.preset = "palm_tiny"
    c.tokenizer.extra_ids = 0  # no sentinels: decoder objectives do not corrupt spans
    for section, objective in (("lang_train", "causal_lm"), ("task_train", "seq2seq")):
        t = _load("train").get_config(f"model={'palm_tiny' if runlocal else 'palm_8b'},peft=lora,"
                                      f"objective={objective},source={'xlsum' if objective == 'seq2seq' else 'text'}")
        t.update_from_flattened_dict({k: v for k, v in c[section].items() if k in ("num_steps", "batch_size",
                                                                                  "eval_every", "progress_bar")})
        t.data.input_length = c[section].data.input_length + (16 if objective == "seq2seq" else 0)
        t.data.target_length = c[section].data.target_length
        t.peft.lora.targets = r".*attention/\w+$|.*mlp/\w+$"
        t.model.dtype = c[section].model.dtype
        c[section] = t
    c.task_train.data.decoder_attention = "prefix"  # or "causal"; recorded in the module, checked at decoding
    # The prompt budget of `DecoderModel.pair_features`: training and decoding cut the article alike.
    c.decode.max_input_len = c.task_train.data.input_length - c.task_train.data.target_length
    return c
