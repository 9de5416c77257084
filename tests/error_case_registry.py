"""The registry of bad-input cases: `case` registers one, `expect` runs it, `tiny` builds a base to break.

`error_cases.py` holds the catalogue's first cases and imports the per-area files
(`error_cases_<area>.py`), which register theirs here too; keeping the registry in its own module means
the catalogue is the same list whether `error_cases.py` is imported or run as a script.
"""

from __future__ import annotations

import jax

CASES = []


def case(area: str, what: str):
    def register(fn):
        CASES.append((area, what, fn))
        return fn
    return register


def expect(error_type, fn, *args, **kwargs) -> str:
    try:
        fn(*args, **kwargs)
    except error_type as e:
        return f"{type(e).__name__}: {e}"
    raise AssertionError(f"{fn} did not raise {error_type.__name__}")


def tiny(name="mt5_tiny", seed=0):
    from peft_jax.models import get_model

    model = get_model(name, d_model=16, d_kv=4, d_ff=16, num_heads=4, num_layers=1, num_decoder_layers=1,
                      vocab_size=32) if name == "mt5_tiny" else get_model(name)
    return model, model.init(jax.random.PRNGKey(seed))
