"""Start-up time and peak host memory of the data pipeline: a generated corpus read as .jsonl
against the same corpus converted to ArrayRecord token shards.

  PYTHONPATH=. python benchmarks/data_startup.py --workdir=/tmp/data_startup [--gigabytes=1]

Writes a corpus of about --gigabytes of JSONL (documents of random words), converts it with
`python -m rasr_jax.data.convert` (timed), then, --rounds times in turn, starts a fresh process
per format that loads the corpus as training does (`sources.load_corpus`), builds the grain
pipeline of configs/tiny.py and takes the first batch. Each process reports its seconds to the
first batch and its peak resident memory; the medians and the ratio (jsonl / shards) are printed
as one JSON object. Generated files are kept in --workdir and reused.
"""

import json
import os
import statistics
import subprocess
import sys
import time

import numpy as np
from absl import app, flags

_WORKDIR = flags.DEFINE_string("workdir", "/tmp/data_startup", "Where the corpus and shards go.")
_GIGABYTES = flags.DEFINE_float("gigabytes", 1.0, "Size of the generated .jsonl corpus.")
_ROUNDS = flags.DEFINE_integer("rounds", 3, "Start-ups of each format, in turn.")
_VOCAB = 4096
WORDS = 20_000  # distinct random words
DOCUMENT_WORDS = (50, 800)  # words per document, uniform

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Run in a fresh process: the start-up of a training run's data, as loop.setup does it.
MEASURE = """
import json, resource, sys, time
start = time.perf_counter()
from rasr_jax import config as config_lib
from rasr_jax.data import pipeline, sources
from rasr_jax.data import tokenizer as tok_lib
from configs import tiny
cd = tiny.get_config()
cd.data.source, cd.data.files, cd.data.tokenizer = "files", sys.argv[1], sys.argv[2]
cd.reflect.enabled = False
config = config_lib.load(cd)
corpus = sources.load_corpus(config.data, config.seed)
tokenizer = tok_lib.load(config.data.tokenizer, config.model.vocab_size)
sources.check_tokenized(corpus, tokenizer.checksum)
loaded = time.perf_counter()
ds = pipeline.make_dataset(corpus, tokenizer, seq_len=config.data.seq_len,
                           global_batch=config.train.batch_size, seed=config.seed,
                           streams=config.data.streams or 1)
next(iter(ds))
done = time.perf_counter()
print(json.dumps({"load_s": loaded - start, "first_batch_s": done - start,
                  "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
                  "documents": len(corpus.documents)}))
"""


def _generate(path, gigabytes):
  """A .jsonl corpus of about `gigabytes` (random words; fixed seed)."""
  rng = np.random.default_rng(0)
  letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
  words = ["".join(rng.choice(letters, rng.integers(2, 10))) for _ in range(WORDS)]
  target, written = int(gigabytes * 2**30), 0
  with open(path + ".part", "w") as f:
    while written < target:
      ids = rng.integers(0, WORDS, size=(1000, DOCUMENT_WORDS[1]))
      lengths = rng.integers(*DOCUMENT_WORDS, size=1000)
      lines = "".join(
          json.dumps({"text": " ".join(words[i]
                                       for i in row[:n])}) + "\n"
          for row, n in zip(ids, lengths))
      f.write(lines)
      written += len(lines)
  os.rename(path + ".part", path)


def _run(argv):
  result = subprocess.run(argv,
                          cwd=REPO,
                          env=dict(os.environ, PYTHONPATH=REPO, JAX_PLATFORMS="cpu"),
                          capture_output=True,
                          text=True)
  if result.returncode:
    sys.exit(f"{' '.join(argv[:4])} failed:\n{result.stderr[-3000:]}")
  return result.stdout


def main(argv):
  del argv
  os.makedirs(_WORKDIR.value, exist_ok=True)
  corpus = os.path.join(_WORKDIR.value, "corpus.jsonl")
  shards = os.path.join(_WORKDIR.value, "shards")
  if not os.path.exists(corpus):
    _generate(corpus, _GIGABYTES.value)
  convert_s = None
  if not os.path.exists(shards):
    start = time.perf_counter()
    _run([
        sys.executable, "-m", "rasr_jax.data.convert", f"--input={corpus}", f"--output={shards}",
        f"--vocab_size={_VOCAB}", "--tokenizer_sample_docs=20000"
    ])
    convert_s = time.perf_counter() - start
  with open(os.path.join(shards, "tokens.json")) as f:
    meta = json.load(f)
  tokenizer = os.path.join(shards, meta["tokenizer"])
  formats = {"jsonl": corpus, "array_record": os.path.join(shards, "*.array_record")}
  runs = {name: [] for name in formats}
  for _ in range(_ROUNDS.value):
    for name, files in formats.items():
      runs[name].append(json.loads(_run([sys.executable, "-c", MEASURE, files, tokenizer])))
  medians = {
      name: {
          key: statistics.median(r[key]
                                 for r in rs)
          for key in ("load_s", "first_batch_s", "peak_rss_gib")
      } for name, rs in runs.items()
  }
  print(
      json.dumps(
          {
              "corpus_gib":
                  os.path.getsize(corpus) / 2**30,
              "documents":
                  meta["documents"],
              "tokens":
                  meta["tokens"],
              "convert_s":
                  convert_s,
              "medians":
                  medians,
              "first_batch_ratio":
                  medians["jsonl"]["first_batch_s"] / medians["array_record"]["first_batch_s"],
              "peak_rss_ratio":
                  medians["jsonl"]["peak_rss_gib"] / medians["array_record"]["peak_rss_gib"],
              "cpus":
                  os.cpu_count(),
          },
          indent=2))


if __name__ == "__main__":
  app.run(main)
