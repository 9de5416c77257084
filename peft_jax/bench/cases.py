"""The benchmark cases: what is measured, on which shapes, and how much work one repetition does.

A benchmark config names cases (`config.cases`); `jobs(config, workdir)` expands them into jobs, plain
JSON-able dicts that a worker process receives. A job runs on one or two sides:

  machine          f32 matmul GFLOP/s (jax.jit vs torch.mm: the machine's peak, for MFU) and copy
                   bandwidth GB/s (bytes read + written; jax.jit vs torch copy_: composition's floor)
  train_lora       PEFT training step, LoRA on q,k,v,o of mT5: peft_jax.train vs transformers + HF peft
  train_prompt     the same with prompt tuning; train_ia3: with (IA)^3
  train_decoder    LoRA on a PaLM-sized decoder-only model (Llama layout, multi-query) vs LlamaForCausalLM
  decode_greedy    greedy summaries of a batch of inputs: peft_jax.generate vs transformers generate
  decode_beam      beam search (XL-Sum settings) likewise
  compose          N LoRA modules of mT5-xxl shapes composed under each strategy vs the memory floor
  scaling_src_len  the LoRA training step at several source lengths, both sides
  scaling_batch    the LoRA training step at several batch sizes, both sides
  scaling_devices  our LoRA training step on 1 vs 8 forced CPU devices (one process each)

This module is plain Python and NumPy: both the JAX and the PyTorch workers import it (for the
synthetic batches, identical on both sides), and neither should carry the other's framework.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os

import numpy as np

CASES = ("machine", "train_lora", "train_prompt", "train_ia3", "train_decoder",
         "decode_greedy", "decode_beam", "compose", "scaling_src_len", "scaling_batch", "scaling_devices")
# Written last into a prepared checkpoint / PEFT-init directory: without it, the directory is a leftover.
DONE_MARKER = ".complete"


class CaseError(ValueError):
    """A benchmark config names an unknown case or holds values a case cannot run with."""


# ------------------------------------------------------------------------------------- batches
def seq2seq_batch(seed: int, batch: int, src_len: int, tgt_len: int, vocab: int) -> dict[str, np.ndarray]:
    """Random full-length source/target tokens (no padding) in t5x names; ids 0 (pad) and 1 (EOS) avoided."""
    rng = np.random.default_rng(seed)
    enc = rng.integers(2, vocab, (batch, src_len), dtype=np.int32)
    targets = rng.integers(2, vocab, (batch, tgt_len), dtype=np.int32)
    # Teacher forcing: the decoder reads the start id (0) then the targets shifted right by one.
    dec_in = np.concatenate([np.zeros((batch, 1), np.int32), targets[:, :-1]], axis=1)
    return {"encoder_input_tokens": enc, "decoder_input_tokens": dec_in, "decoder_target_tokens": targets,
            "decoder_loss_weights": np.ones((batch, tgt_len), np.float32)}


def lm_batch(seed: int, batch: int, length: int, vocab: int) -> dict[str, np.ndarray]:
    """Causal-LM batch over `length` random tokens: position t predicts token t+1 (the last one is unscored).

    This is exactly what `transformers` computes from `labels=input_ids`, so both sides average the
    loss over batch * (length - 1) tokens.
    """
    rng = np.random.default_rng(seed)
    tokens = rng.integers(2, vocab, (batch, length), dtype=np.int32)
    targets = np.concatenate([tokens[:, 1:], np.zeros((batch, 1), np.int32)], axis=1)
    weights = np.ones((batch, length), np.float32)
    weights[:, -1] = 0.0
    return {"decoder_input_tokens": tokens, "decoder_target_tokens": targets, "decoder_loss_weights": weights}


def train_batch(spec: dict) -> dict[str, np.ndarray]:
    """The training batch of a train job (seq2seq for mT5, causal LM over source+target for decoders)."""
    m = spec["model"]
    if m["family"] == "encoder_decoder":
        return seq2seq_batch(spec["seed"], spec["batch_size"], spec["src_len"], spec["tgt_len"], m["vocab_size"])
    return lm_batch(spec["seed"], spec["batch_size"], spec["src_len"] + spec["tgt_len"], m["vocab_size"])


def decode_inputs(spec: dict) -> np.ndarray:
    """The encoder inputs of a decode job: [batch, src_len] random tokens."""
    return seq2seq_batch(spec["seed"], spec["batch_size"], spec["src_len"], 1,
                         spec["model"]["vocab_size"])["encoder_input_tokens"]


def generated_lengths(tokens: np.ndarray, eos_id: int) -> np.ndarray:
    """Generated tokens per row up to and including the first EOS (the full width if none)."""
    tokens = np.asarray(tokens)
    is_eos = tokens == eos_id
    return np.where(is_eos.any(axis=1), is_eos.argmax(axis=1) + 1, tokens.shape[1])


# --------------------------------------------------------------------------------------- FLOPs
def _t5_forward(m: dict, b: int, s: int, t: int) -> tuple[float, float]:
    """(weight-matmul FLOPs, attention-matmul FLOPs) of one mT5 forward pass; s includes prompt positions."""
    hk, d, f = m["num_heads"] * m["d_kv"], m["d_model"], m["d_ff"]
    enc_w = m["num_layers"] * (4 * 2 * b * s * d * hk + 3 * 2 * b * s * d * f)
    enc_a = m["num_layers"] * 2 * (2 * b * s * s * hk)
    # Decoder: self q,k,v,o and cross q,o on t positions; cross k,v on the s encoder positions; MLP; logits.
    dec_w = m["num_decoder_layers"] * (6 * 2 * b * t * d * hk + 2 * 2 * b * s * d * hk + 3 * 2 * b * t * d * f)
    dec_a = m["num_decoder_layers"] * 2 * (2 * b * t * t * hk + 2 * b * t * s * hk)
    logits = 2 * b * t * d * m["vocab_size"]
    return float(enc_w + dec_w + logits), float(enc_a + dec_a)


def _decoder_forward(m: dict, b: int, n: int) -> tuple[float, float]:
    """(weight-matmul FLOPs, attention-matmul FLOPs) of one decoder-only forward pass over n positions."""
    hq, hkv, d, f = m["num_heads"] * m["head_dim"], m["num_kv_heads"] * m["head_dim"], m["d_model"], m["d_ff"]
    w = m["num_layers"] * (2 * b * n * d * (2 * hq + 2 * hkv) + 3 * 2 * b * n * d * f)
    a = m["num_layers"] * 2 * (2 * b * n * n * hq)
    return float(w + 2 * b * n * d * m["vocab_size"]), float(a)


def _lora_flops(spec: dict) -> float:
    """Forward FLOPs of the LoRA branches (x A then (x A) B) on every targeted projection."""
    m, p = spec["model"], spec["peft"]
    if p["family"] != "lora":
        return 0.0
    b, s, t, r = spec["batch_size"], spec["src_len"], spec["tgt_len"], p["rank"]
    if m["family"] == "decoder_only":
        hq, hkv, d = m["num_heads"] * m["head_dim"], m["num_kv_heads"] * m["head_dim"], m["d_model"]
        per_pos = 2 * r * ((d + hq) * 2 + (d + hkv) * 2)  # q, o: d<->hq; k, v: d->hkv
        return float(m["num_layers"] * b * (s + t) * per_pos)
    d, hk = m["d_model"], m["num_heads"] * m["d_kv"]
    per_pos = 2 * r * (d + hk)
    enc = m["num_layers"] * 4 * b * s * per_pos
    dec = m["num_decoder_layers"] * (6 * b * t + 2 * b * s) * per_pos
    return float(enc + dec)


def train_flops(spec: dict) -> float:
    """Model FLOPs of one PEFT training step (the numerator of model FLOP utilisation).

    Forward matmuls, plus what the backward pass of a frozen base needs: activation gradients through
    every weight matmul (1x its forward), both operands of every attention matmul (2x), and the PEFT
    branches' weight and input gradients (2x). The vocabulary projection is included; element-wise work
    (softmax, norms) and any rematerialisation are not, as in the PaLM MFU definition.
    """
    m, b, s, t = spec["model"], spec["batch_size"], spec["src_len"], spec["tgt_len"]
    if m["family"] == "encoder_decoder":
        prompt = spec["peft"].get("length", 0) if spec["peft"]["family"] == "prompt" else 0
        w, a = _t5_forward(m, b, s + prompt, t)
    else:
        w, a = _decoder_forward(m, b, s + t)
    lora = _lora_flops(spec)
    return 2 * w + 3 * a + 3 * lora


def train_tokens(spec: dict) -> int:
    """Tokens one training step processes (source + target of every example): the tokens/s numerator."""
    return int(spec["batch_size"] * (spec["src_len"] + spec["tgt_len"]))


# ------------------------------------------------------------------------------ composition shapes
def mt5_lora_paths(num_layers: int) -> list[str]:
    """Module paths of LoRA on q,k,v,o of every attention of an mT5 with `num_layers` + `num_layers` layers."""
    att = ("query", "key", "value", "out")
    enc = [f"encoder/layers_{i}/attention/{k}" for i in range(num_layers) for k in att]
    dec = [f"decoder/layers_{i}/{a}/{k}" for i in range(num_layers)
           for a in ("self_attention", "encoder_decoder_attention") for k in att]
    return enc + dec


def compose_paths(spec: dict) -> list[str]:
    """The LoRA targets of a compose job: all of mT5-xxl's, or the first `num_targets` for dense strategies."""
    paths = mt5_lora_paths(spec["num_layers"])
    return paths[: spec["num_targets"]] if spec.get("num_targets") else paths


# -------------------------------------------------------------------------------------- jobs
def is_prepared(job: dict) -> bool:
    """True when the job's checkpoint (and PEFT init, if it has one) are complete on disk."""
    dirs = [job[k] for k in ("checkpoint", "peft_init") if job.get(k)]
    return all(os.path.isfile(os.path.join(d, DONE_MARKER)) for d in dirs)


def _job_id(spec: dict) -> str:
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:10]


def _dims(section) -> dict:
    return {k: (v if not hasattr(v, "to_dict") else v.to_dict()) for k, v in dict(section).items()}


def _checkpoint_dir(workdir: str, model: dict, seed: int) -> str:
    """One random base checkpoint per model shape and seed, shared by every job that uses it."""
    key = hashlib.sha256(json.dumps([model, seed], sort_keys=True).encode()).hexdigest()[:10]
    return os.path.join(workdir, "checkpoints", f"{model['family']}-{key}")


def _common(config, workdir: str, reps: int | None = None, warmup: int | None = None) -> dict:
    return {"threads": int(config.threads) or len(os.sched_getaffinity(0)), "seed": int(config.seed),
            "warmup": int(config.warmup if warmup is None else warmup),
            "reps": int(config.reps if reps is None else reps), "dtype": config.dtype, "env": {},
            "workdir": os.path.abspath(workdir)}


def _peft_section(config, family: str, model_family: str) -> dict:
    p = dict(_dims(config.peft[family]))
    p["family"] = family
    if family == "lora":
        p["hf_targets"] = list(p["hf_targets"][model_family])
    return p


def _train_job(config, workdir, name, peft_family, model_key="t5", **overrides) -> dict:
    model = _dims(config[model_key])
    t = config.train
    spec = {**_common(config, workdir), "name": name, "kind": "train", "sides": ["ours", "reference"],
            "model": model, "peft": _peft_section(config, peft_family, model["family"]),
            "batch_size": int(t.batch_size), "src_len": int(t.src_len), "tgt_len": int(t.tgt_len),
            "optimizer": _dims(config.optimizer), "mesh": {"data": 1, "fsdp": 1, "model": 1}}
    if model["family"] == "decoder_only":
        spec.update(src_len=int(t.decoder_len) - int(t.tgt_len))
    spec.update(overrides)
    spec["checkpoint"] = _checkpoint_dir(workdir, model, spec["seed"])
    spec["peft_init"] = os.path.join(workdir, "peft_init", f"{name.replace('/', '_')}-{_job_id(spec)}")
    return spec


def _decode_job(config, workdir, name, method: str) -> dict:
    d, model = config.decode, _dims(config.t5)
    spec = {**_common(config, workdir, reps=d.reps, warmup=d.warmup), "name": name, "kind": "decode",
            "sides": ["ours", "reference"], "model": model, "method": method, "batch_size": int(d.batch_size),
            "src_len": int(d.src_len), "max_decode_len": int(d.max_decode_len),
            "num_beams": int(d.num_beams) if method == "beam" else 1, "length_penalty": float(d.length_penalty)}
    spec["checkpoint"] = _checkpoint_dir(workdir, model, spec["seed"])
    return spec


def _compose_jobs(config, workdir) -> list[dict]:
    c = config.compose
    out = []
    for strategy in c.strategies:
        dense = strategy in c.dense_strategies
        limit = dict(_dims(c.max_modules)).get(strategy)
        for n in [n for n in c.num_modules if limit is None or n <= limit]:
            spec = {**_common(config, workdir, reps=c.reps, warmup=c.warmup), "kind": "compose", "sides": ["ours"],
                    "name": f"compose/{strategy}/N={n}", "strategy": strategy,
                    "options": dict(_dims(c.options).get(strategy, {})), "n": int(n), "rank": int(c.rank),
                    "d_in": int(c.d_model), "d_out": int(c.d_model), "num_layers": int(c.num_layers),
                    "num_targets": int(c.dense_num_targets) if dense else 0}
            out.append(spec)
    return out


def _machine_job(config, workdir) -> dict:
    m = config.machine
    return {**_common(config, workdir, reps=m.reps, warmup=1), "sides": ["ours", "reference"], "name": "machine",
            "kind": "machine", "n": int(m.matmul_size), "mbytes": int(m.copy_mbytes)}


def _scaling_jobs(config, workdir, case: str) -> list[dict]:
    s = config.scaling
    kw = dict(reps=int(s.reps), warmup=int(s.warmup))
    if case == "scaling_src_len":
        return [_train_job(config, workdir, f"scaling/src_len={n}", "lora", src_len=int(n), **kw)
                for n in s.src_lens]
    if case == "scaling_batch":
        return [_train_job(config, workdir, f"scaling/batch={b}", "lora", batch_size=int(b), **kw)
                for b in s.batch_sizes]
    jobs = []
    for n in s.devices:
        # A fresh process per device count: XLA reads the forced host device count once, at start-up.
        mesh = {"data": 1, "fsdp": 1, "model": 1, s.devices_axis: int(n)}
        job = _train_job(config, workdir, f"scaling/devices={n}", "lora", batch_size=int(s.devices_batch_size),
                         mesh=mesh, **kw)
        job.update(sides=["ours"], env={"XLA_FLAGS": f"--xla_force_host_platform_device_count={int(n)}"})
        jobs.append(job)
    return jobs


def jobs(config, workdir: str) -> list[dict]:
    """The jobs of `config.cases`, the machine's first (MFU and the composition floor need it)."""
    unknown = [c for c in config.cases if c not in CASES]
    if unknown:
        raise CaseError(f"unknown benchmark case(s) {unknown}; known: {', '.join(CASES)}")
    wanted = list(config.cases)
    # Model FLOP utilisation needs the matmul peak; the composition floor needs the copy bandwidth.
    needs_machine = any(c.startswith(("train_", "scaling_")) or c == "compose" for c in wanted)
    out = [_machine_job(config, workdir)] if needs_machine or "machine" in wanted else []
    builders = {
        "train_lora": lambda: [_train_job(config, workdir, "train/lora", "lora")],
        "train_prompt": lambda: [_train_job(config, workdir, "train/prompt", "prompt")],
        "train_ia3": lambda: [_train_job(config, workdir, "train/ia3", "ia3")],
        "train_decoder": lambda: [_train_job(config, workdir, "train/decoder_lora", "lora", model_key="decoder")],
        "decode_greedy": lambda: [_decode_job(config, workdir, "decode/greedy", "greedy")],
        "decode_beam": lambda: [_decode_job(config, workdir, f"decode/beam{int(config.decode.num_beams)}", "beam")],
        "compose": lambda: _compose_jobs(config, workdir),
    }
    for case in wanted:
        if case in builders:
            out += builders[case]()
        elif case.startswith("scaling_"):
            out += _scaling_jobs(config, workdir, case)
    return [copy.deepcopy(j) for j in out]


# ------------------------------------------------------------------------------------- config
def _t5_dims(tiny: bool) -> dict:
    if tiny:
        return dict(family="encoder_decoder", vocab_size=256, d_model=64, d_kv=16, d_ff=128, num_heads=4,
                    num_layers=2, num_decoder_layers=2, relative_attention_num_buckets=16,
                    relative_attention_max_distance=64)
    # mT5-small (Xue et al. 2021): vocabulary 250,112, d_model 512, d_ff 1024, 8+8 layers, 6 heads of 64.
    return dict(family="encoder_decoder", vocab_size=250_112, d_model=512, d_kv=64, d_ff=1024, num_heads=6,
                num_layers=8, num_decoder_layers=8, relative_attention_num_buckets=32,
                relative_attention_max_distance=128)


def _decoder_dims(tiny: bool) -> dict:
    if tiny:
        return dict(family="decoder_only", vocab_size=256, d_model=64, num_heads=4, head_dim=16, d_ff=128,
                    num_layers=2, num_kv_heads=1)
    # peft_jax's palm_small (multi-query, SwiGLU, tied embeddings): 187M parameters next to mT5-small's 300M.
    return dict(family="decoder_only", vocab_size=250_112, d_model=512, num_heads=8, head_dim=64, d_ff=2048,
                num_layers=16, num_kv_heads=1)


def base_config(tiny: bool = False):
    """Every benchmark setting with its default; configs/bench/*.py pick `cases` and override the rest.

    tiny: the `runlocal` shapes (seconds on a laptop, used by the tests).
    """
    import ml_collections  # only the launcher needs configs; the workers get plain dicts

    c = ml_collections.ConfigDict()
    c.cases = ()  # names from CASES
    c.warmup = 1 if tiny else 3  # untimed repetitions after the check (compilation, caches)
    c.reps = 2 if tiny else 5  # timed repetitions per side, alternating ours / reference
    c.threads = 0  # cores (and PyTorch threads) per side; 0 = every core this process may use
    c.seed = 0
    c.dtype = "float32"  # compute dtype of both sides
    c.t5 = _t5_dims(tiny)
    c.decoder = _decoder_dims(tiny)
    # Training: batch, lengths (decoder-only models see src_len + tgt_len = decoder_len tokens).
    c.train = dict(batch_size=2 if tiny else 4, src_len=32 if tiny else 512, tgt_len=8 if tiny else 84,
                   decoder_len=40 if tiny else 596)
    # AdamW with a constant learning rate, no clipping: torch.optim.AdamW computes exactly this.
    c.optimizer = dict(name="adamw", learning_rate=1e-3, warmup_steps=0, schedule="constant", end_lr_ratio=0.0,
                       b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.01, clip_norm=0.0)
    c.peft = dict(
        lora=dict(targets=r".*attention/(query|key|value|out)$", rank=8, alpha=16.0,
                  hf_targets=dict(encoder_decoder=["q", "k", "v", "o"],
                                  decoder_only=["q_proj", "k_proj", "v_proj", "o_proj"])),
        prompt=dict(length=20, init_scale=0.5),
        ia3=dict(targets=r".*attention/(key|value)$|.*mlp/wo$", feedforward=r".*mlp/wo$",
                 hf_targets=["k", "v", "wo"], hf_feedforward=["wo"]))
    # Decoding: XL-Sum's settings (512 source tokens, 84 target tokens, beam 4, length penalty 0.6).
    c.decode = dict(batch_size=2 if tiny else 4, src_len=32 if tiny else 512, max_decode_len=8 if tiny else 84,
                    num_beams=4, length_penalty=0.6, warmup=1, reps=2 if tiny else 3)
    c.compose = dict(
        num_modules=(2, 4) if tiny else (2, 4, 8, 16, 32, 64),
        strategies=("param", "negate_b", "concat", "svd", "ties", "dare", "delta"),
        # Strategies whose result is a dense delta per target: only `dense_num_targets` targets (all 288
        # of mT5-xxl would be 19 GB of output).
        dense_strategies=("delta",),
        options=dict(ties=dict(space="param"), dare=dict(space="param")),
        # Largest N per strategy on a 2-core, 23 GB machine: svd and ties are compute-bound (up to a
        # minute per call at N = 8); dare's dropout masks and delta's per-module dense updates take
        # memory proportional to N (7 GB and 17 GB of temporaries at N = 32).
        max_modules=dict(svd=8, ties=8, dare=32, delta=32),
        rank=8, d_model=64 if tiny else 4096, num_layers=2 if tiny else 24, dense_num_targets=4 if tiny else 8,
        warmup=1, reps=2 if tiny else 3)
    c.machine = dict(matmul_size=256 if tiny else 4096, copy_mbytes=16 if tiny else 1024, reps=3 if tiny else 5)
    c.scaling = dict(src_lens=(16, 32) if tiny else (128, 256, 512, 1024),
                     batch_sizes=(1, 2) if tiny else (1, 2, 4, 8), devices=(1, 8), devices_batch_size=8,
                     # The mesh axis the forced devices form. 'model' (tensor parallel: vocabulary and MLP
                     # split) needs 4 GB for 8 devices of mT5-small; 'fsdp' all-gathers the base on every
                     # device (18 GB), 'data' replicates it (11 GB).
                     devices_axis="model", warmup=1, reps=2 if tiny else 3)
    # Both sides must agree before anything is timed: first two training losses within
    # |ours - reference| <= loss_atol + loss_rtol * |reference|; greedy and beam tokens equal.
    c.check = dict(loss_atol=1e-3, loss_rtol=1e-4)
    return c


def parse_arg(arg: str | None, config_name: str) -> bool:
    """True for the `runlocal` (tiny) switch of a bench config; anything else is an error."""
    arg = (arg or "").strip()
    if arg in ("", "full"):
        return False
    if arg in ("runlocal", "tiny"):
        return True
    raise CaseError(f"{config_name}: unknown argument {arg!r}; use ':runlocal' (tiny shapes) or nothing")
