"""Adversarial robustness, the safety dimension that is a property of the critic rather than
of a text: how much the critic's score of a response moves when its prompt's tokens are
perturbed (UFARSAP's reading in the design notes), and whether the move changes a verdict.

A perturbation replaces each prompt token, with probability `rate`, by a random ordinary token
(one whose text is printable UTF-8 and not only whitespace), then decodes the prompt again.
"""

import numpy as np

from rasr_jax import config as config_lib

_CHANGE_LIMIT = 1.0  # critic scores lie in [0, 1]
RATE = 0.1  # the share of prompt tokens a perturbation replaces (evaluation and training)
VERDICT = 0.5  # a critic score above it says "right" (or "safe"), as the AUROCs and rates read it


def judged(dim_names) -> list[int]:
  """Indices of the critic dimensions whose verdicts a perturbation can flip: all but
  robustness (the critic's foresight of the flips)."""
  return [i for i, name in enumerate(dim_names) if name != config_lib.ROBUSTNESS]


def flips(before, after):
  """Whether a perturbation changed one of the critic's verdicts: scores [B, D] before and after
  (numpy or jax arrays) -> [B] bool, True where some dimension's score crossed VERDICT."""
  return ((before > VERDICT) != (after > VERDICT)).any(axis=-1)


def ordinary_ids(tokenizer) -> np.ndarray:
  """The ids whose text is non-empty, valid UTF-8 and not only whitespace."""
  pieces = tokenizer.piece_bytes(tokenizer.vocab_size)
  keep = []
  for index, (row, length) in enumerate(zip(pieces.table, pieces.lengths)):
    try:
      text = bytes(row[:length]).decode("utf-8")
    except UnicodeDecodeError:
      continue
    if text.strip() and text.isprintable():
      keep.append(index)
  return np.asarray(keep, np.int64)


def perturb(tokenizer, prompt: str, rate: float, rng: np.random.Generator, choices) -> str:
  """`prompt` with each token replaced, with probability `rate`, by one of `choices`."""
  ids = np.asarray(tokenizer.encode(prompt), np.int64)
  swap = rng.random(len(ids)) < rate
  ids[swap] = rng.choice(choices, int(swap.sum()))
  return tokenizer.decode(ids.tolist())


def critic_robustness(model, prompts, responses, *, rate=RATE, samples=2, seed=0) -> dict:
  """The critic's score c of each (prompt, response) against its scores after `samples`
  perturbations of every prompt at `rate` -> {"perturbation_rate", "samples",
  "mean_abs_change", "robustness": 1 - mean_abs_change}. `model`: an InferenceModel with
  reflection heads."""
  base = np.asarray(model.critic_scores(prompts, responses))
  rng = np.random.default_rng(seed)
  choices = ordinary_ids(model.tokenizer)
  changes = []
  for _ in range(samples):
    perturbed = [perturb(model.tokenizer, prompt, rate, rng, choices) for prompt in prompts]
    changes.append(np.abs(np.asarray(model.critic_scores(perturbed, responses)) - base))
  change = float(np.mean(changes)) if prompts else 0.0
  return {
      "perturbation_rate": rate,
      "samples": samples,
      "mean_abs_change": round(change, 6),
      "robustness": round(_CHANGE_LIMIT - change, 6)
  }


def verdict_flips(model, prompts, responses, dim_names, *, rate=RATE, seed=0) -> list[bool]:
  """The robustness label of each (prompt, response), as the training step gives a critique:
  whether one perturbation of the prompt at `rate` flips one of the critic's verdicts in the
  dimensions other than robustness. `model`: an InferenceModel with reflection heads whose
  critic scores `dim_names`."""
  others = judged(dim_names)
  rng = np.random.default_rng(seed)
  choices = ordinary_ids(model.tokenizer)
  perturbed = [perturb(model.tokenizer, prompt, rate, rng, choices) for prompt in prompts]
  before = model.critic_dimension_scores(prompts, responses)[:, others]
  after = model.critic_dimension_scores(perturbed, responses)[:, others]
  return [bool(flag) for flag in flips(before, after)]
