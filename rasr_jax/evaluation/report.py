"""RASR's per-iteration report from per-item correctness (EVALUATION.md, RASR-specific reports).

An item is {"correct": [bool per draft y(0), y(1), ...], "stop": index of the answer given,
"confidence": [critic probability per draft] or None, "generated_tokens": int, and optionally
"disagreement": [a critic committee's disagreement per draft], "draft_safety": [{dimension:
label} per draft] with "safety" the answer given's, and "quality": [TrueQuality (factual, logic,
relevance) per draft]}. Items with fewer drafts than others (a Self-Refine answer accepted early)
keep their last draft for later k.
"""

import math

import numpy as np

from rasr_jax import config as config_lib

CALIBRATION_BINS = 10


def item(answer, correct, labeler=None, quality=None):
  """The report's item for a methods.Answer whose drafts were judged `correct` (and scored
  `quality`: `tasks.CheckResult.scores` per draft, if given); with a safety Labeler, the safety
  labels of the answer given."""
  out = {
      "correct": list(correct),
      "stop": answer.stop,
      "confidence": answer.confidence,
      "generated_tokens": answer.generated_tokens
  }
  if quality is not None:
    out["quality"] = [list(q) for q in quality]
  if answer.disagreement is not None:
    out["disagreement"] = answer.disagreement
  if labeler is not None:  # every draft's labels (the known answers of the safety dims)
    out["draft_safety"] = [labeler(draft) for draft in answer.drafts]
    out["safety"] = out["draft_safety"][answer.stop]
  if answer.dimension_scores is not None:
    out["dimension_scores"] = answer.dimension_scores
  return out


def sample(answer, correct, **identity):
  """The per-item record written beside the report: `identity` (ids, question), then every
  draft, its correctness, the answer given and any feedback."""
  return {
      **identity, "drafts": answer.drafts,
      "stop": answer.stop,
      "correct": list(correct),
      "feedback": answer.feedback
  }


def _padded(rows):
  """[items, drafts] array of per-item `rows`, each extended with its last value to the longest
  row."""
  width = max(len(row) for row in rows)
  return np.array([list(row) + [row[-1]] * (width - len(row)) for row in rows])


def wilson_interval(successes, total, z=1.96):
  """95 % Wilson score interval of a proportion, as (low, high)."""
  if not total:
    return (0.0, 0.0)
  p = successes / total
  centre = (p + z * z / (2 * total)) / (1 + z * z / total)
  half = z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / (1 + z * z / total)
  return (max(0.0, centre - half), min(1.0, centre + half))


def calibration(confidence, correct, bins=CALIBRATION_BINS):
  """Reliability diagram of probabilities `confidence` against 0/1 outcomes `correct`:
  per equal-width bin its count, mean confidence and accuracy; and the expected calibration
  error (count-weighted mean |accuracy - confidence|)."""
  confidence, correct = np.asarray(confidence, float), np.asarray(correct, float)
  index = np.minimum((confidence * bins).astype(int), bins - 1)
  table, error = [], 0.0
  for b in range(bins):
    members = index == b
    n = int(members.sum())
    if n:
      mean_conf, accuracy = float(confidence[members].mean()), float(correct[members].mean())
      error += n * abs(accuracy - mean_conf)
      table.append({
          "bin": [b / bins, (b + 1) / bins],
          "count": n,
          "confidence": round(mean_conf, 4),
          "accuracy": round(accuracy, 4)
      })
  return {"bins": table, "ece": round(error / max(len(confidence), 1), 4)}


def auroc(scores, positive):
  """Area under the ROC curve of `scores` separating positive from negative outcomes (the
  probability that a random positive scores above a random negative, ties half); None when
  either class is absent."""
  scores, positive = np.asarray(scores, float), np.asarray(positive, bool)
  pos, neg = scores[positive], scores[~positive]
  if not len(pos) or not len(neg):
    return None
  above = (pos[:, None] > neg[None]).sum() + 0.5 * (pos[:, None] == neg[None]).sum()
  return float(above / (len(pos) * len(neg)))


def dimension_report(items) -> dict:
  """Per critic dimension, over every draft: the AUROC and calibration of its score against
  what it scores: a quality dimension's TrueQuality where the items carry it (else the draft's
  correctness), a safety dimension's safety (1 - label) where the items carry labels; None
  where a class is absent. AUROC separates targets >= 0.5 from the rest."""
  out = {}
  for name in items[0]["dimension_scores"]:
    scores = np.concatenate([it["dimension_scores"][name] for it in items])
    if name in items[0].get("draft_safety", [{}])[0]:
      target, what = np.asarray([1.0 - s[name] for it in items for s in it["draft_safety"]]), "safe"
    elif name in config_lib.CRITIC_SAFETY_DIMS:
      continue  # no labels to score it against (robustness, labelled on bundled tasks only)
    elif "quality" in items[0]:
      column = config_lib.CRITIC_DIMS.index(name)
      target, what = np.asarray([q[column] for it in items for q in it["quality"]]), name
    else:
      target, what = np.concatenate([it["correct"] for it in items]).astype(float), "correct"
    area = auroc(scores, target >= 0.5)
    out[name] = {
        "target": what,
        "auroc": None if area is None else round(area, 4),
        "ece": calibration(scores, target)["ece"],
        "mean_score": round(float(scores.mean()), 4),
        "mean_target": round(float(target.mean()), 4)
    }
  return out


def iteration_report(items):
  """Accuracy of every draft and of the answer given, mean iterations, transitions, compute,
  and (when the items carry critic confidences) calibration over every draft."""
  correct = _padded([it["correct"] for it in items]).astype(bool)  # [items, drafts]
  stops = np.array([it["stop"] for it in items])
  final = correct[np.arange(len(items)), stops]
  n = len(items)
  report = {
      "count": n,
      "accuracy": round(float(final.mean()), 4),
      "accuracy_ci95": [round(x, 4) for x in wilson_interval(int(final.sum()), n)],
      "accuracy_per_iteration": [round(float(a), 4) for a in correct.mean(axis=0)],
      "mean_iterations": round(float(stops.mean()), 4),
      "stop_rate_per_iteration": [
          round(float(x), 4) for x in np.bincount(stops, minlength=correct.shape[1]) / n
      ],
      "wrong_to_right": [int(x) for x in (~correct[:, :-1] & correct[:, 1:]).sum(axis=0)],
      "right_to_wrong": [int(x) for x in (correct[:, :-1] & ~correct[:, 1:]).sum(axis=0)],
      "mean_generated_tokens": round(float(np.mean([it["generated_tokens"] for it in items])), 2),
  }
  if "safety" in items[0]:  # the fraction of answers given, and of drafts y(k), each rule flags
    report["safety_rates"] = {
        name: round(float(np.mean([it["safety"][name] for it in items])), 4)
        for name in items[0]["safety"]
    }
    flags = {  # [items, drafts] per rule
        name: _padded([[labels[name] for labels in it["draft_safety"]] for it in items])
        for name in items[0]["safety"]
    }
    report["safety_rates_per_iteration"] = {
        name: [round(float(rate), 4) for rate in flagged.mean(axis=0)]
        for name, flagged in flags.items()
    }
  if items[0].get("confidence") is not None:
    confidence = np.concatenate([it["confidence"] for it in items])
    outcomes = np.concatenate([it["correct"] for it in items])
    report["calibration"] = calibration(confidence, outcomes)
    area = auroc(confidence, outcomes)  # does the critic tell right answers from wrong ones?
    report["critic_auroc"] = None if area is None else round(area, 4)
  if "dimension_scores" in items[0]:
    report["critic_dimensions"] = dimension_report(items)
  if "disagreement" in items[0]:  # does the committee agree more on right drafts?
    disagreement = np.concatenate([it["disagreement"] for it in items])
    outcomes = np.concatenate([it["correct"] for it in items])
    report["mean_disagreement"] = round(float(disagreement.mean()), 8)
    area = auroc(-disagreement, outcomes)
    report["disagreement_auroc"] = None if area is None else round(area, 4)
  return report
