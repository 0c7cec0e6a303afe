"""The shape of the house: import floors, the sharding rules cover every parameter of every
config, and the refine-sequence layout has one owner."""

import ast
import dataclasses
import os

import pytest

from conftest import REPO
from rasr_jax import config as config_lib
from rasr_jax import sharding
from rasr_jax.training import train_state
from test_config import CONFIG_FILES, _load_file

# Lowest first. A module may import its own floor and the floors below it, never one above.
FLOORS = (
    ("config", "sharding", "distributed"),
    ("tasks",),
    ("model",),
    ("reflection",),
    ("data",),
    ("training",),
    ("generation",),
    ("evaluation", "interop"),
    ("modes", "main"),
)
FLOOR = {name: level for level, names in enumerate(FLOORS) for name in names}
PACKAGE = os.path.join(REPO, "rasr_jax")


def _module_imports():
  """{module path inside rasr_jax: [top-level rasr_jax names it imports]}, every module."""
  found = {}
  for folder, _, files in os.walk(PACKAGE):
    for name in files:
      if not name.endswith(".py"):
        continue
      path = os.path.join(folder, name)
      targets = []
      for node in ast.walk(ast.parse(open(path).read())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
          parts = node.module.split(".")
          if parts[0] == "rasr_jax":
            targets += [parts[1]] if len(parts) > 1 else [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level:  # relative: its own package
          targets.append(os.path.relpath(path, PACKAGE).split(os.sep)[0].removesuffix(".py"))
      found[os.path.relpath(path, PACKAGE)] = targets
  return found


def _floor_of(relative_path):
  top = relative_path.split(os.sep)[0].removesuffix(".py")
  return None if top == "__init__" else FLOOR[top]


def test_no_module_imports_a_higher_floor():
  imports = _module_imports()
  assert len(imports) > 40  # the walk found the package
  upward = [(module, target)
            for module, targets in imports.items()
            for target in targets
            if _floor_of(module) is not None and FLOOR[target] > _floor_of(module)]
  assert not upward


def test_the_inference_path_never_imports_the_training_loop():
  """checkpoint -> inference -> evaluation, followed through every import, stays off
  training/loop.py (and off the step and the faults)."""
  reached, queue = set(), ["generation.inference", "evaluation.run", "evaluation.harness"]
  while queue:
    module = queue.pop()
    if module in reached:
      continue
    reached.add(module)
    path = os.path.join(PACKAGE, *module.split("."))
    path = path + ".py" if os.path.exists(path + ".py") else os.path.join(path, "__init__.py")
    for node in ast.walk(ast.parse(open(path).read())):
      if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("rasr_jax"):
        base = node.module.removeprefix("rasr_jax").lstrip(".")
        for alias in node.names:
          candidate = f"{base}.{alias.name}".lstrip(".")
          is_module = os.path.exists(os.path.join(PACKAGE, *candidate.split(".")) + ".py")
          queue.append(candidate if is_module else base)
  assert "training.checkpoint" in reached  # the walk follows imports
  assert not reached & {"training.loop", "training.step", "training.faults"}


def test_an_unknown_logical_axis_name_raises():
  with pytest.raises(ValueError, match="'experts' has no rule"):
    sharding.logical_to_mesh_spec(("embed", "experts"))


@pytest.mark.parametrize("path", CONFIG_FILES, ids=os.path.basename)
def test_every_parameter_of_every_config_is_covered_by_a_rule(path):
  """Each parameter axis name has a rule and a config field that sizes it, and the axis is
  that size: so the config's divisibility checks cover every sharded axis."""
  config = config_lib.load(_load_file(path))
  checked = 0
  for param, names, shape in train_state.param_axis_names(config):
    for name, size in zip(names, shape):
      if name is None:
        continue
      sharding.mesh_axes(name)  # raises without a rule
      assert name in sharding.PARAM_AXIS_SIZES, (param, name)
      section, field = sharding.PARAM_AXIS_SIZES[name].split(".")
      assert getattr(getattr(config, section), field) == size, (param, name, shape)
      checked += 1
  assert checked > 10


def test_a_shape_the_mesh_cannot_split_is_named_by_the_rules():
  """The divisibility check follows the rules table: every field it names is one the rules
  shard, over the axis the rules give it."""
  config = config_lib.load(_load_file(os.path.join(REPO, "configs", "tiny.py")))
  rules = dict(sharding.divisibility_rules())
  assert rules["model.mlp_dim"] == "tensor" and rules["model.d_model"] == "fsdp"
  assert "model.head_dim" not in rules  # replicated: nothing to check
  bad = dataclasses.replace(config, model=dataclasses.replace(config.model, mlp_dim=130))
  bad = dataclasses.replace(bad, mesh=dataclasses.replace(bad.mesh, tensor=4, fsdp=1, data=1))
  with pytest.raises(config_lib.ConfigError, match="model.mlp_dim=130.*mesh.tensor=4"):
    config_lib.resolve_mesh(bad, 4)
