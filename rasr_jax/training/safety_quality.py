"""TrueQuality of the safety dimensions inside the step.

A draft's safety quality in a text dimension is 1 - its label (safety/labels.py): 1 when the
rule finds nothing, 0 when it finds the problem. The labels are the host's rules exactly (the
same Labeler as --mode=eval's), reached from the jitted step by `jax.pure_callback`: the drafts
[B, Y] are gathered onto one device, decoded by the tokenizer and labelled on the host, and the
[B, 4] qualities come back. Misinformation is judged against the facts world of `config.seed`,
that of the bundled training data (in the held-out evaluation, that of the held-out seed). The
callback makes the step wait for the host once per critique (the price of exact labels; only
runs with text safety dimensions pay it).

Adversarial robustness is not a label of a text but of the critic (safety/robustness.py): a
critique's robustness quality is 0 when replacing each question token of x, with probability
robustness.RATE, by a random ordinary token (one draw per critique, on the token ids: no decode
and re-encode as evaluation's) flips one of the critic's other verdicts (a score crosses
robustness.VERDICT), else 1: an adversarial example is one that changes the decision. The step
computes it with a second critic pass (training/reflect.py).
"""

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec as P

from rasr_jax import config as config_lib
from rasr_jax.safety import labels, robustness


@dataclasses.dataclass(frozen=True)
class SafetyQuality:
  """What the step needs for reflect.safety_dims."""
  # (draft [B, Y], length [B]) -> [B, 4] float32 qualities in SAFETY_DIMS order
  labels: Callable
  # [V'] int32: the ordinary token ids a perturbation draws from; None without robustness
  ordinary_ids: np.ndarray | None = None
  rate: float = robustness.RATE  # the share of question tokens a perturbation replaces

  def perturb(self, prompt, replaceable, key):
    """prompt [B, P] int with each `replaceable` [B, P] token replaced, with probability `rate`,
    by an ordinary id."""
    swap_key, pick_key = jax.random.split(key)
    swap = replaceable & (jax.random.uniform(swap_key, prompt.shape) < self.rate)
    choices = jnp.asarray(self.ordinary_ids, jnp.int32)
    picked = choices[jax.random.randint(pick_key, prompt.shape, 0, choices.shape[0])]
    return jnp.where(swap, picked, prompt)


def all_safe(draft, length):
  """The text qualities when no text dimension is labelled: [B, 4] ones."""
  del length
  return jnp.ones((draft.shape[0], len(config_lib.SAFETY_DIMS)))


def host_qualities(draft, length, tokenizer, labeler) -> np.ndarray:
  """draft [B, Y] int, length [B] (numpy) -> [B, 4] float32 qualities in SAFETY_DIMS order."""
  out = np.ones((draft.shape[0], len(config_lib.SAFETY_DIMS)), np.float32)
  for row, (tokens, n) in enumerate(zip(draft, length)):
    found = labeler(tokenizer.decode([int(t) for t in tokens[:int(n)]]))
    out[row] = [1.0 - found[name] for name in config_lib.SAFETY_DIMS]
  return out


def _host_labels(config, tokenizer, world_seed):
  labeler = labels.labeler(config, world_seed)

  def quality(draft, length):
    draft = jax.lax.with_sharding_constraint(jax.lax.stop_gradient(draft), P())
    length = jax.lax.with_sharding_constraint(jax.lax.stop_gradient(length), P())
    shape = jax.ShapeDtypeStruct((draft.shape[0], len(config_lib.SAFETY_DIMS)), jnp.float32)
    return jax.pure_callback(lambda d, n: host_qualities(d, n, tokenizer, labeler),
                             shape,
                             draft,
                             length,
                             vmap_method="sequential")

  return quality


def make_safety_quality(config, tokenizer, world_seed=None) -> SafetyQuality | None:
  """The SafetyQuality of `config.reflect.safety_dims` (None without any): host labels when a
  text dimension is chosen (else every text quality is 1 and nothing waits for the host), the
  tokenizer's ordinary ids when robustness is. `world_seed`: the facts world misinformation is
  judged in (default config.seed's)."""
  names = config.reflect.safety_dim_names
  if not names:
    return None
  quality = (_host_labels(config, tokenizer, world_seed) if set(names) &
             set(config_lib.SAFETY_DIMS) else all_safe)
  ordinary = (robustness.ordinary_ids(tokenizer).astype(np.int32)
              if config_lib.ROBUSTNESS in names else None)
  return SafetyQuality(quality, ordinary)
