"""The benchmark harness: both sides compute the same thing, results have the promised schema, FLOPs are right."""

import functools
import json
import os
import subprocess
import sys

import jax
import numpy as np
import optax
import pytest

from peft_jax import peft
from peft_jax.bench import cases, harness, processes
from peft_jax.models import get_model
from peft_jax.train import step as step_lib

ROW_KEYS = {"case", "metric", "ours", "reference", "ratio"}


def _tiny_config():
    config = cases.base_config(tiny=True)
    config.cases = ("train_lora", "decode_greedy", "compose")
    config.reps = 1
    config.compose.strategies = ("param",)
    config.compose.num_modules = (2,)
    config.compose.reps = 1
    config.machine.reps = 1
    config.decode.reps = 1
    return config


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("bench")
    rows = harness.run(_tiny_config(), str(workdir), log=lambda *_: None)
    with open(workdir / "benchmark_details.json") as f:
        details = json.load(f)
    return workdir, rows, details


def test_both_sides_agree_before_timing(tiny_run):
    _, _, details = tiny_run
    train = details["jobs"]["train/lora"]["results"]
    ours, ref = train["ours"]["ready"]["check"]["losses"], train["reference"]["ready"]["check"]["losses"]
    # First loss: same weights, same LoRA init; second: after one AdamW step on both sides.
    np.testing.assert_allclose(ours, ref, atol=1e-4, rtol=1e-5)
    assert ours[0] != ours[1]  # the step changed the module, so the second loss checks the optimizer too
    decode = details["jobs"]["decode/greedy"]["results"]
    assert decode["ours"]["ready"]["check"]["tokens"] == decode["reference"]["ready"]["check"]["tokens"]


def test_benchmark_json_schema(tiny_run):
    workdir, rows, _ = tiny_run
    with open(workdir / "benchmark.json") as f:
        on_disk = json.load(f)
    assert on_disk == rows and isinstance(rows, list)
    for row in rows:
        assert set(row) == ROW_KEYS
        assert isinstance(row["case"], str) and isinstance(row["metric"], str)
        assert row["ours"] is not None and row["ours"] >= 0
        if row["reference"]:
            assert row["ratio"] == pytest.approx(row["ours"] / row["reference"])
        else:
            assert row["ratio"] is None
    have = {(r["case"], r["metric"]) for r in rows}
    for want in [("machine/matmul_f32", "gflops"), ("machine/copy", "gb_per_s"), ("train/lora", "tokens_per_s"),
                 ("train/lora", "peak_rss_mb"), ("train/lora", "mfu"), ("decode/greedy", "tokens_per_s"),
                 ("compose/param/N=2", "kernel_s"), ("compose/param/N=2", "combine_s"),
                 ("compose/param/N=2", "kernel_mb")]:
        assert want in have, want
    assert os.path.getsize(workdir / "benchmark.png") > 0


def test_repetitions_alternate_between_sides():
    calls = []

    class Fake:
        def __init__(self, side):
            self.side = side

        def send(self, **cmd):
            calls.append(self.side)

        def receive(self, job):
            return {"seconds": 1.0}

    out = harness._alternate({"ours": Fake("ours"), "reference": Fake("reference")}, 3, "job")
    assert calls == ["ours", "reference", "reference", "ours", "ours", "reference"]
    assert [len(v) for v in out.values()] == [3, 3]


def test_disagreeing_sides_are_refused():
    job = {"name": "train/lora", "kind": "train"}
    tol = {"loss_atol": 1e-3, "loss_rtol": 1e-4}
    harness.check_agreement(job, {"ours": {"losses": [5.0, 4.0]}, "reference": {"losses": [5.0, 4.0005]}}, tol)
    with pytest.raises(harness.BenchmarkError, match="loss of step 2 differs"):
        harness.check_agreement(job, {"ours": {"losses": [5.0, 4.0]}, "reference": {"losses": [5.0, 4.1]}}, tol)
    job = {"name": "decode/greedy", "kind": "decode", "model": {}}
    # Padding after EOS (1) does not count; a token before it does.
    harness.check_agreement(job, {"ours": {"tokens": [[5, 1, 0]]}, "reference": {"tokens": [[5, 1, 1]]}}, tol)
    with pytest.raises(harness.BenchmarkError, match="row 0 differ from position 1"):
        harness.check_agreement(job, {"ours": {"tokens": [[5, 6, 1]]}, "reference": {"tokens": [[5, 7, 1]]}}, tol)


def test_unknown_case_and_argument_are_refused(tmp_path):
    config = cases.base_config(tiny=True)
    config.cases = ("train_lora", "train_lorra")
    with pytest.raises(cases.CaseError, match="train_lorra"):
        cases.jobs(config, str(tmp_path))
    with pytest.raises(cases.CaseError, match="runlocal"):
        cases.parse_arg("smol", "configs/bench/x.py")


def test_reference_worker_does_not_import_jax():
    # The PyTorch side's memory must be PyTorch's alone: its worker must not pull in JAX.
    code = processes.BOOTSTRAP.split("from peft_jax.bench import worker")[0] + (
        "from peft_jax.bench import reference\nreference.torch_side()\n"
        "print('jax' in sys.modules, 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code, "reference"], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "True"]


_WITHOUT_TORCH = """
import sys

class NoTorch:
    # Answers for torch as an environment without it would.
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None

sys.meta_path.insert(0, NoTorch())
import peft_jax.bench.reference as reference
print("imported", "torch" in sys.modules)
try:
    reference.make_runner({"kind": "train", "name": "train/lora", "threads": 1})
except reference.ReferenceUnavailableError as e:
    print(e)
"""


def test_reference_imports_without_torch_and_names_the_extra_when_run():
    # torch is a test extra: a plain install imports the benchmark package; running the reference says what to install.
    out = subprocess.run([sys.executable, "-c", _WITHOUT_TORCH], capture_output=True, text=True, check=True)
    first, message = out.stdout.splitlines()
    assert first == "imported False"
    assert "'torch' is not installed" in message and "pip install \"peft_jax[test]\"" in message


_T5 = dict(family="encoder_decoder", vocab_size=1000, d_model=128, d_kv=32, d_ff=256, num_heads=4, num_layers=2,
           num_decoder_layers=2, relative_attention_num_buckets=16, relative_attention_max_distance=64)


@pytest.mark.parametrize("family,config,extra", [
    ("lora", peft.LoraConfig(rank=8), {"rank": 8}),
    ("ia3", peft.IA3Config(), {}),
    ("prompt", peft.PromptConfig(length=10, init="random"), {"length": 10}),
])
def test_train_flops_agree_with_xla_cost_analysis(family, config, extra):
    # XLA counts every op of the real train step; the analytic model counts matmuls only, and charges
    # activation gradients that XLA prunes where nothing upstream is trainable: within 5% here.
    model = get_model("mt5_tiny", **{k: v for k, v in _T5.items() if k != "family"}, dropout_rate=0.0)
    params = jax.eval_shape(model.init, jax.random.PRNGKey(0))
    module = peft.init(model, config, jax.random.PRNGKey(0))
    spec = {"model": _T5, "batch_size": 2, "src_len": 64, "tgt_len": 16, "seed": 0,
            "peft": {"family": family, **extra}}
    opt = optax.adamw(1e-3)
    fn = functools.partial(step_lib.train_step, model=model, optimizer=opt)
    lowered = jax.jit(fn).lower(module, opt.init(step_lib.trainable(module.params)), params,
                                cases.train_batch(spec), jax.random.PRNGKey(0))
    xla = lowered.cost_analysis()["flops"]
    assert cases.train_flops(spec) == pytest.approx(xla, rel=0.05)


def test_decoder_forward_flops_agree_with_xla_cost_analysis():
    dims = dict(family="decoder_only", vocab_size=1000, d_model=128, num_heads=4, head_dim=32, d_ff=256,
                num_layers=2, num_kv_heads=1)
    model = get_model("palm_tiny", **{k: v for k, v in dims.items() if k != "family"})
    params = jax.eval_shape(model.init, jax.random.PRNGKey(0))
    tokens = cases.lm_batch(0, 2, 80, 1000)["decoder_input_tokens"]
    xla = jax.jit(lambda p, t: model.logits(p, {"decoder_input_tokens": t})).lower(params, tokens).cost_analysis()
    assert sum(cases._decoder_forward(dims, 2, 80)) == pytest.approx(xla["flops"], rel=0.03)
