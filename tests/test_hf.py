"""HuggingFace Llama interop: logits parity after import, exact export round trip, errors."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from safetensors import numpy as st_numpy

from rasr_jax import config as config_lib
from rasr_jax.data import tokenizer as tok_lib
from rasr_jax.interop import hf
from rasr_jax.training import checkpoint, loop, train_state

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
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


def _hf_logits(model, ids):
  with torch.no_grad():
    return model(torch.as_tensor(ids)).logits.numpy()


def _imported_logits(workdir, ids):
  config = config_lib.load(hf.workdir_config(workdir))
  _, abstract, _ = train_state.abstract_model(config)
  params = checkpoint.restore_params(checkpoint.imported_params_dir(workdir), abstract)
  return _our_logits(config, params, ids)


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
  params = checkpoint.restore_params(checkpoint.imported_params_dir(workdir), abstract)
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
  assert not os.path.exists(checkpoint.imported_params_dir(str(tmp_path / "w")))


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
  cd = hf.workdir_config(workdir)
  for key, value in {
      "train.steps": 2,  # the first update is 0 (the warm-up starts at lr 0)
      "train.batch_size": 4,
      "data.seq_len": 32,
      "data.bundled_examples": 500,
      "reflect.prompt_len": 16,
      "reflect.target_len": 8,
      "mesh.fsdp": 1,
      "data.tokenizer": _plain_sentencepiece(tmp_path / "user"),
      "init_from": checkpoint.imported_params_dir(workdir)
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
  assert 0 < max(jax.tree.leaves(moved)) <= 1.5 * lr
  with open(os.path.join(workdir, "import.json")) as f:
    assert json.load(f)["hf_config"]["num_key_value_heads"] == 2


def test_bfloat16_tensors_are_read_exactly(tmp_path):
  from safetensors import torch as st_torch
  want = torch.randn(3, 5).to(torch.bfloat16)
  st_torch.save_file({"w": want}, str(tmp_path / "model.safetensors"))
  got = hf.SafetensorsReader(str(tmp_path)).get("w")
  np.testing.assert_array_equal(got.astype(np.float32), want.float().numpy())


LLAMA3_ROPE = {
    "rope_type": "llama3",
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 64  # so that positions < 256 reach every band
}


def _legacy_layout(hf_dir):
  """Rewrites a transformers 5 config.json (`rope_parameters`) in the transformers 4 layout
  (top-level rope_theta and rope_scaling), which both versions load alike."""
  path = os.path.join(hf_dir, "config.json")
  with open(path) as f:
    cfg = json.load(f)
  rope = cfg.pop("rope_parameters")
  cfg["rope_theta"] = rope.pop("rope_theta")
  cfg["rope_scaling"] = None if rope["rope_type"] == "default" else {
      "type" if rope["rope_type"] == "linear" else "rope_type": rope.pop("rope_type"),
      **rope
  }
  with open(path, "w") as f:
    json.dump(cfg, f)


ROPE_VARIANTS = {
    "theta": dict(rope_theta=1e5),
    "llama3": dict(rope_theta=5e5, rope_scaling=LLAMA3_ROPE),
    "linear": dict(rope_theta=1e4, rope_scaling={
        "rope_type": "linear",
        "factor": 4.0
    }),
}


@pytest.mark.parametrize("layout", ["rope_parameters", "legacy"])
@pytest.mark.parametrize("variant", sorted(ROPE_VARIANTS))
def test_every_rope_layout_imports_to_the_hf_logits(tmp_path, variant, layout):
  """Rope settings are read from transformers 5's rope_parameters and from the top-level
  rope_theta / rope_scaling of transformers 4 (the importer once read only a top-level
  rope_theta, and imported theta 1e5 as 1e4 without a word)."""
  hf_dir = str(tmp_path / "hf")
  model = _save_hf(hf_dir, **ROPE_VARIANTS[variant])
  if layout == "legacy":
    _legacy_layout(hf_dir)
    model = transformers.LlamaForCausalLM.from_pretrained(hf_dir).eval()
  from configs import tiny
  hf.import_checkpoint(hf_dir, str(tmp_path / "w"), tiny.get_config())
  ids = np.random.RandomState(1).randint(0, SHAPE["vocab_size"], (1, 200))
  np.testing.assert_allclose(_imported_logits(str(tmp_path / "w"), ids),
                             _hf_logits(model, ids),
                             atol=1e-4)


def test_tied_embeddings_import_and_export(tmp_path):
  model = _save_hf(str(tmp_path / "hf"), tie_word_embeddings=True)
  from configs import tiny
  config = hf.import_checkpoint(str(tmp_path / "hf"), str(tmp_path / "w"), tiny.get_config())
  assert config.model.tie_embeddings
  ids = np.random.RandomState(2).randint(0, SHAPE["vocab_size"], (2, 11))
  np.testing.assert_allclose(_imported_logits(str(tmp_path / "w"), ids),
                             _hf_logits(model, ids),
                             atol=1e-4)
  hf.export_checkpoint(str(tmp_path / "w"), str(tmp_path / "out"), config)
  reloaded = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / "out")).eval()
  np.testing.assert_allclose(_hf_logits(reloaded, ids), _hf_logits(model, ids), atol=1e-5)


def test_qwen2_with_attention_biases_imports_and_exports(tmp_path):
  """A Qwen2 checkpoint (biases on q, k, v; tied embeddings, as the small Qwen2 models have)
  gives transformers' logits after import, and its export reloads as Qwen2 with them."""
  torch.manual_seed(0)
  shape = {k: v for k, v in SHAPE.items() if k != "head_dim"}
  model = transformers.Qwen2ForCausalLM(transformers.Qwen2Config(**shape, tie_word_embeddings=True))
  with torch.no_grad():  # transformers zeroes biases; random ones make the test see them
    for layer in model.model.layers:
      for projection in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
        projection.bias.normal_(0.0, 0.5)
  model.eval().save_pretrained(str(tmp_path / "hf"), safe_serialization=True)
  from configs import tiny
  config = hf.import_checkpoint(str(tmp_path / "hf"), str(tmp_path / "w"), tiny.get_config())
  assert config.model.attention_bias and config.model.tie_embeddings
  ids = np.random.RandomState(4).randint(0, SHAPE["vocab_size"], (2, 40))
  want = _hf_logits(model, ids)
  np.testing.assert_allclose(_imported_logits(str(tmp_path / "w"), ids), want, atol=1e-4)
  hf.export_checkpoint(str(tmp_path / "w"), str(tmp_path / "out"), config)
  reloaded = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / "out")).eval()
  assert type(reloaded).__name__ == "Qwen2ForCausalLM"
  np.testing.assert_allclose(_hf_logits(reloaded, ids), want, atol=1e-5)


def test_export_config_is_the_models(tmp_path):
  """The exported config.json keeps the rope scaling and max_position_embeddings, so
  AutoModelForCausalLM gives the original logits (it was once 2.1 off)."""
  model = _save_hf(str(tmp_path / "hf"), rope_theta=5e5, rope_scaling=LLAMA3_ROPE)
  from configs import tiny
  config = hf.import_checkpoint(str(tmp_path / "hf"), str(tmp_path / "w"), tiny.get_config())
  hf.export_checkpoint(str(tmp_path / "w"), str(tmp_path / "out"), config)
  reloaded = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / "out")).eval()
  assert reloaded.config.max_position_embeddings == SHAPE["max_position_embeddings"]
  assert reloaded.config.rope_parameters == model.config.rope_parameters
  ids = np.random.RandomState(3).randint(0, SHAPE["vocab_size"], (1, 200))
  np.testing.assert_allclose(_hf_logits(reloaded, ids), _hf_logits(model, ids), atol=1e-5)


@pytest.mark.parametrize("rope", [{"rope_type": "yarn", "factor": 2.0}, {"type": "dynamic"}])
def test_an_unsupported_rope_type_is_refused_by_name(tmp_path, rope):
  _save_hf(str(tmp_path / "hf"))
  path = tmp_path / "hf" / "config.json"
  cfg = json.loads(path.read_text())
  cfg.pop("rope_parameters", None)
  cfg["rope_scaling"] = rope
  path.write_text(json.dumps(cfg))
  from configs import tiny
  with pytest.raises(hf.ConversionError, match=f"rope_type '{list(rope.values())[0]}'"):
    hf.import_checkpoint(str(tmp_path / "hf"), str(tmp_path / "w"), tiny.get_config())
  assert not os.path.exists(tmp_path / "w")


def test_rope_scaling_that_disagrees_with_rope_parameters_is_refused(tmp_path):
  """transformers 5 reads a set rope_scaling before rope_parameters: a config whose two differ
  (a hand-extended context) is refused rather than imported by the other one."""
  _save_hf(str(tmp_path / "hf"),
           rope_theta=1e4,
           rope_scaling={
               "rope_type": "linear",
               "factor": 4.0
           })
  path = tmp_path / "hf" / "config.json"
  cfg = json.loads(path.read_text())
  cfg["rope_scaling"] = {"rope_type": "linear", "factor": 8.0}
  path.write_text(json.dumps(cfg))
  from configs import tiny
  with pytest.raises(hf.ConversionError, match="rope_scaling .* disagrees with rope_parameters"):
    hf.import_checkpoint(str(tmp_path / "hf"), str(tmp_path / "w"), tiny.get_config())


def test_the_import_cli_refuses_with_one_error_line(tmp_path):
  _save_hf(str(tmp_path / "hf"))
  path = tmp_path / "hf" / "config.json"
  path.write_text(
      json.dumps({
          **json.loads(path.read_text()), "rope_parameters": {
              "rope_type": "longrope",
              "rope_theta": 1e4
          }
      }))
  cli = subprocess.run([
      sys.executable, "-m", "rasr_jax.interop.hf", "import", f"--hf_dir={tmp_path}/hf",
      f"--workdir={tmp_path}/w"
  ],
                       capture_output=True,
                       text=True,
                       cwd=REPO)
  assert cli.returncode == 2
  assert cli.stderr.strip().splitlines()[-1].startswith("error: unsupported HF config: rope_type "
                                                        "'longrope'")
  assert not os.path.exists(tmp_path / "w")


def test_a_full_vocabulary_grows_for_the_markers(tmp_path):
  """A tokenizer that fills the model's vocabulary and lacks the markers: the import grows it to
  the next multiple of 128 with room for them (so mesh.tensor can shard it), the markers on the
  last three ids; every new embedding row (and head column) is the mean of the others, so the
  original ids' logits are unchanged."""
  sp_path = _plain_sentencepiece(tmp_path / "user")
  import sentencepiece as spm
  pieces = spm.SentencePieceProcessor(model_file=sp_path).get_piece_size()
  model = _save_hf(str(tmp_path / "hf"), vocab_size=pieces)
  os.replace(sp_path, tmp_path / "hf" / "tokenizer.model")
  from configs import tiny
  config = hf.import_checkpoint(str(tmp_path / "hf"), str(tmp_path / "w"), tiny.get_config())
  grown = config.model.vocab_size
  assert grown % 128 == 0 and pieces + 3 <= grown < pieces + 3 + 128
  tokenizer = tok_lib.load(config.data.tokenizer, grown)
  assert [tokenizer.special_ids[m] for m in tok_lib.MARKERS] == [grown - 3, grown - 2, grown - 1]
  _, abstract, _ = train_state.abstract_model(config)
  params = checkpoint.restore_params(checkpoint.imported_params_dir(str(tmp_path / "w")), abstract)
  embed = np.asarray(params["embed"])
  np.testing.assert_allclose(embed[pieces:],
                             np.repeat(embed[:pieces].mean(0, keepdims=True), grown - pieces, 0),
                             atol=1e-6)
  ids = np.random.RandomState(4).randint(0, pieces, (1, 9))
  got = _imported_logits(str(tmp_path / "w"), ids)
  np.testing.assert_allclose(got[..., :pieces], _hf_logits(model, ids), atol=1e-4)


def _user_tokenizer(kind, directory):
  """(file name in an HF directory, path, pieces): a sentencepiece model with <s> / </s>, or a
  Llama 3-style tokenizer.json (byte-level, reserved special tokens for the markers)."""
  if kind == "tokenizer.model":
    import sentencepiece as spm
    path = _plain_sentencepiece(directory / "user")
    return path, spm.SentencePieceProcessor(model_file=path).get_piece_size()
  from test_data import byte_level_tokenizer

  from rasr_jax import tasks
  path = byte_level_tokenizer(directory / "user.json",
                              [ex.text() for ex in tasks.bundled_corpus(0, 300)])
  return path, tok_lib.load(path).vocab_size


@pytest.mark.parametrize("kind", ["tokenizer.model", "tokenizer.json"])
def test_an_import_generates_as_transformers_does(tmp_path, kind):
  """With no training step, generation (in process and through the CLI) reads the imported
  parameters and the copied tokenizer, starts the prompt with the model's bos, and greedy text
  equals transformers' generate (a Llama 3.1-style rope)."""
  from rasr_jax.generation import inference
  path, pieces = _user_tokenizer(kind, tmp_path)
  extra = 3 if kind == "tokenizer.model" else 0  # tokenizer.json: markers on reserved tokens
  model = _save_hf(str(tmp_path / "hf"),
                   vocab_size=pieces + extra,
                   rope_theta=5e5,
                   rope_scaling=LLAMA3_ROPE)
  os.replace(path, tmp_path / "hf" / kind)
  from configs import tiny
  workdir = str(tmp_path / "w")
  config = hf.import_checkpoint(str(tmp_path / "hf"), workdir, tiny.get_config())
  assert os.path.isfile(os.path.join(workdir, kind))
  assert config.model.vocab_size == pieces + extra  # nothing grown
  served = inference.InferenceModel(config, workdir)
  prompt = "x = 3 + 4,\nso x is"
  ids = served.tokenizer.encode_prompt(prompt)
  assert ids[0] == served.tokenizer.bos_id != served.tokenizer.eos_id
  (got,) = served.generate([prompt], served.options(max_new_tokens=12, reflect="off"))
  with torch.no_grad():
    out = model.generate(torch.as_tensor([ids]),
                         max_new_tokens=12,
                         do_sample=False,
                         eos_token_id=served.tokenizer.eos_id,
                         pad_token_id=served.tokenizer.pad_id)
  want = out[0, len(ids):].tolist()
  assert got["num_tokens"] == len(want)
  assert got["text"] == served.tokenizer.decode(want)
  cli = subprocess.run([
      sys.executable, "-m", "rasr_jax.main", "--mode=generate", f"--config={workdir}/config.py",
      f"--workdir={workdir}", f"--prompt={prompt}", "--reflect=off", "--max_new_tokens=12"
  ],
                       capture_output=True,
                       text=True,
                       check=True,
                       cwd=REPO)
  assert json.loads(cli.stdout.splitlines()[-1])["text"] == got["text"]
  if kind == "tokenizer.json":  # the export loads in transformers as it is, tokenizer included
    hf.export_checkpoint(workdir, str(tmp_path / "out"), config)
    auto = transformers.AutoTokenizer.from_pretrained(str(tmp_path / "out"))
    assert auto(prompt)["input_ids"] == ids
