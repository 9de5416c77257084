"""Checkpoint formats, each read into one `base.TensorSource`: named tensors, read lazily, with the
file each comes from (for errors) and its dtype checked before use.

`hf_safetensors` (model.safetensors, sharded or not), `torch_bin` (pytorch_model.bin, via torch),
`flax_msgpack` (transformers' Flax models), `t5x` (legacy msgpack + TensorStore, and Orbax), `hub`
(Hugging Face Hub ids); `save` writes the other way, a Hugging Face checkpoint.
"""
