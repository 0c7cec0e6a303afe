"""The CPU benchmark shape: Llama d512, 8 layers, 8 heads, MLP 1408, T512, B8, vocab 8192 (34M).

  python benchmarks/train_step.py --config=configs/bench.py
"""

from configs import base


def get_config():
  c = base.get_config()
  c.model.vocab_size = 8192
  c.model.d_model = 512
  c.model.num_layers = 8
  c.model.num_heads = 8
  c.model.num_kv_heads = 8
  c.model.head_dim = 64
  c.model.mlp_dim = 1408
  c.model.scan_unroll = 8  # every layer unrolled: faster on CPUs (docs/performance.md)
  c.data.seq_len = 512
  c.train.batch_size = 8
  c.train.steps = 1000
  return c
