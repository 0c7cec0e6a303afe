"""rasr_jax: JAX/Flax pretraining with Recursive Alignment via Self-Reflection."""

import setuptools

# The formatter and linter CI runs before the tests, pinned so that CI and a developer's machine
# format alike (settings in pyproject.toml).
LINT = ["yapf==0.43.0", "ruff==0.17.6"]

setuptools.setup(
    name="rasr_jax",
    version="0.1.0",
    description="TPU-first JAX/Flax pretraining with Recursive Alignment via Self-Reflection",
    python_requires=">=3.11",
    packages=setuptools.find_packages(include=["rasr_jax", "rasr_jax.*", "configs", "configs.*"]),
    package_data={
        "rasr_jax.evaluation": ["principles.txt"],
        "rasr_jax.safety": ["lexicons/*.txt"]
    },
    install_requires=[
        "jax>=0.10.2",
        "flax>=0.12.8",
        "optax>=0.2.8",
        "orbax-checkpoint>=0.12.8",
        "grain>=0.2.18",
        "sentencepiece>=0.2.3",
        # HuggingFace tokenizer.json files (Llama 3's and most published models' tokenizers).
        "tokenizers>=0.20",
        # Progress bars for long host-side work on a terminal (rasr_jax/progress.py).
        "tqdm",
        "ml-collections>=1.1.0",
        "tensorboardX>=2.6.5",
        "absl-py>=2.5.1",
        # HF models' chat templates (tokenizer_config.json) for post-training records; pure
        # Python, and what transformers renders them with.
        "jinja2>=3.1",
        "safetensors>=0.4.1",  # safe_open(framework="np") reads bfloat16 from 0.4.1
        # Parquet corpora (the format of HF datasets on the Hub), read a row group at a time.
        "pyarrow>=15",
        # Self-BLEU of the self-alignment rounds' samples (rasr_jax/evaluation/diversity.py): the
        # reference BLEU implementation, small and pure Python (lm-eval installs it too).
        "sacrebleu>=2.4",
        "ml_dtypes",
        "numpy",
    ],
    extras_require={
        # HuggingFace interop tests and the decode benchmark's comparison. torch 2.13.0 is the
        # CPU build this project's machines install quickly (an unpinned torch pulls CUDA).
        "hf": ["torch==2.13.0", "transformers>=4.45"],
        # --mode=eval: EleutherAI's harness scores the public benchmarks; matplotlib draws plots.
        "eval": ["lm_eval>=0.4.13,<0.5", "matplotlib>=3.8"],
        # gs:// work directories and data: etils.epath's fsspec backend (gcsfs), and Google's
        # client, which orbax asks about the bucket.
        "gcs": ["gcsfs", "google-cloud-storage"],
        "lint":
            LINT,
        "test": [
            "pytest>=8", "torch==2.13.0", "transformers>=4.45", "lm_eval>=0.4.13,<0.5",
            "matplotlib>=3.8", *LINT
        ],
    },
    entry_points={
        "console_scripts": [
            "rasr_jax=rasr_jax.main:run",
            "rasr-lm-eval=rasr_jax.evaluation.lm_eval_cli:main",
        ]
    },
)
