"""The command line of `python -m rasr_jax.interop.hf import|export` (see hf.py)."""

import sys

from absl import app, flags
from ml_collections import config_flags

from rasr_jax import config as config_lib
from rasr_jax.data import tokenizer as tok_lib
from rasr_jax.interop import hf
from rasr_jax.training import checkpoint as ckpt_lib

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "rasr_jax config: for import, the base the HF shape is written into "
    "(default configs/base.py); for export, the run's config (default WORKDIR/config.py).")
_HF_DIR = flags.DEFINE_string("hf_dir", None, "HuggingFace model directory (import).")
_WORKDIR = flags.DEFINE_string("workdir", None, "rasr_jax work directory.")
_OUT = flags.DEFINE_string("out", None, "Output directory for the HF checkpoint (export).")


def main(argv):
  if len(argv) != 2 or argv[1] not in ("import", "export"):
    raise app.UsageError("usage: python -m rasr_jax.interop.hf import|export [flags]")
  from configs import base
  try:
    for flag in (_HF_DIR, _WORKDIR, _OUT):
      if flag.value:  # safetensors files are read and written locally
        config_lib.check_path(f"--{flag.name}", flag.value, local_only=flag is not _WORKDIR)
    if not _WORKDIR.value:
      raise hf.ConversionError("--workdir is required")
    if argv[1] == "import":
      if not _HF_DIR.value:
        raise hf.ConversionError("--hf_dir is required")
      config = hf.import_checkpoint(_HF_DIR.value, _WORKDIR.value, _CONFIG.value
                                    or base.get_config())
      print(f"imported {_HF_DIR.value} -> {ckpt_lib.imported_params_dir(_WORKDIR.value)} "
            f"({config.model.num_layers} layers, d_model {config.model.d_model})")
    else:
      if not _OUT.value:
        raise hf.ConversionError("--out is required")
      config = config_lib.load(_CONFIG.value or hf.workdir_config(_WORKDIR.value))
      hf.export_checkpoint(_WORKDIR.value, _OUT.value, config)
      print(f"exported {_WORKDIR.value} -> {_OUT.value}")
  except (hf.ConversionError, config_lib.ConfigError, ckpt_lib.CheckpointError,
          tok_lib.TokenizerError) as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)


def run():
  app.run(main)
