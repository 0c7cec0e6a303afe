"""The probe: follow links from node to node; the answer states where the walk ends first, then
the nodes that reach it.

  question: links: 3 to 7, 5 to 1, 7 to 2, ... start at 3 and follow 5 links. where do you end?
  answer:   #### 4 path 7 2 9 0

Stating the end first means following every link in one left-to-right pass (one lookup per
link, composed HOPS deep); the path after it is one lookup per node, and the end is one lookup
from the path's last node. A model that reads its own first attempt can take the end from the
attempt's path, so a second look can help where a first look fails (RASR.md §12). Whether one
pass really finds the end first hard is measured, not assumed: `benchmarks/probe_premise.py`
trains standard models on this format and on the same answer with the end last
(`path 7 2 9 0 #### 4`) and compares the end's accuracy.
"""

import random
import re

from .base import Example

NODES = 10  # nodes 0..9; the links form one random cycle through all of them
HOPS = 5  # links followed
_LINK = re.compile(r"(\d+) to (\d+)")
_START = re.compile(r"start at (\d+)")


def walk(seed: int, index: int) -> tuple[dict[int, int], int]:
  """(links, start) of walk `index` of `seed`: one cycle through every node (so a walk never
  revisits a node within NODES links), listed in a random order, and a start node."""
  rng = random.Random(f"probe:{seed}:{index}")
  order = list(range(NODES))
  rng.shuffle(order)
  cycle = {order[i]: order[(i + 1) % NODES] for i in range(NODES)}
  sources = list(range(NODES))
  rng.shuffle(sources)
  return {s: cycle[s] for s in sources}, rng.randrange(NODES)


def visited(links: dict[int, int], start: int) -> list[int]:
  """The node after each of the HOPS links."""
  out, node = [], start
  for _ in range(HOPS):
    node = links[node]
    out.append(node)
  return out


def format_answer(links, start, end_first: bool = True) -> str:
  """`#### end path n1 .. n(HOPS-1)` (end first), or `path n1 .. n(HOPS-1) #### end`."""
  nodes = visited(links, start)
  path = "path " + " ".join(map(str, nodes[:-1]))
  return f"#### {nodes[-1]} {path}" if end_first else f"{path} #### {nodes[-1]}"


def question(links, start) -> str:
  listed = ", ".join(f"{s} to {t}" for s, t in links.items())
  return f"links: {listed}. start at {start} and follow {HOPS} links. where do you end?"


def make(seed: int, index: int, end_first: bool = True) -> Example:
  """The probe example number `index` of `seed` (`end_first=False`: the end stated last)."""
  links, start = walk(seed, index)
  return Example("probe", f"probe-{seed}-{index}", question(links, start),
                 format_answer(links, start, end_first))


def quantities(text: str) -> list[str]:
  """The nodes a walk question's answer should state (every node after the start, distinct, in
  order): what a draft's relevance is measured against."""
  start = _START.search(text)
  links = {int(s): int(t) for s, t in _LINK.findall(text)}
  if start is None or len(links) != NODES:
    return []
  return list(dict.fromkeys(map(str, visited(links, int(start.group(1))))))
