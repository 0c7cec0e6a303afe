"""Configs load and validate; describe counts; each start-up rule exits 2 with one line."""

import dataclasses
import glob
import importlib.util
import json
import os
import subprocess
import sys

import pytest

from conftest import REPO, make_config, subprocess_env
from rasr_jax import config as config_lib
from rasr_jax.modes import describe

CONFIG_FILES = sorted(p for p in glob.glob(os.path.join(REPO, "configs", "*.py"))
                      if os.path.basename(p) not in ("__init__.py", "scaled.py"))
NAMED_SIZES = {"400m.py": 400e6, "1_5b.py": 1.5e9, "3_5b.py": 3.5e9, "8b.py": 8e9}


def _load_file(path):
  spec = importlib.util.spec_from_file_location("config_under_test", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


@pytest.mark.parametrize("path", CONFIG_FILES, ids=os.path.basename)
def test_every_config_loads_and_validates(path):
  config = config_lib.load(_load_file(path))
  assert config.model.num_heads % config.model.num_kv_heads == 0


@pytest.mark.parametrize("name", sorted(NAMED_SIZES))
def test_describe_counts_match_the_names(name):
  config = config_lib.load(_load_file(os.path.join(REPO, "configs", name)))
  report = describe.describe(config, num_devices=1)
  assert report["params_total"] == pytest.approx(NAMED_SIZES[name], rel=0.10)
  assert report["params_total"] == sum(report["params_by_group"].values())
  per_device = report["bytes_per_device"]
  mesh_devices = report["mesh"]["fsdp"] * report["mesh"]["data"] * report["mesh"]["tensor"]
  # fp32 params + two fp32 Adam moments, split over the FSDP axis.
  # (the small head matrices are replicated, hence the 5%)
  assert per_device["total"] == pytest.approx(12 * report["params_total"] / mesh_devices, rel=0.05)


def test_describe_cli_prints_json_fast():
  result = subprocess.run(
      [sys.executable, "-m", "rasr_jax.main", f"--config={REPO}/configs/8b.py", "--mode=describe"],
      cwd=REPO,
      env=subprocess_env(),
      capture_output=True,
      text=True,
      timeout=60)
  assert result.returncode == 0, result.stderr[-2000:]
  report = json.loads(result.stdout)
  for key in ("params_total", "params_by_group", "flops_per_token", "bytes_per_device"):
    assert key in report


def test_batch_not_divisible_by_data_parallel_size():
  config = make_config(**{"train.batch_size": 6, "mesh.fsdp": 4})
  with pytest.raises(config_lib.ConfigError, match="train.batch_size=6.*mesh.data\\*mesh.fsdp=4"):
    config_lib.resolve_mesh(config, 4)


def test_mesh_fill_and_product():
  config = make_config(**{"mesh.data": 2, "mesh.fsdp": -1, "mesh.tensor": 2})
  assert config_lib.resolve_mesh(config, 8).mesh.axis_sizes() == {"data": 2, "fsdp": 2, "tensor": 2}
  with pytest.raises(config_lib.ConfigError, match="cannot fill"):
    config_lib.resolve_mesh(config, 6)


@pytest.mark.parametrize("key, value, words", [
    ("model.tie_embeddings", 1, "must be a bool"),
    ("train.steps", 2.5, "must be an int"),
    ("data.source", "web", "must be one of bundled, files"),
    ("train.b2", 1.5, "must be in [0, 1]"),
    ("mesh.tensor", 0, "-1 to fill"),
    ("model.rope_type", "yarn", "must be one of default, linear, llama3"),
    ("model.head_dim", 33, "must be even"),
    ("dpo.label_smoothing", 0.7, "must be in [0, 0.5]"),
])
def test_rules_in_python(key, value, words):
  """Config files can hold any Python value; the dataclass conversion checks it."""
  from configs import tiny
  raw = tiny.get_config().to_dict()
  section, field = key.split(".")
  raw[section][field] = value
  with pytest.raises(config_lib.ConfigError, match=f"config.{key}=") as error:
    config_lib.load(raw)
  assert words in str(error.value)


def test_wandb_logging_without_the_package_is_a_start_up_error():
  import importlib.util
  if importlib.util.find_spec("wandb") is not None:
    pytest.skip("wandb is installed here")
  with pytest.raises(config_lib.ConfigError, match="metrics.wandb_project='p': needs the wandb"):
    make_config(**{"metrics.wandb_project": "p"})


def test_llama3_rope_needs_its_frequency_band():
  config = {
      "model.rope_type": "llama3",
      "model.rope_low_freq_factor": 4.0,
      "model.rope_high_freq_factor": 4.0
  }
  with pytest.raises(config_lib.ConfigError, match="rope_high_freq_factor=4.0: must exceed"):
    make_config(**config)
  make_config(**{**config, "model.rope_type": "linear"})  # the band is llama3's alone


def test_unknown_section_key_suggests_the_near_name():
  from configs import tiny
  raw = tiny.get_config().to_dict()
  raw["train"]["stepz"] = raw["train"].pop("steps")
  with pytest.raises(config_lib.ConfigError, match="did you mean train.steps"):
    config_lib.load(raw)


def test_flops_per_step_counts_every_reflection_pass():
  """Standard FLOPs, plus per row and iteration a critic and a refine pass (forward and
  backward), plus forward passes for drafts: free-running drafts decode Y tokens after a
  prefill, teacher-forced drafts of question/answer rows read one standard pass over x y*."""
  from rasr_jax.reflection.layout import Layout
  from rasr_jax.training import flops
  base = make_config(**{"reflect.source": "qa", "reflect.draft_mode": "autoregressive"})
  m, r = base.model, base.reflect
  rows = config_lib.resolve_mesh(base, 1).reflect.rows
  standard = flops.flops_per_step(
      dataclasses.replace(base, reflect=dataclasses.replace(r, enabled=False)))
  assert standard == flops.flops_per_token(m, 32) * 8 * 32

  def forward(tokens, context, head=True):  # 2 FLOPs per matmul weight, 4 per score
    weights = flops.matmul_params(m) - (0 if head else m.d_model * m.vocab_size)
    return tokens * (2 * weights + 4 * m.num_layers * m.num_heads * m.head_dim * context)

  layout = Layout(r.prompt_len, r.target_len, r.critique_len)
  critic = 3 * forward(layout.critique_token, layout.critique_token, head=False)
  refine = 3 * (forward(layout.length, layout.length, head=False) + forward(r.target_len, 0)
                - forward(r.target_len, 0, head=False))
  prefix = r.prompt_len + layout.prefix_len
  drafts = (forward(r.prompt_len, r.prompt_len, False)
            + forward(r.target_len, r.prompt_len + r.target_len) + r.iterations *
            (forward(prefix, prefix, False) + forward(r.target_len, prefix + r.target_len)))
  want = standard + rows * (r.iterations * (critic + refine) + drafts)
  got = flops.flops_per_step(dataclasses.replace(base, reflect=dataclasses.replace(r, rows=rows)))
  assert got == pytest.approx(want, rel=1e-9)
  teacher = dataclasses.replace(r, rows=rows, draft_mode="teacher_forced")
  want_teacher = (
      standard + rows * r.iterations * (critic + refine)
      + rows * forward(r.prompt_len + r.target_len - 1, r.prompt_len + r.target_len - 1))
  assert flops.flops_per_step(dataclasses.replace(base,
                                                  reflect=teacher)) == pytest.approx(want_teacher,
                                                                                     rel=1e-9)


def test_config_names_the_checkers_the_tasks_have():
  """config (the lowest floor) cannot import tasks, so it spells the checker names again."""
  from rasr_jax import tasks
  assert config_lib.QA_CHECKERS == tasks.CHECKERS


def test_config_names_the_tasks_self_alignment_prompts_from_and_the_bundled_mix_weighs():
  from rasr_jax import tasks
  from rasr_jax.tasks.base import ALL_TASKS
  assert config_lib.SELF_ALIGN_TASKS == tasks.TASKS
  assert config_lib.BUNDLED_TASKS == ALL_TASKS


@pytest.mark.parametrize(
    "batch, data, accum, source, rows",
    [
        (8, 1, 1, "qa", 1),  # batch / 8
        (64, 1, 1, "qa", 8),
        (20, 1, 1, "qa", 3),  # rounded up
        (64, 4, 1, "qa", 8),  # a multiple of the data shards
        (16, 4, 1, "qa", 4),  # at least one row per shard
        (32, 2, 2, "qa", 4),  # per micro-batch shard
        (64, 2, 1, "mixed", 8),  # as many text as question/answer rows per shard
    ])
def test_default_reflection_rows(batch, data, accum, source, rows):
  """reflect.rows = 0 resolves to batch / 8 rounded up to a multiple of the row unit."""
  config = make_config(
      **{
          "reflect.rows": 0,
          "reflect.source": source,
          "train.batch_size": batch,
          "train.grad_accum_steps": accum,
          "mesh.data": data,
          "mesh.fsdp": 1
      })
  assert config_lib.resolve_mesh(config, data).reflect.rows == rows


def test_rounding():
  from rasr_jax import rounding
  assert [rounding.ceil_div(v, 4) for v in (1, 4, 5, 8)] == [1, 1, 2, 2]
  assert [rounding.round_up(v, 128) for v in (1, 128, 32003)] == [128, 128, 32128]
