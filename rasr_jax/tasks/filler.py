"""Plain-language filler paragraphs from a small seeded template grammar."""

import random

from ._vocab import CITIES, FEMALE_NAMES, NAMES, with_article
from .base import Example

_NOUNS = (
    "book",
    "box",
    "cup",
    "chair",
    "table",
    "lamp",
    "bag",
    "boat",
    "kite",
    "hat",
    "coat",
    "map",
    "letter",
    "cake",
    "bowl",
    "ball",
    "bike",
    "clock",
    "basket",
    "bottle",
    "shoe",
    "bird",
    "flower",
    "apple",
    "picture",
    "song",
    "story",
    "window",
    "door",
    "key",
    "plant",
    "shirt",
    "ring",
    "card",
)
_ADJECTIVES = (
    "big",
    "small",
    "old",
    "new",
    "red",
    "blue",
    "green",
    "warm",
    "cold",
    "quiet",
    "bright",
    "dark",
    "soft",
    "heavy",
    "light",
    "clean",
    "happy",
    "busy",
    "long",
    "short",
    "round",
    "empty",
    "full",
    "kind",
    "funny",
    "strange",
    "pretty",
    "simple",
    "yellow",
    "tiny",
)
_TRANSITIVE = (
    "reads",
    "finds",
    "paints",
    "carries",
    "cleans",
    "opens",
    "watches",
    "draws",
    "fixes",
    "buys",
    "holds",
    "washes",
    "builds",
    "sells",
    "brings",
    "takes",
    "likes",
    "wants",
    "makes",
    "shows",
)
_INTRANSITIVE = (
    "sleeps",
    "sings",
    "waits",
    "smiles",
    "laughs",
    "rests",
    "walks",
    "plays",
    "works",
    "listens",
)
_ADVERBS = (
    "slowly",
    "quietly",
    "happily",
    "quickly",
    "softly",
    "carefully",
    "for a while",
    "all day",
)
_PLACES = (
    "park",
    "market",
    "school",
    "river",
    "station",
    "library",
    "garden",
    "beach",
    "forest",
    "kitchen",
    "farm",
    "bakery",
    "hill",
    "lake",
    "shop",
    "square",
    "bridge",
    "museum",
)
_TIMES = (
    "in the morning",
    "in the evening",
    "at night",
    "after lunch",
    "on sunday",
    "every day",
    "at noon",
)
_WEATHER = ("sunny", "rainy", "windy", "cold", "warm", "cloudy", "quiet", "bright")
_FEELINGS = ("happy", "tired", "calm", "proud", "hungry", "sleepy", "glad", "curious")
_PREPOSITIONS = ("near", "behind", "next to", "inside", "in front of")

_OPENERS = (
    "it is {weather} in {city} today.",
    "{name} lives in {city} near the {place}.",
    "{time}, {name} goes to the {place}.",
)
_SENTENCES = (
    "{s} {tverb} {a_adj_noun} {prep} the {place}.",
    "the {adj} {noun} is {prep} the {place2}.",
    "{time}, {s} {tverb} {a_adj_noun}.",
    "{s} {iverb} {adverb} {prep} the {place}.",
    "{name} and {friend} walk to the {place2} {time}.",
    "the {place} is {adj} and {adj2} {time}.",
    "there are many {nouns} {prep} the {place2}.",
    "{s} thinks that the {noun} is very {adj}.",
    "because it is {weather}, {s} stays at home and {tverb} {a_adj_noun}.",
    "{friend} {tverb} the {nouns} and {iverb} {adverb}.",
    "{s} feels {feeling} when {p} sees the {adj} {noun}.",
    "after that, {s} {iverb} {adverb}.",
)


def _plural(noun: str) -> str:
  return noun + ("es" if noun.endswith(("s", "x", "ch", "sh")) else "s")


def _sentence(rng: random.Random, template: str, name: str, pronoun: str) -> str:
  noun, adj = rng.choice(_NOUNS), rng.choice(_ADJECTIVES)
  words = {
      "name": name,
      "s": rng.choice((name, pronoun)),
      "p": pronoun,
      "friend": rng.choice([n for n in NAMES if n != name]),
      "city": rng.choice(CITIES),
      "place": rng.choice(_PLACES),
      "place2": rng.choice(_PLACES),
      "time": rng.choice(_TIMES),
      "weather": rng.choice(_WEATHER),
      "feeling": rng.choice(_FEELINGS),
      "noun": noun,
      "nouns": _plural(rng.choice(_NOUNS)),
      "adj": adj,
      "adj2": rng.choice(_ADJECTIVES),
      "a_adj_noun": with_article(f"{adj} {noun}"),
      "tverb": rng.choice(_TRANSITIVE),
      "iverb": rng.choice(_INTRANSITIVE),
      "adverb": rng.choice(_ADVERBS),
      "prep": rng.choice(_PREPOSITIONS),
  }
  return template.format(**words)


def make(seed: int, index: int) -> Example:
  """The filler paragraph number `index` of `seed`, stored as the question with an empty answer."""
  rng = random.Random(f"filler:{seed}:{index}")
  name = rng.choice(NAMES)
  pronoun = "she" if name in FEMALE_NAMES else "he"
  templates = [rng.choice(_OPENERS)] + rng.sample(_SENTENCES, rng.randint(2, 4))
  paragraph = " ".join(_sentence(rng, t, name, pronoun) for t in templates)
  return Example("filler", f"filler-{seed}-{index}", paragraph, "")
