"""`--mode=avr_data`: one stage of AvR data from a checkpoint, built a chunk of prompts at a time.

`avr.stage`: `trees` (Stage I: avr_trees.py), `search` (Stage II's greedy search and its long
answers) or `final_pairs` (Stage II's length-controlled pairs; both avr_search.py). Outputs go
to `avr.output` (default WORKDIR/avr/<stage>). Each chunk of `avr.chunk_prompts` prompts is
written to `chunks/` when done, beside a `meta.json` naming the prompts, the settings, the
checkpoint step and the tokenizer: a killed run rerun with the same command builds only the
missing chunks (a chunk's sampling depends on its own seed, so a rebuilt chunk is the one it
replaces); other prompts, settings or checkpoint start over.
"""

import dataclasses
import json
import os

from absl import logging
from etils import epath

from rasr_jax import progress, storage
from rasr_jax.data.sources import DataError
from rasr_jax.posttrain import avr, avr_search, avr_trees

# stage -> (chunk builder (model, prompts, reward, cfg, seed) -> JSON records,
#           writer (every record, output folder, avr.Rows) -> summary)
STAGES = {
    "trees": (avr_trees.build_chunk, avr_trees.write_outputs),
    "search": (avr_search.search_chunk, avr_search.write_search),
    "final_pairs": (avr_search.finals_chunk, avr_search.write_finals),
}
CHUNK_SEED_STRIDE = 1000  # chunk c samples with seeds config.seed + 1000 c + 0, 1, ...


def build(config, workdir, checkpoint=None) -> dict:
  """Stage `avr.stage` of the checkpoint in `workdir` into its output folder; returns the
  summary (also written as summary.json)."""
  import jax  # after the start-up checks

  from rasr_jax import distributed
  from rasr_jax.generation import inference
  cfg = config.avr
  build_chunk, write_outputs = STAGES[cfg.stage]
  prompts = avr.load_prompts(config)
  if not prompts:
    raise DataError("avr_data: no prompts")
  if cfg.reward != avr.CRITIC:  # a function that raises fails before the model loads
    avr.Reward(cfg.reward)(prompts[0], prompts[0].answer or "")
  output = cfg.output or os.path.join(workdir, "avr", cfg.stage)
  chunks = os.path.join(output, "chunks")
  model = inference.InferenceModel(config, workdir, checkpoint)
  reward = avr.Reward(cfg.reward, model)
  writer = jax.process_index() == 0  # every process builds the same records
  identity = {
      "prompts": [dataclasses.asdict(p) for p in prompts],
      "avr": {
          k: v for k, v in dataclasses.asdict(cfg).items() if k != "output"
      },
      "seed": config.seed,
      "parameters": model.origin,  # another checkpoint (or the same step of another run)
      "tokenizer_sha256": model.tokenizer.checksum
  }
  storage.keyed_folder(chunks, identity, "*.jsonl", writer)  # other prompts: built anew
  distributed.sync("avr chunks kept")
  starts = range(0, len(prompts), cfg.chunk_prompts)
  todo = [s for s in starts if not epath.Path(chunks, f"{s:09d}.jsonl").exists()]
  if len(todo) < len(starts):
    logging.info("avr_data: %d of %d chunks of prompts already built",
                 len(starts) - len(todo), len(starts))
  for start in progress.track(todo, len(todo), f"AvR {cfg.stage}", "chunks"):
    seed = config.seed + CHUNK_SEED_STRIDE * (start // cfg.chunk_prompts)
    records = build_chunk(model, prompts[start:start + cfg.chunk_prompts], reward, cfg, seed)
    if writer:
      avr.write_jsonl(os.path.join(chunks, f"{start:09d}.jsonl"), records)
  distributed.sync("avr chunks written")
  records = [
      json.loads(line)
      for s in starts
      for line in epath.Path(chunks, f"{s:09d}.jsonl").read_text().splitlines()
  ]
  result = {}
  if writer:
    result = write_outputs(records, output, avr.Rows(model.tokenizer, config.data.seq_len + 1))
    storage.write_atomically(os.path.join(output, "summary.json"),
                             json.dumps(dict(result, stage=cfg.stage), indent=2).encode())
  return dict(result, stage=cfg.stage, output=output)
