"""Generation and scoring from a checkpoint: the host side of `--mode=generate` and `--mode=score`.

Loads the model's parameters (only they, plus the step and tau) from a checkpoint onto the
config's mesh, tokenizes, batches and pads the inputs, runs the jitted functions of
`generate.py`, and turns the results into JSON-ready dicts in input order.

Every text is read after the tokenizer's start token (its bos, else `<eos>`, which separates
documents in training): how the model sees the start of a document, and what lets the first
token of a scored text have a log-probability.
"""

import dataclasses
import functools
import json
import os
import sys

import jax
import numpy as np
from absl import logging
from etils import epath

from rasr_jax import config as config_lib
from rasr_jax import progress, rounding, sharding, storage
from rasr_jax.data import sources
from rasr_jax.data import tokenizer as tok_lib
from rasr_jax.generation import generate as gen_lib
from rasr_jax.model import sampling
from rasr_jax.reflection import spans
from rasr_jax.training import checkpoint as ckpt_lib
from rasr_jax.training import train_state

LENGTH_BUCKET = 32  # input lengths are rounded up to a multiple (one compilation per bucket)


def _locate_checkpoint(workdir, checkpoint):
  """(checkpoints directory, step): `checkpoint` is a step directory or a checkpoints
  directory (newest step); default the newest step under the workdir. (None, None) when the
  default has no checkpoints but the workdir holds imported parameters."""
  path = storage.absolute(checkpoint or ckpt_lib.checkpoint_dir(workdir))
  name = os.path.basename(path)
  directory, step = (os.path.dirname(path), int(name)) if name.isdigit() else (path, None)
  if not epath.Path(path).is_dir():
    if not checkpoint and epath.Path(ckpt_lib.imported_params_dir(workdir)).is_dir():
      return None, None
    raise ckpt_lib.CheckpointError(f"no checkpoint at {path}"
                                   + ("" if checkpoint else " (train first, or pass --checkpoint)"))
  return directory, step


def _load_tokenizer(config, workdir):
  tokenizer = tok_lib.existing(workdir, config.data.tokenizer, config.model.vocab_size)
  if tokenizer is None:
    raise tok_lib.TokenizerError(f"no tokenizer: {workdir} has none (tokenizer.model or "
                                 "tokenizer.json) and config.data.tokenizer is empty")
  return tokenizer


def cut_at_stop(text, stop_strings):
  """`text` up to the first occurrence of any stop string."""
  cut = min((i for i in (text.find(s) for s in stop_strings if s) if i >= 0), default=len(text))
  return text[:cut]


def _stored_meta(config, directory, step):
  """(step, metadata) of checkpoint `step` (default newest) in `directory`."""
  checkpointer = ckpt_lib.Checkpointer(directory, config.checkpoint, read_only=True)
  try:
    step = checkpointer.latest_step() if step is None else step
    if step is None:
      raise ckpt_lib.CheckpointError(f"no complete checkpoint in {directory}")
    return step, checkpointer.read_meta(step)
  finally:
    checkpointer.close()


def _as_trained(config, stored):
  """`config` with reflection on or off as the checkpoint's model was trained (post-training
  turns it off: its models have no RASR heads)."""
  enabled = stored.get("config", {}).get("reflect", {}).get("enabled", config.reflect.enabled)
  if enabled == config.reflect.enabled:
    return config
  logging.info("the checkpoint's model was trained with reflect.enabled=%s; using that", enabled)
  return dataclasses.replace(config, reflect=dataclasses.replace(config.reflect, enabled=enabled))


def _restore(config, directory, step, stored, tokenizer, abstract_params, replicated):
  """{"params", "step", "tau"} of checkpoint `step` in `directory` (metadata `stored`), after
  checking its parameters and tokenizer against the config's model."""
  checkpointer = ckpt_lib.Checkpointer(directory, config.checkpoint, read_only=True)
  try:
    problems = ckpt_lib.param_problems(stored,
                                       {"params": ckpt_lib.param_signature(abstract_params)})
    if stored.get("tokenizer_sha256") != tokenizer.checksum:
      problems.append(f"tokenizer {tokenizer.path} is not the one the checkpoint was trained "
                      "with")
    if problems:
      raise ckpt_lib.CheckpointError(f"checkpoint {directory}/{step} does not match the "
                                     "config: " + "; ".join(problems))
    return checkpointer.restore_fields(
        step, {
            "params": abstract_params,
            "step": jax.ShapeDtypeStruct((), np.int32, sharding=replicated),
            "tau": jax.ShapeDtypeStruct((), np.float32, sharding=replicated)
        })
  finally:
    checkpointer.close()


class InferenceModel:
  """A checkpoint's model on the config's mesh, with its tokenizer."""

  def __init__(self, config, workdir, checkpoint=None):
    self.config = config_lib.resolve_mesh(config, jax.device_count())
    directory, step = _locate_checkpoint(workdir, checkpoint)
    if directory is not None:
      step, stored = _stored_meta(self.config, directory, step)
      self.config = _as_trained(self.config, stored)
    self.tokenizer = _load_tokenizer(self.config, workdir)
    self.mesh = sharding.make_mesh(self.config.mesh)
    self.graphdef, abstract_params, specs = train_state.abstract_model(self.config)
    self.param_shardings = train_state.to_shardings(specs, self.mesh)
    abstract_params = ckpt_lib.with_shardings(abstract_params, self.param_shardings)
    if directory is None:  # imported parameters: no training step yet, tau at its start
      self.step, self.tau = 0, np.float32(self.config.reflect.tau)
      self.origin = storage.absolute(ckpt_lib.imported_params_dir(workdir))
      self.params = ckpt_lib.restore_params(self.origin, abstract_params)
    else:
      restored = _restore(self.config, directory, step, stored, self.tokenizer, abstract_params,
                          sharding.replicated(self.mesh))
      self.step = int(restored["step"])
      self.origin = f"{directory} step {self.step}"  # where the parameters come from
      self.params, self.tau = restored["params"], restored["tau"]
    self.progress = np.float32(min(self.step / self.config.train.steps, 1.0))
    self.ids = self.tokenizer.marker_ids
    # The sentence marks of every token, for a hierarchical critic's sentence scale.
    self.marks = (spans.sentence_marks(self.tokenizer.piece_bytes(self.config.model.vocab_size)) if
                  self.config.reflect.enabled and self.config.reflect.critics.hierarchy else None)
    self._batch_sharding = sharding.batch_sharding(self.mesh)
    self._rows_multiple = self.config.mesh.data * self.config.mesh.fsdp
    self._compiled = {}  # GenerateOptions (or "score") -> jitted function

  def _batches(self, items, batch_size):
    """(rows, [(start, chunk)]): chunks of `rows` items; every batch is padded to `rows`, a
    multiple of the data-parallel size, so one compiled function serves them all."""
    rows = rounding.round_up(batch_size, self._rows_multiple)
    return rows, [(i, items[i:i + rows]) for i in range(0, len(items), rows)]

  def _put(self, array):
    return jax.device_put(array, self._batch_sharding)

  def _generate_fn(self, options):
    if options not in self._compiled:
      self._compiled[options] = self._jit_generate(options)
    return self._compiled[options]

  def _jit_generate(self, options):

    def run(params, prompt, valid, indices, live, seed, tau, progress):
      base = jax.random.key(seed)
      keys = jax.vmap(lambda i: jax.random.fold_in(base, i))(indices)
      return gen_lib.generate(self.graphdef,
                              params,
                              prompt,
                              valid,
                              keys,
                              tau,
                              progress,
                              options=options,
                              ids=self.ids,
                              marks=self.marks,
                              live=live)

    batch = self._batch_sharding
    return jax.jit(run,
                   in_shardings=(self.param_shardings, batch, batch, batch, batch, None, None,
                                 None))

  def _score_fn(self):
    if "score" not in self._compiled:
      fn = functools.partial(gen_lib.token_logprobs, self.graphdef)
      self._compiled["score"] = jax.jit(fn,
                                        in_shardings=(self.param_shardings, self._batch_sharding))
    return self._compiled["score"]

  def options(self,
              *,
              max_new_tokens=64,
              temperature=0.0,
              top_k=0,
              top_p=1.0,
              stop=(),
              reflect="auto",
              iterations=None):
    """GenerateOptions for this model; reflect `auto` is `learned` (or `fixed` when the model
    was trained without learned stopping) for a RASR model and `off` otherwise. Drafts that
    will be refined are at most the reflect.target_len tokens the model was trained with."""
    r = self.config.reflect
    if reflect == "auto":
      reflect = ("learned" if r.learned_stopping else "fixed") if r.enabled else "off"
    if reflect != "off" and not r.enabled:
      raise config_lib.ConfigError(f"reflect={reflect} needs a model with reflection heads "
                                   "(config.reflect.enabled=False)")
    if reflect != "off" and max_new_tokens > r.target_len:
      logging.info("drafts of at most reflect.target_len=%d tokens (the trained length), not %d",
                   r.target_len, max_new_tokens)
      max_new_tokens = r.target_len
    stop_sequences = tuple(filter(None, (self._stop_tokens(s) for s in stop if s)))
    return gen_lib.GenerateOptions(max_new_tokens=max_new_tokens,
                                   sampling_params=sampling.SamplingParams(
                                       temperature, top_k, top_p),
                                   reflect=reflect,
                                   iterations=r.iterations if iterations is None else iterations,
                                   aligned=r.draft_mode == "teacher_forced",
                                   eos_id=self.tokenizer.eos_id,
                                   pad_id=self.tokenizer.pad_id,
                                   stop_sequences=stop_sequences,
                                   stop_strings=tuple(s for s in stop if s))

  def _stop_tokens(self, text):
    """Token ids that end a row when its tokens end with them: `text` encoded alone, less the
    leading pieces that decode to nothing (sentencepiece's word-start mark). Empty when the
    tokenizer drops the text (its normalisation removes newlines); the text cut still holds."""
    ids = self.tokenizer.encode(text)
    while ids and not self.tokenizer.decode(ids[:1]):
      ids = ids[1:]
    return tuple(ids)

  def generate(self, prompts, options, *, seed=0, batch_size=8, max_prompt_tokens=None):
    """One dict per prompt (see `options()`): final text, every draft, critic scores, stop
    iteration. Each draft's text is cut at the first stop string. A prompt's samples depend on
    `seed` and its index only, not on its batch. Prompts longer than `max_prompt_tokens` keep
    their last tokens; with reflection on, the default is P (reflect.prompt_len), what a
    reflection row's x keeps in training.
    """
    encoded = [self.tokenizer.encode_prompt(p) for p in prompts]
    return self.generate_tokens(encoded,
                                options,
                                seed=seed,
                                batch_size=batch_size,
                                max_prompt_tokens=max_prompt_tokens,
                                labels=list(prompts))

  def generate_tokens(self,
                      prompts,
                      options,
                      *,
                      seed=0,
                      batch_size=8,
                      max_prompt_tokens=None,
                      labels=None):
    """`generate` for prompts given as token ids (lists of int, each starting as a prompt does:
    data/chat.py's layout); `labels` are the records' "prompt" values (default the decoded
    ids)."""
    labels = labels or [self.tokenizer.decode(ids) for ids in prompts]
    if max_prompt_tokens is None and options.reflect != "off":
      max_prompt_tokens = self.config.reflect.prompt_len  # x as training's rows hold it
    rows, batches = self._batches(list(zip(prompts, labels)), batch_size)
    fn = self._generate_fn(options)
    results = []
    with sharding.activate(self.mesh):
      for start, chunk in progress.track(batches, len(batches), "generating", "batches"):
        encoded = [list(ids) for ids, _ in chunk]
        if max_prompt_tokens:
          encoded = [ids[-max_prompt_tokens:] for ids in encoded]
        width = rounding.round_up(max(map(len, encoded)), LENGTH_BUCKET)
        prompt = np.full((rows, width), self.tokenizer.pad_id, np.int32)
        valid = np.zeros((rows, width), bool)
        for row, ids in enumerate(encoded):  # left padding: every prompt ends at the last slot
          prompt[row, width - len(ids):], valid[row, width - len(ids):] = ids, True
        valid[len(chunk):, -1] = True  # filler rows: one pad token, nothing decoded
        indices = np.arange(start, start + rows, dtype=np.int32)
        live = np.arange(rows) < len(chunk)
        out = jax.device_get(
            fn(self.params, self._put(prompt), self._put(valid), self._put(indices),
               self._put(live), np.uint32(seed), self.tau, self.progress))
        results.extend(
            self._generation_record(label, out, row, options)
            for row, (_, label) in enumerate(chunk))
    return results

  def _generation_record(self, prompt, out, row, options):
    final = int(out.stop_iteration[row])
    drafts = [
        cut_at_stop(self.tokenizer.decode(out.drafts[k, row, :out.lengths[k, row]]),
                    options.stop_strings) for k in range(final + 1)
    ]
    record = {
        "prompt": prompt,
        "text": drafts[-1],
        "drafts": drafts,
        "stop_iteration": final,
        "num_tokens": int(out.lengths[final, row]),
        "draft_tokens": [int(n) for n in out.lengths[:final + 1, row]]
    }
    if options.reflect != "off":
      record.update(
          score_names=list(self.config.reflect.dim_names),
          scores=[[round(float(s), 6) for s in out.scores[k, row]] for k in range(final + 1)],
          token_errors=[[
              round(float(e), 6) for e in out.token_errors[k, row, :out.lengths[k, row]]
          ] for k in range(final + 1)],
          stop_probs=[
              # unrounded: `methods.learned_stop` compares them with tau as the device did
              float(p) for p in out.stop_probs[:min(final + 1, options.iterations), row]
          ])
      if self.config.reflect.critics.agents > 1:
        record["disagreement"] = [
            round(float(out.disagreement[k, row]), 8) for k in range(final + 1)
        ]
    return record

  def score_tokens(self, token_lists, batch_size=8):
    """(log-probabilities, is-greedy flags) of tokens[1:] given their prefixes, per list."""
    rows, batches = self._batches(list(token_lists), batch_size)
    fn = self._score_fn()
    results = []
    with sharding.activate(self.mesh):
      for _, chunk in progress.track(batches, len(batches), "scoring", "batches"):
        width = rounding.round_up(max(map(len, chunk)), LENGTH_BUCKET)
        tokens = np.full((rows, width), self.tokenizer.pad_id, np.int32)
        for row, ids in enumerate(chunk):
          tokens[row, :len(ids)] = ids
        logprobs, greedy = jax.device_get(fn(self.params, self._put(tokens)))
        results.extend((logprobs[row, :len(ids) - 1], greedy[row, :len(ids) - 1])
                       for row, ids in enumerate(chunk))
    return results

  def critic_scores(self, prompts, responses, batch_size=8):
    """The critic's weighted score c (RASR.md eq. 13) of each response read as a draft of its
    prompt, as a reflection row holds them: x = the prompt's last P tokens after the start
    token, left-padded; the draft = the response's first Y tokens, valid as a decoded draft's
    are (its `<eos>` and the padding after it never attended)."""
    return [float(c) for c in self._critique(prompts, responses, batch_size)[0]]

  def critic_dimension_scores(self, prompts, responses, batch_size=8):
    """[N, D] the critic's scores C_d of each response read as a draft of its prompt, in
    config.reflect.dim_names order (as critic_scores reads them)."""
    return self._critique(prompts, responses, batch_size)[1]

  def _critique(self, prompts, responses, batch_size):
    """(c [N], C_d [N, D]) numpy of each (prompt, response)."""
    r = self.config.reflect
    if not r.enabled:
      raise config_lib.ConfigError("the critic scores drafts: it needs a model with reflection "
                                   "heads (config.reflect.enabled=True)")
    if "critic" not in self._compiled:
      self._compiled["critic"] = jax.jit(functools.partial(gen_lib.critic_scores,
                                                           self.graphdef,
                                                           ids=self.ids,
                                                           marks=self.marks),
                                         in_shardings=(self.param_shardings,
                                                       *[self._batch_sharding] * 4, None))
    rows, batches = self._batches(list(zip(prompts, responses)), batch_size)
    critiques, scores = [], []
    with sharding.activate(self.mesh):
      for _, chunk in batches:
        x = np.full((rows, r.prompt_len), self.tokenizer.pad_id, np.int32)
        draft = np.full((rows, r.target_len), self.tokenizer.pad_id, np.int32)
        x_valid, draft_valid = np.zeros(x.shape, bool), np.zeros(draft.shape, bool)
        x_valid[:, -1] = True  # filler rows
        for row, (prompt, response) in enumerate(chunk):
          ids = self.tokenizer.encode_prompt(prompt)[-r.prompt_len:]
          x[row, r.prompt_len - len(ids):], x_valid[row, r.prompt_len - len(ids):] = ids, True
          tokens = self.tokenizer.encode(response)[:r.target_len]
          draft[row, :len(tokens)], draft_valid[row, :len(tokens)] = tokens, True
          draft[row, len(tokens):len(tokens) + 1] = self.tokenizer.eos_id  # as decoding ends it
        out = self._compiled["critic"](self.params, *map(self._put,
                                                         (x, x_valid, draft, draft_valid)),
                                       self.progress)
        critique, dims = jax.device_get(out)
        critiques.append(critique[:len(chunk)])
        scores.append(dims[:len(chunk)])
    if not critiques:
      return np.zeros(0, np.float32), np.zeros((0, len(r.dim_names)), np.float32)
    return np.concatenate(critiques), np.concatenate(scores)

  def score(self, texts, batch_size=8):
    """One dict per text: its token ids, their log-probabilities (natural log) and the sum."""
    encoded = [self.tokenizer.encode_prompt(t) for t in texts]
    records = []
    for text, ids, (logprobs, greedy) in zip(texts, encoded, self.score_tokens(encoded,
                                                                               batch_size)):
      records.append({
          "text": text,
          "token_ids": ids[1:],
          "logprobs": [round(float(x), 6) for x in logprobs],
          "sum_logprob": float(np.sum(logprobs, dtype=np.float64)),
          "num_tokens": len(ids) - 1,
          "is_greedy": bool(np.all(greedy))
      })
    return records


def gather_inputs(values, path, field, flag_names):
  """Texts from a repeatable flag plus a file; a clear error when there are none."""
  texts = list(values or [])
  if path:
    texts += sources.read_texts(path, field)
  if not texts:
    raise sources.DataError(f"nothing to do: pass {flag_names}")
  return texts


def write_jsonl(records, output):
  """JSON lines to `output` (a path, or '-' for stdout)."""
  lines = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
  if output == "-":
    sys.stdout.write(lines)
    sys.stdout.flush()
  else:
    epath.Path(output).write_text(lines)
