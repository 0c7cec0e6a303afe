"""Step time, tokens/s and MFU of the standard train step, with the matmul peak measured here.

  python benchmarks/train_step.py --config=configs/bench.py [--steps=5] \
      [--config.model.dtype=bfloat16] [--compare=hf]

Prints one JSON object. The MFU denominator is the median FLOP/s of a float32 2048^3 matmul
measured in the same process (on accelerators: the vendor peak from rasr_jax.training.flops).

--compare=hf also times HuggingFace's `LlamaForCausalLM` of the same shape in the same process,
one step of each in turn (common.interleaved_call_medians): `torch.compile`d forward, the same
next-token cross-entropy over all T positions, backward, global-norm clipping and fused AdamW
with the config's hyperparameters, fp32, on the same tokens. On CPU the peak is then the larger
of jax's and torch's matmul, so both MFUs share one denominator, and `ratio_tokens_per_sec` is
rasr_jax's tokens/s (the top-level figures) over HuggingFace's (under "hf").
"""

import json
import platform
import resource
import statistics
import time

import jax
import numpy as np
from absl import app, flags
from ml_collections import config_flags

from common import (
    batch_and_pieces,
    bundled_tokenizer,
    hf_model,
    interleaved_call_medians,
    step_caller,
)
from rasr_jax import config as config_lib
from rasr_jax import sharding
from rasr_jax.training import flops as flops_lib
from rasr_jax.training import optim, train_state
from rasr_jax.training import step as train_step

_CONFIG = config_flags.DEFINE_config_file("config", "configs/bench.py", "Benchmark config.")
_STEPS = flags.DEFINE_integer("steps", 5, "Timed steps (after 2 warm-up steps).")
_COMPARE = flags.DEFINE_enum("compare", "none", ["none", "hf"],
                             "hf: also time HuggingFace's Llama with torch.compile, interleaved.")

MATMUL = 2048  # side of the square float32 matmul whose FLOP/s is the CPU peak


def torch_matmul_peak(size=MATMUL, repeats=10) -> float:
  """Median FLOP/s of a float32 [size, size] matmul in torch."""
  import torch
  a = torch.ones((size, size))
  a @ a
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    a @ a
    times.append(time.perf_counter() - start)
  return 2 * size**3 / statistics.median(times)


def host_kernel_work(call, calls=3):
  """The kernel's work for this process per call of `call` (getrusage over `calls` calls): minor
  page faults and system seconds. XLA's CPU runtime allocates each execution's temporary buffer
  afresh, so these show what the C allocator makes the kernel do (docs/performance.md)."""
  before = resource.getrusage(resource.RUSAGE_SELF)
  for _ in range(calls):
    jax.block_until_ready(call())
  after = resource.getrusage(resource.RUSAGE_SELF)
  return {
      "minor_page_faults_per_step": (after.ru_minflt - before.ru_minflt) / calls,
      "system_s_per_step": (after.ru_stime - before.ru_stime) / calls,
  }


def hf_step(config, tokens):
  """A zero-argument callable running one HuggingFace training step on `tokens` [B, T + 1]
  (returns the loss as a float), and the library versions."""
  import torch
  model, versions = hf_model(config)
  if model is None:
    raise app.UsageError("--compare=hf needs torch and transformers (pip install torch "
                         "transformers)")
  model.train()
  forward = torch.compile(model)
  t = config.train
  optimizer = torch.optim.AdamW(model.parameters(),
                                lr=t.lr,
                                betas=(t.b1, t.b2),
                                eps=t.eps,
                                weight_decay=t.weight_decay,
                                fused=True)
  inputs = torch.as_tensor(np.asarray(tokens[:, :-1]), dtype=torch.long)
  targets = torch.as_tensor(np.asarray(tokens[:, 1:]), dtype=torch.long)

  def step():
    logits = forward(input_ids=inputs).logits
    loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten())
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), t.grad_clip)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss.item()

  return step, versions


def main(argv):
  del argv
  config = config_lib.resolve_mesh(config_lib.load(_CONFIG.value), jax.device_count())
  mesh = sharding.make_mesh(config.mesh)
  graphdef, abstract, _ = train_state.abstract_state(config)
  state, shardings = train_state.init_state(config, mesh)
  tx = optim.make_optimizer(config.train, abstract.params)
  tokenizer = bundled_tokenizer(config)
  batch, pieces = batch_and_pieces(config, mesh, tokenizer)
  step_fn = train_step.jit_train_step(
      train_step.make_train_step(graphdef, config, tx, tokenizer.marker_ids, pieces=pieces),
      shardings, mesh)
  rows, seq = config.train.batch_size, config.data.seq_len
  on_cpu = jax.devices()[0].platform == "cpu"
  others = {}  # timed in the same rounds
  if _COMPARE.value == "hf":
    others["hf"], versions = hf_step(config, batch[0].tokens)
  step = step_caller(step_fn, state, batch)
  with sharding.activate(mesh):
    median = interleaved_call_medians({"rasr_jax": step, **others}, _STEPS.value)
    host = host_kernel_work(step) if on_cpu else None
  peaks = {"jax": flops_lib.measure_matmul_peak(MATMUL)} if on_cpu else {}
  if on_cpu and _COMPARE.value == "hf":
    peaks["torch"] = torch_matmul_peak()
  peak = max(peaks.values()) if on_cpu else flops_lib.peak_flops_per_device(0.0)
  flops = flops_lib.flops_per_step(config)
  rates = lambda seconds: {
      "step_time_s_median": seconds,
      "tokens_per_sec": rows * seq / seconds,
      "mfu": flops / seconds / (peak * jax.device_count()),
  }
  result = {"benchmark": "train_step", **rates(median["rasr_jax"]), "host": host}
  if _COMPARE.value == "hf":
    result["hf"] = dict(rates(median["hf"]), versions=versions)
    result["ratio_tokens_per_sec"] = median["hf"] / median["rasr_jax"]
  result.update({
      "peak_flops_per_device": peak,
      "matmul_peaks": peaks,
      "flops_per_step": flops,
      "params": sum(x.size for x in jax.tree.leaves(abstract.params)),
      "shape": {
          "d_model": config.model.d_model,
          "layers": config.model.num_layers,
          "seq_len": seq,
          "batch": rows,
          "dtype": config.model.dtype,
          "document_masking": config.data.document_masking
      },
      "jax": jax.__version__,
      "python": platform.python_version(),
      "device": jax.devices()[0].device_kind,
      "devices": jax.device_count(),
  })
  print(json.dumps(result, indent=2))


if __name__ == "__main__":
  app.run(main)
