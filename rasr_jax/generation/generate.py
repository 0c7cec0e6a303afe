"""Batched generation and scoring on device (RASR.md §8).

`generate`: y(0) is decoded from x with the KV cache; then, for k < R, a critic pass over
`x <draft> y(k)`, the controller's decision, and (unless the row stopped) y(k+1) decoded after
`x <draft> y(k)+flags <critique> c(k) <refine>`. The cache of x is filled once and every pass
continues from it. Models trained with teacher-forced drafts decode with the aligned visibility
they were trained with: the query predicting refined token i sees draft tokens <= i only and not
the critique. Drafts are padded to Y tokens; padding is never attended and takes no position.

Shapes follow the package legend; the layout's P is the prompt slots (left-padded) and its Y the
max new tokens.
"""

import dataclasses

import flax.struct
import jax
import jax.numpy as jnp
from flax import nnx

from rasr_jax.model import decoding, sampling
from rasr_jax.reflection import state as loop_state
from rasr_jax.reflection import steps
from rasr_jax.reflection.layout import Layout, SpecialIds

REFLECT_MODES = ("off", "fixed", "learned")


@dataclasses.dataclass(frozen=True)
class GenerateOptions:
  """Static settings of one compiled generation function."""
  max_new_tokens: int
  sampling_params: sampling.SamplingParams = sampling.SamplingParams()
  reflect: str = "off"  # off: y(0) only; fixed: `iterations` refinements; learned: controller
  iterations: int = 0  # R
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
  drafts: jax.Array  # [R + 1, B, Y] int32
  lengths: jax.Array  # [R + 1, B] int32
  scores: jax.Array  # [R + 1, B, C] critic scores of each draft (C = 0 when reflect is off)
  disagreement: jax.Array  # [R + 1, B] a critic committee's disagreement on each draft (or 0)
  token_errors: jax.Array  # [R + 1, B, Y] per-token error probabilities of each draft
  stop_probs: jax.Array  # [R, B] the controller's R_xi after critique k
  stop_iteration: jax.Array  # [B] int32: index of the final draft (refinements applied)


def generate(graphdef,
             params,
             prompt,
             prompt_valid,
             keys,
             tau,
             progress,
             *,
             options: GenerateOptions,
             ids: SpecialIds,
             first: decoding.Decoded | None = None,
             marks=None,
             live=None):
  """prompt [B, P] int32 left-padded, prompt_valid [B, P] bool, keys [B] PRNG keys, tau and
  progress [] float -> Generation. Row b's draft k is drawn with keys fold_in(keys[b], k).
  `first`: the drafts y(0) to start from ([B, Y] tokens, padding after their lengths) instead
  of decoding them. `marks`: the tokenizer's sentence marks, for a hierarchical critic.
  `live` [B] bool: the rows to generate for (default all); the others (the filler rows of a
  partial batch) get empty drafts and hold no loop up."""
  model = nnx.merge(graphdef, params)
  rows, prompt_slots = prompt.shape
  n, k_total = options.max_new_tokens, options.iterations if options.reflect != "off" else 0
  layout = Layout(prompt_slots, n, model.feedback.critique_proj.shape[0] if k_total else 0)
  size = layout.cache_slots if k_total else prompt_slots + n
  stops = decoding.stop_sequence_array(options.stop_sequences)
  layers = model.layer_states()  # once, outside every loop
  decode_kw = dict(steps=n,
                   sampling_params=options.sampling_params,
                   pad_id=options.pad_id,
                   eos_id=options.eos_id,
                   stop_sequences=stops,
                   layers=layers)

  def draft_keys(k):
    return jax.vmap(lambda key: jax.random.fold_in(key, k))(keys)

  hidden_x, x_cache = model.cached_hidden_states(model.embed_tokens(prompt),
                                                 model.init_cache(rows, size),
                                                 valid=prompt_valid,
                                                 layers=layers)
  live = jnp.ones((rows,), bool) if live is None else live
  if first is None:
    first = decoding.decode(graphdef,
                            params,
                            x_cache,
                            model.logits(hidden_x[:, -1:])[:, 0],
                            draft_keys(0),
                            done=~live,
                            **decode_kw)
  if not k_total:
    return Generation(drafts=first.tokens[None],
                      lengths=first.lengths[None],
                      scores=jnp.zeros((1, rows, 0)),
                      disagreement=jnp.zeros((1, rows)),
                      token_errors=jnp.zeros((1, rows, n)),
                      stop_probs=jnp.zeros((0, rows)),
                      stop_iteration=jnp.zeros((rows,), jnp.int32))

  def critique(model, state):
    return steps.critique_cached(model,
                                 hidden_x,
                                 x_cache,
                                 state,
                                 progress,
                                 prompt_valid,
                                 ids,
                                 layers,
                                 marks=marks)

  def refine_draft(model, state, y_valid, crit):
    """Decodes y(k + 1) after `x <draft> y(k)+flags <critique> c(k) <refine>` -> Decoded."""
    prefix = steps.refine_prefix(model, state.draft, crit, ids)  # [B, prefix_len, D]
    mask = None
    if options.aligned:  # only the <refine> row (which predicts token 0) is restricted
      rows_mask = jnp.ones((layout.prefix_len, size), bool)
      mask = rows_mask.at[-1].set(layout.aligned_query_mask(0)[0, 0])[None]
    hidden, cache = model.cached_hidden_states(prefix,
                                               x_cache,
                                               valid=layout.prefix_valid(y_valid),
                                               mask=mask,
                                               layers=layers)
    return decoding.decode(graphdef,
                           params,
                           cache,
                           model.logits(hidden[:, -1:])[:, 0],
                           draft_keys(state.iteration + 1),
                           done=~state.active,
                           query_mask=layout.aligned_query_mask if options.aligned else None,
                           **decode_kw)

  def body(carry):
    state, record = carry
    model = nnx.merge(graphdef, params)
    crit, y_valid = critique(model, state)
    stop_prob, stop = steps.decide(model, crit, state, tau, options.reflect == "learned")
    state = steps.stop_rows(state, stop)
    new = refine_draft(model, state, y_valid, crit)
    k, state = state.iteration, steps.accept(state, new.tokens, new.lengths)
    record = record.replace(drafts=record.drafts.at[k + 1].set(state.draft),
                            lengths=record.lengths.at[k + 1].set(state.length),
                            scores=record.scores.at[k].set(crit.scores),
                            disagreement=record.disagreement.at[k].set(crit.disagreement),
                            token_errors=record.token_errors.at[k].set(crit.token_errors),
                            stop_probs=record.stop_probs.at[k].set(stop_prob))
    return state, record

  def cond(carry):
    state, _ = carry
    return (state.iteration < k_total) & jnp.any(state.active)

  record = Generation(drafts=jnp.zeros((k_total + 1, rows, n), jnp.int32).at[0].set(first.tokens),
                      lengths=jnp.zeros((k_total + 1, rows), jnp.int32).at[0].set(first.lengths),
                      scores=jnp.zeros((k_total + 1, rows, model.critic.score_b.shape[-1])),
                      disagreement=jnp.zeros((k_total + 1, rows)),
                      token_errors=jnp.zeros((k_total + 1, rows, n)),
                      stop_probs=jnp.zeros((k_total, rows)),
                      stop_iteration=jnp.zeros((rows,), jnp.int32))
  start = loop_state.start(first.tokens, first.lengths).replace(active=live)
  final, record = jax.lax.while_loop(cond, body, (start, record))
  # The final draft's own critique (drafts critiqued in the loop keep theirs).
  crit, _ = critique(model, final)
  is_final = (jnp.arange(k_total + 1)[:, None] == final.refinements[None])[..., None]  # [R+1, B, 1]
  return record.replace(scores=jnp.where(is_final, crit.scores[None], record.scores),
                        disagreement=jnp.where(is_final[..., 0], crit.disagreement[None],
                                               record.disagreement),
                        token_errors=jnp.where(is_final, crit.token_errors[None],
                                               record.token_errors),
                        stop_iteration=final.refinements)


def critic_scores(graphdef, params, x, x_valid, draft, draft_valid, progress, *, ids, marks=None):
  """The critic's weighted score c [B] and its per-dimension scores C_d [B, D] of drafts [B, Y]
  (valid [B, Y]) of prompts x [B, P] (valid [B, P]): the critique step of training and
  generation (reflection/steps.py)."""
  model = nnx.merge(graphdef, params)
  live, _ = steps.critique(model, model.embed_tokens(x), x_valid, draft, draft_valid, progress, ids,
                           marks)
  return live.critique, live.scores


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
