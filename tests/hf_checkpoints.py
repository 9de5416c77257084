"""Tiny random Hugging Face checkpoints in the real on-disk format, for parity tests."""

import torch
import transformers


def save_mt5(path, seed=0, untied=True, dtype=None, max_shard_size=None, untied_inputs=False, **overrides):
    """A tiny random MT5ForConditionalGeneration saved with save_pretrained; returns the torch model.
    `untied_inputs`: the encoder and decoder get input embeddings of their own, distinct from `shared`."""
    kw = dict(vocab_size=96, d_model=32, d_kv=8, d_ff=48, num_layers=2, num_decoder_layers=3, num_heads=4,
              relative_attention_num_buckets=8, relative_attention_max_distance=20, dropout_rate=0.0,
              feed_forward_proj="gated-gelu", tie_word_embeddings=not untied, decoder_start_token_id=0,
              pad_token_id=0, eos_token_id=1)
    kw.update(overrides)
    torch.manual_seed(seed)
    config = transformers.MT5Config(**kw)
    model = transformers.MT5ForConditionalGeneration(config)
    if untied:
        # transformers 5 ties lm_head unless told otherwise after construction; make it distinct.
        model.config.tie_word_embeddings = False
        model.lm_head.weight = torch.nn.Parameter(torch.randn_like(model.lm_head.weight) * 0.2)
    if untied_inputs:
        model.encoder.embed_tokens.weight = torch.nn.Parameter(torch.randn_like(model.shared.weight))
        model.decoder.embed_tokens.weight = torch.nn.Parameter(torch.randn_like(model.shared.weight))
    with torch.no_grad():  # random norms and position biases, so a wrong mapping cannot hide
        for name, p in model.named_parameters():
            if "layer_norm" in name:
                p.copy_(1.0 + 0.3 * torch.randn_like(p))
            if "relative_attention_bias" in name:
                p.copy_(torch.randn_like(p))
    model.eval()
    if dtype is not None:
        model = model.to(dtype)
    kwargs = {} if max_shard_size is None else {"max_shard_size": max_shard_size}
    model.save_pretrained(path, **kwargs)
    return model


def save_llama(path, seed=0, family="llama", **overrides):
    """A tiny random LlamaForCausalLM or GemmaForCausalLM saved with save_pretrained."""
    kw = dict(vocab_size=80, hidden_size=32, intermediate_size=56, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, head_dim=8, max_position_embeddings=64, rms_norm_eps=1e-6,
              pad_token_id=0, bos_token_id=2, eos_token_id=1)
    kw.update(overrides)
    torch.manual_seed(seed)
    if family == "gemma":
        kw.setdefault("hidden_activation", "gelu_pytorch_tanh")
        model = transformers.GemmaForCausalLM(transformers.GemmaConfig(**kw))
    else:
        kw.setdefault("tie_word_embeddings", False)
        model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**kw))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(0.3 * torch.randn_like(p) + (0.0 if family == "gemma" else 1.0))
    model.eval()
    model.save_pretrained(path)
    return model
