"""The steps of one draft-critique-refine iteration, shared by training and generation.

critique: the critic pass over `x <draft> y(k)` gives c(k) (whole in training, from the cache of
x in generation); decide: the controller's stop
probability and which rows stop; refine: the prefix `<draft> y(k)+flags <critique> c(k) <refine>`
after which y(k+1) is predicted (teacher-forced in training, decoded in generation); accept: the
refined drafts replace the drafts of the rows still active.
"""

import jax
import jax.numpy as jnp
from flax import nnx

from rasr_jax.model import decoding, sampling
from rasr_jax.model.attention import Mask
from rasr_jax.reflection import spans
from rasr_jax.reflection.layout import Layout, SpecialIds
from rasr_jax.reflection.state import LoopState


def marker(model, token_id, rows):
  """Embedding [B, 1, D] of one marker token."""
  return model.embed_tokens(jnp.full((rows, 1), token_id, jnp.int32))


def draft_segment(model, draft, ids: SpecialIds):
  """Embeddings [B, 1 + Y, D] of `<draft> y(k)`: what the critic pass adds after x."""
  return jnp.concatenate([marker(model, ids.draft, draft.shape[0]),
                          model.embed_tokens(draft)],
                         axis=1)


def padded_attention(valid):
  """valid [B, S] bool -> (positions [B, S], attention Mask) of an uncached pass in which
  padding is never attended and takes no rotary position, exactly as in a KV cache
  (`Transformer.cached_hidden_states`): the tokens share segment 0, each padding token has a
  segment of its own (so it sees only itself)."""
  positions = jnp.maximum(jnp.cumsum(valid, axis=1) - 1, 0)
  own = -1 - jnp.arange(valid.shape[1], dtype=jnp.int32)
  return positions, Mask(segment_ids=jnp.where(valid, 0, own[None]))


def _sentences(draft, draft_valid, marks):
  """The drafts' sentence index [B, Y] for a hierarchical critic, or None without `marks`."""
  if marks is None:
    return None
  return spans.sentence_index(draft, jnp.sum(draft_valid, axis=1), marks)


def critique(model,
             x_emb,
             prompt_valid,
             draft,
             draft_valid,
             progress,
             ids: SpecialIds,
             marks: spans.SentenceMarks | None = None):
  """Critic pass over `x <draft> y(k)` (no cache) -> (live critique, critique of stop-gradient
  states). x_emb [B, P, D] with prompt_valid [B, P]; draft [B, Y] with draft_valid [B, Y];
  `marks` (the tokenizer's sentence marks) for a hierarchical critic.

  The live critique feeds the refine pass (L_reflection reaches psi and phi through it); the
  other trains the critic (L_critic reaches phi only).
  """
  prompt_len, rows = x_emb.shape[1], x_emb.shape[0]
  valid = jnp.concatenate([prompt_valid, jnp.ones((rows, 1), bool), draft_valid], axis=1)
  positions, mask = padded_attention(valid)
  hidden = model.hidden_states(jnp.concatenate([x_emb, draft_segment(model, draft, ids)], axis=1),
                               positions=positions,
                               mask=mask)
  hx, hy = hidden[:, :prompt_len], hidden[:, prompt_len + 1:]  # [B, P, D], [B, Y, D]
  sentences = _sentences(draft, draft_valid, marks)
  live = model.critic(hx, hy, progress, prompt_valid, draft_valid, sentences)
  frozen = model.critic(jax.lax.stop_gradient(hx), jax.lax.stop_gradient(hy), progress,
                        prompt_valid, draft_valid, sentences)
  return live, frozen


def critique_cached(model,
                    hidden_x,
                    x_cache,
                    state: LoopState,
                    progress,
                    prompt_valid,
                    ids: SpecialIds,
                    layers=None,
                    marks: spans.SentenceMarks | None = None):
  """Critic pass over `x <draft> y(k)` continuing from the KV cache of x (generation) ->
  (Critique, draft validity [B, Y] bool). hidden_x [B, P, D] and prompt_valid [B, P] are x's;
  draft padding past `state.length` is never attended and left out of the critic's means."""
  rows, target_len = state.draft.shape
  y_valid = jnp.arange(target_len)[None] < state.length[:, None]
  valid = jnp.concatenate([jnp.ones((rows, 1), bool), y_valid], axis=1)
  hidden, _ = model.cached_hidden_states(draft_segment(model, state.draft, ids),
                                         x_cache,
                                         valid=valid,
                                         layers=layers)
  return model.critic(hidden_x, hidden[:, 1:], progress, prompt_valid, y_valid,
                      _sentences(state.draft, y_valid, marks)), y_valid


def decide(model, critique_k, state: LoopState, tau, stopping):
  """The controller on c(k) -> (stop probability R_xi [B], rows that stop now [B] bool).

  A row stops when R_xi > tau and `stopping` ([] bool) is on. Iterations past the controller's
  trained range (fixed generation may run longer) reuse its last iteration embedding.
  """
  last = model.controller.iteration_embed.shape[0] - 1
  stop_prob = model.controller(critique_k, jnp.minimum(state.iteration, last))
  return stop_prob, (stop_prob > tau) & stopping


def stop_rows(state: LoopState, stop) -> LoopState:
  """Rows in `stop` [B] bool become inactive before the refine step."""
  return state.replace(active=state.active & ~stop)


def refine_prefix(model, draft, critique_k, ids: SpecialIds):
  """Embeddings [B, Y + C + 4, D] of `<draft> y(k)+flags <critique> c(k) <refine>`."""
  rows, dtype = draft.shape[0], model.cfg.dtype
  flags = model.feedback.flags(critique_k.token_errors)  # [B, Y, D]
  return jnp.concatenate([
      marker(model, ids.draft, rows),
      model.embed_tokens(draft) + flags.astype(dtype),
      marker(model, ids.critique, rows),
      model.feedback.critique_tokens(critique_k).astype(dtype),
      marker(model, ids.refine, rows),
  ],
                         axis=1)


def refine_logits(model, x_emb, prompt_valid, draft, draft_valid, critique_k, y_star,
                  ids: SpecialIds, layout: Layout, aligned: bool):
  """The refine pass teacher-forced on y* [B, Y] -> logits [B, Y, V] of the positions that
  predict y*, under the aligned mask when `aligned` (teacher-forced drafts). Prompt and draft
  padding are never attended and take no position, as in generation."""
  seq = jnp.concatenate(
      [x_emb,
       refine_prefix(model, draft, critique_k, ids),
       model.embed_tokens(y_star[:, :-1])],
      axis=1)  # [B, S, D]
  positions, mask = padded_attention(layout.refine_valid(prompt_valid, draft_valid))
  if aligned:
    mask = mask.replace(hidden=layout.aligned_spans())
  hidden = model.hidden_states(seq, positions=positions, mask=mask)
  return model.logits(hidden[:, -layout.target_len:])


def decode_after(graphdef,
                 params,
                 prefix,
                 prefix_valid,
                 steps,
                 temperature,
                 key,
                 ids: SpecialIds,
                 done=None) -> decoding.Decoded:
  """Free-running decoding of up to `steps` tokens after prefix embeddings [B, T, D] (valid
  [B, T]), each row ending at `<eos>`, as generation decodes -> Decoded.

  One prefill of the prefix into a KV cache, then one cached trunk call per token. No gradient
  flows through the sampled tokens. Rows in `done` [B] bool get pads and cost no loop steps.
  """
  params, prefix = jax.lax.stop_gradient((params, prefix))
  rows, length, _ = prefix.shape
  model = nnx.merge(graphdef, params)
  hidden, cache = model.cached_hidden_states(prefix,
                                             model.init_cache(rows, length + steps),
                                             valid=prefix_valid)
  return decoding.decode(graphdef,
                         params,
                         cache,
                         model.logits(hidden[:, -1:])[:, 0],
                         jax.random.split(key, rows),
                         steps=steps,
                         sampling_params=sampling.SamplingParams(temperature),
                         pad_id=ids.pad,
                         eos_id=ids.eos,
                         done=done)


def accept(state: LoopState, draft, length) -> LoopState:
  """y(k+1) [B, Y] (and its lengths [B]) replaces y(k) in the active rows; the next iteration."""
  active = state.active
  return state.replace(iteration=state.iteration + 1,
                       draft=jnp.where(active[:, None], draft, state.draft),
                       length=jnp.where(active, length, state.length),
                       refinements=state.refinements + active)
