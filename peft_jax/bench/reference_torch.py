"""The PyTorch side of the benchmark: `transformers` + HF `peft` doing what peft_jax does, on the same data.

Same base weights (one random Hugging Face checkpoint, written here and read by both sides), same
PEFT initialisation (written by our side in HF peft's names), same batches (`cases`), float32, AdamW
with the same hyper-parameters, and `torch.set_num_threads` equal to the cores our side may use.
Models are used the way a `transformers` user would: `from_pretrained`, the default attention
implementation, `model(**batch).loss`, `generate`.

PyTorch and HF `peft` are test extras; `reference` imports this module only when the reference side
runs. This module must not import JAX: the worker that runs it measures PyTorch's memory alone.
"""

from __future__ import annotations

import json
import os
import shutil
import time

import numpy as np
import peft as hf_peft
import safetensors.torch
import torch
import transformers

from peft_jax.bench import cases
from peft_jax.bench.worker import Runner


# ---------------------------------------------------------------------------------- checkpoints
def hf_config(model: dict) -> transformers.PretrainedConfig:
    """The `transformers` config of a benchmark model (dims as in configs/bench), dropout off."""
    if model["family"] == "encoder_decoder":
        return transformers.MT5Config(
            vocab_size=model["vocab_size"], d_model=model["d_model"], d_kv=model["d_kv"], d_ff=model["d_ff"],
            num_layers=model["num_layers"], num_decoder_layers=model["num_decoder_layers"],
            num_heads=model["num_heads"], relative_attention_num_buckets=model["relative_attention_num_buckets"],
            relative_attention_max_distance=model["relative_attention_max_distance"], dropout_rate=0.0,
            feed_forward_proj="gated-gelu", decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)
    return transformers.LlamaConfig(
        vocab_size=model["vocab_size"], hidden_size=model["d_model"], intermediate_size=model["d_ff"],
        num_hidden_layers=model["num_layers"], num_attention_heads=model["num_heads"],
        num_key_value_heads=model["num_kv_heads"], head_dim=model["head_dim"], hidden_act="silu",
        rms_norm_eps=1e-6, tie_word_embeddings=True, max_position_embeddings=8192, pad_token_id=0,
        bos_token_id=None, eos_token_id=1, attention_dropout=0.0)


def _model_class(model: dict):
    if model["family"] == "encoder_decoder":
        return transformers.MT5ForConditionalGeneration
    return transformers.LlamaForCausalLM


def _random_model(model: dict, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    m = _model_class(model)(hf_config(model))
    if model["family"] == "encoder_decoder":
        # mT5 has an untied LM head; transformers 5 ties it at construction, so give it its own weights
        # (scaled like t5x's, so the first loss is near log(vocab)) and record the untying in the config.
        m.config.tie_word_embeddings = False
        m.lm_head.weight = torch.nn.Parameter(torch.randn_like(m.lm_head.weight) * model["d_model"] ** -0.5)
    return m.eval()


def save_checkpoint(spec: dict) -> None:
    """Writes the job's random base checkpoint (safetensors + config.json) unless it is already complete."""
    path = spec["checkpoint"]
    if os.path.isfile(os.path.join(path, cases.DONE_MARKER)):
        return
    shutil.rmtree(path, ignore_errors=True)
    m = _random_model(spec["model"], spec["seed"])
    m.save_pretrained(path)
    del m
    with open(os.path.join(path, cases.DONE_MARKER), "w") as f:
        json.dump(spec["model"], f)


def load_model(spec: dict) -> torch.nn.Module:
    """The job's base model from its checkpoint, float32 (as a user would load it)."""
    return _model_class(spec["model"]).from_pretrained(spec["checkpoint"], dtype=torch.float32)


# ----------------------------------------------------------------------------------------- PEFT
def _hf_peft_config(p: dict, model: dict):
    task = "SEQ_2_SEQ_LM" if model["family"] == "encoder_decoder" else "CAUSAL_LM"
    if p["family"] == "ia3":
        return hf_peft.IA3Config(task_type=task, target_modules=list(p["hf_targets"]),
                                 feedforward_modules=list(p["hf_feedforward"]))
    if p["family"] == "prompt":
        # One prompt, on the encoder input only, as our prompt tuning does.
        return hf_peft.PromptTuningConfig(task_type=task, num_virtual_tokens=p["length"],
                                          num_transformer_submodules=1, token_dim=model["d_model"])
    raise ValueError(f"no HF peft config for family {p['family']!r} (LoRA is loaded from its adapter directory)")


def with_peft(model: torch.nn.Module, spec: dict) -> torch.nn.Module:
    """`model` wrapped by HF peft with our side's initial PEFT values loaded (see `ours.save_peft_init`)."""
    p, init = spec["peft"], os.path.join(spec["peft_init"], "hf")
    if p["family"] == "lora":
        return hf_peft.PeftModel.from_pretrained(model, init, is_trainable=True)
    wrapped = hf_peft.get_peft_model(model, _hf_peft_config(p, spec["model"]))
    tensors = safetensors.torch.load_file(os.path.join(init, "peft_init.safetensors"))
    if p["family"] == "prompt":
        table = wrapped.prompt_encoder["default"].embedding.weight
        if tuple(table.shape) != tuple(tensors["prompt_embeddings"].shape):
            raise ValueError(f"{init}: prompt of shape {tuple(tensors['prompt_embeddings'].shape)}, "
                             f"expected {tuple(table.shape)}")
        with torch.no_grad():
            table.copy_(tensors["prompt_embeddings"])
        return wrapped
    result = hf_peft.set_peft_model_state_dict(wrapped, tensors)
    if result.unexpected_keys:
        raise ValueError(f"{init}: tensors {result.unexpected_keys[:3]} match no {p['family']} parameter")
    return wrapped


def _train_inputs(spec: dict) -> dict[str, torch.Tensor]:
    """The shared batch in `transformers` argument names (labels -> mean token cross-entropy)."""
    b = {k: torch.from_numpy(v).long() for k, v in cases.train_batch(spec).items() if v.dtype != np.float32}
    if spec["model"]["family"] == "encoder_decoder":
        enc = b["encoder_input_tokens"]
        return {"input_ids": enc, "attention_mask": (enc != 0).long(),
                "decoder_input_ids": b["decoder_input_tokens"], "labels": b["decoder_target_tokens"]}
    tokens = b["decoder_input_tokens"]
    return {"input_ids": tokens, "labels": tokens}  # shifted inside the model: the same tokens as ours


# ---------------------------------------------------------------------------------------- runners
def _train_runner(spec: dict) -> Runner:
    model = with_peft(load_model(spec), spec)
    model.train()  # dropout is 0 in the checkpoint's config, so training mode is deterministic
    o = spec["optimizer"]
    trainable = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(trainable, lr=o["learning_rate"], betas=(o["b1"], o["b2"]), eps=o["eps"],
                            weight_decay=o["weight_decay"])
    inputs = _train_inputs(spec)

    def step() -> float:
        loss = model(**inputs).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return float(loss.detach())

    return Runner(check=lambda: {"losses": [step(), step()]}, run=lambda: {"loss": step()})


def _decode_runner(spec: dict) -> Runner:
    model = load_model(spec).eval()
    enc = torch.from_numpy(cases.decode_inputs(spec)).long()
    settings = dict(max_new_tokens=spec["max_decode_len"], min_new_tokens=0, do_sample=False,
                    num_beams=spec["num_beams"], length_penalty=spec["length_penalty"], early_stopping=False,
                    no_repeat_ngram_size=0, use_cache=True)

    def generate() -> np.ndarray:
        with torch.inference_mode():
            out = model.generate(input_ids=enc, attention_mask=(enc != 0).long(), **settings)
        tokens = out[:, 1:].numpy()  # drop the decoder start token
        width = spec["max_decode_len"]
        return np.pad(tokens, ((0, 0), (0, width - tokens.shape[1])))  # finished early: pad like ours

    def run() -> dict:
        return {"tokens": int(cases.generated_lengths(generate(), 1).sum())}

    return Runner(check=lambda: {"tokens": generate().tolist()}, run=run)


def _machine_runner(spec: dict) -> Runner:
    """An n x n float32 matmul (FLOP/s) and a copy of `mbytes` (bandwidth), timed apart."""
    n, size = spec["n"], spec["mbytes"] * 2**20 // 4
    g = torch.Generator().manual_seed(spec["seed"])
    a, b, c = torch.randn(n, n, generator=g), torch.randn(n, n, generator=g), torch.empty(n, n)
    src, dst = torch.ones(size), torch.empty(size)
    dst.copy_(src)  # touch the pages once, so the timed copies do not pay for first-touch faults

    def run() -> dict:
        t0 = time.perf_counter()
        torch.mm(a, b, out=c)
        t1 = time.perf_counter()
        dst.copy_(src)
        return {"matmul_s": t1 - t0, "copy_s": time.perf_counter() - t1}

    return Runner(check=lambda: {"flops": 2.0 * n**3, "bytes": 2.0 * size * 4}, run=run)


_RUNNERS = {"train": _train_runner, "decode": _decode_runner, "machine": _machine_runner}


def make_runner(spec: dict) -> Runner:
    """The reference runner of a job, with PyTorch limited to the job's thread count."""
    torch.set_num_threads(spec["threads"])
    if spec["kind"] not in _RUNNERS:
        raise ValueError(f"job {spec['name']}: no reference implementation of kind {spec['kind']!r}")
    return _RUNNERS[spec["kind"]](spec)
