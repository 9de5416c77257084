"""The model architectures this package knows, looked up by family name or config type.

Adding an architecture: a module implementing `base.Model`, its `hf_names` table
if it loads Hugging Face checkpoints, and one entry in `MODEL_CLASSES`.
"""

from __future__ import annotations

from peft_jax.models.base import Model
from peft_jax.models.decoder import DecoderModel
from peft_jax.models.t5 import T5Model

MODEL_CLASSES: tuple[type[Model], ...] = (T5Model, DecoderModel)


def model_class(model_or_family: Model | type[Model] | str) -> type[Model]:
    """The class of a model, or the class registered under a family name ('encoder_decoder', ...)."""
    if isinstance(model_or_family, Model):
        return type(model_or_family)
    if isinstance(model_or_family, type) and issubclass(model_or_family, Model):
        return model_or_family
    by_family = {cls.family: cls for cls in MODEL_CLASSES}
    if model_or_family not in by_family:
        raise ValueError(f"unknown model family {model_or_family!r}; expected one of {sorted(by_family)}")
    return by_family[model_or_family]


def model_for_config(config) -> Model:
    """The model built from a config dataclass of one of the registered architectures."""
    for cls in MODEL_CLASSES:
        if isinstance(config, cls.CONFIG_CLASS):
            return cls(config)
    raise ValueError(f"no model takes a {type(config).__name__}")


def class_for_config_name(name: str) -> type[Model] | None:
    """The model class whose config dataclass is called `name`, or None."""
    return next((cls for cls in MODEL_CLASSES if cls.CONFIG_CLASS.__name__ == name), None)
