"""The evidence config: a few million parameters that learn the bundled tasks on a CPU.

  python -m rasr_jax.main --config=configs/small.py --workdir=/tmp/rasr_small

About 3.6M parameters (d256, 4 layers); RASR with R = 3 on question/answer rows and free-running
drafts, as configs/tiny.py. `benchmarks/evidence.py` trains it with and without reflection
(3 seeds, equal compute and equal tokens) and reports what refinement does.
"""

from configs import tiny


def get_config():
  c = tiny.get_config()
  c.model.d_model = 256
  c.model.num_layers = 4
  c.model.num_heads = 4
  c.model.num_kv_heads = 2
  c.model.head_dim = 64
  c.model.mlp_dim = 768
  c.train.steps = 600
  c.train.lr = 2e-3
  c.train.critic_lr = 1e-3
  c.train.controller_lr = 5e-4
  c.train.warmup_steps = 40
  c.checkpoint.every_steps = 200
  return c
