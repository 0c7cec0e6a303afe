"""Four-option ordering and syllogism puzzles answered as `answer: <letter>`."""

import random
import re

from ._vocab import NAMES
from .base import Example

LETTERS = "abcd"

_SCALES = (
    ("taller", "shorter", "tallest", "shortest"),
    ("older", "younger", "oldest", "youngest"),
    ("faster", "slower", "fastest", "slowest"),
    ("heavier", "lighter", "heaviest", "lightest"),
    ("richer", "poorer", "richest", "poorest"),
    ("stronger", "weaker", "strongest", "weakest"),
)

_TERMS = (
    "blips",
    "zorks",
    "fips",
    "wugs",
    "glims",
    "tovs",
    "mibs",
    "plonks",
    "snarfs",
    "quibs",
    "trels",
    "vorps",
    "gleps",
    "nabs",
    "yinks",
    "frobs",
    "kems",
    "lurps",
    "drofs",
    "smeks",
    "tulps",
    "brogs",
    "zeps",
    "klims",
    "morps",
    "jibs",
    "fangles",
    "wemps",
    "grults",
    "pims",
)

# Syllogism forms over terms A, B, C: (premises, valid conclusion, invalid options).
# Statements are (quantifier, subject, predicate); "some-not" reads "some X are not Y".
_FORMS = (
    (
        (("all", "A", "B"), ("all", "B", "C")),
        ("all", "A", "C"),
        (
            ("all", "C", "A"),
            ("no", "A", "C"),
            ("some-not", "A", "C"),
            ("all", "C", "B"),
            ("no", "B", "C"),
        ),
    ),
    (
        (("all", "A", "B"), ("no", "B", "C")),
        ("no", "A", "C"),
        (
            ("all", "A", "C"),
            ("some", "A", "C"),
            ("all", "C", "A"),
            ("some", "B", "C"),
            ("all", "C", "B"),
        ),
    ),
    (
        (("some", "A", "B"), ("all", "B", "C")),
        ("some", "A", "C"),
        (("all", "A", "C"), ("no", "A", "C"), ("all", "C", "A"), ("all", "A", "B"), ("no", "B",
                                                                                     "C")),
    ),
    (
        (("all", "A", "B"), ("some-not", "C", "B")),
        ("some-not", "C", "A"),
        (
            ("all", "C", "A"),
            ("some-not", "A", "B"),
            ("no", "C", "B"),
            ("all", "B", "A"),
            ("no", "A", "B"),
        ),
    ),
    (
        (("no", "A", "B"), ("all", "C", "A")),
        ("no", "C", "B"),
        (
            ("some", "C", "B"),
            ("all", "B", "C"),
            ("all", "A", "C"),
            ("some", "A", "B"),
            ("all", "C", "B"),
        ),
    ),
    (
        (("all", "A", "B"), ("all", "A", "C")),
        ("some", "B", "C"),
        (("all", "B", "C"), ("all", "C", "B"), ("no", "B", "C"), ("all", "B", "A")),
    ),
)

_ORDER_PREMISE = re.compile(r"\b([a-z]+) is [a-z]+ than ([a-z]+)")
_SYLLOGISM_PREMISE = re.compile(r"\b(?:all|no|some) ([a-z]+) are (?:not )?([a-z]+)")


def _say(statement: tuple[str, str, str], terms: dict[str, str]) -> str:
  quantifier, subject, predicate = statement
  if quantifier == "some-not":
    return f"some {terms[subject]} are not {terms[predicate]}"
  return f"{quantifier} {terms[subject]} are {terms[predicate]}"


def _options(options: list[str]) -> str:
  return " ".join(f"{letter}) {option}" for letter, option in zip(LETTERS, options))


def _ordering(rng: random.Random) -> tuple[str, str]:
  more, less, most, least = rng.choice(_SCALES)
  ranked = rng.sample(NAMES, 4)  # from most to least
  premises = []
  for high, low in zip(ranked, ranked[1:]):
    if rng.random() < 0.5:
      premises.append(f"{high} is {more} than {low}.")
    else:
      premises.append(f"{low} is {less} than {high}.")
  rng.shuffle(premises)
  position, label = rng.choice(((0, f"the {most}"), (3, f"the {least}"), (1, f"the second {most}"),
                                (2, f"the second {least}")))
  options = rng.sample(ranked, 4)
  letter = LETTERS[options.index(ranked[position])]
  question = " ".join(premises) + f" who is {label}? " + _options(options)
  reason = f"from {most} to {least}: {', '.join(ranked)}. so {ranked[position]} is {label}."
  answer = f"{reason} answer: {letter}"
  return question, answer


def _syllogism(rng: random.Random) -> tuple[str, str]:
  premises, conclusion, invalid = rng.choice(_FORMS)
  terms = dict(zip("ABC", rng.sample(_TERMS, 3)))
  premises = [_say(p, terms) for p in premises]
  if rng.random() < 0.5:
    premises.reverse()
  options = [conclusion] + rng.sample(invalid, 3)
  rng.shuffle(options)
  letter = LETTERS[options.index(conclusion)]
  ask = rng.choice(("which must be true?", "which statement must be true?"))
  question = ". ".join(premises) + f". {ask} " + _options([_say(o, terms) for o in options])
  answer = f"{premises[0]} and {premises[1]}, so {_say(conclusion, terms)}. answer: {letter}"
  return question, answer


def make(seed: int, index: int) -> Example:
  """The logic example number `index` of `seed` (ordering or syllogism, half each)."""
  rng = random.Random(f"logic:{seed}:{index}")
  question, answer = (_ordering if rng.random() < 0.5 else _syllogism)(rng)
  return Example("logic", f"logic-{seed}-{index}", question, answer)


def quantities(question: str) -> list[str]:
  """The distinct names or terms of the premises, in order of appearance."""
  premises = question.split("?", 1)[0]
  found = []
  for pattern in (_ORDER_PREMISE, _SYLLOGISM_PREMISE):
    for pair in pattern.findall(premises):
      found.extend(pair)
  return list(dict.fromkeys(found))
