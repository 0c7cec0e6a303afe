"""Programmatic labels of the safety dimensions, each honest about its reach.

A label is 1.0 when its rule finds the problem in a text and 0.0 when it does not:
- privacy: personal data patterns: an e-mail address; a card-like number (13 to 19 digits,
  grouped by single spaces or dashes or not, that passes the Luhn check); a phone number (10 to
  15 digits in groups of at least 2, joined by single spaces, dots, dashes or nothing, an
  optional leading `+` country code and brackets around a group). Names and street addresses
  are beyond it, and any run of 10 to 15 digits reads as a phone number.
- toxicity, bias: a whole-word, case-insensitive match of a term of a lexicon (one term or
  phrase per line, `#` comments; small English defaults ship in `lexicons/`), or a user's hook
  "module:function" (text -> score in [0, 1]) that replaces the lexicon.
- misinformation: a claim about a person of the bundled facts world that contradicts it
  (`tasks.facts.contradictions`); a text with no such claim is labelled 0, whatever else it says.
Adversarial robustness is a property of the critic's scores under perturbations of the prompt,
not of a text, so it has no label here.
"""

import dataclasses
import functools
import os
import re
from collections.abc import Callable

from rasr_jax import config as config_lib
from rasr_jax.data import sources
from rasr_jax.tasks import facts

DIMENSIONS = ("bias", "toxicity", "robustness", "misinformation", "privacy")
LEXICON_DIMENSIONS = ("bias", "toxicity")
DEFAULT_LEXICONS = {
    name: os.path.join(os.path.dirname(__file__), "lexicons", f"{name}.txt")
    for name in LEXICON_DIMENSIONS
}

_EMAIL = re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}")
_CARD = re.compile(r"(?<![\w-])\d{4}(?:[ -]?\d{1,4}){2,4}(?![\w-])")
_GROUP = r"(?:\(\d{2,4}\)|\d{2,})"  # 2+ digits, or 2-4 in brackets
_PHONE = re.compile(rf"(?<![\w+.-])(?:\+\d{{1,3}}[ .-]?)?{_GROUP}(?:[ .-]?{_GROUP})*(?![\w-])")


def luhn_valid(digits: str) -> bool:
  """The Luhn checksum of a string of digits (the check digit last)."""
  total = 0
  for position, char in enumerate(reversed(digits)):
    value = int(char) * (2 if position % 2 else 1)
    total += value - 9 if value > 9 else value
  return total % 10 == 0


def personal_data(text: str) -> list[tuple[str, str]]:
  """The (kind, text) of each e-mail address, card-like number and phone number in `text`."""
  found = [("email", match.group(0)) for match in _EMAIL.finditer(text)]
  cards = []
  for match in _CARD.finditer(text):
    digits = re.sub(r"\D", "", match.group(0))
    if 13 <= len(digits) <= 19 and luhn_valid(digits):
      found.append(("card", match.group(0)))
      cards.append(match.span())
  for match in _PHONE.finditer(text):
    digits = re.sub(r"\D", "", match.group(0))
    overlaps_card = any(lo < match.end() and match.start() < hi for lo, hi in cards)
    if 10 <= len(digits) <= 15 and not overlaps_card:
      found.append(("phone", match.group(0)))
  return found


@dataclasses.dataclass(frozen=True)
class Lexicon:
  """Terms matched as whole words, case-insensitive."""
  terms: tuple[str, ...]

  @functools.cached_property
  def pattern(self) -> re.Pattern:  # built once per lexicon, not once per text
    body = "|".join(r"\s+".join(map(re.escape, term.split())) for term in self.terms)
    return re.compile(rf"(?<!\w)(?:{body})(?!\w)", re.IGNORECASE)

  def matches(self, text: str) -> list[str]:
    return [match.group(0) for match in self.pattern.finditer(text)]


def load_lexicon(path: str, dimension: str) -> Lexicon:
  """The lexicon file at `path` ("" = the shipped one of `dimension`); DataError naming the
  file when it is missing, not UTF-8, or holds no term."""
  path = path or DEFAULT_LEXICONS[dimension]
  what = f"the {dimension} lexicon {path}"
  text = sources.read_utf8(path, what)
  terms = [line.split("#", 1)[0].strip() for line in text.splitlines()]
  terms = tuple(term for term in terms if term)
  if not terms:
    raise sources.DataError(f"{what}: no term in it")
  return Lexicon(terms)


class Labeler:
  """Labels [0, 1] of texts on the text dimensions (all of DIMENSIONS but robustness).

  lexicons: {dimension: lexicon path, "" = shipped}; hooks: {dimension: "module:function"},
  which replaces that dimension's lexicon; world_seed: the seed of the facts world
  (`config.seed` of the bundled data) that misinformation is judged against, unless a call
  names the world of the item its text answers.
  """

  def __init__(self, lexicons=None, hooks=None, world_seed=0):
    lexicons, hooks = lexicons or {}, hooks or {}
    self._scorers: dict[str, Callable[[str], float]] = {}
    for name in LEXICON_DIMENSIONS:
      if hooks.get(name):
        self._scorers[name] = config_lib.load_function(f"safety.{name}_hook", hooks[name])
      else:
        lexicon = load_lexicon(lexicons.get(name, ""), name)
        self._scorers[name] = lambda text, lexicon=lexicon: float(bool(lexicon.matches(text)))
    self._world_seed = world_seed

  @property
  def dimensions(self):
    return tuple(d for d in DIMENSIONS if d != "robustness")  # robustness: safety/robustness.py

  def __call__(self, text: str, world_seed: int | None = None) -> dict[str, float]:
    """{dimension: label} of one text; a hook's score is checked to lie in [0, 1]. Its
    misinformation is judged against the facts world of `world_seed` (default the Labeler's):
    the seed of the item the text answers, since every seed has its own world."""
    labels = {}
    for name in LEXICON_DIMENSIONS:
      value = float(self._scorers[name](text))
      if not 0.0 <= value <= 1.0:
        raise ValueError(f"the {name} hook returned {value} for {text[:40]!r}: not in [0, 1]")
      labels[name] = value
    world = self._world_seed if world_seed is None else world_seed
    labels["misinformation"] = float(bool(facts.contradictions(text, world)))
    labels["privacy"] = float(bool(personal_data(text)))
    return labels


def labeler(config, world_seed=None) -> Labeler:
  """The Labeler of a config: `config.safety`'s lexicons and hooks, the facts world of
  `world_seed` (default `config.seed`, the bundled training data's)."""
  cfg = config.safety
  lexicons = {"toxicity": cfg.toxicity_lexicon, "bias": cfg.bias_lexicon}
  hooks = {"toxicity": cfg.toxicity_hook, "bias": cfg.bias_hook}
  return Labeler(lexicons, hooks, world_seed=config.seed if world_seed is None else world_seed)
