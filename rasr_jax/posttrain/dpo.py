"""Direct preference optimisation (`--mode=dpo`): sigmoid DPO against a frozen reference model.

Records: `dpo.files` (data/chat.py's pairs: `prompt`, `chosen`, `rejected`, optional `type`),
held out `dpo.eval_files`. A pair takes one row for each response, padded to data.seq_len + 1
(segment id 0 and no loss on padding); the loss mask covers the response and its `<eos>`.

The reference's log-probability of every response is computed once, before training, from
`dpo.reference` (default `init_from`), and kept in WORKDIR/dpo_reference/ (safetensors, one
file per chunk of pairs, with the data and reference they belong to): a restarted or resumed
run reads what is there and computes only what is missing; the reference model is gone from
memory before the policy trains. With log-probabilities pi (policy) and rho (reference):

  margin = beta ((pi_chosen - rho_chosen) - (pi_rejected - rho_rejected))
  loss = -(1 - eps) log sigmoid(margin) - eps log sigmoid(-margin)      (eps: label_smoothing)

`rewards/chosen` = beta (pi_chosen - rho_chosen), `rewards/rejected` likewise, `rewards/margin`
their difference, `rewards/accuracy` the share of pairs with a positive margin; with `type`s
also per type (`rewards/accuracy/<type>`, `rewards/margin/<type>`, `pairs/<type>` the type's
share of the batch). Length control (`dpo.length_control`): `drop_longer` leaves out pairs
whose chosen response has more tokens than the rejected one (whole responses; AvR Stage II's
rule on final answers is applied when its pairs are built); `normalize`
divides every log-probability by its response's token count.
"""

import dataclasses
import hashlib
import os

import grain
import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from etils import epath
from flax import nnx, struct
from safetensors import numpy as safetensors_np

from rasr_jax import config as config_lib
from rasr_jax import distributed, progress, sharding, storage
from rasr_jax.data import chat, packing, pipeline, sources
from rasr_jax.data.packing import PackedRows
from rasr_jax.training import checkpoint as ckpt_lib
from rasr_jax.training import loop, losses, train_state
from rasr_jax.training import step as train_step

REFERENCE_DIR = "dpo_reference"
CHUNK_PAIRS = 1024  # pairs per file of reference log-probabilities
SIDES = ("chosen", "rejected")


@struct.dataclass
class PreferenceRows:
  """A batch of preference pairs, one per row of each side."""
  chosen: PackedRows  # [B, T + 1]: the prompt and chosen response, padded; loss mask: response
  rejected: PackedRows  # [B, T + 1]: the prompt and rejected response
  reference_chosen: jax.Array  # [B] float32: the reference's log-probability of the response
  reference_rejected: jax.Array  # [B] float32
  pair_type: jax.Array  # [B] int32: index into the run's pair types (-1: none)


def sequence_logps(model, rows: PackedRows):
  """(sum of the counted targets' log-probabilities [B], their count [B]) under `model`."""
  inputs, targets, weights, positions, mask = packing.inputs_and_targets(rows)
  logits, _ = model(inputs, positions=positions, mask=mask)
  logps = -losses.token_cross_entropy(logits.astype(jnp.float32), targets)
  return jnp.sum(logps * weights, axis=-1), jnp.sum(weights, axis=-1)


def dpo_losses(policy_chosen, policy_rejected, reference_chosen, reference_rejected, beta,
               label_smoothing):
  """Per pair [B]: (loss, chosen reward, rejected reward) of sigmoid DPO."""
  chosen_rewards = beta * (policy_chosen - reference_chosen)
  rejected_rewards = beta * (policy_rejected - reference_rejected)
  margin = chosen_rewards - rejected_rewards
  loss = (-(1.0 - label_smoothing) * jax.nn.log_sigmoid(margin)
          - label_smoothing * jax.nn.log_sigmoid(-margin))
  return loss, chosen_rewards, rejected_rewards


def _per_token(logps, counts, cfg):
  return logps / jnp.maximum(counts, 1.0) if cfg.length_control == "normalize" else logps


def make_objective(cfg, pair_types) -> train_step.Objective:
  """DPO as the training step's objective (`cfg`: DPOConfig; `pair_types`: the type names)."""

  def make_loss_fn(graphdef, micro_batches):
    del micro_batches  # every term is a sum over pairs divided by the batch's pair count

    def loss_fn(params, rows: PreferenceRows, qa, normalizer, key, tau, progress):
      del qa, key, tau, progress
      model = nnx.merge(graphdef, params)
      both = jax.tree.map(lambda c, r: jnp.concatenate([c, r]), rows.chosen, rows.rejected)
      logps, counts = sequence_logps(model, both)  # [2B]
      logps = _per_token(logps, counts, cfg)
      half = rows.reference_chosen.shape[0]
      loss, chosen, rejected = dpo_losses(logps[:half], logps[half:], rows.reference_chosen,
                                          rows.reference_rejected, cfg.beta, cfg.label_smoothing)
      margin = chosen - rejected
      right = (margin > 0).astype(jnp.float32)
      total = jnp.sum(loss) / normalizer
      metrics = {
          "loss/dpo": total,
          "rewards/chosen": jnp.sum(chosen) / normalizer,
          "rewards/rejected": jnp.sum(rejected) / normalizer,
          "rewards/margin": jnp.sum(margin) / normalizer,
          "rewards/accuracy": jnp.sum(right) / normalizer,
      }
      for index, name in enumerate(pair_types):
        of_type = (rows.pair_type == index).astype(jnp.float32)
        metrics[f"pairs/{name}"] = jnp.sum(of_type) / normalizer
        metrics[f"rewards/accuracy/{name}"] = jnp.sum(right * of_type) / normalizer
        metrics[f"rewards/margin/{name}"] = jnp.sum(margin * of_type) / normalizer
      return total, metrics

    return loss_fn

  def finish(metrics):
    """Per-type sums (shares of the batch) -> means over the type's pairs."""
    metrics = dict(metrics)
    for name in pair_types:
      share = metrics[f"pairs/{name}"]
      for what in ("accuracy", "margin"):
        key = f"rewards/{what}/{name}"
        metrics[key] = metrics[key] / jnp.maximum(share, 1e-9)
    return metrics

  return train_step.Objective(make_loss_fn, lambda rows: jnp.float32(rows.pair_type.shape[0]),
                              finish, abstract_rows)


def abstract_rows(batch_size, row_len, batch_sharding) -> PreferenceRows:
  """One batch of pairs as jax.ShapeDtypeStructs (the memory fit compiles the step from them)."""
  array = lambda shape, dtype: jax.ShapeDtypeStruct(shape, dtype, sharding=batch_sharding)
  row = lambda dtype: array((batch_size, row_len), dtype)  # [B, T + 1]
  side = lambda: PackedRows(row("int32"), row("int32"), row("bool"))
  return PreferenceRows(side(), side(), array((batch_size,), "float32"),
                        array((batch_size,), "float32"), array((batch_size,), "int32"))


@dataclasses.dataclass(frozen=True)
class EncodedPairs:
  """Pairs as arrays: per side tokens and loss mask [n, T + 1] (padded: segment 0)."""
  tokens: dict  # side -> [n, T + 1] int32
  loss_mask: dict  # side -> [n, T + 1] bool
  segment_ids: dict  # side -> [n, T + 1] int32 (1 on the tokens, 0 on padding)
  pair_type: np.ndarray  # [n] int32
  fingerprint: str  # sha256 of the tokens and masks

  def __len__(self):
    return len(self.pair_type)


def encode_pairs(pairs, tokenizer, row_len, pair_types) -> EncodedPairs:
  """`pairs` (chat.Pair) as arrays of rows of `row_len` tokens; DataError naming the record of a
  response that does not fit."""
  n = len(pairs)
  tokens = {s: np.full((n, row_len), tokenizer.pad_id, np.int32) for s in SIDES}
  loss_mask = {s: np.zeros((n, row_len), bool) for s in SIDES}
  segment_ids = {s: np.zeros((n, row_len), np.int32) for s in SIDES}
  digest = hashlib.sha256(b"dpo")
  for row, pair in enumerate(pairs):
    for side, dialogue in zip(SIDES, (pair.chosen, pair.rejected)):
      example = chat.encode_checked(dialogue, tokenizer, row_len)
      size = len(example.tokens)
      tokens[side][row, :size] = example.tokens
      loss_mask[side][row, :size] = example.loss_mask
      segment_ids[side][row, :size] = 1
  for side in SIDES:
    digest.update(tokens[side].tobytes() + loss_mask[side].tobytes())
  types = np.asarray([pair_types.index(p.pair_type) if p.pair_type else -1 for p in pairs],
                     np.int32)
  return EncodedPairs(tokens, loss_mask, segment_ids, types, digest.hexdigest())


def drop_longer_chosen(pairs, tokenizer):
  """The pairs whose chosen response has no more tokens than the rejected one."""

  def response_tokens(dialogue):
    return int(np.sum(chat.encode(dialogue, tokenizer)[1]))

  kept = [p for p in pairs if response_tokens(p.chosen) <= response_tokens(p.rejected)]
  logging.info("dpo.length_control=drop_longer: %d of %d pairs kept", len(kept), len(pairs))
  if not kept:
    raise sources.DataError("dpo.length_control=drop_longer leaves no pair: every chosen "
                            "response is longer than its rejected one")
  return kept


def _rows(arrays, side, index):
  return PackedRows(arrays.tokens[side][index], arrays.segment_ids[side][index],
                    arrays.loss_mask[side][index])


class ReferenceLogps:
  """The reference model's log-probability of each pair's responses, computed once and kept in
  `directory` a chunk at a time (see the module docstring)."""

  def __init__(self, config, initial, tokenizer, directory):
    self._config = config
    self._initial = initial
    self._directory = directory
    self._identity = {
        "reference": initial.path,
        "tokenizer_sha256": tokenizer.checksum,
        "length_control": config.dpo.length_control
    }

  def __call__(self, arrays: EncodedPairs, split):
    """{side: [n] float32} for `arrays`; `split` names its cache ("train", "eval")."""
    folder = os.path.join(self._directory, split)
    storage.keyed_folder(folder,
                         dict(self._identity, pairs=arrays.fingerprint),
                         "*.safetensors",
                         writer=jax.process_index() == 0)
    distributed.sync(f"dpo reference {split} kept")
    starts = range(0, len(arrays), CHUNK_PAIRS)
    missing = [s for s in starts if not epath.Path(folder, f"{s:09d}.safetensors").exists()]
    if missing:
      logging.info("reference log-probabilities (%s): %d of %d chunks to compute", split,
                   len(missing), len(starts))
      self._compute(arrays, folder, missing)
      distributed.sync(f"dpo reference {split} written")
    chunks = [
        safetensors_np.load(epath.Path(folder, f"{s:09d}.safetensors").read_bytes()) for s in starts
    ]
    return {side: np.concatenate([c[side] for c in chunks]) for side in SIDES}

  def _compute(self, arrays, folder, starts):
    config = config_lib.resolve_mesh(self._config, jax.device_count())
    mesh = sharding.make_mesh(config.mesh)
    graphdef, abstract, specs = train_state.abstract_model(config)
    shardings = train_state.to_shardings(specs, mesh)
    params = ckpt_lib.restore_initial(self._initial, ckpt_lib.with_shardings(abstract, shardings))
    batch = sharding.batch_sharding(mesh)
    cfg = config.dpo

    def logps(params, rows):
      return _per_token(*sequence_logps(nnx.merge(graphdef, params), rows), cfg)

    fn = jax.jit(logps, in_shardings=(shardings, batch), out_shardings=sharding.replicated(mesh))
    rows = config.train.batch_size
    with sharding.activate(mesh):
      for start in progress.track(starts, len(starts), "reference log-probabilities", "chunks"):
        index = np.arange(start, min(start + CHUNK_PAIRS, len(arrays)))
        chunk = {}
        for side in SIDES:
          parts = []
          for first in range(0, len(index), rows):
            part = index[first:first + rows]
            padded = np.resize(part, rows)  # a short last batch repeats its pairs
            out = fn(params,
                     jax.tree.map(lambda a: jax.device_put(a, batch), _rows(arrays, side, padded)))
            parts.append(np.asarray(jax.device_get(out))[:len(part)])
          chunk[side] = np.concatenate(parts).astype(np.float32)
        if jax.process_index() == 0:
          storage.write_atomically(str(epath.Path(folder, f"{start:09d}.safetensors")),
                                   safetensors_np.save(chunk))
    del params  # the reference leaves memory before the policy trains


class _Pairs:
  """Encoded pairs with their reference log-probabilities as grain reads them."""

  def __init__(self, arrays, reference):
    self._arrays = arrays
    self._reference = reference

  def __len__(self):
    return len(self._arrays)

  def __getitem__(self, index):
    item = {"pair_type": self._arrays.pair_type[index]}
    for side in SIDES:
      item[side] = {
          "tokens": self._arrays.tokens[side][index],
          "segment_ids": self._arrays.segment_ids[side][index],
          "loss_mask": self._arrays.loss_mask[side][index]
      }
      item[f"reference_{side}"] = self._reference[side][index]
    return item


def make_dataset(arrays,
                 reference,
                 *,
                 global_batch,
                 seed,
                 streams,
                 process_index=0,
                 process_count=1,
                 num_workers=0):
  """An IterDataset of this process's batches of pairs (see `_Pairs`), global_batch /
  process_count a batch, each stream shuffling every streams-th pair anew each epoch."""
  local_streams = pipeline.process_streams(streams, global_batch, process_index, process_count)
  if len(arrays) < global_batch:
    raise sources.DataError(f"{len(arrays)} preference pairs cannot fill a batch of "
                            f"train.batch_size={global_batch}")

  def stream(index):
    ds = grain.MapDataset.source(_Pairs(arrays, reference)).shuffle(seed=seed)[index::streams]
    return ds.repeat(None).batch(global_batch // streams, drop_remainder=True).to_iter_dataset()

  return pipeline.side_by_side([stream(s) for s in local_streams], num_workers)


def preference_rows(local, put) -> tuple:
  """A batch of pairs -> (PreferenceRows of global arrays, None)."""
  sides = {side: PackedRows(**{k: put(v) for k, v in local[side].items()}) for side in SIDES}
  return PreferenceRows(sides["chosen"], sides["rejected"], put(local["reference_chosen"]),
                        put(local["reference_rejected"]), put(local["pair_type"])), None


def _texts(pairs):
  return ["\n".join(t.content for t in p.chosen.turns + p.rejected.turns[-1:]) for p in pairs]


def training_data(config, workdir) -> loop.TrainingData:
  """DPO's TrainingData: `dpo.files`, held out `dpo.eval_files` (none when empty)."""
  reference_path = config.dpo.reference or config.init_from
  if not reference_path:
    raise config_lib.ConfigError("--mode=dpo needs a reference model: set config.dpo.reference "
                                 "or config.init_from")
  pairs = chat.read_records(config.dpo.files, "dpo.files", chat.preference_pair)
  held_out = (chat.read_records(config.dpo.eval_files, "dpo.eval_files", chat.preference_pair)
              if config.dpo.eval_files else None)
  pair_types = sorted({p.pair_type for p in pairs + (held_out or []) if p.pair_type})
  digest = hashlib.sha256(b"dpo")
  for pair in pairs:
    digest.update(repr(pair).encode())
  corpus = sources.single_corpus(_texts(pairs), digest.hexdigest())
  initial = ckpt_lib.locate_initial(reference_path)
  cache = os.path.join(workdir, REFERENCE_DIR)

  def prepared(tokenizer, records, split):
    if initial.meta is not None and initial.meta.get("tokenizer_sha256") != tokenizer.checksum:
      raise ckpt_lib.CheckpointError(f"the DPO reference {initial.path} was trained with "
                                     f"another tokenizer than {tokenizer.path}")
    if config.dpo.length_control == "drop_longer":
      records = drop_longer_chosen(records, tokenizer)
    arrays = encode_pairs(records, tokenizer, config.data.seq_len + 1, pair_types)
    reference = ReferenceLogps(config, initial, tokenizer, cache)(arrays, split)
    return arrays, reference

  def options(num_workers):
    return dict(global_batch=config.train.batch_size,
                seed=config.seed,
                streams=pipeline.stream_count(config.data),
                process_index=jax.process_index(),
                process_count=jax.process_count(),
                num_workers=num_workers)

  def batches(tokenizer, pieces, num_workers):
    del pieces
    return make_dataset(*prepared(tokenizer, pairs, "train"), **options(num_workers))

  def held_out_batches(tokenizer, pieces):
    del pieces
    if held_out is None:
      return None
    arrays, reference = prepared(tokenizer, held_out, "eval")
    return lambda: make_dataset(arrays, reference, **options(0))

  return loop.TrainingData(corpus,
                           preference_rows,
                           batches,
                           held_out_batches,
                           make_objective(config.dpo, pair_types),
                           rows_per_example=len(SIDES))


def train(config, workdir, *, stop_at_step=None):
  """Trains the policy (from config.init_from) by DPO on `dpo.files` in `workdir`; reflection
  is off."""
  if not config.dpo.files:
    raise config_lib.ConfigError("--mode=dpo needs config.dpo.files (.jsonl pairs)")
  config = dataclasses.replace(config, reflect=dataclasses.replace(config.reflect, enabled=False))
  return loop.train(config, workdir, data=training_data(config, workdir), stop_at_step=stop_at_step)
