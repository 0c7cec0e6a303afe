"""RASR-400M: 24 layers x 1024 (seed 000, section 6.1).

  python -m rasr_jax.main --config=configs/400m.py --workdir=gs://BUCKET/rasr_400m \
      --config.data.files='/data/corpus/*.jsonl'  # TPU slice (default preset tpu_v5p_128)
  python -m rasr_jax.main --config=configs/400m.py:gpu_8 --workdir=...  # one host of 8 GPUs
  python -m rasr_jax.main --config=configs/400m.py --mode=describe  # counts and memory, no devices

The argument after ':' names a mesh preset of configs/mesh/presets.py.
"""

from configs import scaled


def get_config(mesh_preset="tpu_v5p_128"):
  return scaled.get_scaled_config(num_layers=24,
                                  d_model=1024,
                                  num_heads=16,
                                  num_kv_heads=8,
                                  head_dim=64,
                                  mlp_dim=3584,
                                  batch_size=256,
                                  mesh_preset=mesh_preset)
