"""optax: per parameter group, global-norm clipping and AdamW on a warm-up + cosine schedule.

Groups are read from parameter paths (RASR.md §1): top-level `critic` and `controller`
sub-trees belong to those groups; everything else is the generator.
"""

import jax
import jax.numpy as jnp
import optax

GROUPS = ("generator", "critic", "controller")


def group_of(path) -> str:
  """Group name of a parameter from its key path (a tuple of dict keys)."""
  return path[0] if path and path[0] in GROUPS[1:] else "generator"


def _key_names(path):
  return tuple(getattr(k, "key", getattr(k, "name", k)) for k in path)


def group_labels(params):
  return jax.tree_util.tree_map_with_path(lambda p, _: group_of(_key_names(p)), params)


def decays(name: str) -> bool:
  """Whether the parameter called `name` (its last key) takes decoupled weight decay: weights
  do; norm scales, biases (`*_bias`, `*_b`, `b_*`) and mixing logits (`*_logits`: a zero decay
  target would pull the mixture toward uniform) do not."""
  return not ("norm" in name or name.endswith(("_bias", "_b", "_logits")) or name.startswith("b_"))


def _decay_mask(params):
  return jax.tree_util.tree_map_with_path(
      lambda p, _: all("norm" not in str(k)
                       for k in _key_names(p)) and decays(str(_key_names(p)[-1])), params)


def schedule(train_cfg, peak_lr):
  return optax.warmup_cosine_decay_schedule(init_value=0.0,
                                            peak_value=peak_lr,
                                            warmup_steps=train_cfg.warmup_steps,
                                            decay_steps=max(train_cfg.steps,
                                                            train_cfg.warmup_steps + 1),
                                            end_value=peak_lr * train_cfg.end_lr_ratio)


def group_peak_lrs(train_cfg):
  return {
      "generator": train_cfg.lr,
      "critic": train_cfg.critic_lr,
      "controller": train_cfg.controller_lr
  }


def _group_transform(train_cfg, peak_lr):
  adamw = optax.adamw(schedule(train_cfg, peak_lr),
                      b1=train_cfg.b1,
                      b2=train_cfg.b2,
                      eps=train_cfg.eps,
                      weight_decay=train_cfg.weight_decay,
                      mask=_decay_mask)
  if train_cfg.grad_clip > 0:
    return optax.chain(optax.clip_by_global_norm(train_cfg.grad_clip), adamw)
  return adamw


def make_optimizer(train_cfg, params):
  """Per group: clip the group's gradient by its global norm, then AdamW on its own schedule."""
  present = sorted(set(jax.tree.leaves(group_labels(params))))
  peaks = group_peak_lrs(train_cfg)
  return optax.partition({g: _group_transform(train_cfg, peaks[g]) for g in present}, group_labels)


def group_norms(grads):
  """{group: global norm of that group's gradient} for the groups present."""
  squares = {}
  for label, leaf in zip(jax.tree.leaves(group_labels(grads)), jax.tree.leaves(grads)):
    squares[label] = squares.get(label, 0.0) + jnp.sum(jnp.square(leaf.astype(jnp.float32)))
  return {label: jnp.sqrt(total) for label, total in squares.items()}
