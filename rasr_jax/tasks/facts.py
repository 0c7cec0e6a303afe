"""True/false statements about a seeded world of people, judged from facts given in the question."""

import functools
import random
import re

from ._vocab import CITIES, NAMES, with_article
from .base import Example

_WORLD_SIZE = 20

# (values, positive template, negative template); {n} is the person, {v} the value, {av}
# "a"/"an" + value.
_ATTRIBUTES = (
    (CITIES, "{n} lives in {v}", "{n} does not live in {v}"),
    (
        ("cat", "dog", "rabbit", "parrot", "hamster", "goat", "horse", "turtle", "owl", "snake"),
        "{n}'s pet is {av}",
        "{n}'s pet is not {av}",
    ),
    (
        (
            "baker",
            "doctor",
            "teacher",
            "farmer",
            "pilot",
            "nurse",
            "painter",
            "writer",
            "artist",
            "engineer",
            "singer",
            "driver",
        ),
        "{n} works as {av}",
        "{n} does not work as {av}",
    ),
    (
        ("red", "blue", "green", "yellow", "purple", "orange", "black", "white", "pink", "brown"),
        "{n}'s favorite color is {v}",
        "{n}'s favorite color is not {v}",
    ),
    (
        ("soup", "rice", "bread", "pasta", "cheese", "fish", "salad", "pie", "noodles", "beans"),
        "{n}'s favorite food is {v}",
        "{n}'s favorite food is not {v}",
    ),
    (tuple(str(age) for age in range(18, 71)), "{n} is {v} years old", "{n} is not {v} years old"),
)

_WORD = re.compile(r"[a-z0-9]+")
_FRAME_WORDS = frozenset(
    word for _, *templates in _ATTRIBUTES for template in templates
    for word in _WORD.findall(re.sub(r"\{\w+\}", " ", template))) | {"a", "an"}
_STATEMENT = re.compile(r"statement:(.*?)(?:true or false|$)", re.S)


@functools.lru_cache(maxsize=16)
def _world(seed: int) -> tuple[tuple[str, tuple[str, ...]], ...]:
  """The people of a seed's world, each with one value per attribute."""
  rng = random.Random(f"facts-world:{seed}")
  return tuple((name, tuple(rng.choice(values)
                            for values, _, _ in _ATTRIBUTES))
               for name in rng.sample(NAMES, _WORLD_SIZE))


def _say(template: str, name: str, value: str) -> str:
  return template.format(n=name, v=value, av=with_article(value))


def make(seed: int, index: int) -> Example:
  """The facts example number `index` of `seed`: about half true, half false."""
  rng = random.Random(f"facts:{seed}:{index}")
  people = rng.sample(_world(seed), rng.choice((2, 3)))
  pool = rng.sample(range(len(_ATTRIBUTES)), 3)
  target = pool[0]
  known = [(0, target)] + [(0, a) for a in rng.sample(pool[1:], rng.randint(0, 1))]
  for person in range(1, len(people)):
    chosen = [target] if rng.random() < 0.6 else []
    chosen += rng.sample(pool[1:], 1 if chosen else rng.randint(1, 2))
    known += [(person, a) for a in chosen]
  facts = [_say(_ATTRIBUTES[a][1], people[p][0], people[p][1][a]) for p, a in known]
  rng.shuffle(facts)

  values, positive, negative = _ATTRIBUTES[target]
  name, actual = people[0][0], people[0][1][target]
  rivals = [
      people[p][1][target] for p, a in known if a == target and people[p][1][target] != actual
  ]
  if rivals and rng.random() < 0.6:
    other = rng.choice(rivals)
  else:
    other = rng.choice([v for v in values if v != actual])
  truth = rng.random() < 0.5
  negated = rng.random() < 0.3
  value = actual if truth != negated else other
  statement = _say(negative if negated else positive, name, value)
  reason = _say(positive, name, actual)
  if value != actual:
    reason += ", not " + (with_article(value) if "{av}" in positive else value)
  question = ("facts: " + " ".join(f + "." for f in facts)
              + f" statement: {statement}. true or false?")
  answer = f"the facts say {reason}. answer: {'true' if truth else 'false'}"
  return Example("facts", f"facts-{seed}-{index}", question, answer)


def quantities(question: str) -> list[str]:
  """The distinct entities (person, value) of the statement."""
  match = _STATEMENT.search(question)
  words = _WORD.findall(match.group(1)) if match else []
  return list(dict.fromkeys(w for w in words if w not in _FRAME_WORDS))


def _claim_pattern(template: str) -> re.Pattern:
  """A template ("{n} lives in {v}") as a pattern with groups `n` and `v` (a word)."""
  parts = re.split(r"(\{\w+\})", template)
  pieces = {"{n}": r"(?P<n>[a-z]+)", "{v}": r"(?P<v>[a-z0-9]+)", "{av}": r"an? (?P<v>[a-z]+)"}
  body = "".join(pieces.get(part, re.escape(part)) for part in parts)
  return re.compile(r"\b" + body.replace(r"\ ", r"\s+") + r"\b")


# Per attribute: (its index, positive claim, negative claim); negative patterns first in
# `contradictions` so that "does not live in" is never read as a positive claim.
_CLAIMS = tuple((index, _claim_pattern(positive), _claim_pattern(negative))
                for index, (_, positive, negative) in enumerate(_ATTRIBUTES))


def contradictions(text: str, seed: int) -> list[str]:
  """The claims of `text` about a person of seed's world that the world contradicts: a
  positive claim ("tom lives in oslo") with another value than the person's, or a negative one
  ("tom does not live in oslo") with the person's own. Claims about anyone else, or in other
  words than the task's templates, are not read."""
  people = dict(_world(seed))
  text = " ".join(text.lower().split())
  found = []
  for index, positive, negative in _CLAIMS:
    negated_spans = []
    for match in negative.finditer(text):
      negated_spans.append(match.span())
      values = people.get(match["n"])
      if values is not None and values[index] == match["v"]:
        found.append(match.group(0))
    for match in positive.finditer(text):
      values = people.get(match["n"])
      inside = any(lo <= match.start() < hi for lo, hi in negated_spans)
      if values is not None and not inside and values[index] != match["v"]:
        found.append(match.group(0))
  return found
