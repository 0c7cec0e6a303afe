"""Next-token sampling: greedy, temperature, top-k and top-p (nucleus), with explicit keys."""

import dataclasses

import jax
import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class SamplingParams:
  """temperature 0 is greedy (argmax); top_k 0 and top_p 1 disable those filters."""
  temperature: float = 0.0
  top_k: int = 0
  top_p: float = 1.0

  def __post_init__(self):
    if self.temperature < 0:
      raise ValueError(f"temperature must be >= 0, got {self.temperature}")
    if self.top_k < 0:
      raise ValueError(f"top_k must be >= 0, got {self.top_k}")
    if not 0 < self.top_p <= 1:
      raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")


def filter_logits(logits, params: SamplingParams):
  """logits [..., V] / temperature with tokens outside the top-k and the top-p nucleus at -inf."""
  logits = logits.astype(jnp.float32) / params.temperature
  if params.top_k:
    kth = jax.lax.top_k(logits, min(params.top_k, logits.shape[-1]))[0][..., -1:]  # [..., 1]
    logits = jnp.where(logits < kth, -jnp.inf, logits)
  if params.top_p < 1:
    ordered = jnp.sort(logits, axis=-1)[..., ::-1]  # descending
    probs = jax.nn.softmax(ordered, axis=-1)
    mass_before = jnp.cumsum(probs, axis=-1) - probs
    # The smallest kept logit: tokens are kept while the mass before them is below top_p.
    kept = jnp.where(mass_before < params.top_p, ordered, jnp.inf)
    logits = jnp.where(logits < jnp.min(kept, axis=-1, keepdims=True), -jnp.inf, logits)
  return logits


def sample(logits, key, params: SamplingParams):
  """Token ids [...] int32 from logits [..., V], one draw per position with `key`."""
  if params.temperature == 0:
    return jnp.argmax(logits, axis=-1).astype(jnp.int32)
  return jax.random.categorical(key, filter_logits(logits, params), axis=-1).astype(jnp.int32)


def sample_rows(logits, keys, params: SamplingParams):
  """Token ids [B] from logits [B, V] with one key per row, so that a row's draw does not depend
  on the other rows of its batch."""
  if params.temperature == 0:
    return jnp.argmax(logits, axis=-1).astype(jnp.int32)
  return jax.vmap(lambda row_logits, k: sample(row_logits, k, params))(logits, keys)
