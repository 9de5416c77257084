"""The errors PEFT modules raise, in one leaf module.

The family files raise all four (a config value, a target regex, a composition, an HF peft
mapping), and `peft.module`, `peft.core`, `peft.hf_peft` and `compose.checks` re-export them under
their historical homes, so this module imports nothing from peft_jax.
"""


class PeftConfigError(ValueError):
    """A PEFT configuration value is invalid."""


class TargetError(ValueError):
    """A target regex matches no parameter, or a module does not fit a base."""


class CompositionError(ValueError):
    """Modules that cannot be composed as asked; the message names module and parameter path."""


class HFPeftError(ValueError):
    """An adapter cannot be exported to, or imported from, the HF peft format."""
