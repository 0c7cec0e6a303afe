"""Multi-step arithmetic word problems solved as `a op b = c` steps ending in `#### N`."""

import random
import re

from ._vocab import FEMALE_NAMES, NAMES
from .base import Example

_ITEMS = (
    ("apples", "bags"),
    ("marbles", "jars"),
    ("stickers", "sheets"),
    ("cards", "packs"),
    ("eggs", "boxes"),
    ("pencils", "boxes"),
    ("cookies", "plates"),
    ("shells", "buckets"),
    ("stamps", "albums"),
    ("beads", "bags"),
    ("books", "boxes"),
    ("coins", "purses"),
    ("balloons", "packs"),
    ("oranges", "crates"),
    ("candles", "boxes"),
    ("buttons", "jars"),
)
_PLACES = ("the shop", "the school", "the farm", "the club", "the library", "the market")

_ADD = (
    "{s} buys {n} more",
    "{s} finds {n} more",
    "{s} gets {n} more from {who}",
    "{who} gives {o} {n} more",
    "{s} picks up {n} more",
    "{s} wins {n} more",
)
_SUB = (
    "{s} gives away {n}",
    "{s} sells {n}",
    "{s} loses {n}",
    "{s} gives {n} to {who}",
    "{s} uses {n}",
    "{who} takes {n} of them",
)
_MUL = ("{p} pile grows to {k} times its size", "{s} ends up with {k} times as many")
_GROUP_ADD = ("{s} buys {a} {c} with {m} {x} in each", "{s} gets {a} {c} that hold {m} {x} each")
_GROUP_SUB = (
    "{s} fills {a} {c} with {m} {x} each and gives them away",
    "{s} gives {m} {x} to each of {a} friends",
)
_CONNECTORS = ("then ", "after that, ", "later, ", "next, ", "")
_QUESTIONS = (
    "how many {x} does {name} have now?",
    "how many {x} does {name} have in the end?",
    "how many {x} does {name} have at the end?",
)
_NUMBER = re.compile(r"(?<!\d)\d+(?!\d)")


def _subject(rng: random.Random) -> tuple[str, dict[str, str]]:
  """A person or place with its pronoun forms."""
  if rng.random() < 0.2:
    return rng.choice(_PLACES), {"s": "it", "o": "it", "p": "its"}
  name = rng.choice(NAMES)
  if name in FEMALE_NAMES:
    return name, {"s": "she", "o": "her", "p": "her"}
  return name, {"s": "he", "o": "him", "p": "his"}


def _group(rng: random.Random, limit: int) -> tuple[int, int] | None:
  """Random (containers, per container) with product <= limit, or None."""
  pairs = [(a, m) for a in range(2, 6) for m in range(2, 11) if a * m <= limit]
  return rng.choice(pairs) if pairs else None


def make(seed: int, index: int) -> Example:
  """The arithmetic example number `index` of `seed`."""
  rng = random.Random(f"arithmetic:{seed}:{index}")
  name, forms = _subject(rng)
  x, c = rng.choice(_ITEMS)
  words = dict(forms, x=x, c=c, who=rng.choice([n for n in NAMES if n != name]))
  steps_left = rng.choice((2, 3, 4))
  steps: list[tuple[int, str, int, int]] = []
  if steps_left >= 3 and rng.random() < 0.35:
    a, m = _group(rng, 60)
    total = a * m
    sentences = [f"{name} has {a} {c} with {m} {x} in each."]
    steps.append((a, "*", m, total))
    steps_left -= 1
  else:
    total = rng.randint(5, 60)
    sentences = [f"{name} has {total} {x}."]
  while steps_left:
    kinds = ["add", "add", "add"]
    if total >= 2:
      kinds += ["sub", "sub", "sub"]
    if total <= 80:
      kinds.append("mul")
    if steps_left >= 2:
      kinds += ["group_add"] + (["group_sub"] if _group(rng, total - 1) else [])
    kind = rng.choice(kinds)
    if kind == "add":
      n = rng.randint(1, 30)
      phrase = rng.choice(_ADD).format(n=n, **words)
      steps.append((total, "+", n, total + n))
    elif kind == "sub":
      n = rng.randint(1, min(total - 1, 30))
      phrase = rng.choice(_SUB).format(n=n, **words)
      steps.append((total, "-", n, total - n))
    elif kind == "mul":
      k = rng.randint(2, 4)
      phrase = rng.choice(_MUL).format(k=k, **words)
      steps.append((total, "*", k, total * k))
    else:
      a, m = _group(rng, 40 if kind == "group_add" else total - 1)
      template = _GROUP_ADD if kind == "group_add" else _GROUP_SUB
      phrase = rng.choice(template).format(a=a, m=m, **words)
      steps.append((a, "*", m, a * m))
      op = "+" if kind == "group_add" else "-"
      steps.append((total, op, a * m, total + a * m if op == "+" else total - a * m))
      steps_left -= 1
    total = steps[-1][3]
    connector = rng.choice(_CONNECTORS) if len(sentences) > 1 else ""
    sentences.append(connector + phrase + ".")
    steps_left -= 1
  sentences.append(rng.choice(_QUESTIONS).format(x=x, name=name))
  answer = " ".join(f"{a} {op} {b} = {r}." for a, op, b, r in steps) + f" #### {total}"
  return Example("arithmetic", f"arithmetic-{seed}-{index}", " ".join(sentences), answer)


def quantities(question: str) -> list[str]:
  """The distinct numbers of a question, in order of appearance."""
  return list(dict.fromkeys(m.lstrip("0") or "0" for m in _NUMBER.findall(question)))
