"""RASR-1.5B: 32 layers x 2048 (seed 000, section 6.1).

  python -m rasr_jax.main --config=configs/1_5b.py --workdir=gs://BUCKET/rasr_1_5b \
      --config.data.files='/data/corpus/*.jsonl'  # TPU slice (default preset tpu_v5p_256)
  python -m rasr_jax.main --config=configs/1_5b.py:gpu_8 --workdir=...  # one host of 8 GPUs
  python -m rasr_jax.main --config=configs/1_5b.py --mode=describe  # counts and memory, no devices

The argument after ':' names a mesh preset of configs/mesh/presets.py.
"""

from configs import scaled


def get_config(mesh_preset="tpu_v5p_256"):
  return scaled.get_scaled_config(num_layers=32,
                                  d_model=2048,
                                  num_heads=16,
                                  num_kv_heads=8,
                                  head_dim=128,
                                  mlp_dim=5120,
                                  batch_size=512,
                                  mesh_preset=mesh_preset)
