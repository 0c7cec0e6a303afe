"""`--mode=describe`: parameter counts, FLOPs per token and per-device bytes, from shapes only."""

import math

import jax
from jax.sharding import PartitionSpec as P

from rasr_jax import rounding, sharding
from rasr_jax.training import flops, optim, train_state


def _sharded_bytes(tree, specs, axis_sizes):
  leaves = jax.tree.leaves(tree)
  spec_leaves = jax.tree.leaves(specs, is_leaf=lambda x: isinstance(x, P))
  return sum(
      rounding.ceil_div(x.size * x.dtype.itemsize, sharding.shard_count(s, axis_sizes))
      for x, s in zip(leaves, spec_leaves))


def describe(config, num_devices):
  """A JSON-ready dict; allocates no arrays (everything comes from `jax.eval_shape`)."""
  sizes = config.mesh.axis_sizes()
  if -1 in sizes.values():
    known = math.prod(s for s in sizes.values() if s != -1)
    sizes = {a: (max(num_devices // known, 1) if s == -1 else s) for a, s in sizes.items()}
  _, abstract, specs = train_state.abstract_state(config)
  counts = {g: 0 for g in optim.GROUPS}
  for group, leaf in zip(jax.tree.leaves(optim.group_labels(abstract.params)),
                         jax.tree.leaves(abstract.params)):
    counts[group] += leaf.size
  param_bytes = _sharded_bytes(abstract.params, specs.params, sizes)
  opt_bytes = _sharded_bytes(abstract.opt_state, specs.opt_state, sizes)
  return {
      "params_total": sum(counts.values()),
      "params_by_group": counts,
      "flops_per_token": flops.flops_per_token(config.model, config.data.seq_len),
      "mesh": sizes,
      "bytes_per_device": {
          "params": param_bytes,
          "optimizer": opt_bytes,
          "total": param_bytes + opt_bytes
      },
  }
