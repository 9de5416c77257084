"""Hugging Face tensor names of our parameters: one table per architecture.

The same tables load base checkpoints (`models.hf`) and name PEFT modules for
Hugging Face `peft` (`Model.hf_module_names`), so loading and adapter
interchange cannot drift apart. Functions of configs only: no model imports.
"""

from __future__ import annotations

from typing import Callable, Iterator

import numpy as np

Transform = Callable[[np.ndarray], np.ndarray]
TRANSPOSE: Transform = lambda w: w.T  # torch Linear [out, in] -> our kernel [in, out]
IDENTITY: Transform = lambda w: w
Names = Iterator[tuple[str, tuple[str, ...], Transform]]


def t5_names(c) -> Names:
    """(our path, HF names to try in order, transform) for every parameter of a T5 model (`T5Config`)."""
    own = {"encoder": getattr(c, "encoder_embedding", False), "decoder": getattr(c, "decoder_embedding", False)}
    if not (own["encoder"] and own["decoder"] and not c.tie_word_embeddings):
        yield "token_embedder/embedding", ("shared.weight", "encoder.embed_tokens.weight"), IDENTITY
    for stack in ("encoder", "decoder"):
        if own[stack]:
            yield f"{stack}/token_embedder/embedding", (f"{stack}.embed_tokens.weight",), IDENTITY
    att = {"query": "q", "key": "k", "value": "v", "out": "o"}
    mlp = {"wi_0": "wi_0", "wi_1": "wi_1", "wo": "wo"}
    for stack, n_layers in (("encoder", c.num_layers), ("decoder", c.num_decoder_layers)):
        yield (f"{stack}/relpos_bias/rel_embedding",
               (f"{stack}.block.0.layer.0.SelfAttention.relative_attention_bias.weight",), IDENTITY)
        for i in range(n_layers):
            hf, ours = f"{stack}.block.{i}.layer", f"{stack}/layers_{i}"
            subs = ([("pre_attention_layer_norm", "attention", 0, "SelfAttention")] if stack == "encoder" else
                    [("pre_self_attention_layer_norm", "self_attention", 0, "SelfAttention"),
                     ("pre_cross_attention_layer_norm", "encoder_decoder_attention", 1, "EncDecAttention")])
            for norm, name, j, hf_name in subs:
                yield f"{ours}/{norm}/scale", (f"{hf}.{j}.layer_norm.weight",), IDENTITY
                for k, v in att.items():
                    yield f"{ours}/{name}/{k}/kernel", (f"{hf}.{j}.{hf_name}.{v}.weight",), TRANSPOSE
            j = len(subs)
            yield f"{ours}/pre_mlp_layer_norm/scale", (f"{hf}.{j}.layer_norm.weight",), IDENTITY
            for k, v in mlp.items():
                yield f"{ours}/mlp/{k}/kernel", (f"{hf}.{j}.DenseReluDense.{v}.weight",), TRANSPOSE
        norm = "encoder_norm" if stack == "encoder" else "decoder_norm"
        yield f"{stack}/{norm}/scale", (f"{stack}.final_layer_norm.weight",), IDENTITY
    if not c.tie_word_embeddings:
        yield "decoder/logits_dense/kernel", ("lm_head.weight",), TRANSPOSE


def decoder_names(c) -> Names:
    """(our path, HF names, transform) for Llama/Gemma-layout checkpoints (`DecoderConfig`, sequential block)."""
    yield "token_embedder/embedding", ("model.embed_tokens.weight",), IDENTITY
    att = {"query": "q_proj", "key": "k_proj", "value": "v_proj", "out": "o_proj"}
    mlp = {"wi_0": "gate_proj", "wi_1": "up_proj", "wo": "down_proj"}
    # Gemma 2 norms both sides of each sub-layer; Llama's "post_attention_layernorm" is the pre-MLP norm.
    norms = ({"pre_attention_norm": "input_layernorm", "post_attention_norm": "post_attention_layernorm",
              "pre_mlp_norm": "pre_feedforward_layernorm", "post_mlp_norm": "post_feedforward_layernorm"}
             if getattr(c, "post_norms", False) else
             {"pre_attention_norm": "input_layernorm", "pre_mlp_norm": "post_attention_layernorm"})
    for i in range(c.num_layers):
        hf, ours = f"model.layers.{i}", f"layers_{i}"
        for k, v in norms.items():
            yield f"{ours}/{k}/scale", (f"{hf}.{v}.weight",), IDENTITY
        for k, v in att.items():
            yield f"{ours}/attention/{k}/kernel", (f"{hf}.self_attn.{v}.weight",), TRANSPOSE
        for k, v in mlp.items():
            yield f"{ours}/mlp/{k}/kernel", (f"{hf}.mlp.{v}.weight",), TRANSPOSE
    yield "final_norm/scale", ("model.norm.weight",), IDENTITY
    if not c.tie_word_embeddings:
        yield "logits_dense/kernel", ("lm_head.weight",), TRANSPOSE


def module_names(names: Names) -> dict[str, str]:
    """{our kernel's module path: HF module name} from a table: 'a/query/kernel' -> 'x.q.weight' gives
    'a/query' -> 'x.q'."""
    return {ours[: -len("/kernel")]: hf[0][: -len(".weight")] for ours, hf, _ in names if ours.endswith("/kernel")}
