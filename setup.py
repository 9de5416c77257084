"""Installs peft_jax: language and task arithmetic with PEFT modules in JAX.

Requirements are lower bounds only, so peft_jax installs into another JAX project's environment
without replacing its jax, flax, orbax or numpy. The exact set the test suite runs with (CPU,
Python 3.11) is `constraints.txt`: `pip install -c constraints.txt -e ".[test]"`
(`launch/setup_env.sh` does this). jaxlib is not listed: jax requires the jaxlib that matches it,
and the `tpu` / `cuda12` extras bring the accelerator plugins.
"""

import setuptools

# The core: `peft_jax.models`, `peft`, `compose`, `train`, `decode`, `evaluation` and `pipeline`.
# Packages whose APIs move quickly (the JAX stack, grain) are bounded by the releases the code is
# written against; jax's bound itself is exercised by tests/test_install.py. Stable packages get
# older bounds so that peft_jax fits into environments that pin them.
INSTALL_REQUIRES = [
    "jax>=0.10.0",
    "numpy>=2.0",
    "flax>=0.12.0",  # flax.struct only
    "optax>=0.2.8",
    "orbax-checkpoint>=0.12.0",
    "etils[epath]>=1.9",
    "grain>=0.2.18",
    "ml-collections>=1.0",
    "sentencepiece>=0.2.0",
    "rouge-score>=0.1.2",  # brings nltk (rouge_score's Porter stemmer)
    "tensorboardX>=2.6",  # training writes TensorBoard events by default (config.tensorboard)
    "matplotlib>=3.8",  # loss curves and result plots, drawn on Figure objects (no pyplot backend)
    "tqdm>=4.64",
    "safetensors>=0.4",  # checkpoints and module files are read with safe_open / get_slice
    "regex>=2023.0",  # Unicode script properties: language-module text is kept to its language's script
]

# The XL-Sum multilingual ROUGE protocol: segmenters (Chinese, Japanese with its bundled 249 MB
# dictionary, Thai), Snowball stemmers, and langid for the wrong-language rate.
MULTILINGUAL = [
    "jieba>=0.42.1",
    "fugashi>=1.3",
    "unidic-lite>=1.0.8",
    "pythainlp>=5.0",
    "PyStemmer>=2.2",
    "langid>=1.1.6",
]

HF = ["transformers>=5.0"]  # Hugging Face tokenizer directories (load_tokenizer on a directory)

TFDS = ["tensorflow-datasets>=4.9.6"]  # TFDS sources prepared in ArrayRecord format

NOTEBOOK = ["nbclient>=0.10", "nbformat>=5.10", "ipykernel>=6.29", "ipywidgets>=8.1", "matplotlib>=3.8"]

# The suite also compares against PyTorch `transformers` + `peft` (tests and benchmarks). On this
# project's machines constraints.txt pins torch to the CPU wheel that lies on disk.
# gs:// workdirs: gcsfs for etils.epath and the workdir lock, google-cloud-storage for orbax's bucket query.
GCS = ["gcsfs>=2024.2", "google-cloud-storage>=2.14"]

INTEROP = ["qwix>=0.1.8"]  # LoRA made by qwix (peft_jax.flax.qwix converts its parameters; it never imports qwix)

TEST = ["pytest>=8.0", "torch>=2.4", "peft>=0.13"] + MULTILINGUAL + HF + TFDS + NOTEBOOK + INTEROP

setuptools.setup(
    name="peft_jax",
    version="0.1.0",
    description="Language and task arithmetic with parameter-efficient modules in JAX.",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    license_files=["LICENSE", "NOTICE"],
    packages=setuptools.find_packages(include=["peft_jax", "peft_jax.*"]),
    package_data={"peft_jax": ["resources/*"]},
    # jax, jaxlib, numpy 2.x, flax, orbax-checkpoint, grain and etils all require Python >= 3.11;
    # the constraint set is tested on 3.11.
    python_requires=">=3.11",
    install_requires=INSTALL_REQUIRES,
    extras_require={
        "tpu": ["jax[tpu]>=0.10.0"],
        "cuda12": ["jax[cuda12]>=0.10.0"],
        "multilingual": MULTILINGUAL,
        "hf": HF,
        "tfds": TFDS,
        "notebook": NOTEBOOK,
        "interop": INTEROP,
        "gcs": GCS,
        "test": TEST,
    },
    classifiers=[
        "Programming Language :: Python :: 3",
        "Programming Language :: Python :: 3.11",
    ],
)
