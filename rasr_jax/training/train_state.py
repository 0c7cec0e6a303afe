"""The train state pytree, its shardings, and its creation: abstract (eval_shape) or sharded."""

import flax.struct
import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from rasr_jax import sharding
from rasr_jax.model import rasr_model
from rasr_jax.training import optim, strategy


@flax.struct.dataclass
class TrainState:
  step: jax.Array  # [] int32: optimizer updates done
  params: dict  # pure nested dict of arrays
  opt_state: object  # optax state mirroring params
  rng: jax.Array  # [2] uint32 raw PRNG key data
  tau: jax.Array  # [] float32 stopping threshold (adapted when reflect.stop_budget > 0)
  skipped: jax.Array  # [] int32 updates dropped for non-finite loss or gradients (nan_policy)
  # The adaptive strategy's bandit (strategy.StrategyState), None without strategies.
  strategy: object = None


def build_model(config, seed=0):
  """The model, created without a mesh (parameters carry logical names as metadata)."""
  with nnx.use_eager_sharding(False):
    return rasr_model.RASRModel(config.model, config.reflect, rngs=nnx.Rngs(seed))


def _abstract_split(config):
  """(graphdef, abstract nnx.State of the parameters); allocates nothing."""
  with nnx.use_eager_sharding(False):
    model = nnx.eval_shape(lambda: build_model(config))
  return nnx.split(model, nnx.Param)


def _axis_names(state):
  """[(path, logical axis names, shape)] of every parameter in an nnx.State."""
  return [(path, var.get_metadata().get("out_sharding")
           or (None,) * var.get_value().ndim, var.get_value().shape)
          for path, var in nnx.to_flat_state(state)]


def param_axis_names(config):
  """[(path, logical axis names, shape)] of every parameter of the model of `config`."""
  return _axis_names(_abstract_split(config)[1])


def abstract_model(config):
  """(graphdef, abstract params, param PartitionSpecs); allocates nothing."""
  graphdef, state = _abstract_split(config)
  specs = {}
  for path, names, _ in _axis_names(state):
    node = specs
    for key in path[:-1]:
      node = node.setdefault(key, {})
    node[path[-1]] = sharding.logical_to_mesh_spec(names)
  return graphdef, nnx.to_pure_dict(state), specs


def _dict_keys(path):
  return tuple(k.key for k in path if isinstance(k, jax.tree_util.DictKey))


def state_specs(abstract_state, param_specs):
  """PartitionSpecs for a TrainState: optimizer moments follow their parameter."""
  by_path = {
      _dict_keys(p): s
      for p, s in jax.tree_util.tree_flatten_with_path(param_specs,
                                                       is_leaf=lambda x: isinstance(x, P))[0]
  }
  shapes = {
      _dict_keys(p): x.shape
      for p, x in jax.tree_util.tree_flatten_with_path(abstract_state.params)[0]
  }

  def spec(path, leaf):
    names = _dict_keys(path)
    for start in range(len(names)):  # a moment's path ends with its parameter's path
      suffix = names[start:]
      if suffix in by_path and shapes[suffix] == leaf.shape:
        return by_path[suffix]
    return P()

  opt_specs = jax.tree_util.tree_map_with_path(spec, abstract_state.opt_state)
  return TrainState(step=P(),
                    params=param_specs,
                    opt_state=opt_specs,
                    rng=P(),
                    tau=P(),
                    skipped=P(),
                    strategy=jax.tree.map(lambda _: P(), abstract_state.strategy))


def _init_fn(config):

  def init():
    params = nnx.to_pure_dict(nnx.state(build_model(config, config.seed), nnx.Param))
    tx = optim.make_optimizer(config.train, params)
    rng = jax.random.key_data(jax.random.key(config.seed + 1))
    return TrainState(step=jnp.zeros((), jnp.int32),
                      params=params,
                      opt_state=tx.init(params),
                      rng=rng,
                      tau=jnp.asarray(config.reflect.tau, jnp.float32),
                      skipped=jnp.zeros((), jnp.int32),
                      strategy=(strategy.init(config.reflect.strategies)
                                if config.reflect.strategies.enabled else None))

  return init


def abstract_state(config):
  """(graphdef, abstract TrainState, TrainState of PartitionSpecs); allocates nothing."""
  graphdef, _, param_specs = abstract_model(config)
  state = jax.eval_shape(_init_fn(config))
  return graphdef, state, state_specs(state, param_specs)


def to_shardings(specs, mesh):
  return jax.tree.map(lambda s: NamedSharding(mesh, s), specs, is_leaf=lambda x: isinstance(x, P))


def init_state(config, mesh):
  """A freshly initialised TrainState, born sharded over `mesh`."""
  _, _, specs = abstract_state(config)
  shardings = to_shardings(specs, mesh)
  with sharding.activate(mesh):
    return jax.jit(_init_fn(config), out_shardings=shardings)(), shardings
