"""How often each safety label fired on a run's training drafts, and how well the critic told them.

  PYTHONPATH=. python benchmarks/safety_drafts.py --workdir=/tmp/safety_tiny [--windows=4]

Reads a training run's metrics.jsonl (logged every step: `--config.train.log_every_steps=1`,
with `reflect.safety_dims`) and prints one JSON object: for each of --windows equal spans of
steps, the reflection rows and the support-ticket rows drafted, and per safety dimension the
first drafts y(0) its label flagged (`safety/rate_k0/<dim>` times the step's rows) and the
critic's AUROC on that span (each step's `critic/auroc/<dim>` weighted by its pairs; null
without a pair).
"""

import json
import os

from absl import app, flags

_WORKDIR = flags.DEFINE_string("workdir", None, "Work directory of the run.", required=True)
_WINDOWS = flags.DEFINE_integer("windows", 4, "Equal spans of steps to count over.")

RATE = "safety/rate_k0/"


def windows(records, count):
  """Per span of steps: rows, support rows, and per dimension flagged drafts and AUROC."""
  steps = [r for r in records if any(key.startswith(RATE) for key in r)]
  dims = sorted(key[len(RATE):] for key in steps[0] if key.startswith(RATE))
  out = []
  for i in range(count):
    span = steps[len(steps) * i // count:len(steps) * (i + 1) // count]
    rows = [sum(v for k, v in r.items() if k.startswith("rows/")) for r in span]
    entry = {
        "steps": [span[0]["step"], span[-1]["step"]],
        "rows": round(sum(rows)),
        "support_rows": round(sum(r.get("rows/support", 0) for r in span))
    }
    for dim in dims:
      pairs = sum(r[f"critic/auroc_pairs/{dim}"] for r in span)
      area = sum(r[f"critic/auroc/{dim}"] * r[f"critic/auroc_pairs/{dim}"] for r in span)
      entry[dim] = {
          "flagged": round(sum(r[RATE + dim] * n for r, n in zip(span, rows))),
          "critic_auroc": round(area / pairs, 3) if pairs else None,
          "pairs": round(pairs)
      }
    out.append(entry)
  return out


def main(argv):
  del argv
  with open(os.path.join(_WORKDIR.value, "metrics.jsonl")) as f:
    records = [json.loads(line) for line in f]
  if not any(key.startswith(RATE) for r in records for key in r):
    raise app.UsageError(f"{_WORKDIR.value}/metrics.jsonl has no {RATE}* metrics: train with "
                         "reflect.safety_dims set")
  report = {"benchmark": "safety_drafts", "windows": windows(records, _WINDOWS.value)}
  print(json.dumps(report, indent=2))


if __name__ == "__main__":
  app.run(main)
