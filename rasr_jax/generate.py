"""Batched generation and scoring on device (RASR.md §8).

`generate`: y(0) is decoded from x with the KV cache; then, for k < K, a critic pass over
`x <draft> y(k)`, the controller's decision, and (unless the row stopped) y(k+1) decoded after
`x <draft> y(k)+flags <critique> c(k) <refine>`. The cache of x is filled once and every pass
continues from it. Models trained with teacher-forced drafts decode with the aligned visibility
they were trained with: the query predicting refined token i sees draft tokens <= i only and not
the critique. Drafts are padded to N tokens; padding is never attended and takes no position.

Shapes: B rows, L prompt slots (left-padded), N max new tokens, K iterations, C critic dims.
"""

import dataclasses

import flax.struct
import jax
import jax.numpy as jnp
from flax import nnx

from rasr_jax import decoding, refine, sampling

REFLECT_MODES = ("off", "fixed", "learned")


@dataclasses.dataclass(frozen=True)
class GenerateOptions:
  """Static settings of one compiled generation function."""
  max_new_tokens: int
  sampling_params: sampling.SamplingParams = sampling.SamplingParams()
  reflect: str = "off"  # off: y(0) only; fixed: `iterations` refinements; learned: controller
  iterations: int = 0  # K
  aligned: bool = True  # the model's drafts were teacher-forced (RASR.md §3)
  eos_id: int | None = 1
  pad_id: int = 0
  stop_sequences: tuple = ()  # tuples of token ids: decoding of a row ends after one
  stop_strings: tuple = ()  # the same as text, for cutting decoded text (host side)

  def __post_init__(self):
    if self.reflect not in REFLECT_MODES:
      raise ValueError(f"reflect must be one of {REFLECT_MODES}, got {self.reflect!r}")
    if self.max_new_tokens < 1:
      raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
    if self.reflect != "off" and self.iterations < 1:
      raise ValueError(f"reflect={self.reflect} needs iterations >= 1, got {self.iterations}")


@flax.struct.dataclass
class Generation:
  """Every draft of every row; entries past a row's `stop_iteration` carry no meaning."""
  drafts: jax.Array  # [K + 1, B, N] int32
  lengths: jax.Array  # [K + 1, B] int32
  scores: jax.Array  # [K + 1, B, C] critic scores of each draft (C = 0 when reflect is off)
  token_errors: jax.Array  # [K + 1, B, N] per-token error probabilities of each draft
  stop_probs: jax.Array  # [K, B] the controller's R_xi after critique k
  stop_iteration: jax.Array  # [B] int32: index of the final draft (refinements applied)


def _refine_hidden_slots(prompt_slots, max_new, num_dims, i):
  """Cache slots the query predicting refined token i must not see when aligned -> (lo, hi).

  Layout: x [0, L) | <draft> L | y(k) [L+1, L+1+N) | <critique> | C + 1 soft tokens | <refine>.
  Hidden: draft tokens after i, the <critique> marker and the soft tokens.
  """
  return prompt_slots + 2 + i, prompt_slots + max_new + num_dims + 3


def generate(graphdef, params, prompt, prompt_valid, keys, tau, progress, *,
             options: GenerateOptions, ids: refine.SpecialIds):
  """prompt [B, L] int32 left-padded, prompt_valid [B, L] bool, keys [B] PRNG keys, tau and
  progress [] float -> Generation. Row b's draft k is drawn with keys fold_in(keys[b], k)."""
  model = nnx.merge(graphdef, params)
  rows, prompt_slots = prompt.shape
  n, k_total = options.max_new_tokens, options.iterations if options.reflect != "off" else 0
  dims = model.critic.score_w.shape[-1] if k_total else 0
  size = prompt_slots + n + (n + dims + 4 if k_total else 0)
  stops = decoding.stop_sequence_array(options.stop_sequences)
  layers = model.layer_states()  # once, outside every loop
  decode_kw = dict(steps=n, sampling_params=options.sampling_params, pad_id=options.pad_id,
                   eos_id=options.eos_id, stop_sequences=stops, layers=layers)

  def draft_keys(k):
    return jax.vmap(lambda key: jax.random.fold_in(key, k))(keys)

  hidden_x, x_cache = model.cached_hidden_states(model.embed_tokens(prompt),
                                                 model.init_cache(rows, size), valid=prompt_valid,
                                                 layers=layers)
  first = decoding.decode(graphdef, params, x_cache, model.logits(hidden_x[:, -1:])[:, 0],
                          draft_keys(0), **decode_kw)
  if not k_total:
    return Generation(drafts=first.tokens[None], lengths=first.lengths[None],
                      scores=jnp.zeros((1, rows, 0)), token_errors=jnp.zeros((1, rows, n)),
                      stop_probs=jnp.zeros((0, rows)), stop_iteration=jnp.zeros((rows,), jnp.int32))

  def critique(model, draft, length):
    """Critic pass over `x <draft> y` from the cache of x -> (Critique, draft validity [B, N])."""
    y_valid = jnp.arange(n)[None] < length[:, None]
    seq = jnp.concatenate([refine.marker(model, ids.draft, rows), model.embed_tokens(draft)], 1)
    valid = jnp.concatenate([jnp.ones((rows, 1), bool), y_valid], axis=1)
    hidden, _ = model.cached_hidden_states(seq, x_cache, valid=valid, layers=layers)
    return model.critic(hidden_x, hidden[:, 1:], progress, prompt_valid, y_valid), y_valid

  def aligned_mask(i):  # [1, 1, S]: True = visible
    lo, hi = _refine_hidden_slots(prompt_slots, n, dims, i)
    slots = jnp.arange(size)
    return ~((slots >= lo) & (slots < hi))[None, None]

  def refine_draft(model, k, draft, y_valid, crit, active):
    """Decodes y(k + 1) after `x <draft> y(k)+flags <critique> c(k) <refine>` -> Decoded."""
    prefix = refine.refine_prefix(model, draft, crit, ids)  # [B, N + C + 4, D]
    valid = jnp.concatenate([jnp.ones((rows, 1), bool), y_valid,
                             jnp.ones((rows, dims + 3), bool)], axis=1)
    mask = None
    if options.aligned:  # only the <refine> row (which predicts token 0) is restricted
      rows_mask = jnp.ones((prefix.shape[1], size), bool)
      mask = rows_mask.at[-1].set(aligned_mask(0)[0, 0])[None]
    hidden, cache = model.cached_hidden_states(prefix, x_cache, valid=valid, mask=mask,
                                               layers=layers)
    return decoding.decode(graphdef, params, cache, model.logits(hidden[:, -1:])[:, 0],
                           draft_keys(k + 1), done=~active,
                           query_mask=aligned_mask if options.aligned else None, **decode_kw)

  def body(carry):
    k, draft, length, active, refinements, record = carry
    model = nnx.merge(graphdef, params)
    crit, y_valid = critique(model, draft, length)
    last_index = model.controller.iteration_embed.shape[0] - 1  # fixed mode may run longer
    stop_prob = model.controller(crit, jnp.minimum(k, last_index))
    if options.reflect == "learned":
      active &= ~(stop_prob > tau)
    new = refine_draft(model, k, draft, y_valid, crit, active)
    draft = jnp.where(active[:, None], new.tokens, draft)
    length = jnp.where(active, new.lengths, length)
    record = dict(record, drafts=record["drafts"].at[k + 1].set(draft),
                  lengths=record["lengths"].at[k + 1].set(length),
                  scores=record["scores"].at[k].set(crit.scores),
                  token_errors=record["token_errors"].at[k].set(crit.token_errors),
                  stop_probs=record["stop_probs"].at[k].set(stop_prob))
    return k + 1, draft, length, active, refinements + active, record

  def cond(carry):
    k, _, _, active, _, _ = carry
    return (k < k_total) & jnp.any(active)

  record = dict(drafts=jnp.zeros((k_total + 1, rows, n), jnp.int32).at[0].set(first.tokens),
                lengths=jnp.zeros((k_total + 1, rows), jnp.int32).at[0].set(first.lengths),
                scores=jnp.zeros((k_total + 1, rows, dims)),
                token_errors=jnp.zeros((k_total + 1, rows, n)),
                stop_probs=jnp.zeros((k_total, rows)))
  init = (jnp.zeros((), jnp.int32), first.tokens, first.lengths, jnp.ones((rows,), bool),
          jnp.zeros((rows,), jnp.int32), record)
  _, draft, length, _, refinements, record = jax.lax.while_loop(cond, body, init)
  # The final draft's own critique (drafts critiqued in the loop keep theirs).
  crit, _ = critique(model, draft, length)
  is_final = (jnp.arange(k_total + 1)[:, None] == refinements[None])[..., None]  # [K + 1, B, 1]
  return Generation(
      drafts=record["drafts"], lengths=record["lengths"],
      scores=jnp.where(is_final, crit.scores[None], record["scores"]),
      token_errors=jnp.where(is_final, crit.token_errors[None], record["token_errors"]),
      stop_probs=record["stop_probs"], stop_iteration=refinements)


def token_logprobs(graphdef, params, tokens):
  """Log-probabilities of tokens[:, 1:] given their prefixes, and whether each is the argmax.

  tokens [B, T] int32 (right padding is harmless: attention is causal) -> ([B, T - 1] float32,
  [B, T - 1] bool).
  """
  model = nnx.merge(graphdef, params)
  logits, _ = model(tokens[:, :-1])  # [B, T - 1, V]
  logprobs = jax.nn.log_softmax(logits, axis=-1)
  targets = tokens[:, 1:]
  picked = jnp.take_along_axis(logprobs, targets[..., None], axis=-1)[..., 0]
  return picked, jnp.argmax(logits, axis=-1) == targets
