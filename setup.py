"""Installs peft_jax: language and task arithmetic with PEFT modules in JAX."""

import setuptools

# Versions tested together on CPU (Python 3.11). torch==2.13.0 is the CPU build.
INSTALL_REQUIRES = [
    "jax==0.10.2",
    "jaxlib==0.10.2",
    "flax==0.12.8",
    "optax==0.2.8",
    "orbax-checkpoint==0.12.8",
    "ml-collections==1.1.0",
    "sentencepiece==0.2.3",
    "transformers==5.23.0",
    "safetensors==0.8.0",
    "tensorflow-datasets==4.9.10",
    "grain==0.2.18",
    "rouge-score==0.1.2",
    "nltk==3.10.4",
    "PyStemmer==3.1.0",
    "jieba==0.42.1",
    "pythainlp==5.4.0",
    "langid==1.1.6",
    "fugashi==1.5.2",  # MeCab for Japanese ROUGE segmentation
    "unidic-lite==1.0.8",  # its dictionary, bundled: no download at run time
    "numpy==2.4.6",
    "tensorboardX==2.6.5",
    "matplotlib==3.11.2",
    "tqdm==4.70.1",
]

TEST_REQUIRES = [
    "pytest==9.2.0",
    "torch==2.13.0",
    "peft==0.21.2",
    "nbclient==0.11.0",
    "nbformat==5.11.1",
    "ipykernel==7.4.0",
]

setuptools.setup(
    name="peft_jax",
    version="0.1.0",
    description="Language and task arithmetic with parameter-efficient modules in JAX.",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    packages=setuptools.find_packages(include=["peft_jax", "peft_jax.*"]),
    package_data={"peft_jax": ["resources/*"]},
    python_requires=">=3.10",
    install_requires=INSTALL_REQUIRES,
    extras_require={"test": TEST_REQUIRES},
)
