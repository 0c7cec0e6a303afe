"""HuggingFace Llama interop: logits parity after import, exact export round trip, errors."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from safetensors import numpy as st_numpy

from rasr_jax import config as config_lib
from rasr_jax.interop import hf
from rasr_jax.training import checkpoint, loop, train_state

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

SHAPE = dict(vocab_size=512,
             hidden_size=64,
             intermediate_size=128,
             num_hidden_layers=3,
             num_attention_heads=4,
             num_key_value_heads=2,
             head_dim=16,
             rms_norm_eps=1e-6,
             rope_theta=10000.0,
             max_position_embeddings=256)


def _save_hf(directory, **overrides):
  torch.manual_seed(0)
  model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**{**SHAPE, **overrides}))
  model.eval().save_pretrained(directory, safe_serialization=True, max_shard_size="200KB")
  return model


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
  """(HF model, config, work directory): a sharded safetensors checkpoint, imported."""
  root = tmp_path_factory.mktemp("hf")
  model = _save_hf(str(root / "hf"))
  assert os.path.exists(root / "hf" / "model.safetensors.index.json")  # sharded
  from configs import tiny
  config = hf.import_checkpoint(str(root / "hf"), str(root / "w"), tiny.get_config())
  return model, config, str(root / "w")


def _our_logits(config, params, ids):
  graphdef, _, _ = train_state.abstract_model(config)
  logits, _ = nnx.merge(graphdef, params)(jnp.asarray(ids))
  return np.asarray(logits)


def test_imported_model_gives_the_hf_logits(imported):
  model, config, workdir = imported
  _, abstract, _ = train_state.abstract_model(config)
  params = checkpoint.restore_params(os.path.join(workdir, hf.IMPORTED_PARAMS), abstract)
  assert set(params) >= {"critic", "controller", "feedback"}  # fresh heads beside the trunk
  ids = np.random.RandomState(0).randint(0, SHAPE["vocab_size"], (2, 13))
  with torch.no_grad():
    want = model(torch.as_tensor(ids)).logits.numpy()
  np.testing.assert_allclose(_our_logits(config, params, ids), want, atol=1e-4)


def test_export_reloads_in_transformers_with_identical_weights(imported, tmp_path):
  model, config, workdir = imported
  hf.export_checkpoint(workdir, str(tmp_path), config)
  reloaded = transformers.LlamaForCausalLM.from_pretrained(str(tmp_path))
  want, got = model.state_dict(), reloaded.state_dict()
  assert sorted(got) == sorted(want)
  for name in want:
    assert torch.equal(got[name], want[name]), name
  heads = st_numpy.load_file(str(tmp_path / hf.HEADS_FILE))
  assert "critic/score_w" in heads and "controller/w_in" in heads and "feedback/flag" in heads


def test_every_bad_tensor_is_named(tmp_path):
  _save_hf(str(tmp_path / "hf"))
  tensors = {}
  for name in sorted(os.listdir(tmp_path / "hf")):
    if name.endswith(".safetensors"):
      tensors.update(st_numpy.load_file(str(tmp_path / "hf" / name)))
      os.remove(tmp_path / "hf" / name)
  os.remove(tmp_path / "hf" / "model.safetensors.index.json")
  del tensors["model.layers.1.mlp.up_proj.weight"]
  tensors["model.layers.2.self_attn.k_proj.weight"] = np.zeros((8, 64), np.float32)
  tensors["model.extra.weight"] = np.zeros((2,), np.float32)
  st_numpy.save_file(tensors, str(tmp_path / "hf" / "model.safetensors"))
  from configs import tiny
  with pytest.raises(hf.ConversionError) as error:
    hf.import_checkpoint(str(tmp_path / "hf"), str(tmp_path / "w"), tiny.get_config())
  message = str(error.value)
  assert "model.layers.1.mlp.up_proj.weight: missing" in message
  assert "model.layers.2.self_attn.k_proj.weight: shape [8, 64], expected [32, 64]" in message
  assert "model.extra.weight: unexpected" in message
  assert not os.path.exists(tmp_path / "w" / hf.IMPORTED_PARAMS)


def _plain_sentencepiece(path):
  """A user's sentencepiece model: only <unk> <s> </s>, none of the project's pieces."""
  import sentencepiece as spm

  from rasr_jax import tasks
  texts = [ex.text() for ex in tasks.bundled_corpus(0, 300)]
  spm.SentencePieceTrainer.train(sentence_iterator=iter(texts),
                                 model_prefix=str(path),
                                 vocab_size=400,
                                 byte_fallback=True,
                                 hard_vocab_limit=False,
                                 minloglevel=2)
  return str(path) + ".model"


def test_training_starts_from_imported_parameters(tmp_path):
  """One step from --config.init_from, with a user's sentencepiece model (markers on the
  vocabulary's spare last ids), moves each parameter by at most about the learning rate: the
  run started from the imported weights. (Reflection off: a quick compile.)"""
  from configs import tiny
  base = tiny.get_config()
  base.reflect.enabled, base.reflect.iterations = False, 0
  _save_hf(str(tmp_path / "hf"))
  workdir = str(tmp_path / "w")
  hf.import_checkpoint(str(tmp_path / "hf"), workdir, base)
  cd = hf._workdir_config(workdir)
  for key, value in {
      "train.steps": 1,
      "train.batch_size": 4,
      "data.seq_len": 32,
      "data.bundled_examples": 500,
      "reflect.prompt_len": 16,
      "reflect.target_len": 8,
      "mesh.fsdp": 1,
      "data.tokenizer": _plain_sentencepiece(tmp_path / "user"),
      "init_from": os.path.join(workdir, hf.IMPORTED_PARAMS)
  }.items():
    node = cd
    *parents, leaf = key.split(".")
    for p in parents:
      node = getattr(node, p)
    setattr(node, leaf, value)
  config = config_lib.load(cd)
  state = loop.train(config, str(tmp_path / "run"))
  _, abstract, _ = train_state.abstract_model(config)
  start = checkpoint.restore_params(config.init_from, abstract)
  lr = max(config.train.lr, config.train.critic_lr, config.train.controller_lr)
  moved = jax.tree.map(lambda a, b: float(jnp.max(jnp.abs(a - b))), state.params, start)
  assert max(jax.tree.leaves(moved)) <= 1.5 * lr
  with open(os.path.join(workdir, "import.json")) as f:
    assert json.load(f)["hf_config"]["num_key_value_heads"] == 2


def test_bfloat16_tensors_are_read_exactly(tmp_path):
  from safetensors import torch as st_torch
  want = torch.randn(3, 5).to(torch.bfloat16)
  st_torch.save_file({"w": want}, str(tmp_path / "model.safetensors"))
  got = hf.SafetensorsReader(str(tmp_path)).get("w")
  np.testing.assert_array_equal(got.astype(np.float32), want.float().numpy())
