"""PEFT modules on Flax models that do not use peft_jax: apply unmerged, merge, train, compose.

    import peft_jax.flax as pf
    from peft_jax import peft

    module = peft.init(variables["params"], peft.LoraConfig(targets=r".*(query|value)", rank=4), key)
    logits = pf.apply(model, variables, tokens, peft=module)            # linen, unmerged
    with pf.nnx_modules(nnx_model, module): logits = nnx_model(tokens)  # NNX, unmerged
    merged = peft.merge(variables["params"], module)                     # same logits, folded in
    step = pf.train_step(loss_fn, optimizer)                             # only the module trains

Targets are regexes over the '/'-joined paths of the parameter tree; N-D kernels (`DenseGeneral`,
`Einsum`) are read as matrices [inputs, outputs] (`peft.families.sites.Matrix`). Several modules apply
together in order, batched modules per example, and `peft_jax.compose` composes modules made here as it
does any other. LoRA made by qwix converts with `from_qwix` / `to_qwix` (`peft_jax.flax.qwix`).
"""

from peft_jax.flax.linen import apply, modules as linen_modules
from peft_jax.flax.nnx import modules as nnx_modules
from peft_jax.flax.qwix import from_qwix, to_qwix
from peft_jax.flax.site import Call
from peft_jax.flax.training import init_opt_state, train_step

__all__ = ["Call", "apply", "from_qwix", "init_opt_state", "linen_modules", "nnx_modules", "to_qwix", "train_step"]
