"""RASR-8B: 36 layers x 4096 (seed 000, section 6.1).

  python -m rasr_jax.main --config=configs/8b.py --workdir=gs://BUCKET/rasr_8b \
      --config.data.files='/data/corpus/*.jsonl'  # TPU slice (default preset tpu_v5p_256)
  python -m rasr_jax.main --config=configs/8b.py:gpu_8 --workdir=...  # one host of 8 GPUs
  python -m rasr_jax.main --config=configs/8b.py --mode=describe  # counts and memory, no devices
  python -m rasr_jax.main --config=configs/8b.py:gpu_8 --mode=compile  # the accumulation and remat
      # that fit (on 8 fake CPU devices: XLA_FLAGS=--xla_force_host_platform_device_count=8)

The argument after ':' names a mesh preset of configs/mesh/presets.py. grad_accum_steps and
remat_policy are "auto" (configs/scaled.py): chosen at start-up to fit the preset's devices.
"""

from configs import scaled


def get_config(mesh_preset="tpu_v5p_256"):
  return scaled.get_scaled_config(num_layers=36,
                                  d_model=4096,
                                  num_heads=32,
                                  num_kv_heads=8,
                                  head_dim=128,
                                  mlp_dim=14336,
                                  batch_size=1024,
                                  mesh_preset=mesh_preset)
