"""RASR-3.5B: 32 layers x 2816 (seed 000, section 6.1).

  python -m rasr_jax.main --config=configs/3_5b.py --workdir=gs://BUCKET/rasr_3_5b \
      --config.data.files='/data/corpus/*.jsonl'  # TPU slice (default preset tpu_v5p_256)
  python -m rasr_jax.main --config=configs/3_5b.py:gpu_8 --workdir=...  # one host of 8 GPUs
  python -m rasr_jax.main --config=configs/3_5b.py --mode=describe  # counts and memory, no devices

The argument after ':' names a mesh preset of configs/mesh/presets.py.
"""

from configs import scaled


def get_config(mesh_preset="tpu_v5p_256"):
  return scaled.get_scaled_config(num_layers=32,
                                  d_model=2816,
                                  num_heads=32,
                                  num_kv_heads=8,
                                  head_dim=88,
                                  mlp_dim=9728,
                                  batch_size=512,
                                  mesh_preset=mesh_preset)
