"""The RASR model: the Transformer trunk plus, when reflection is on, its three head sets.

Parameter paths decide the optimizer group (RASR.md §1): `critic/...` is phi, `controller/...`
is xi, everything else (trunk and `feedback/...`) is psi.
"""

from flax import nnx

from rasr_jax.model import heads
from rasr_jax.model.transformer import Transformer


def build_heads(cfg, reflect_cfg, rngs):
  """{"feedback", "critic", "controller"}: the head modules of a model of shape `cfg`."""
  kw = dict(init_std=cfg.init_std, param_dtype=cfg.param_dtype, rngs=rngs)
  dims, agents = reflect_cfg.num_dims, reflect_cfg.critics.agents
  return {
      "feedback":
          heads.Feedback(cfg.d_model, dims, committee=agents > 1, **kw),
      "critic":
          heads.Critic(cfg.d_model,
                       dims,
                       agents=agents,
                       hierarchy=reflect_cfg.critics.hierarchy,
                       **kw),
      "controller":
          heads.Controller(cfg.d_model, dims, reflect_cfg.iterations, reflect_cfg.controller_hidden,
                           **kw),
  }


class RASRModel(Transformer):
  """Transformer with `feedback`, `critic` and `controller` heads when `reflect_cfg.enabled`."""

  def __init__(self, cfg, reflect_cfg, *, rngs: nnx.Rngs):
    super().__init__(cfg, rngs=rngs)
    self.reflecting = reflect_cfg.enabled
    if self.reflecting:
      for name, module in build_heads(cfg, reflect_cfg, rngs).items():
        setattr(self, name, module)
