"""The device mesh and the one table that maps logical axis names to mesh axes.

Modules annotate parameters and activations with logical names only; this is the only module
that names the physical mesh axes `data`, `fsdp` and `tensor`.
"""

import contextlib

import jax
from flax import nnx
from jax.experimental import mesh_utils
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

MESH_AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")

# Logical name -> mesh axis (or axes, or None for replicated). A name not listed is an error.
LOGICAL_RULES = (
    # Parameters.
    ("vocab", "tensor"),
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("head_dim", None),
    ("layers", None),
    ("norm", None),
    # Activations at block edges.
    ("act_batch", BATCH_AXES),
    ("act_length", None),
    ("act_embed", None),
    ("act_heads", "tensor"),
    ("act_kv_heads", "tensor"),
    ("act_mlp", "tensor"),
    ("act_vocab", "tensor"),
)


def make_mesh(mesh_config, devices=None):
  """A mesh of `devices` (default: all) shaped by a resolved `MeshConfig`; axes are Auto.

  With `dcn_data` > 1 the mesh is hybrid: the data axis is split over DCN granules (TPU slices,
  or processes on other platforms) and every other axis stays inside a granule.
  """
  devices = jax.devices() if devices is None else devices
  shape = tuple(mesh_config.axis_sizes()[a] for a in MESH_AXES)
  if mesh_config.dcn_data > 1:
    dcn = (mesh_config.dcn_data, 1, 1)
    ici = (shape[0] // mesh_config.dcn_data, *shape[1:])
    grid = mesh_utils.create_hybrid_device_mesh(ici,
                                                dcn,
                                                devices,
                                                process_is_granule=devices[0].platform != "tpu")
  else:
    grid = mesh_utils.create_device_mesh(shape, devices)
  return Mesh(grid, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES))


# The config field that sizes each parameter axis: its value must divide evenly over the mesh
# axes the rules give that name (config.resolve_mesh checks it).
PARAM_AXIS_SIZES = {
    "heads": "model.num_heads",
    "kv_heads": "model.num_kv_heads",
    "mlp": "model.mlp_dim",
    "vocab": "model.vocab_size",
    "embed": "model.d_model",
    "head_dim": "model.head_dim",
    "layers": "model.num_layers",
    "norm": "model.d_model",
}


def mesh_axes(logical_name):
  """The mesh axes (a tuple, maybe empty) that `logical_name` is split over."""
  table = dict(LOGICAL_RULES)
  if logical_name not in table:
    raise ValueError(f"logical axis name {logical_name!r} has no rule in "
                     "sharding.LOGICAL_RULES")
  axes = table[logical_name]
  return (axes,) if isinstance(axes, str) else tuple(axes or ())


def divisibility_rules():
  """[(config field, mesh axis)]: every config field sizing a sharded parameter axis, with each
  mesh axis it must divide evenly over."""
  return [(field, axis) for name, field in PARAM_AXIS_SIZES.items() for axis in mesh_axes(name)]


@contextlib.contextmanager
def activate(mesh):
  """Sets `mesh` and the logical rules, for tracing, init and compilation."""
  with jax.set_mesh(mesh), nnx.logical_axis_rules(LOGICAL_RULES):
    yield


def logical_to_mesh_spec(logical_names):
  """PartitionSpec for a tuple of logical names (each used mesh axis at most once); a name
  without a rule raises ValueError."""
  used, spec = set(), []
  for name in logical_names:
    axes_tuple = mesh_axes(name) if name is not None else ()
    axes_tuple = tuple(a for a in axes_tuple if a not in used)
    used.update(axes_tuple)
    spec.append(axes_tuple[0] if len(axes_tuple) == 1 else (axes_tuple or None))
  return P(*spec)


def batch_sharding(mesh):
  """Rows of a [B, ...] batch split over the data-parallel axes."""
  return NamedSharding(mesh, P(BATCH_AXES))


def replicated(mesh):
  return NamedSharding(mesh, P())


def shard_count(spec, axis_sizes):
  """How many ways a PartitionSpec splits an array, given {mesh axis: size}."""
  count = 1
  for entry in spec:
    for axis in (entry,) if isinstance(entry, str) else (entry or ()):
      count *= axis_sizes[axis]
  return count
