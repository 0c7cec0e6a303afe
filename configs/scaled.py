"""Shared recipe of the source's four model scales (seed 000, section 6.1).

Each scale file passes its shape; everything else (data, optimizer, mesh preset) is set here.
"""

from configs import base
from configs.mesh import presets


def get_scaled_config(*, num_layers, d_model, num_heads, num_kv_heads, head_dim, mlp_dim,
                      batch_size, mesh_preset):
  c = base.get_config()
  c.model.vocab_size = 32768
  c.model.num_layers = num_layers
  c.model.d_model = d_model
  c.model.num_heads = num_heads
  c.model.num_kv_heads = num_kv_heads
  c.model.head_dim = head_dim
  c.model.mlp_dim = mlp_dim
  c.model.rope_theta = 500000.0
  c.model.dtype = "bfloat16"
  # Chosen at start-up to fit the preset's devices (rasr_jax/training/memory_fit.py; the
  # choice is logged, and --mode=compile prints it ahead of time; pin it to skip the search).
  c.model.remat_policy = "auto"
  c.data.source = "files"
  # Grain worker processes per host tokenize and pack ahead of the step (a killed run resumes
  # bit-identically with them: tests/test_reliability.py).
  c.data.num_workers = 4
  c.data.seq_len = 2048
  c.train.steps = 100000
  c.train.batch_size = batch_size
  c.train.grad_accum_steps = "auto"
  c.train.lr = 2e-4  # section 6.1: eta_psi 2e-4, eta_phi 1e-4, eta_xi 5e-5
  c.train.critic_lr = 1e-4
  c.train.controller_lr = 5e-5
  c.reflect.enabled = True  # section 6.1: alpha 0.6, beta 0.3, gamma 0.1, R = 3
  c.reflect.iterations = 3
  # Pretraining text alone: reflection on text windows with teacher-forced drafts (the cheap
  # control). With question/answer files (data.qa_files) set reflect.source=qa (or mixed) and
  # reflect.draft_mode=autoregressive.
  c.reflect.source = "text"
  c.reflect.draft_mode = "teacher_forced"
  c.reflect.alpha = 0.6
  c.reflect.beta = 0.3
  c.reflect.gamma = 0.1
  c.train.warmup_steps = 2000
  c.train.log_every_steps = 50
  c.checkpoint.every_steps = 1000
  return presets.apply(c, mesh_preset)
