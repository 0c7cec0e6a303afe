"""HuggingFace Llama-family checkpoints (Llama, and Qwen2 with its attention biases) <->
rasr_jax parameters, through safetensors only.

  python -m rasr_jax.interop.hf import --hf_dir=DIR --workdir=W [--config=configs/base.py]
  python -m rasr_jax.interop.hf export --workdir=W --out=DIR

`import` reads `config.json` and `*.safetensors` (a sharded index included; never pickle, never
remote code), checks every tensor against the model the config describes (each missing,
unexpected or misshapen tensor is listed), and writes W/config.py (the given config with the
HF model's shape and rope settings, from either config layout transformers writes),
W/imported_params (an orbax checkpoint of the parameters; critic, controller and feedback heads
freshly initialised), W/import.json and the model's tokenizer (tokenizer.json or
tokenizer.model, when it has one; the vocabulary grows when the markers need ids it lacks).
Generation, scoring and evaluation run on W as it is; training starts from it with
`--config=W/config.py --config.init_from=W/imported_params`.

`export` writes `config.json` (the model's rope settings, positions and token ids),
`generation_config.json`, `model.safetensors` that `AutoModelForCausalLM.from_pretrained` loads
and the tokenizer, from the newest checkpoint of W (or W/imported_params), and
`rasr_heads.safetensors` with the critic, controller and feedback parameters under their
rasr_jax names.

Tensors move one name at a time; the stacked [layers, ...] arrays are assembled from, or cut
into, per-layer tensors, so the model is held in host memory once. The command line lives in
`hf_cli.py`, so programs that import this module keep their own flags.
"""

import dataclasses
import glob
import json
import os

import jax
import ml_dtypes
import numpy as np
import safetensors
from etils import epath
from flax import nnx
from safetensors import numpy as st_numpy

from rasr_jax import config as config_lib
from rasr_jax import progress, storage
from rasr_jax.data import tokenizer as tok_lib
from rasr_jax.model import rasr_model
from rasr_jax.training import checkpoint as ckpt_lib
from rasr_jax.training import train_state

HEADS_FILE = "rasr_heads.safetensors"
HEAD_GROUPS = ("critic", "controller", "feedback")
# Buffers some HF versions save that carry no parameters.
IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)


class ConversionError(ValueError):
  """A checkpoint cannot be converted; the message lists every offending tensor."""


# Converters between an HF tensor and one layer's slice of a rasr_jax parameter.
def _same(w, m):
  del m
  return w


def _transposed(w, m):
  del m
  return w.T


def _q_in(w, m):  # HF [N * H, D] -> [D, N, H]
  return w.T.reshape(m.d_model, -1, m.head_dim)


def _q_out(w, m):  # [D, N, H] -> HF [N * H, D]
  return w.reshape(m.d_model, -1).T


def _o_in(w, m):  # HF [D, N * H] -> [N, H, D]
  return w.T.reshape(-1, m.head_dim, m.d_model)


def _o_out(w, m):  # [N, H, D] -> HF [D, N * H]
  return w.reshape(-1, m.d_model).T


def _bias_in(w, m):  # HF [N * H] -> [N, H]
  return w.reshape(-1, m.head_dim)


def _bias_out(w, m):  # [N, H] -> HF [N * H]
  del m
  return w.reshape(-1)


@dataclasses.dataclass(frozen=True)
class Mapping:
  hf_name: str  # with {i} for the layer index of a per-layer tensor
  path: tuple  # rasr_jax parameter path; per-layer ones are stacked on a leading axis
  to_ours: object
  to_hf: object
  vocab_axis: int | None = None  # our axis over the vocabulary (grown with mean rows)

  @property
  def per_layer(self):
    return "{i}" in self.hf_name


# The one table of names and transposes.
TABLE = (
    Mapping("model.embed_tokens.weight", ("embed",), _same, _same, vocab_axis=0),
    Mapping("model.layers.{i}.self_attn.q_proj.weight", ("blocks", "attn", "wq"), _q_in, _q_out),
    Mapping("model.layers.{i}.self_attn.k_proj.weight", ("blocks", "attn", "wk"), _q_in, _q_out),
    Mapping("model.layers.{i}.self_attn.v_proj.weight", ("blocks", "attn", "wv"), _q_in, _q_out),
    Mapping("model.layers.{i}.self_attn.o_proj.weight", ("blocks", "attn", "wo"), _o_in, _o_out),
    Mapping("model.layers.{i}.input_layernorm.weight", ("blocks", "attn_norm", "scale"), _same,
            _same),
    Mapping("model.layers.{i}.post_attention_layernorm.weight", ("blocks", "mlp_norm", "scale"),
            _same, _same),
    Mapping("model.layers.{i}.mlp.gate_proj.weight", ("blocks", "mlp", "w_gate"), _transposed,
            _transposed),
    Mapping("model.layers.{i}.mlp.up_proj.weight", ("blocks", "mlp", "w_up"), _transposed,
            _transposed),
    Mapping("model.layers.{i}.mlp.down_proj.weight", ("blocks", "mlp", "w_down"), _transposed,
            _transposed),
    Mapping("model.norm.weight", ("final_norm", "scale"), _same, _same),
    Mapping("lm_head.weight", ("lm_head",), _transposed, _transposed,
            vocab_axis=1),  # absent when tied
    # Qwen2's attention biases (model.attention_bias).
    Mapping("model.layers.{i}.self_attn.q_proj.bias", ("blocks", "attn", "q_bias"), _bias_in,
            _bias_out),
    Mapping("model.layers.{i}.self_attn.k_proj.bias", ("blocks", "attn", "k_bias"), _bias_in,
            _bias_out),
    Mapping("model.layers.{i}.self_attn.v_proj.bias", ("blocks", "attn", "v_bias"), _bias_in,
            _bias_out),
)
FAMILIES = {  # HF model_type -> (architecture, whether its q, k, v projections have biases)
    "llama": ("LlamaForCausalLM", False),
    "qwen2": ("Qwen2ForCausalLM", True),
}

# HF rope_type -> the fields its parameters go to (model.rope_*); other types are refused.
_ROPE_FIELDS = {
    "default": {},
    "linear": {
        "factor": "rope_factor"
    },
    "llama3": {
        "factor": "rope_factor",
        "low_freq_factor": "rope_low_freq_factor",
        "high_freq_factor": "rope_high_freq_factor",
        "original_max_position_embeddings": "rope_original_max_positions",
    },
}


def _rope_fields(hf_config, problems):
  """config.model rope fields from either layout transformers writes: transformers 5's
  `rope_parameters` (rope_theta inside), or a top-level `rope_theta` beside `rope_scaling`
  (`type` or `rope_type`; null for plain rotary positions)."""
  top_theta = hf_config.get("rope_theta")
  if isinstance(hf_config.get("rope_parameters"), dict):
    rope = dict(hf_config["rope_parameters"])
    inner_theta = rope.get("rope_theta")
    if top_theta is not None and inner_theta is not None and float(top_theta) != float(inner_theta):
      problems.append(f"rope_theta {top_theta} disagrees with rope_parameters.rope_theta "
                      f"{inner_theta}")
    scaling = hf_config.get("rope_scaling")  # transformers 5 reads this one when it is set
    if isinstance(scaling, dict) and any(
        rope.get("rope_type" if key == "type" else key) != value
        for key, value in scaling.items()
        if key != "rope_theta"):
      problems.append(f"rope_scaling {scaling!r} disagrees with rope_parameters {rope!r}")
  elif hf_config.get("rope_parameters") is not None:
    problems.append(f"rope_parameters {hf_config['rope_parameters']!r} (one dict expected; "
                    "per-layer-type rope is not supported)")
    return {}
  else:
    rope = dict(hf_config.get("rope_scaling") or {})
  theta = rope.get("rope_theta", top_theta if top_theta is not None else 10000.0)
  rope_type = rope.get("rope_type", rope.get("type", "default"))
  fields = {"rope_theta": float(theta), "rope_type": rope_type}
  if rope_type not in _ROPE_FIELDS:
    problems.append(f"rope_type {rope_type!r} (supported: {', '.join(_ROPE_FIELDS)})")
    return fields
  for key, field in _ROPE_FIELDS[rope_type].items():
    if key not in rope:
      problems.append(f"{rope_type} rope without {key}")
    else:
      fields[field] = rope[key]
  partial = hf_config.get("partial_rotary_factor", rope.get("partial_rotary_factor", 1.0))
  if partial != 1.0:
    problems.append(f"partial_rotary_factor {partial} (every channel pair is rotated here)")
  if rope.get("attention_factor", 1.0) != 1.0:
    problems.append(f"rope attention_factor {rope['attention_factor']} (not supported)")
  return fields


def model_fields(hf_config):
  """config.model fields from an HF Llama or Qwen2 config.json dict; unsupported features
  raise."""
  problems = []
  family = hf_config.get("model_type")
  if family not in FAMILIES:
    problems.append(f"model_type {family!r} (only {' or '.join(map(repr, FAMILIES))})")
  for key in ("attention_bias", "mlp_bias"):  # Llama's: on every projection, o_proj's included
    if hf_config.get(key):
      problems.append(f"{key}=true (biases only on q, k, v, as Qwen2 has them)")
  if hf_config.get("use_sliding_window"):
    problems.append("use_sliding_window=true (full attention only)")
  if hf_config.get("hidden_act", "silu") != "silu":
    problems.append(f"hidden_act {hf_config['hidden_act']!r} (only silu)")
  rope = _rope_fields(hf_config, problems)
  if problems:
    raise ConversionError("unsupported HF config: " + "; ".join(problems))
  heads = hf_config["num_attention_heads"]
  return {
      "vocab_size": hf_config["vocab_size"],
      "d_model": hf_config["hidden_size"],
      "num_layers": hf_config["num_hidden_layers"],
      "num_heads": heads,
      "num_kv_heads": hf_config.get("num_key_value_heads") or heads,
      "head_dim": hf_config.get("head_dim") or hf_config["hidden_size"] // heads,
      "mlp_dim": hf_config["intermediate_size"],
      **rope,
      "max_positions": int(hf_config.get("max_position_embeddings") or 0),
      "norm_eps": float(hf_config.get("rms_norm_eps", 1e-6)),
      "tie_embeddings": bool(hf_config.get("tie_word_embeddings", False)),
      "attention_bias": FAMILIES[family][1],
  }


INDEX_FILE = "model.safetensors.index.json"


class SafetensorsReader:
  """Tensors by name from the safetensors files of an HF directory, one tensor at a time: the
  files the index's `weight_map` names when there is an index, else every `*.safetensors`."""

  def __init__(self, hf_dir):
    index = os.path.join(hf_dir, INDEX_FILE)
    if os.path.isfile(index):
      try:
        with open(index) as f:
          weight_map = json.load(f)["weight_map"]
      except (ValueError, KeyError, TypeError) as e:
        raise ConversionError(f"{index}: not a safetensors index ({e!r})") from None
      files = sorted({os.path.join(hf_dir, name) for name in weight_map.values()})
    else:
      files = sorted(glob.glob(os.path.join(hf_dir, "*.safetensors")))
    if not files:
      raise ConversionError(f"{hf_dir}: no *.safetensors files (pickle checkpoints are not "
                            "read)")
    self._where = {}
    for path in files:
      try:
        with safetensors.safe_open(path, framework="np") as f:
          names = list(f.keys())
      except (OSError, safetensors.SafetensorError) as e:
        raise ConversionError(f"{path}: not a readable safetensors file ({e})") from None
      self._where.update((name, path) for name in names)
    self.names = frozenset(self._where)

  def get(self, name):
    with safetensors.safe_open(self._where[name], framework="np") as f:
      tensor = f.get_tensor(name)
    if not np.issubdtype(tensor.dtype, np.floating) and tensor.dtype != ml_dtypes.bfloat16:
      raise ConversionError(f"{name}: dtype {tensor.dtype} is not a float type")
    return tensor


def _get_path(tree, path):
  for key in path:
    tree = tree[key]
  return tree


def _set_path(tree, path, value):
  for key in path[:-1]:
    tree = tree.setdefault(key, {})
  tree[path[-1]] = value


def _mappings(model_cfg):
  return [
      m for m in TABLE if not (m.path == ("lm_head",) and model_cfg.tie_embeddings) and (
          model_cfg.attention_bias or not m.path[-1].endswith("_bias"))
  ]


def _grow_vocab(array, axis, shape, hf_vocab_size):
  """`array` with rows of its mean appended along the vocabulary `axis` up to `shape` (the
  markers' ids past a full vocabulary) when it has the checkpoint's `hf_vocab_size` rows there;
  otherwise unchanged (a misshapen tensor is then reported as such)."""
  if (axis is None or array.ndim != len(shape) or array.shape[axis] != hf_vocab_size
      or hf_vocab_size >= shape[axis]):
    return array
  mean = array.astype(np.float64).mean(axis=axis, keepdims=True).astype(array.dtype)
  extra = np.repeat(mean, shape[axis] - array.shape[axis], axis=axis)
  return np.concatenate([array, extra], axis=axis)


def hf_to_params(reader, config, hf_vocab_size=None):
  """(trunk params as a nested dict of numpy arrays, in the config's param dtype); raises
  ConversionError listing every missing, unexpected or misshapen tensor. A checkpoint of
  `hf_vocab_size` ids grows to config.model.vocab_size (see `_grow_vocab`)."""
  m = config.model
  _, abstract, _ = train_state.abstract_model(config)
  dtype = np.dtype(m.param_dtype)
  params, problems, used = {}, [], set()
  mappings = _mappings(m)
  for mapping in progress.track(mappings, len(mappings), "importing tensors", "names"):
    want = _get_path(abstract, mapping.path)
    layer_shape = want.shape[1:] if mapping.per_layer else want.shape
    names = ([mapping.hf_name.format(i=i) for i in range(m.num_layers)]
             if mapping.per_layer else [mapping.hf_name])
    slices = []
    for name in names:
      if name not in reader.names:
        problems.append(f"{name}: missing")
        continue
      used.add(name)
      tensor = reader.get(name)
      try:
        converted = _grow_vocab(mapping.to_ours(tensor, m), mapping.vocab_axis, layer_shape,
                                hf_vocab_size)
      except ValueError:
        converted = None
      if converted is None or converted.shape != layer_shape:
        problems.append(f"{name}: shape {list(tensor.shape)}, expected "
                        f"{list(mapping.to_hf(np.zeros(layer_shape), m).shape)}")
        continue
      slices.append(converted.astype(dtype))
    if len(slices) == len(names):
      _set_path(params, mapping.path, np.stack(slices) if mapping.per_layer else slices[0])
  unexpected = sorted(n for n in reader.names - used if not n.endswith(IGNORED_SUFFIXES))
  problems += [
      f"{name}: unexpected (not a parameter of this config's family)" for name in unexpected
  ]
  if problems:
    raise ConversionError(f"{len(problems)} tensor problem(s): " + "; ".join(problems))
  return params


def fresh_heads(config):
  """Newly initialised critic, controller and feedback parameters (nested dict of numpy)."""
  if not config.reflect.enabled:
    return {}
  with nnx.use_eager_sharding(False):
    modules = rasr_model.build_heads(config.model, config.reflect, nnx.Rngs(config.seed))
  return {
      name: jax.tree.map(np.asarray, nnx.to_pure_dict(nnx.state(module, nnx.Param)))
      for name, module in modules.items()
  }


def import_checkpoint(hf_dir, workdir, base_config):
  """HF Llama directory -> W/config.py, W/imported_params, W/import.json, and a copy of the
  model's tokenizer (tokenizer.json, else tokenizer.model, when it has one; config.data.tokenizer
  names the copy).
  Returns the Config."""
  config_path = os.path.join(hf_dir, "config.json")
  if not os.path.isfile(config_path):
    raise ConversionError(f"{hf_dir}: no config.json")
  with open(config_path) as f:
    hf_config = json.load(f)
  cd = base_config.copy_and_resolve_references()
  for key, value in model_fields(hf_config).items():
    setattr(cd.model, key, value)
  tokenizer, tokenizer_path = None, tok_lib.find_in(hf_dir)
  if tokenizer_path:  # the vocabulary grows when the markers need ids the model lacks
    cd.model.vocab_size = tok_lib.vocab_for_markers(tokenizer_path, cd.model.vocab_size)
    tokenizer = tok_lib.load(tokenizer_path, cd.model.vocab_size)
    cd.data.tokenizer = tok_lib.workdir_path(storage.absolute(workdir), tokenizer)
  config = config_lib.load(cd)
  params = hf_to_params(SafetensorsReader(hf_dir), config, hf_config["vocab_size"])
  params.update(fresh_heads(config))
  target = storage.absolute(ckpt_lib.imported_params_dir(workdir))
  if epath.Path(target).exists():
    raise ConversionError(f"{target} exists; import into a new work directory")
  storage.makedirs(workdir)
  ckpt_lib.save_params(target, params)
  if tokenizer is not None:
    tokenizer.save(tok_lib.workdir_path(workdir, tokenizer))
  config_lib.write_config_file(config_lib.workdir_config_file(workdir), cd,
                               f"the model imported from {os.path.abspath(hf_dir)}")
  epath.Path(workdir, "import.json").write_text(
      json.dumps(
          {
              "hf_dir": os.path.abspath(hf_dir),
              "hf_config": hf_config,
              "vocab_size": {
                  "hf": hf_config["vocab_size"],
                  "grown_to": config.model.vocab_size
              },
              "params": ckpt_lib.param_signature(params)
          },
          indent=2))
  return config


def _newest_params(workdir, config):
  """Host parameters of the newest training checkpoint in `workdir`, else of the import."""
  _, abstract, _ = train_state.abstract_model(config)
  directory = ckpt_lib.checkpoint_dir(workdir)
  if os.path.isdir(directory):
    checkpointer = ckpt_lib.Checkpointer(directory, config.checkpoint, read_only=True)
    try:
      step = checkpointer.latest_step()
      if step is not None:
        return checkpointer.restore_fields(step, {"params": abstract})["params"]
    finally:
      checkpointer.close()
  return ckpt_lib.restore_params(ckpt_lib.imported_params_dir(workdir), abstract)


def _rope_config(m):
  """The model's rope settings as both layouts transformers reads: top-level `rope_theta` and
  `rope_scaling` (transformers 4) and `rope_parameters` (transformers 5), equal in content."""
  scaling = {"rope_type": m.rope_type}
  for key, field in _ROPE_FIELDS[m.rope_type].items():
    scaling[key] = getattr(m, field)
  return {
      "rope_theta": m.rope_theta,
      "rope_scaling": scaling if m.rope_type != "default" else None,
      "rope_parameters": {
          **scaling, "rope_theta": m.rope_theta
      },
  }


def _token_id_fields(token_ids):
  """{bos,eos,pad}_token_id of config.json and generation_config.json (None when unknown)."""
  return {f"{name}_token_id": token_ids.get(name) for name in ("bos", "eos", "pad")}


def hf_config_of(config, token_ids):
  """An HF config.json dict of `config`'s model (Qwen2's with attention biases, else Llama's);
  `token_ids` maps bos/eos/pad to ids."""
  m = config.model
  family = "qwen2" if m.attention_bias else "llama"
  return {
      "architectures": [FAMILIES[family][0]],
      "model_type":
          family,
      "hidden_act":
          "silu",
      "vocab_size":
          m.vocab_size,
      "hidden_size":
          m.d_model,
      "num_hidden_layers":
          m.num_layers,
      "num_attention_heads":
          m.num_heads,
      "num_key_value_heads":
          m.num_kv_heads,
      "head_dim":
          m.head_dim,
      "intermediate_size":
          m.mlp_dim,
      **_rope_config(m),
      "rms_norm_eps":
          m.norm_eps,
      "tie_word_embeddings":
          m.tie_embeddings,
      "max_position_embeddings":
          m.max_positions or config.data.seq_len,
      **({
          "use_sliding_window": False
      } if m.attention_bias else {
             "attention_bias": False,
             "mlp_bias": False
         }),
      "torch_dtype":
          m.param_dtype,
      **_token_id_fields(token_ids),
  }


def workdir_config(workdir):
  """The config `import` wrote into the work directory."""
  path = config_lib.workdir_config_file(workdir)
  if not epath.Path(path).is_file():
    raise ConversionError(f"{path} not found: pass --config")
  return config_lib.config_file(path)


def export_checkpoint(workdir, out_dir, config):
  """W's newest parameters -> out_dir/{config.json, generation_config.json, model.safetensors,
  rasr_heads.safetensors} and the work directory's tokenizer (with tokenizer_config.json for an
  HF tokenizer) when it has one, whose bos / eos / pad ids the configs carry."""
  params = jax.tree.map(np.asarray, _newest_params(workdir, config))
  tokenizer = tok_lib.existing(workdir, config.data.tokenizer, config.model.vocab_size)
  token_ids = tokenizer.hf_token_ids if tokenizer is not None else {}
  tensors = {}
  mappings = _mappings(config.model)
  for mapping in progress.track(mappings, len(mappings), "exporting tensors", "names"):
    value = _get_path(params, mapping.path)
    if mapping.per_layer:
      for i in range(config.model.num_layers):
        tensors[mapping.hf_name.format(i=i)] = np.ascontiguousarray(
            mapping.to_hf(value[i], config.model))
    else:
      tensors[mapping.hf_name] = np.ascontiguousarray(mapping.to_hf(value, config.model))
  os.makedirs(out_dir, exist_ok=True)
  st_numpy.save_file(tensors, os.path.join(out_dir, "model.safetensors"), metadata={"format": "pt"})
  heads = {
      "/".join(str(k.key) for k in path): np.ascontiguousarray(leaf) for group in HEAD_GROUPS
      if group in params for path, leaf in jax.tree_util.tree_flatten_with_path(
          {group: params[group]})[0]
  }
  if heads:
    st_numpy.save_file(heads, os.path.join(out_dir, HEADS_FILE))
  if tokenizer is not None:
    tokenizer.save(tok_lib.workdir_path(out_dir, tokenizer))
  with open(os.path.join(out_dir, "config.json"), "w") as f:
    json.dump(hf_config_of(config, token_ids), f, indent=2)
  with open(os.path.join(out_dir, "generation_config.json"), "w") as f:
    json.dump(_token_id_fields(token_ids), f, indent=2)


if __name__ == "__main__":
  from rasr_jax.interop import hf_cli
  hf_cli.run()
