"""The bad-input catalogue: each case makes one malformed input and returns the error a user sees.

`python tests/error_cases.py > docs/errors.md` regenerates the table; `test_error_catalogue.py`
runs every case and checks that docs/errors.md shows exactly the message it produces.
"""

from __future__ import annotations

import json
import math
import pathlib
import sys
import tempfile

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
ROOT = pathlib.Path(__file__).resolve().parents[1]
from error_case_registry import CASES, case, expect, tiny as _tiny  # noqa: E402


def _lora(model, rank=2, **kw):
    from peft_jax import peft

    return peft.init(model, peft.LoraConfig(rank=rank, **kw), jax.random.PRNGKey(1))


# ---------------------------------------------------------------------------------- configs
@case("config", "train config: a field that does not exist (`--config.optimizer.learnin_rate=0.1`)")
def _unknown_field(tmp):
    from peft_jax.train import config_lib

    return expect(config_lib.ConfigError, config_lib.check_overrides,
                  [f"--config={ROOT / 'configs' / 'train.py'}", "--config.optimizer.learnin_rate=0.1"])


@case("config", "mesh that does not divide the device count (`data=3` on 8 devices)")
def _mesh(tmp):
    from peft_jax.train import partitioning

    return expect(partitioning.MeshError, partitioning.mesh_shape, {"data": 3, "fsdp": 1, "model": 1}, 8)


@case("config", "LoRA rank 0")
def _rank0(tmp):
    from peft_jax import peft

    return expect(peft.PeftConfigError, peft.LoraConfig, rank=0)


@case("config", "prompt length 0")
def _prompt0(tmp):
    from peft_jax import peft

    return expect(peft.PeftConfigError, peft.PromptConfig, length=0)


@case("config", "adapter placement that does not exist")
def _placement(tmp):
    from peft_jax import peft

    return expect(peft.PeftConfigError, peft.AdapterConfig, placement="middle")


@case("config", "unknown model preset")
def _preset(tmp):
    from peft_jax.models import get_model

    return expect(ValueError, get_model, "mt5_huge")


@case("config", "resuming a pipeline workdir with another config")
def _mismatch(tmp):
    import ml_collections
    from peft_jax.pipeline import experiment

    experiment.check_config(ml_collections.ConfigDict({"lambdas": [0.5]}), str(tmp))
    return expect(experiment.ConfigMismatchError, experiment.check_config,
                  ml_collections.ConfigDict({"lambdas": [0.25]}), str(tmp))


@case("config", "a second pipeline run on a workdir in use")
def _locked(tmp):
    from peft_jax.pipeline.runner import WorkdirLockedError, workdir_lock

    with workdir_lock(str(tmp)):
        def again():
            with workdir_lock(str(tmp)):
                pass
        return expect(WorkdirLockedError, again)


# ------------------------------------------------------------------------------ checkpoints
def _hf(tmp) -> pathlib.Path:
    import hf_checkpoints

    path = tmp / "ckpt"
    hf_checkpoints.save_mt5(path)
    return path


@case("checkpoint", "checkpoint directory that does not exist")
def _nodir(tmp):
    import peft_jax

    return expect(ValueError, peft_jax.load_pretrained, tmp / "missing")


@case("checkpoint", "config.json that is not JSON")
def _badjson(tmp):
    import peft_jax

    (tmp / "config.json").write_text("{oops")
    return expect(ValueError, peft_jax.load_pretrained, tmp)


@case("checkpoint", "unsupported architecture")
def _arch(tmp):
    import peft_jax

    (tmp / "config.json").write_text(json.dumps({"architectures": ["BertModel"]}))
    return expect(ValueError, peft_jax.load_pretrained, tmp)


@case("checkpoint", "a tensor missing from model.safetensors")
def _missing_tensor(tmp):
    import peft_jax
    from peft_jax.models import safetensors_io as st

    path = _hf(tmp)
    f = st.SafetensorsFile(str(path / "model.safetensors"))
    tensors = {n: np.array(f.get(n)) for n in f.names if n != "lm_head.weight"}
    st.write(str(path / "model.safetensors"), tensors)
    return expect(ValueError, peft_jax.load_pretrained, path)


@case("checkpoint", "a tensor of the wrong shape")
def _shape(tmp):
    import peft_jax
    from peft_jax.models import safetensors_io as st

    path = _hf(tmp)
    f = st.SafetensorsFile(str(path / "model.safetensors"))
    tensors = {n: np.array(f.get(n)) for n in f.names}
    tensors["shared.weight"] = tensors["shared.weight"][:-1]
    st.write(str(path / "model.safetensors"), tensors)
    return expect(ValueError, peft_jax.load_pretrained, path)


@case("checkpoint", "truncated model.safetensors")
def _truncated(tmp):
    import peft_jax

    path = _hf(tmp)
    f = path / "model.safetensors"
    f.write_bytes(f.read_bytes()[:-64])
    return expect(ValueError, peft_jax.load_pretrained, path)


# ----------------------------------------------------------------------------- module files
def _saved(tmp, name="m.peft"):
    from peft_jax import peft

    model, params = _tiny()
    path = tmp / name
    peft.save(path, _lora(model), {"base_fingerprint": peft.fingerprint(params)})
    return path


@case("module file", "truncated module file")
def _mod_trunc(tmp):
    from peft_jax import peft

    path = _saved(tmp)
    path.write_bytes(path.read_bytes()[:-10])
    return expect(peft.ModuleFileError, peft.load, path)


@case("module file", "module file with a flipped byte")
def _mod_flip(tmp):
    from peft_jax import peft

    path = _saved(tmp)
    raw = bytearray(path.read_bytes())
    raw[-1] ^= 0xFF
    path.write_bytes(bytes(raw))
    return expect(peft.ModuleFileError, peft.load, path)


@case("module file", "module file of a future format version")
def _mod_version(tmp):
    from peft_jax import peft

    path = _saved(tmp)
    path.write_bytes(path.read_bytes().replace(b'"version":"1"', b'"version":"7"'))
    return expect(peft.ModuleFileError, peft.load, path)


@case("module file", "a file that is not a module (a base checkpoint's safetensors)")
def _mod_notmodule(tmp):
    from peft_jax import peft

    return expect(peft.ModuleFileError, peft.load, _hf(tmp) / "model.safetensors")


@case("module file", "module applied to another base than it was trained on")
def _mod_base(tmp):
    from peft_jax import peft

    path = _saved(tmp)
    _, other = _tiny(seed=5)
    return expect(peft.TargetError, peft.load, path, base_params=other)


@case("module file", "saving over an existing module file")
def _mod_overwrite(tmp):
    from peft_jax import peft

    path = _saved(tmp)
    return expect(FileExistsError, peft.save, path, peft.load(path))


@case("module file", "LoRA target regex that matches no parameter")
def _regex(tmp):
    from peft_jax import peft

    model, _ = _tiny()
    return expect(peft.TargetError, _lora, model, targets=r".*q_proj")


# --------------------------------------------------------------------------------- datasets
@case("dataset", "XL-Sum directory that does not exist")
def _xlsum_dir(tmp):
    from peft_jax import data

    return expect(data.DataError, lambda: list(data.xlsum(str(tmp / "xlsum"), "english", "test")))


@case("dataset", "malformed JSON line in an XL-Sum file")
def _xlsum_json(tmp):
    from peft_jax import data

    (tmp / "english_test.jsonl").write_text('{"id": "1", "title": "t", "summary": "s", "text": "x"}\n{broken\n')
    return expect(data.DataError, lambda: list(data.xlsum(str(tmp), "english", "test")))


@case("dataset", "XL-Sum record without its `summary` field")
def _xlsum_field(tmp):
    from peft_jax import data

    (tmp / "english_test.jsonl").write_text('{"id": "1", "title": "t", "text": "x"}\n')
    return expect(data.DataError, lambda: list(data.xlsum(str(tmp), "english", "test")))


@case("dataset", "empty split")
def _xlsum_empty(tmp):
    from peft_jax import data

    (tmp / "english_test.jsonl").write_text("")
    return expect(data.DataError, lambda: list(data.xlsum(str(tmp), "english", "test")))


@case("dataset", "unknown language code")
def _lang(tmp):
    from peft_jax import languages

    return expect(languages.UnknownLanguageError, languages.resolve, "englsh")


@case("dataset", "text that is not valid UTF-8 (on_bad_utf8='fail')")
def _utf8(tmp):
    from peft_jax import data

    (tmp / "english_test.jsonl").write_bytes(b'{"id": "1", "title": "t", "summary": "s", "text": "\xff\xfe"}\n')
    return expect(data.DataError, lambda: list(data.xlsum(str(tmp), "english", "test")))


@case("tokenizer", "tokenizer file that is not a SentencePiece model")
def _spm(tmp):
    from peft_jax import data

    (tmp / "vocab.model").write_text("not a model")
    return expect(data.TokenizerFileError, data.load_tokenizer, str(tmp / "vocab.model"))


# ------------------------------------------------------------------------------ composition
@case("composition", "modules trained on different bases")
def _comp_base(tmp):
    from peft_jax import compose, peft

    model, params = _tiny()
    _, other = _tiny(seed=3)
    a = _lora(model).with_metadata(base_fingerprint=peft.fingerprint(params))
    b = _lora(model).with_metadata(base_fingerprint=peft.fingerprint(other))
    return expect(compose.CompositionError, compose.combine, [a, b], [1.0, 1.0])


@case("composition", "different ranks under `param`")
def _comp_rank(tmp):
    from peft_jax import compose

    model, _ = _tiny()
    return expect(compose.CompositionError, compose.combine, [_lora(model, 2), _lora(model, 4)], [1.0, 1.0])


@case("composition", "different target modules")
def _comp_targets(tmp):
    from peft_jax import compose

    model, _ = _tiny()
    return expect(compose.CompositionError, compose.combine,
                  [_lora(model, targets=r".*attention/query"), _lora(model, targets=r".*attention/value")], [1, 1])


@case("composition", "rsLoRA mixed with plain LoRA scaling")
def _comp_rs(tmp):
    from peft_jax import compose

    model, _ = _tiny()
    return expect(compose.CompositionError, compose.combine, [_lora(model), _lora(model, rslora=True)], [1, 1],
                  strategy="delta")


@case("composition", "mixed PEFT families")
def _comp_family(tmp):
    from peft_jax import compose, peft

    model, _ = _tiny()
    ia3 = peft.init(model, peft.IA3Config(), jax.random.PRNGKey(0))
    return expect(compose.CompositionError, compose.combine, [_lora(model), ia3], [1.0, 1.0])


@case("composition", "three weights for two modules")
def _comp_weights(tmp):
    from peft_jax import compose

    model, _ = _tiny()
    return expect(compose.CompositionError, compose.combine, [_lora(model), _lora(model)], [1.0, 1.0, 1.0])


@case("composition", "NaN inside a module")
def _comp_nan(tmp):
    from peft_jax import compose

    model, _ = _tiny()
    bad = _lora(model)
    bad = bad.replace(params=jax.tree.map(lambda x: x.at[(0,) * x.ndim].set(jnp.nan), bad.params))
    return expect(compose.CompositionError, compose.combine, [_lora(model), bad], [1.0, 1.0])


# ---------------------------------------------------------------------- decoding and scoring
@case("decoding", "beam size 0")
def _beam0(tmp):
    import peft_jax
    from peft_jax.decode import DecodeError

    model, params = _tiny()
    return expect(DecodeError, peft_jax.generate, model, params, {"encoder_input_tokens": jnp.ones((1, 4), jnp.int32)},
                  method="beam", num_beams=0)


@case("decoding", "decode length 0")
def _len0(tmp):
    import peft_jax
    from peft_jax.decode import DecodeError

    model, params = _tiny()
    return expect(DecodeError, peft_jax.generate, model, params, {"encoder_input_tokens": jnp.ones((1, 4), jnp.int32)},
                  max_decode_len=0)


@case("scoring", "empty predictions list")
def _rouge_empty(tmp):
    from peft_jax import metrics

    return expect(metrics.RougeInputError, metrics.rouge, [], [])


@case("scoring", "predictions and references of different lengths")
def _rouge_len(tmp):
    from peft_jax import metrics

    return expect(metrics.RougeInputError, metrics.rouge, ["a b"], ["a b", "c"])


# ------------------------------------------------------------------------------------- CLI
@case("CLI", "`launch/compose.py` asked to overwrite an existing output")
def _cli(tmp):
    from peft_jax import cli

    path = _saved(tmp)
    import io
    import contextlib
    from peft_jax import peft

    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        status = cli.run(lambda: peft.save(path, peft.load(path)))
    assert status == 1
    return err.getvalue().strip()


# Cases of further areas live in their own files and register into the same list.
import error_cases_checkpoints  # noqa: E402,F401
import error_cases_modules  # noqa: E402,F401
import error_cases_training  # noqa: E402,F401
import error_cases_decoding  # noqa: E402,F401
import error_cases_configs  # noqa: E402,F401


def normalize(message: str, tmp: pathlib.Path) -> str:
    """The message with what changes from run to run (temporary paths, pids, clock times) blanked."""
    import re

    message = message.replace(str(tmp.resolve()), "<tmp>").replace(str(tmp), "<tmp>")
    return re.sub(r"pid \d+ since [\d\- :]+", "pid <pid> since <time>", message)


def run_all() -> list[tuple[str, str, str, str]]:
    """(area, input, case name, message) for every case."""
    rows = []
    for area, what, fn in CASES:
        with tempfile.TemporaryDirectory() as d:
            rows.append((area, what, fn.__name__, normalize(fn(pathlib.Path(d)), pathlib.Path(d))))
    return rows


def markdown(rows) -> str:
    out = ["# Bad input catalogue", "",
           "Each row is a malformed input, the case that makes it (in `tests/error_cases.py` or",
           "`tests/error_cases_<area>.py`, run by `tests/test_error_catalogue.py`) and the exact error the user",
           "sees. Entry points print these as",
           "`error: <message>` with exit status 1 (`peft_jax.cli`); set `PEFT_JAX_TRACEBACK=1` for a traceback.",
           "Regenerate with `python tests/error_cases.py > docs/errors.md`.", "",
           "| area | malformed input | case | error |", "|---|---|---|---|"]
    for area, what, name, message in rows:
        msg = message.replace("|", "\\|").replace("\n", " ⏎ ")
        if len(msg) > 400:
            msg = msg[:400] + " …"
        out.append(f"| {area} | {what} | `{name}` | `{msg}` |")
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    import os

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    sys.stdout.write(markdown(run_all()))
