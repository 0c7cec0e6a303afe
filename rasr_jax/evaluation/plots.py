"""PNG plots of an evaluation report (matplotlib, headless)."""

import os

import matplotlib
from etils import epath

matplotlib.use("Agg")
import matplotlib.pyplot as plt


def _save(fig, path):
  """Writes `fig` as a PNG at `path` (local or a bucket) and closes it; returns `path`."""
  fig.tight_layout()
  with epath.Path(path).open("wb") as f:
    fig.savefig(f, format="png", dpi=100)
  plt.close(fig)
  return path


def accuracy_per_iteration(path, title, report):
  """Accuracy of y(0), y(1), ... with the answer at the learned stop as a dashed line."""
  accuracy = report["accuracy_per_iteration"]
  fig, ax = plt.subplots(figsize=(4.5, 3.2))
  ax.plot(range(len(accuracy)), accuracy, marker="o", label="draft y(k)")
  ax.axhline(report["accuracy"],
             color="tab:red",
             linestyle="--",
             label=f"answer given (mean k = {report['mean_iterations']:.2f})")
  ax.set(xlabel="iteration k",
         ylabel="accuracy",
         title=title,
         ylim=(0, 1),
         xticks=range(len(accuracy)))
  ax.legend(fontsize=8)
  return _save(fig, path)


def reliability_diagram(path, title, calibration):
  """Accuracy against the critic's mean confidence per bin; the diagonal is perfect."""
  bins = calibration["bins"]
  fig, ax = plt.subplots(figsize=(3.6, 3.6))
  ax.plot([0, 1], [0, 1], color="grey", linestyle=":")
  ax.bar([(b["bin"][0] + b["bin"][1]) / 2 for b in bins], [b["accuracy"] for b in bins],
         width=0.09,
         alpha=0.7,
         label="accuracy")
  ax.plot([b["confidence"] for b in bins], [b["accuracy"] for b in bins],
          "o",
          color="tab:red",
          label="mean confidence")
  ax.set(xlabel="critic confidence (factual)",
         ylabel="accuracy",
         xlim=(0, 1),
         ylim=(0, 1),
         title=f"{title}\nECE {calibration['ece']:.3f}")
  ax.legend(fontsize=8)
  return _save(fig, path)


def strategy_trace(path, records):
  """The adaptive strategy over training (metrics.jsonl records with `strategy/current`): the
  strategy trained with, and the bandit's probability of each strategy."""
  steps = [r["step"] for r in records]
  count = sum(1 for key in records[0] if key.startswith("strategy/probability/"))
  fig, (top, bottom) = plt.subplots(2, 1, figsize=(5, 4.2), sharex=True)
  top.step(steps, [r["strategy/current"] for r in records], where="post")
  top.set(ylabel="strategy", yticks=range(count), title="adaptive strategy")
  for s in range(count):
    bottom.plot(steps, [r[f"strategy/probability/{s}"] for r in records], label=f"strategy {s}")
  bottom.set(xlabel="step", ylabel="bandit probability", ylim=(0, 1))
  bottom.legend(fontsize=8)
  return _save(fig, path)


def write_all(out_dir, reports):
  """Plots for every {(method, task): iteration report} with more than one draft; their paths."""
  paths = []
  for (method, task), report in reports.items():
    stem = os.path.join(out_dir, f"{method}_{task}")
    if len(report["accuracy_per_iteration"]) > 1:
      paths.append(accuracy_per_iteration(f"{stem}_iterations.png", f"{task} ({method})", report))
    if "calibration" in report:
      paths.append(
          reliability_diagram(f"{stem}_calibration.png", f"{task} ({method})",
                              report["calibration"]))
  return paths
