"""The embedded default: trains on the bundled verifiable tasks in minutes on a laptop CPU.

  python -m rasr_jax.main --config=configs/tiny.py --workdir=/tmp/rasr_tiny

Expected: the LM loss falls from about ln(vocab) ~ 7 to under 2.5 in 300 steps on 2 CPU cores.
"""

from configs import base


def get_config():
  c = base.get_config()
  c.model.vocab_size = 1024
  c.model.d_model = 128
  c.model.num_layers = 2
  c.model.num_heads = 4
  c.model.num_kv_heads = 2
  c.model.head_dim = 32
  c.model.mlp_dim = 384
  c.data.seq_len = 128
  c.data.bundled_examples = 20000
  c.train.steps = 300
  c.train.batch_size = 16
  c.train.lr = 3e-3
  c.train.critic_lr = 1.5e-3
  c.train.controller_lr = 7.5e-4
  c.train.warmup_steps = 20
  c.checkpoint.every_steps = 100
  c.train.log_every_steps = 10
  c.reflect.enabled = True
  c.reflect.prompt_len = 72  # the bundled questions (a longer one keeps its last 72 tokens)
  c.reflect.target_len = 64  # the bundled answers and <eos>
  c.reflect.rows = 4
  return c
