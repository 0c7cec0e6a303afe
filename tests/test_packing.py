"""Document masking: a packed row gives every token the logits of its document run alone."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from conftest import make_config
from rasr_jax.data import packing, pipeline, sources
from rasr_jax.data import tokenizer as tok_lib
from rasr_jax.data.packing import PackedRows
from rasr_jax.training import losses, train_state
from rasr_jax.training import step as train_step

DOCUMENT_LENGTHS = (5, 7, 4, 1)  # tokens of each packed document; the row holds T + 1 = 17


@pytest.fixture(scope="module")
def model_and_row():
  config = make_config(**{"reflect.enabled": False})
  graphdef, abstract, _ = train_state.abstract_model(config)
  del abstract
  state, _ = train_state.init_state(config, _mesh(config))
  rng = np.random.RandomState(0)
  documents = [
      rng.randint(6, config.model.vocab_size, n).astype(np.int32) for n in DOCUMENT_LENGTHS
  ]
  tokens = np.concatenate(documents)[None]  # [1, 17]
  segment_ids = np.concatenate([np.full(len(d), i + 1, np.int32) for i, d in enumerate(documents)])
  return config, nnx.merge(graphdef,
                           state.params), documents, PackedRows(jnp.asarray(tokens),
                                                                jnp.asarray(segment_ids[None]))


def _mesh(config):
  from rasr_jax import config as config_lib
  from rasr_jax import sharding
  return sharding.make_mesh(config_lib.resolve_mesh(config, 1).mesh)


def test_a_packed_row_gives_each_document_its_own_logits(model_and_row):
  _, model, documents, rows = model_and_row
  inputs, _, weights, positions, mask = packing.inputs_and_targets(rows)
  packed, _ = model(inputs, positions=positions, mask=mask)
  plain, _ = model(inputs)  # no document masking: later documents see earlier ones
  start = 0
  for document in documents:
    alone, _ = model(jnp.asarray(document[None]))
    width = min(len(document), inputs.shape[1] - start)  # the last target is cut off the row
    np.testing.assert_allclose(packed[0, start:start + width], alone[0, :width], atol=2e-5)
    if start and width:
      assert not np.allclose(plain[0, start:start + width], alone[0, :width], atol=1e-3)
    start += len(document)
  want_positions = np.concatenate([np.arange(n) for n in DOCUMENT_LENGTHS])[:inputs.shape[1]]
  np.testing.assert_array_equal(positions[0], want_positions)
  # No target across a boundary: the last token of a document does not predict the next one.
  ends = np.cumsum(DOCUMENT_LENGTHS)[:-1] - 1
  np.testing.assert_array_equal(np.flatnonzero(np.asarray(weights[0]) == 0), ends)


def test_the_lm_loss_is_the_mean_over_each_documents_own_targets(model_and_row):
  config, model, documents, rows = model_and_row
  graphdef, params = nnx.split(model)
  loss_fn = train_step.make_loss_fn(graphdef, config, None)
  loss, _ = loss_fn(params, rows, None, packing.target_count(rows), jax.random.key(0),
                    jnp.float32(0.5), jnp.float32(0.0))
  total, count = 0.0, 0
  for document in documents:
    if len(document) < 2:
      continue
    logits, _ = model(jnp.asarray(document[None, :-1]))
    total += float(jnp.sum(losses.token_cross_entropy(logits, jnp.asarray(document[None, 1:]))))
    count += len(document) - 1
  assert float(packing.target_count(rows)) == count
  np.testing.assert_allclose(float(loss), total / count, rtol=1e-5)


def test_pipeline_segment_ids_mark_every_document():
  """Each segment of a pipeline row is one document: it starts with the prompt's start token
  (or continues one cut by the previous row) and ends with <eos> (or is cut by the row's end)."""
  config = make_config()
  corpus = sources.load_corpus(config.data, seed=0)
  tokenizer = tok_lib.train(corpus.documents, 512)
  dataset = pipeline.make_dataset(corpus, tokenizer, seq_len=256, global_batch=4, seed=0, streams=1)
  batch = next(iter(dataset))
  start = tokenizer.start_id
  assert batch["segment_ids"].shape == batch["tokens"].shape == (4, 257)
  assert np.all(batch["segment_ids"][:, -1] > 1)  # documents are shorter than a row
  for tokens, segment_ids in zip(batch["tokens"], batch["segment_ids"]):
    assert segment_ids[0] == 1 and np.all(np.diff(segment_ids) >= 0)
    for segment in range(2, int(segment_ids[-1]) + 1):
      where = np.flatnonzero(segment_ids == segment)
      assert tokens[where[0]] == start and tokens[where[0] - 1] == tokenizer.eos_id
