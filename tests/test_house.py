"""The shape of the house: import floors (the inference path never imports the training loop),
the sharding rules cover every parameter of every config, and the docs' links land on headings."""

import ast
import dataclasses
import os
import re

import jax.numpy as jnp
import pytest

from conftest import REPO
from rasr_jax import config as config_lib
from rasr_jax import sharding
from rasr_jax.model import layers
from rasr_jax.training import train_state
from test_config import CONFIG_FILES, _load_file

# Lowest first. A module may import its own floor and the floors below it, never one above.
FLOORS = (
    ("config", "sharding", "distributed", "progress", "storage", "rounding"),
    ("tasks",),
    ("model",),
    ("reflection",),
    ("data", "safety"),
    ("training",),
    ("generation",),
    ("evaluation", "interop", "posttrain"),
    ("modes", "main"),
)
FLOOR = {name: level for level, names in enumerate(FLOORS) for name in names}
PACKAGE = os.path.join(REPO, "rasr_jax")


def _source(module):
  """The file of a dotted module name inside rasr_jax ("training.loop", "tasks")."""
  path = os.path.join(PACKAGE, *module.split("."))
  return path + ".py" if os.path.exists(path + ".py") else os.path.join(path, "__init__.py")


def _imported_modules(module):
  """The rasr_jax modules `module` imports (dotted names inside rasr_jax), any import form."""
  package = module if _source(module).endswith("__init__.py") else module.rpartition(".")[0]
  found = []
  for node in ast.walk(ast.parse(open(_source(module)).read())):
    if isinstance(node, ast.Import):
      found += [
          a.name.removeprefix("rasr_jax.") for a in node.names if a.name.startswith("rasr_jax.")
      ]
    elif isinstance(node, ast.ImportFrom):
      if node.level:  # relative to this module's package
        base = ".".join([
            *package.split(".")[:len(package.split(".")) - node.level + 1],
            *([node.module] if node.module else [])
        ]).strip(".")
      elif node.module == "rasr_jax" or (node.module or "").startswith("rasr_jax."):
        base = node.module.removeprefix("rasr_jax").lstrip(".")
      else:
        continue
      for alias in node.names:
        candidate = f"{base}.{alias.name}".lstrip(".")
        found.append(candidate if os.path.exists(_source(candidate)) else base)
  return [name for name in found if name]


def _all_modules():
  for folder, _, files in os.walk(PACKAGE):
    for name in files:
      if name.endswith(".py"):
        relative = os.path.relpath(os.path.join(folder, name), PACKAGE).removesuffix(".py")
        yield relative.replace(os.sep, ".").removesuffix(".__init__")


def test_no_module_imports_a_higher_floor():
  modules = list(_all_modules())
  assert len(modules) > 40  # the walk found the package
  upward = [(module, target) for module in modules if module != "__init__"
            for target in _imported_modules(module)
            if FLOOR[target.split(".")[0]] > FLOOR[module.split(".")[0]]]
  assert not upward


def test_the_inference_path_never_imports_the_training_loop():
  """checkpoint -> inference -> evaluation, followed through every import, stays off
  training/loop.py (and off the step and the faults)."""
  reached, queue = set(), ["generation.inference", "evaluation.run", "evaluation.harness"]
  while queue:
    module = queue.pop()
    if module not in reached:
      reached.add(module)
      queue += _imported_modules(module)
  assert "training.checkpoint" in reached  # the walk follows imports
  assert not reached & {"training.loop", "training.step", "training.faults"}


def test_an_unknown_logical_axis_name_raises():
  """For a parameter's spec and for an activation's constraint alike."""
  with pytest.raises(ValueError, match="'experts' has no rule"):
    sharding.logical_to_mesh_spec(("embed", "experts"))
  with pytest.raises(ValueError, match="'act_experts' has no rule"):
    layers.constrain(jnp.zeros((2, 3)), ("act_batch", "act_experts"))
  layers.constrain(jnp.zeros((2, 3)), ("act_batch", None))  # known names pass


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
  bad = dataclasses.replace(config, model=dataclasses.replace(config.model, mlp_dim=129))
  bad = dataclasses.replace(bad, mesh=dataclasses.replace(bad.mesh, tensor=2, fsdp=1, data=1))
  with pytest.raises(config_lib.ConfigError, match="model.mlp_dim=129.*mesh.tensor=2"):
    config_lib.resolve_mesh(bad, 2)


def _heading_anchor(heading):
  """GitHub's anchor of a markdown heading: lowercased, punctuation dropped, spaces as hyphens."""
  return "".join(c for c in heading.strip().lower() if c.isalnum() or c in "-_ ").replace(" ", "-")


def _markdown_files():
  docs = os.path.join(REPO, "docs")
  return [os.path.join(REPO, "README.md")] + sorted(
      os.path.join(docs, name) for name in os.listdir(docs) if name.endswith(".md"))


def test_every_link_between_the_docs_names_a_heading_that_exists():
  headings = {}
  for path in _markdown_files():
    text = re.sub(r"```.*?```", "", open(path).read(), flags=re.S)  # not the code blocks
    headings[path] = {_heading_anchor(h) for h in re.findall(r"^#+ (.*)$", text, re.M)}
  broken = []
  for path in _markdown_files():
    for target, anchor in re.findall(r"\]\(([^)#\s]*)#([^)\s]+)\)", open(path).read()):
      linked = os.path.normpath(os.path.join(os.path.dirname(path), target)) if target else path
      if anchor not in headings.get(linked, {anchor}):
        broken.append(f"{os.path.relpath(path, REPO)}: {target}#{anchor}")
  assert not broken
