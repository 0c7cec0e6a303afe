"""Every benchmark script runs: the smallest shapes, one timed round, its JSON keys checked
(the evidence benchmark behind --slow)."""

import importlib.util
import json
import os
import sys
from types import SimpleNamespace

import pytest

from conftest import QA, REPO, SMALL, cli_args, run_checked, run_python, run_refused

SMALL_FLAGS = cli_args()  # the SMALL test shapes, as overrides of a benchmark's --config

BENCHMARKS_PATH = {"PYTHONPATH": os.pathsep.join([REPO, os.path.join(REPO, "benchmarks")])}


def _run(script, *args, env=None):
  """stdout of `python benchmarks/SCRIPT args` (with extra environment variables `env`); fails
  the test with its stderr otherwise."""
  return run_checked(
      [sys.executable, os.path.join(REPO, "benchmarks", script), *args],
      timeout=600,
      env={
          **BENCHMARKS_PATH,
          **(env or {})
      })


def _json(stdout):
  return json.loads(stdout[stdout.index("{"):])


def test_train_step_benchmark():
  report = _json(_run("train_step.py", "--config=configs/tiny.py", *SMALL_FLAGS, "--steps=1"))
  assert report["benchmark"] == "train_step"
  for key in ("step_time_s_median", "tokens_per_sec", "mfu", "peak_flops_per_device",
              "flops_per_step", "params", "shape", "jax", "device", "devices", "python"):
    assert key in report, key
  assert report["step_time_s_median"] > 0 and report["params"] > 0
  assert set(report["host"]) == {"minor_page_faults_per_step", "system_s_per_step"}
  assert min(report["host"].values()) >= 0


def test_train_step_benchmark_against_huggingface():
  """--compare=hf times HuggingFace's Llama beside the step (torch.compile switched off here:
  compiling takes minutes on CI's CPU, and the script's path is the same)."""
  pytest.importorskip("transformers")
  report = _json(
      _run("train_step.py",
           "--config=configs/tiny.py",
           *SMALL_FLAGS,
           "--steps=1",
           "--compare=hf",
           env={"TORCH_COMPILE_DISABLE": "1"}))
  assert report["hf"]["step_time_s_median"] > 0 and report["hf"]["mfu"] > 0
  assert report["ratio_tokens_per_sec"] == pytest.approx(report["tokens_per_sec"]
                                                         / report["hf"]["tokens_per_sec"])
  assert set(report["matmul_peaks"]) == {"jax", "torch"}
  assert report["peak_flops_per_device"] == max(report["matmul_peaks"].values())


def test_rasr_overhead_benchmark_with_reflection_off_in_its_config():
  """configs/bench.py has reflection off: every variant still resolves its own rows."""
  report = _json(
      _run("rasr_overhead.py", "--config=configs/bench.py", *SMALL_FLAGS,
           "--config.reflect.enabled=False", "--config.reflect.rows=0", "--steps=1"))
  assert report["benchmark"] == "rasr_overhead"
  for key in ("standard_step_s", "rasr_step_s", "ratio", "ratio_stopped", "ratio_k1_all_rows",
              "ratio_k3_all_rows", "document_mask_ratio", "step_s", "reflection", "shape"):
    assert key in report, key
  assert report["reflection"]["rows"] > 0 and report["ratio"] > 0
  assert set(report["per_pass_s"]) == {
      "draft_decoding", "critic", "refine", "oracle", "forward_other", "backward"
  }
  assert all(report["per_pass_s"][part] > 0 for part in ("critic", "draft_decoding", "oracle"))


def test_decode_benchmark():
  report = _json(
      _run("decode.py", "--config=configs/tiny.py", *SMALL_FLAGS, "--batch=2", "--prompt_len=8",
           "--new_tokens=4", "--iterations=1", "--rounds=1"))
  assert report["benchmark"] == "decode"
  for key in ("prefill_s", "generate_s", "prefill_tokens_per_s", "decode_tokens_per_s",
              "end_to_end_tokens_per_s"):
    assert key in report["jax"], key
  assert {"shape", "versions", "device"} <= set(report)
  if importlib.util.find_spec("transformers") is not None:  # the test extra installs it
    assert set(report["hf"]) == set(
        report["jax"]) - {"reflect_loop_s", "reflect_loop_tokens_per_s", "reflect_loop_over_draft"}


def test_decode_parts_benchmark():
  sets = [f"--set={k}={v}" for k, v in SMALL.items() if k.startswith("model.")]
  report = _json(
      _run("decode_parts.py", "--config=configs/tiny.py", *sets, "--batch=2", "--prompt_len=8",
           "--new_tokens=4", "--rounds=1"))
  assert report["benchmark"] == "decode_parts"
  parts = {"step", "matmuls", "cache_attention", "lm_head", "read"}
  assert set(report["median_s"]) == set(report["bytes"]) == set(report["gb_per_s"]) == parts
  assert set(report["share_of_step"]) == parts - {"step", "read"}
  assert report["bytes"]["step"] == sum(report["bytes"][p] for p in parts - {"step", "read"})
  assert report["step_over_floor"] > 0


def test_data_startup_benchmark(tmp_path):
  report = _json(_run("data_startup.py", f"--workdir={tmp_path}", "--gigabytes=0.001",
                      "--rounds=1"))
  assert report["documents"] > 0 and report["convert_s"] > 0
  for name in ("jsonl", "array_record"):
    assert set(report["medians"][name]) == {"load_s", "first_batch_s", "peak_rss_gib"}
  assert report["first_batch_ratio"] > 0 and report["peak_rss_ratio"] > 0


# Slow (about 200 s here: four trainings and four evaluations).
@pytest.mark.slow
def test_evidence_benchmark(tmp_path):
  """Four trainings and their evaluations on the SMALL shapes with question/answer rows (one
  seed: no intervals); the equal-compute run takes more steps than the others."""
  sets = [f"--set={k}={v}" for k, v in {**SMALL, **QA, "train.steps": 2}.items()]
  table = _run("evidence.py", "--config=configs/tiny.py", f"--workdir={tmp_path}", "--seeds=0",
               "--limit=2", *sets)
  with open(tmp_path / "table.json") as f:
    summary = json.load(f)
  assert {"seeds", "limit_per_task", "table", "per_seed", "flops_ratio"} <= set(summary)
  assert summary["table"] in table
  assert set(summary["per_seed"]) == {"standard_tokens", "standard_compute", "rasr", "rasr_teacher"}
  assert summary["standard_compute_steps"] > summary["steps"] == 2


@pytest.mark.slow
def test_evidence_benchmark_on_the_probe_alone(tmp_path):
  """--probe_only: RASR and standard pretraining on the probe's question/answer files, scored by
  the `qa` evaluation task on held-out additions training never saw."""
  shapes = {**SMALL, "train.steps": 2, "data.seq_len": 64}  # rows hold P + Y = 16 + 36 tokens
  sets = [f"--set={k}={v}" for k, v in shapes.items()]
  _run("evidence.py", "--config=configs/tiny.py", f"--workdir={tmp_path}", "--seeds=0", "--limit=2",
       "--probe_only", "--trainings=rasr,standard_tokens", *sets)
  with open(tmp_path / "table.json") as f:
    summary = json.load(f)
  assert set(summary["per_seed"]) == {"rasr", "standard_tokens"}
  rasr = summary["per_seed"]["rasr"][0]["rasr"]["qa"]
  assert len(rasr["accuracy_per_iteration"]) == 4  # y(0) .. y(3) of configs/tiny.py
  steps_right = summary["steps_right_per_draft"]
  assert len(steps_right["rasr"]["rasr"][0]) == 4 and len(
      steps_right["standard_tokens"]["standard"][0]) == 1
  assert all(0 <= f <= 1 for f in steps_right["rasr"]["standard"][0])
  held_out = [json.loads(line) for line in open(tmp_path / "probe_data" / "held_out.jsonl")]
  training = {json.loads(line)["prompt"] for line in open(tmp_path / "probe_data" / "qa.jsonl")}
  training |= {
      json.loads(line)["text"].split("\n")[0]
      for line in open(tmp_path / "probe_data" / "text.jsonl")
  }
  assert len(held_out) == 2 and not training & {r["prompt"] for r in held_out}


def test_attention_benchmark():
  report = _json(_run("attention.py", "--config=configs/tiny.py", "--rounds=1"))
  assert set(report["over_xla"]) == {
      f"{impl}_{mask}" for impl in ("dense", "dense_whole", "blockwise")
      for mask in ("causal", "segment")
  }
  assert all(ratio > 0 for ratio in report["over_xla"].values())
  assert report["dtype"] == "float32"
  # bfloat16 inputs at another length (--set); cuDNN joins them on GPUs only
  # (attention.cudnn_runs, tests/test_attention.py)
  report = _json(
      _run("attention.py", "--config=configs/tiny.py", "--rounds=1", "--dtype=bfloat16",
           "--set=data.seq_len=256"))
  assert report["dtype"] == "bfloat16" and report["shape"]["length"] == 256
  impls = {name.rsplit("_", 1)[0] for name in report["over_xla"]}
  assert impls == {"dense", "dense_whole", "blockwise"}


PEAK_BYTES = 3 * 2**30  # the peak a stand-in device reports in the memory benchmark's test


def test_memory_peak_benchmark():
  """A CPU reports no peak: one error line at start-up. A device standing in for a GPU reports
  PEAK_BYTES: the report sets the analysis of the step that ran against it, and memory_fit's
  estimate (compiled from abstract inputs) is that analysis."""
  flags = [*SMALL_FLAGS, "--config.train.grad_accum_steps=auto", "--steps=1"]
  script = [sys.executable, "benchmarks/memory_peak.py", "--config=configs/tiny.py", *flags]
  assert run_refused(script, env=BENCHMARKS_PATH) == (
      "error: cpu devices report no peak memory (memory_stats); run this on a GPU or TPU")
  stand_in = f"""
import sys
sys.path[:0] = ["benchmarks"]
sys.argv = ["memory_peak.py", "--config=configs/tiny.py", *{flags!r}]
import jax
real = jax.local_devices

class Reporting:  # a CPU device that reports memory as a GPU does
  def __init__(self, device):
    self.device = device
  def memory_stats(self):
    return {{"peak_bytes_in_use": {PEAK_BYTES}, "bytes_limit": 8 * 2**30}}

jax.local_devices = lambda *args, **kwargs: [Reporting(d) for d in real(*args, **kwargs)]
from absl import app
import memory_peak
app.run(memory_peak.main)
"""
  report = _json(run_python(stand_in))
  fit = report["memory_fit"]
  assert report["grad_accum_steps"] == fit["chosen"]["grad_accum_steps"] == 1  # it fits 8 GiB
  assert fit["limit_gib"] == 8.0
  assert report["peak_bytes"] == report["peak_bytes_before_steps"] == PEAK_BYTES
  assert report["estimate_bytes"] == report["analysis_bytes"] > 0
  assert report["peak_over_analysis"] == PEAK_BYTES / report["analysis_bytes"]
  assert report["step_s"] > 0


def test_loop_trace_benchmark(tmp_path):
  """The trace written by train.profile_steps is read back: the device ran inside its window; a
  run that ends before the steps to trace is one error line."""
  sets = [
      f"--set={flag[len('--config.'):]}" for flag in SMALL_FLAGS
      if not flag.startswith("--config.train.steps=")  # --steps sets it
  ]
  traced = tmp_path / "traced"
  report = _json(_run("loop_trace.py", f"--workdir={traced}", "--steps=4", "--profile=2,4", *sets))
  assert 0 < report["device_busy_s"] <= report["window_s"]
  assert 0 < report["device_busy_fraction"] <= 1
  by_count = report["busy_executors_s"]  # {"0": s, "1": s, ...}, one count per executor and none
  assert len(by_count) == len(report["executors"]) + 1
  assert sum(by_count.values()) == pytest.approx(report["window_s"])
  assert report["window_s"] - by_count["0"] == pytest.approx(report["device_busy_s"])
  short = tmp_path / "short"
  script = [sys.executable, "benchmarks/loop_trace.py", f"--workdir={short}", "--steps=2"]
  assert run_refused([*script, "--profile=3,4", *sets], env=BENCHMARKS_PATH) == (
      f"error: no trace under {short}/profile: the run did not reach steps 3,4")


def _plane(name, lines):
  """A trace plane as jax.profiler.ProfileData reads it: {line name: [(event, start, end)]}."""
  event = lambda name, start, end: SimpleNamespace(
      name=name, start_ns=start, duration_ns=end - start)
  return SimpleNamespace(name=name,
                         lines=[
                             SimpleNamespace(name=line, events=[event(*e)
                                                                for e in events])
                             for line, events in lines.items()
                         ])


def test_loop_trace_reads_accelerator_planes_and_else_the_cpu_threads(monkeypatch):
  """A GPU or TPU plane's whole-program line is its executor (its streams where it has none);
  the host's XLA threads count only when no accelerator is traced; and the time each number of
  executors was busy adds up to the window."""
  monkeypatch.syspath_prepend(os.path.join(REPO, "benchmarks"))
  import loop_trace
  cpu = _plane(
      "/host:CPU", {
          "tf_XLAEigen/1": [("ThunkExecutor::Execute", 0, 10), ("other", 10, 99),
                            ("ThunkExecutor::Execute", 2, 6)],
          "tf_XLAEigen/2": [("ThunkExecutor::Execute", 5, 20)],
          "python": [("ThunkExecutor::Execute", 50, 60)]
      })
  gpu = _plane(
      "/device:GPU:0", {
          "XLA Modules": [("jit_step", 100, 200)],
          "Stream #1": [("kernel", 110, 120), ("kernel", 300, 310)]
      })
  tpu = _plane("/device:TPU:0", {"Stream #7": [("kernel", 400, 410), ("kernel", 420, 430)]})
  threads = loop_trace.executions([cpu])
  assert threads == {
      "/host:CPU tf_XLAEigen/1": [(0, 10), (2, 6)],
      "/host:CPU tf_XLAEigen/2": [(5, 20)]
  }
  assert loop_trace.busy_executors(threads) == {0: 0, 1: 15, 2: 5}  # 0-5, 10-20 | 5-10
  devices = loop_trace.executions(iter([cpu, gpu, tpu]))
  assert devices == {
      "/device:GPU:0 XLA Modules": [(100, 200)],
      "/device:TPU:0 Stream #7": [(400, 410), (420, 430)]
  }
  assert loop_trace.busy_executors(devices) == {0: 210, 1: 120, 2: 0}


def test_safety_drafts_counts_flagged_drafts_and_weighs_the_auroc_by_pairs(tmp_path):
  """Two windows of two steps with 4 rows each: flagged drafts are rate x rows, and the AUROC of a
  window weighs each step's by its pairs (a step without pairs counts nothing)."""
  steps = [  # (rows/support, rate of bias, AUROC, pairs)
      (1, 0.25, 0.5, 0), (2, 0.5, 1.0, 3), (4, 0.0, 0.5, 0), (3, 0.75, 0.6, 5)
  ]
  with open(tmp_path / "metrics.jsonl", "w") as f:
    f.write(json.dumps({"step": 0, "loss": 1.0}) + "\n")  # a record without safety metrics
    for step, (support, rate, area, pairs) in enumerate(steps, 1):
      f.write(
          json.dumps({
              "step": step,
              "rows/support": support,
              "rows/facts": 4 - support,
              "safety/rate_k0/bias": rate,
              "critic/auroc/bias": area,
              "critic/auroc_pairs/bias": pairs
          }) + "\n")
  report = _json(_run("safety_drafts.py", f"--workdir={tmp_path}", "--windows=2"))
  first, second = report["windows"]
  assert first == {
      "steps": [1, 2],
      "rows": 8,
      "support_rows": 3,
      "bias": {
          "flagged": 3,
          "critic_auroc": 1.0,
          "pairs": 3
      }
  }
  assert second["steps"] == [3, 4] and second["support_rows"] == 7
  assert second["bias"] == {"flagged": 3, "critic_auroc": 0.6, "pairs": 5}
