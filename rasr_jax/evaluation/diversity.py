"""Diversity of generated texts, to catch a model that collapses onto a few outputs.

- distinct-n: distinct word n-grams over all n-grams of the texts (whitespace words; 1.0 when
  no n-gram repeats, near 0 when every text says the same);
- self-BLEU: the mean sentence BLEU (sacrebleu's, 0-1) of each text against the other texts of
  its group (the samples of one prompt), over every group of two or more; 1.0 when a group's
  samples are identical, low when they differ.
"""

import numpy as np


def distinct_n(texts, n) -> float:
  """Distinct word n-grams / all word n-grams of `texts` (0.0 when they hold none)."""
  grams = [
      tuple(words[i:i + n])
      for words in (t.split()
                    for t in texts)
      for i in range(len(words) - n + 1)
  ]
  return len(set(grams)) / len(grams) if grams else 0.0


def self_bleu(groups) -> float | None:
  """The mean BLEU of each text against the rest of its group (groups: lists of texts); None
  when no group has two texts."""
  import sacrebleu  # imported where used: the rest of the project does not need it
  scores = [
      sacrebleu.sentence_bleu(text, group[:i] + group[i + 1:]).score / 100 for group in groups
      if len(group) > 1 for i, text in enumerate(group)
  ]
  return float(np.mean(scores)) if scores else None


def report(groups) -> dict:
  """{"distinct_1", "distinct_2", "self_bleu"} of the texts of `groups`."""
  texts = [t for group in groups for t in group]
  return {
      "distinct_1": distinct_n(texts, 1),
      "distinct_2": distinct_n(texts, 2),
      "self_bleu": self_bleu(groups)
  }
