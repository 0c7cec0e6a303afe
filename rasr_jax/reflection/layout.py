"""The refine-sequence layout (RASR.md §3-§4): the one place that knows where each part sits.

Training (teacher-forced on y*) and generation (a KV cache filled pass by pass) lay out the same
sequence, with P prompt positions (generation: left-padded prompt slots) and Y draft positions
(generation: max new tokens):

  x [0, P) | <draft> | y(k) [P+1, P+1+Y) | <critique> | c(k): soft tokens | <refine> | y*

The critic pass reads `x <draft> y(k)`; the refine pass reads the whole sequence, and its
positions from `<refine>` on predict y*. With teacher-forced drafts the query predicting y*_i may
see draft tokens <= i only and not the critique (the aligned mask).
"""

import dataclasses

import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class SpecialIds:
  """Token ids of the layout markers and of `<eos>` and padding; the tokenizer builds them
  (`Tokenizer.marker_ids`)."""
  draft: int
  critique: int
  refine: int
  eos: int
  pad: int


@dataclasses.dataclass(frozen=True)
class Layout:
  """Positions in `x <draft> y(k) <critique> c(k) <refine> y*[:-1]`."""
  prompt_len: int  # P
  target_len: int  # Y
  critique_len: int  # soft critique tokens (ReflectConfig.critique_len)

  @property
  def draft_start(self):  # the position of y(k)_0
    return self.prompt_len + 1

  @property
  def critique_token(self):  # `<critique>`; also the length of the critic pass `x <draft> y(k)`
    return self.draft_start + self.target_len

  @property
  def refine_token(self):  # `<refine>`: the position that predicts y*_0
    return self.critique_token + 1 + self.critique_len

  @property
  def prefix_len(self):  # the refine prefix `<draft> y(k) <critique> c(k) <refine>`
    return self.refine_token + 1 - self.prompt_len

  @property
  def length(self):  # S of the teacher-forced refine pass (y*[:-1] after `<refine>`)
    return self.refine_token + self.target_len

  @property
  def cache_slots(self):  # a generation cache also holds the last decoded token
    return self.length + 1

  def aligned_hidden(self, i):
    """[lo, hi): positions the query predicting y*_i may not see under the aligned mask: draft
    tokens after i, the `<critique>` marker and the soft tokens (they pool the whole draft)."""
    return self.draft_start + i + 1, self.refine_token

  def aligned_spans(self):
    """((query, lo, hi), ...): the key spans the teacher-forced refine pass's queries may not see
    under the aligned mask (`aligned_hidden(i)` for the query predicting y*_i); an attention
    Mask's `hidden`."""
    return tuple((self.refine_token + i, *self.aligned_hidden(i)) for i in range(self.target_len))

  def aligned_query_mask(self, i):
    """[1, 1, cache_slots] bool: the cache slots visible to the query predicting y*_i (aligned)."""
    lo, hi = self.aligned_hidden(i)
    slots = jnp.arange(self.cache_slots)
    return ~((slots >= lo) & (slots < hi))[None, None]

  def refine_valid(self, prompt_valid, draft_valid):
    """[B, S] bool: the positions of the teacher-forced refine pass that hold tokens."""
    rows = draft_valid.shape[0]
    return jnp.concatenate(
        [prompt_valid,
         self.prefix_valid(draft_valid),
         jnp.ones((rows, self.target_len - 1), bool)],
        axis=1)

  def prefix_valid(self, draft_valid):
    """draft_valid [B, Y] bool -> [B, prefix_len] bool: which refine-prefix slots hold tokens
    (the markers and soft tokens always do; draft padding does not)."""
    rows = draft_valid.shape[0]
    after = self.refine_token + 1 - self.critique_token  # <critique>, soft tokens, <refine>
    return jnp.concatenate([jnp.ones((rows, 1), bool), draft_valid,
                            jnp.ones((rows, after), bool)],
                           axis=1)
