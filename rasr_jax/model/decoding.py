"""KV-cache decoding: one `lax.while_loop` that samples a token per step for a batch of rows.

A row ends at `<eos>` or when its tokens end with a stop sequence; the loop ends when every row
has ended or `steps` tokens are out. The model is merged inside the loop body, as nnx requires.
Shapes follow the package legend (Y = the decoded steps); `stop_len` is the longest stop sequence.
"""

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from rasr_jax.model import sampling

NO_TOKEN = -1  # pads stop sequences (matches anything) and never equals a real token id
_BEFORE_START = -2  # fills the look-back window before the first token (matches nothing)


@flax.struct.dataclass
class Decoded:
  tokens: jax.Array  # [B, Y] int32; `pad_id` after a row's end (its <eos> is kept)
  lengths: jax.Array  # [B] int32 tokens before <eos> (a matched stop sequence is counted)


def stop_sequence_array(sequences):
  """Token-id stop sequences -> [num, stop_len] int32, right-aligned and left-padded with
  NO_TOKEN."""
  sequences = [list(s) for s in sequences if len(s)]
  width = max(map(len, sequences), default=1)
  out = np.full((len(sequences), width), NO_TOKEN, np.int32)
  for row, seq in enumerate(sequences):
    out[row, width - len(seq):] = seq
  return out


def _ends_with_stop(history, index, stop_sequences):
  """Whether each row's tokens up to output `index` end with a stop sequence -> [B] bool.

  history [B, stop_len - 1 + Y]: the output tokens after stop_len - 1 look-back columns.
  """
  width = stop_sequences.shape[1]
  window = jax.lax.dynamic_slice_in_dim(history, index, width, axis=1)  # [B, stop_len]
  hits = (stop_sequences[None] == NO_TOKEN) | (window[:, None, :] == stop_sequences[None])
  return jnp.any(jnp.all(hits, axis=-1), axis=-1)


def decode(graphdef,
           params,
           cache,
           logits,
           keys,
           *,
           steps,
           sampling_params,
           pad_id=0,
           eos_id=None,
           stop_sequences=None,
           done=None,
           query_mask=None,
           layers=None):
  """Samples up to `steps` tokens per row after a prefilled `cache` -> Decoded.

  logits [B, V]: the prediction of the first new token (the prefill's last position).
  keys [B]: one PRNG key per row; token i of a row is drawn with fold_in(key, i).
  stop_sequences [num, stop_len] (see stop_sequence_array) or None; eos_id None never stops.
  done [B] bool: rows that need no tokens (they get pads and cost no loop steps alone).
  query_mask(i) -> [B or 1, 1, S] bool: extra visibility of the query that predicts token i.
  layers: the model's `layer_states()` (taken here, outside the loop, when not given).
  """
  rows = logits.shape[0]
  stops = None if stop_sequences is None or not len(stop_sequences) else jnp.asarray(stop_sequences)
  lookback = 0 if stops is None else stops.shape[1] - 1
  done = jnp.zeros((rows,), bool) if done is None else done
  layers = nnx.merge(graphdef, params).layer_states() if layers is None else layers

  def draw(logits, i):
    return sampling.sample_rows(logits,
                                jax.vmap(lambda k: jax.random.fold_in(k, i))(keys), sampling_params)

  def record(history, lengths, done, i, token):
    token = jnp.where(done, pad_id, token)
    history = history.at[:, lookback + i].set(token)
    ended = token == eos_id if eos_id is not None else jnp.zeros_like(done)
    lengths = lengths + (~done & ~ended)
    if stops is not None:
      ended |= _ends_with_stop(history, i, stops)
    return history, lengths, done | ended

  history = jnp.full((rows, lookback + steps), pad_id, jnp.int32)
  history = history.at[:, :lookback].set(_BEFORE_START)
  history, lengths, done = record(history, jnp.zeros((rows,), jnp.int32), done, 0, draw(logits, 0))

  def cond(carry):
    i, _, _, _, done = carry
    return (i < steps) & ~jnp.all(done)

  def body(carry):
    i, cache, history, lengths, done = carry
    model = nnx.merge(graphdef, params)
    previous = jax.lax.dynamic_slice_in_dim(history, lookback + i - 1, 1, axis=1)  # [B, 1]
    mask = None if query_mask is None else query_mask(i)
    hidden, cache = model.cached_hidden_states(model.embed_tokens(previous),
                                               cache,
                                               valid=~done[:, None],
                                               mask=mask,
                                               layers=layers)
    token = draw(model.logits(hidden)[:, 0], i)
    history, lengths, done = record(history, lengths, done, i, token)
    return i + 1, cache, history, lengths, done

  _, _, history, lengths, _ = jax.lax.while_loop(cond, body, (jnp.ones(
      (), jnp.int32), cache, history, lengths, done))
  return Decoded(tokens=history[:, lookback:], lengths=lengths)
