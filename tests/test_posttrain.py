"""Post-training: the chat layout's loss mask, packing without cross-attention, SFT and DPO runs
(resume, a reward accuracy that rises, reference log-probabilities that equal scoring), the DPO
loss against TRL's formula, and bad records."""

import json
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import losses, make_config, params_hash, run_main
from rasr_jax import config as config_lib
from rasr_jax.data import chat, packing, sources
from rasr_jax.data import tokenizer as tok_lib
from rasr_jax.generation import inference
from rasr_jax.posttrain import avr, avr_data, avr_search, avr_trees, dpo, sft
from rasr_jax.training import checkpoint as ckpt_lib
from rasr_jax.training import train_state

POST = {"reflect.enabled": False, "train.steps": 8, "train.eval_batches": 1}


def _write_jsonl(path, records):
  path.write_text("".join(json.dumps(r) + "\n" for r in records))
  return str(path)


def _sft_records(count, offset=0):
  """Additions, half as conversations (with a system turn), half as prompt + completion."""
  records = []
  for i in range(offset, offset + count):
    a, b = i % 17, (3 * i) % 13
    if i % 2:
      records.append({
          "messages": [{
              "role": "system",
              "content": "add"
          }, {
              "role": "user",
              "content": f"{a}+{b}"
          }, {
              "role": "assistant",
              "content": f"{a + b}"
          }]
      })
    else:
      records.append({"prompt": f"{a}+{b}=", "completion": f"{a + b}"})
  return records


def _pairs(count):
  """Additions with the right sum chosen over a wrong one, of two types."""
  return [{
      "prompt": f"{i % 17}+{(3 * i) % 13}=",
      "chosen": f"{i % 17 + (3 * i) % 13}",
      "rejected": f"{i % 17 + (3 * i) % 13 + 1 + i % 3}",
      "type": ("generation", "improvement")[i % 2]
  } for i in range(count)]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
  folder = tmp_path_factory.mktemp("post_data")
  return {
      "sft": _write_jsonl(folder / "sft.jsonl", _sft_records(200)),
      "sft_eval": _write_jsonl(folder / "sft_eval.jsonl", _sft_records(40, offset=500)),
      "pairs": _write_jsonl(folder / "pairs.jsonl", _pairs(64)),
  }


def _sft_config(files, **overrides):
  return make_config(**{
      **POST, "sft.files": files["sft"],
      "sft.eval_files": files["sft_eval"],
      **overrides
  })


@pytest.fixture(scope="module")
def sft_run(files, tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("sft"))
  config = _sft_config(files, **{"train.steps": 24})
  sft.train(config, workdir)
  return workdir, config


def _tokenizer(workdir):
  return tok_lib.load(tok_lib.find_in(workdir))


# A preference pair whose prompt holds an assistant turn (AvR's criticism pairs carry y0 there).
PAIR_AFTER_AN_ANSWER = {
    "prompt": [{
        "role": "user",
        "content": "2+2"
    }, {
        "role": "assistant",
        "content": "5"
    }],
    "chosen": [{
        "role": "assistant",
        "content": "4"
    }],
    "rejected": [{
        "role": "assistant",
        "content": "22"
    }]
}


def test_only_the_responses_carry_loss(sft_run):
  tokenizer = _tokenizer(sft_run[0])
  dialogue = chat.sft_dialogue(
      {
          "messages": [{
              "role": "system",
              "content": "be brief"
          }, {
              "role": "user",
              "content": "2+2"
          }, {
              "role": "assistant",
              "content": "4"
          }, {
              "role": "user",
              "content": "3+3"
          }, {
              "role": "assistant",
              "content": "6"
          }]
      }, "test")
  tokens, mask = chat.encode(dialogue, tokenizer)
  counted = [int(t) for t, m in zip(tokens, mask) if m]
  assert counted == (tokenizer.encode("4") + [tokenizer.eos_id] + tokenizer.encode("6")
                     + [tokenizer.eos_id])
  assert tokenizer.decode(tokens[~mask]).count("be brief") == 1
  # The role markers are single pieces of the project's tokenizer.
  assert all(len(tokenizer.encode(m)) <= 2 for m in tok_lib.ROLE_MARKERS)
  plain = chat.sft_dialogue({"prompt": "2+2=", "completion": "4"}, "test")
  tokens, mask = chat.encode(plain, tokenizer)
  assert tokens[:int(np.argmax(mask))].tolist() == tokenizer.encode_prompt("2+2=")
  assert tokens[mask].tolist() == tokenizer.encode("4") + [tokenizer.eos_id]
  # A generation prompt is the layout up to the response.
  prompt = chat.prompt_tokens(dialogue.turns[:2], False, tokenizer)
  tokens, mask = chat.encode(chat.Dialogue(dialogue.turns[:3], False), tokenizer)
  assert tokens[:len(prompt)].tolist() == prompt and mask[len(prompt)]
  # A preference pair whose prompt holds an assistant turn (AvR's criticism pairs carry y0
  # there) counts only its own response; so does a prompt + completion record.
  pair = chat.preference_pair(PAIR_AFTER_AN_ANSWER, "test")
  for dialogue, response in ((pair.chosen, "4"), (pair.rejected, "22")):
    tokens, mask = chat.encode(dialogue, tokenizer)
    assert tokens[mask].tolist() == tokenizer.encode(response) + [tokenizer.eos_id]
  completion = chat.sft_dialogue(
      {
          "prompt": PAIR_AFTER_AN_ANSWER["prompt"],
          "completion": [{
              "role": "assistant",
              "content": "4"
          }]
      }, "test")
  tokens, mask = chat.encode(completion, tokenizer)
  assert tokens[mask].tolist() == tokenizer.encode("4") + [tokenizer.eos_id]


def test_packed_examples_never_attend_to_each_other(sft_run):
  """Each example in a packed row gets the logits it gets alone, and the loss counts only its
  response tokens."""
  workdir, config = sft_run
  tokenizer = _tokenizer(workdir)
  examples = [
      chat.encode_checked(chat.sft_dialogue(r, "test"), tokenizer, config.data.seq_len + 1)
      for r in _sft_records(40)
  ]
  batch = next(
      iter(
          sft.make_dataset(examples, seq_len=config.data.seq_len, global_batch=8, seed=0,
                           streams=1)))
  row = int(np.argmax([len(set(s[s > 0])) for s in batch["segment_ids"]]))
  segments = batch["segment_ids"][row]
  assert len(set(segments[segments > 0])) >= 2  # several examples share the row
  model = train_state.build_model(config)
  rows = packing.PackedRows(
      *(jnp.asarray(batch[k][row:row + 1]) for k in ("tokens", "segment_ids", "loss_mask")))
  inputs, targets, weights, positions, mask = packing.inputs_and_targets(rows)
  packed_logits, _ = model(inputs, positions=positions, mask=mask)
  for segment in sorted(set(segments[segments > 0])):
    where = np.flatnonzero(segments == segment)
    alone = batch["tokens"][row, where]
    alone_logits, _ = model(jnp.asarray(alone[None, :-1]))
    inside = where[:-1]
    np.testing.assert_allclose(packed_logits[0, inside], alone_logits[0], atol=2e-5)
    expected = batch["loss_mask"][row, where[1:]].astype(np.float32)
    np.testing.assert_array_equal(weights[0, inside], expected)
  assert float(jnp.sum(weights)) == float(np.sum(batch["loss_mask"][row][1:] & (segments[1:] > 0)))


def test_sft_loss_falls_and_resume_is_bit_identical(sft_run, files, tmp_path):
  workdir, config = sft_run
  logged = losses(workdir)
  assert logged[config.train.steps] < 0.5 * logged[1]
  half = config.train.steps // 2
  sft.train(config, str(tmp_path), stop_at_step=half)
  assert max(losses(str(tmp_path))) == half
  sft.train(config, str(tmp_path))
  assert losses(str(tmp_path)) == logged
  assert params_hash(str(tmp_path), config) == params_hash(workdir, config)


def _dpo_config(files, sft_workdir, **overrides):
  return make_config(
      **{
          **POST, "dpo.files": files["pairs"],
          "dpo.eval_files": files["pairs"],
          "init_from": sft_workdir,
          "train.eval_batches": 4,
          **overrides
      })


@pytest.fixture(scope="module")
def dpo_run(sft_run, files, tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("dpo"))
  config = _dpo_config(files, sft_run[0], **{"train.steps": 40, "dpo.beta": 0.5})
  dpo.train(config, workdir)
  return workdir, config


def test_dpo_reward_accuracy_rises_above_half_on_its_training_pairs(dpo_run):
  from rasr_jax.training.metrics import read_records
  workdir, config = dpo_run
  last = read_records(workdir)[-1]
  assert last["step"] == config.train.steps
  assert last["eval/rewards/accuracy"] > 0.5
  assert last["eval/rewards/margin"] > 0
  assert last["eval/loss/dpo"] < math.log(2)  # the loss of a policy equal to its reference
  for pair_type in ("generation", "improvement"):
    assert 0 <= last[f"eval/rewards/accuracy/{pair_type}"] <= 1


def test_reference_logps_equal_the_score_mode_sums(dpo_run, sft_run):
  """The cached reference log-probabilities are the SFT checkpoint's `--mode=score` log-probs
  summed over each response."""
  workdir, config = dpo_run
  tokenizer = _tokenizer(sft_run[0])
  pairs = chat.read_records(config.dpo.files, "dpo.files", chat.preference_pair)
  arrays = dpo.encode_pairs(pairs, tokenizer, config.data.seq_len + 1,
                            ["generation", "improvement"])
  cache = dpo.ReferenceLogps(config, ckpt_lib.locate_initial(sft_run[0]), tokenizer,
                             f"{workdir}/{dpo.REFERENCE_DIR}")
  cached = cache(arrays, "train")  # the run's: nothing is computed again
  model = inference.InferenceModel(sft_run[1], sft_run[0])
  for side in dpo.SIDES:
    tokens = [t[m > 0].tolist() for t, m in zip(arrays.tokens[side], arrays.segment_ids[side])]
    scored = model.score_tokens(tokens)
    sums = [
        float(np.sum(logps[mask[1:len(t)]]))
        for (logps, _), mask, t in zip(scored, arrays.loss_mask[side], tokens)
    ]
    np.testing.assert_allclose(cached[side], sums, rtol=1e-5, atol=1e-4)


def test_dpo_resume_is_bit_identical_and_reuses_the_reference(dpo_run, sft_run, files, tmp_path):
  workdir, config = dpo_run
  half = config.train.steps // 2
  dpo.train(config, str(tmp_path), stop_at_step=half)
  reference_dir = tmp_path / dpo.REFERENCE_DIR / "train"
  written = {p.name: p.stat().st_mtime_ns for p in reference_dir.iterdir()}
  dpo.train(config, str(tmp_path))
  assert {p.name: p.stat().st_mtime_ns for p in reference_dir.iterdir()} == written
  assert losses(str(tmp_path)) == losses(workdir)
  assert params_hash(str(tmp_path), config) == params_hash(workdir, config)


def _trl_sigmoid_loss(torch, policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta,
                      label_smoothing):
  """TRL DPOTrainer's `sigmoid` loss, written with torch as TRL writes it."""
  logits = (policy_chosen - policy_rejected) - (ref_chosen - ref_rejected)
  return (-torch.nn.functional.logsigmoid(beta * logits) *
          (1 - label_smoothing) - torch.nn.functional.logsigmoid(-beta * logits) * label_smoothing)


@pytest.mark.parametrize("beta,label_smoothing", [(0.1, 0.0), (0.5, 0.2)])
def test_dpo_loss_and_gradient_match_trls_formula(beta, label_smoothing):
  torch = pytest.importorskip("torch")
  rng = np.random.default_rng(0)
  logps = rng.normal(-20, 5, size=(4, 6)).astype(np.float32).astype(np.float64)

  def ours(policy_chosen, policy_rejected, ref_chosen, ref_rejected):
    loss, _, _ = dpo.dpo_losses(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta,
                                label_smoothing)
    return jnp.mean(loss)

  value, grads = jax.value_and_grad(ours,
                                    argnums=(0, 1))(*(jnp.asarray(x, jnp.float32) for x in logps))
  tensors = [torch.tensor(x, dtype=torch.float64, requires_grad=True) for x in logps]
  want = _trl_sigmoid_loss(torch, *tensors, beta, label_smoothing).mean()
  want.backward()
  assert float(value) == pytest.approx(want.item(), abs=1e-6)
  for got, tensor in zip(grads, tensors[:2]):
    np.testing.assert_allclose(np.asarray(got), tensor.grad.numpy(), atol=1e-6)


def test_dpo_loss_constants():
  """Hand-computed values: a policy equal to its reference loses ln 2; a margin m loses
  log(1 + e^-m)."""
  zero = jnp.zeros(1)
  loss, chosen, rejected = dpo.dpo_losses(zero, zero, zero, zero, 0.1, 0.0)
  assert float(loss[0]) == pytest.approx(math.log(2), abs=1e-6)
  loss, chosen, rejected = dpo.dpo_losses(jnp.asarray([-1.0]), jnp.asarray([-5.0]), zero, zero, 0.5,
                                          0.0)
  assert float(chosen[0]) == pytest.approx(-0.5) and float(rejected[0]) == pytest.approx(-2.5)
  assert float(loss[0]) == pytest.approx(math.log1p(math.exp(-2.0)), abs=1e-6)
  smoothed, _, _ = dpo.dpo_losses(jnp.asarray([-1.0]), jnp.asarray([-5.0]), zero, zero, 0.5, 0.25)
  want = 0.75 * math.log1p(math.exp(-2.0)) + 0.25 * math.log1p(math.exp(2.0))
  assert float(smoothed[0]) == pytest.approx(want, abs=1e-6)


@pytest.mark.parametrize("record,message", [
    ({
        "prompt": "x"
    }, "expected field 'messages', or fields 'prompt' and 'completion'"),
    ({
        "prompt": " ",
        "completion": "y"
    }, "the prompt is empty"),
    ({
        "prompt": "x",
        "completion": ""
    }, "field 'completion' must be a non-empty string"),
    ({
        "messages": []
    }, "field 'messages' must be a non-empty list"),
    ({
        "messages": [{
            "role": "user",
            "content": "hi"
        }]
    }, "no assistant message"),
    ({
        "messages": [{
            "role": "robot",
            "content": "hi"
        }]
    }, "messages[0] must be an object"),
    ({
        "messages": [{
            "role": "assistant",
            "content": ""
        }]
    }, "messages[0] (assistant) has "
     "empty content"),
    ({
        "prompt": [{
            "role": "user",
            "content": "q"
        }],
        "completion": "a"
    }, "field 'completion' must be a non-empty list of messages"),
    ([1, 2], "expected an object"),
])
def test_bad_sft_records_name_the_problem(record, message):
  with pytest.raises(sources.DataError, match=f"^where: .*{_escaped(message)}"):
    chat.sft_dialogue(record, "where")


@pytest.mark.parametrize("record,message", [
    ({
        "prompt": "x",
        "chosen": "a"
    }, "field 'rejected' is missing"),
    ({
        "prompt": "x",
        "chosen": "a",
        "rejected": "a"
    }, "the chosen and rejected responses are "
     "the same"),
    ({
        "prompt": "",
        "chosen": "a",
        "rejected": "b"
    }, "the prompt is empty"),
    ({
        "prompt": "x",
        "chosen": "a",
        "rejected": "b",
        "type": 3
    }, "field 'type' must be a string"),
])
def test_bad_pairs_name_the_problem(record, message):
  with pytest.raises(sources.DataError, match=f"^where: .*{_escaped(message)}"):
    chat.preference_pair(record, "where")


def _escaped(text):
  import re
  return re.escape(text)


@pytest.mark.parametrize("mode,content,message", [
    ("sft", b'{"prompt": "a", "completion": "b"}\nnot json\n', "line 2: not JSON"),
    ("sft", b'{"prompt": "a", "completion": "\xff"}\n', "line 1: invalid UTF-8"),
    ("sft", b'{"prompt": "a", "completion": "' + b"word " * 60 + b'"}\n',
     "tokens, more than data.seq_len + 1 = 33"),
    ("dpo", b'{"prompt": "a", "chosen": "b", "rejected": "b"}\n', "line 1: the chosen and "
     "rejected responses are the same"),
])
def test_bad_files_end_with_one_error_line_before_compiling(mode, content, message, sft_run,
                                                            tmp_path):
  path = tmp_path / "records.jsonl"
  path.write_bytes(content)
  workdir = tmp_path / "run"
  result = run_main(
      str(workdir), f"--mode={mode}", **{
          f"{mode}.files": str(path),
          "init_from": sft_run[0],
          "reflect.enabled": False
      })
  assert result.returncode == 2, result.stderr[-2000:]
  last = result.stderr.strip().splitlines()[-1]
  assert last.startswith("error: ") and str(path) in last and message in last, last
  assert "compiling" not in result.stderr
  assert not (workdir / "checkpoints").exists() or not any((workdir / "checkpoints").iterdir())


TEMPLATE = ("{{ bos_token }}{% for m in messages %}### {{ m['role'] }}\n{{ m['content'] }}"
            "{{ eos_token }}\n{% endfor %}{% if add_generation_prompt %}### assistant\n{% endif %}")


def test_an_hf_tokenizers_chat_template_lays_out_conversations(tmp_path):
  from test_data import byte_level_tokenizer
  texts = [f"### user\n{a}+{b}\n### assistant\n{a + b}\n" for a in range(30) for b in range(30)]
  path = byte_level_tokenizer(tmp_path / "tokenizer.json", texts)
  (tmp_path / "tokenizer_config.json").write_text(json.dumps({"chat_template": TEMPLATE}))
  tokenizer = tok_lib.load(path)
  dialogue = chat.sft_dialogue(
      {
          "messages": [{
              "role": "user",
              "content": "2+2"
          }, {
              "role": "assistant",
              "content": "4"
          }, {
              "role": "user",
              "content": "3+3"
          }, {
              "role": "assistant",
              "content": "6"
          }]
      }, "test")
  tokens, mask = chat.encode(dialogue, tokenizer)
  whole = ("<|begin_of_text|>### user\n2+2<|end_of_text|>\n### assistant\n4<|end_of_text|>\n"
           "### user\n3+3<|end_of_text|>\n### assistant\n6<|end_of_text|>\n")
  assert tokens.tolist() == tokenizer.encode(whole)
  counted = [int(t) for t, m in zip(tokens, mask) if m]
  assert counted == tokenizer.encode("4<|end_of_text|>\n") + tokenizer.encode("6<|end_of_text|>\n")
  assert chat.prompt_tokens(dialogue.turns[:1], False, tokenizer) == tokenizer.encode(
      "<|begin_of_text|>### user\n2+2<|end_of_text|>\n### assistant\n")
  # The prompt's own assistant turns are context: only the pair's response counts.
  pair = chat.preference_pair(PAIR_AFTER_AN_ANSWER, "test")
  tokens, mask = chat.encode(pair.chosen, tokenizer)
  assert [int(t) for t, m in zip(tokens, mask) if m] == tokenizer.encode("4<|end_of_text|>\n")
  # A work directory's copy keeps the template.
  (tmp_path / "copy").mkdir()
  tokenizer.save(str(tmp_path / "copy" / "tokenizer.json"))
  assert tok_lib.load(str(tmp_path / "copy")).chat_template == TEMPLATE
  # A template that rewrites earlier turns cannot mark the responses.
  (tmp_path / "tokenizer_config.json").write_text(
      json.dumps({"chat_template": "{{ messages | length }}" + TEMPLATE}))
  with pytest.raises(sources.DataError, match="does not write a conversation as its beginning"):
    chat.encode(dialogue, tok_lib.load(path))


def _tree(reward0, rewards, critiques=("c0", "c1")):
  improvements = tuple(tuple(f"y{j}{k}" for k in range(len(row))) for j, row in enumerate(rewards))
  return avr_trees.Tree("x", "y0", reward0, tuple(critiques), improvements,
                        tuple(tuple(r) for r in rewards))


def test_refinement_aware_rules_on_hand_made_trees():
  # Critique worth: c0 (0.2 + 0.6) / 2 = 0.4, c1 (0.9 + 0.1) / 2 = 0.5: c1 is the best critique,
  # its best improvement (0.9) the best trajectory; of the four only it beats y0's 0.3.
  tree = _tree(0.3, [[0.2, 0.6], [0.9, 0.1]])
  assert tree.critique_worth() == pytest.approx([0.4, 0.5])
  assert tree.best() == (1, 0)
  assert tree.counts(1, 0) and not tree.counts(1, 1) and not tree.counts(0, 0)
  pairs = {p["type"]: p for p in avr_trees.preference_pairs(tree)}
  assert pairs["generation"]["chosen"][0]["content"] == "y10"
  assert pairs["generation"]["rejected"][0]["content"] == "y0"
  assert [m["content"] for m in pairs["generation"]["prompt"]] == ["x"]
  assert pairs["criticism"]["chosen"][0]["content"] == "c1"
  assert pairs["criticism"]["rejected"][0]["content"] == "c0"
  assert pairs["criticism"]["chosen_reward"] == pytest.approx(0.5)
  assert [m["content"] for m in pairs["criticism"]["prompt"]] == ["x", "y0", avr.CRITIQUE_REQUEST]
  assert pairs["improvement"]["chosen"][0]["content"] == "y10"
  assert pairs["improvement"]["rejected"][0]["content"] == "y11"
  assert [m["content"] for m in pairs["improvement"]["prompt"]
         ] == ["x", "y0", avr.CRITIQUE_REQUEST, "c1", avr.IMPROVE_REQUEST]
  record = avr_trees.rsft_record(tree)
  assert [m["content"] for m in record["messages"]
         ] == ["x", "y0", avr.CRITIQUE_REQUEST, "c1", avr.IMPROVE_REQUEST, "y10"]
  # Every pair and record parses as the SFT and DPO modes read them.
  for pair in pairs.values():
    chat.preference_pair(pair, "test")
  chat.sft_dialogue(record, "test")
  # No improvement beats y0 (0.9): no generation pair and no RSFT record; ties give no pair.
  stuck = _tree(0.9, [[0.2, 0.6], [0.7, 0.5]])
  assert avr_trees.rsft_record(stuck) is None
  assert {p["type"] for p in avr_trees.preference_pairs(stuck)} == {"criticism", "improvement"}
  flat = _tree(0.0, [[0.5, 0.5], [0.5, 0.5]])
  assert [p["type"] for p in avr_trees.preference_pairs(flat)] == ["generation"]
  trees = [tree, stuck, flat]
  summary = avr_trees.summary(trees, [r for r in map(avr_trees.rsft_record, trees) if r],
                              [p for t in trees for p in avr_trees.preference_pairs(t)])
  assert summary["rsft_records"] == 2 and summary["trees_with_an_improvement"] == pytest.approx(
      2 / 3)
  assert summary["pairs"] == {"generation": 2, "criticism": 2, "improvement": 2}
  assert summary["reward_y0"]["max"] == 0.9 and summary["reward_improvements"]["count"] == 12


AVR = {
    "data.seq_len": 256,
    "avr.reward": "tests.avr_rewards:near_four_characters",
    "avr.num_prompts": 24,
    "avr.chunk_prompts": 8,
    "avr.max_new_tokens": 8,
}


def test_avr_stage_one_then_sft_then_dpo(sft_run, tmp_path):
  """Stage I trees from the SFT model, SFT on their best trajectories, DPO on their pairs: the
  DPO reward accuracy on its own training pairs rises above 0.5; a rebuilt chunk is the same."""
  from rasr_jax.training.metrics import read_records
  sft_workdir, sft_config = sft_run
  prompts = _write_jsonl(tmp_path / "prompts.jsonl", [{
      "prompt": f"{i}+{i % 5}"
  } for i in range(30)])
  config = make_config(**{**POST, **AVR, "avr.prompts_file": prompts})
  result = avr_data.build(config, sft_workdir)
  out = result["output"]
  assert result["trees"] == 24 and sum(result["pairs"].values()) >= 8
  assert result["rsft_records"] > 0
  pairs = chat.read_records(f"{out}/pairs.jsonl", "dpo.files", chat.preference_pair)
  assert {p.pair_type for p in pairs} <= set(avr_trees.PAIR_TYPES)
  # Resume: a chunk that is gone is built again, the same; the others are not rebuilt.
  chunk = f"{out}/chunks/000000008.jsonl"
  kept = open(chunk).read()
  first = os.stat(f"{out}/chunks/000000000.jsonl").st_mtime_ns
  os.remove(chunk)
  assert avr_data.build(config, sft_workdir) == result
  assert open(chunk).read() == kept
  assert os.stat(f"{out}/chunks/000000000.jsonl").st_mtime_ns == first
  rsft_dir, dpo_dir = str(tmp_path / "rsft"), str(tmp_path / "dpo")
  sft.train(
      make_config(**{
          **POST,
          **AVR, "sft.files": f"{out}/rsft.jsonl",
          "init_from": sft_workdir
      }), rsft_dir)
  assert losses(rsft_dir)
  dpo_config = make_config(
      **{
          **POST,
          **AVR, "dpo.files": f"{out}/pairs.jsonl",
          "dpo.eval_files": f"{out}/pairs.jsonl",
          "init_from": rsft_dir,
          "train.steps": 16,
          "train.eval_batches": 4
      })
  dpo.train(dpo_config, dpo_dir)
  last = read_records(dpo_dir)[-1]
  assert last["eval/rewards/accuracy"] > 0.5, last


@pytest.mark.parametrize("reward,message", [
    ("tests.avr_rewards:missing", "config.avr.reward='tests.avr_rewards:missing': cannot import"),
    ("no_such_module:f", "config.avr.reward='no_such_module:f': cannot import"),
    ("tests.avr_rewards:broken", "config.avr.reward='tests.avr_rewards:broken': raised "
     "ValueError"),
])
def test_a_bad_reward_function_is_one_error_line(reward, message, sft_run, tmp_path):
  result = run_main(
      sft_run[0], "--mode=avr_data", **{
          "avr.reward": reward,
          "avr.output": str(tmp_path / "out"),
          "reflect.enabled": False
      })
  assert result.returncode == 2, result.stderr[-2000:]
  last = result.stderr.strip().splitlines()[-1]
  assert last.startswith("error: ") and message in last, last
  assert not (tmp_path / "out").exists()


def test_long_answers_round_trip_and_give_their_final_answer():
  text = chat.write_refinement(["12", "13", "14"], ["off by two", "off by one"])
  assert text.startswith(chat.DRAFT_SECTION) and text.endswith(chat.FINAL_SECTION + "14")
  refinement = chat.read_refinement(text)
  assert refinement.answers == ("12", "13", "14") and refinement.final == "14"
  assert refinement.critiques == ("off by two", "off by one")
  assert chat.final_answer(text) == "14"
  # A model's text may stop anywhere: what it wrote is read, the missing final is not invented.
  assert chat.final_answer("no marker at all") is None
  marker = chat.IMPROVED_SECTION.strip()
  cut = chat.read_refinement(text[:text.index(marker) + len(marker) + 2])
  assert cut.answers == ("12", "1") and cut.critiques == ("off by two",) and cut.final is None
  # A sample without a final answer is never one side of a final-answer pair.
  record = {
      "prompt": "x",
      "responses": ["cut off", text, chat.write_refinement(["9"], [])],
      "rewards": [None, 1.0, 0.0],
      "final_tokens": [None, 1, 1]
  }
  pair, dropped = avr_search.final_pair(record)
  assert not dropped and pair["chosen"][0]["content"] == text
  assert pair["rejected"][0]["content"] == record["responses"][2]
  assert avr_search.final_pair(dict(record, rewards=[None, None, 0.0]))[0] is None
  with pytest.raises(ValueError, match="3 answers need 2 critiques"):
    chat.write_refinement(["a", "b", "c"], ["x"])


class _ScriptedModel:
  """An InferenceModel stand-in whose responses depend on the conversation so far: a critique
  after the critique request, else an answer one character longer per improve request, until
  `stop_after` improvements, when it answers "z"."""

  def __init__(self, tokenizer, stop_after):
    self.tokenizer = tokenizer
    self.stop_after = stop_after

  def options(self, **kwargs):
    return kwargs

  def generate_tokens(self, prompts, options, seed=0):
    del options, seed
    texts = []
    for ids in prompts:
      text = self.tokenizer.decode(ids)
      rounds = text.count(avr.IMPROVE_REQUEST)
      if text.rfind(avr.CRITIQUE_REQUEST) > text.rfind(avr.IMPROVE_REQUEST):  # the last request
        texts.append(f"critique {rounds}")
      else:
        texts.append("y" * (rounds + 1) if rounds <= self.stop_after else "z")
    return [{"text": t} for t in texts]


def test_greedy_search_keeps_rounds_while_the_reward_rises(sft_run):
  tokenizer = _tokenizer(sft_run[0])
  cfg = make_config(**{"avr.search_rounds": 5, "avr.critiques": 2, "avr.improvements": 2}).avr
  prompts = [avr.Prompt("2+2", None, "exact")]
  found = avr_search.search(_ScriptedModel(tokenizer, stop_after=2),
                            prompts,
                            lambda prompt, response: len(response),
                            cfg,
                            seed=0)
  assert found[0].answers == ("y", "yy", "yyy") and found[0].rewards == (1, 2, 3)
  assert found[0].critiques == ("critique 0", "critique 1")
  record = avr_search.sft_record(found[0])
  assert chat.final_answer(record["messages"][1]["content"]) == "yyy"
  chat.sft_dialogue(record, "test")
  # Five rounds at most.
  longest = avr_search.search(_ScriptedModel(tokenizer, stop_after=99),
                              prompts,
                              lambda prompt, response: len(response),
                              cfg,
                              seed=0)
  assert len(longest[0].answers) == 6
  # Nothing gained: no SFT record.
  flat = avr_search.search(_ScriptedModel(tokenizer, stop_after=-1),
                           prompts,
                           lambda prompt, response: 0.0,
                           cfg,
                           seed=0)
  assert flat[0].answers == ("z",) and avr_search.sft_record(flat[0]) is None


def test_records_longer_than_a_row_are_left_out_and_counted(sft_run):
  """SFT and DPO refuse a record longer than data.seq_len + 1 tokens, so the AvR stages write
  only records that fit (a long answer can outgrow the row) and count the others."""
  tokenizer = _tokenizer(sft_run[0])
  short = avr.pair([chat.Turn("user", "q")], "a", "b", "final", 1.0, 0.0)
  long = avr.pair([chat.Turn("user", "q")], "a " * 200, "b", "final", 1.0, 0.0)
  record = {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}
  rows = avr.Rows(tokenizer, 64)
  assert rows.fits(short) and not rows.fits(long) and rows.fits(record)
  assert rows.keep([short, long, record]) == ([short, record], 1)
  assert avr.Rows(tokenizer, 1000).keep([short, long]) == ([short, long], 0)


def test_final_pairs_prefer_the_better_final_answer_unless_it_is_longer():
  record = {
      "prompt": "2+2",
      "responses": ["long a", "long b", "long c"],
      "finals": ["4", "5", "44"],
      "rewards": [1.0, 0.0, 0.5],
      "final_tokens": [1, 1, 2]
  }
  pair, dropped = avr_search.final_pair(record)
  assert not dropped and pair["chosen"][0]["content"] == "long a"
  assert pair["rejected"][0]["content"] == "long b" and pair["type"] == "final"
  chat.preference_pair(pair, "test")
  longer = dict(record, final_tokens=[3, 1, 2])
  assert avr_search.final_pair(longer) == (None, True)
  tied = dict(record, rewards=[1.0, 1.0, 1.0])
  assert avr_search.final_pair(tied) == (None, False)


def test_avr_stage_two_search_pairs_and_the_avr_method(sft_run, tmp_path):
  """Stage II on the tiny SFT model: the search's long answers parse as SFT records, the final
  pairs as DPO pairs, and the `avr` method reads a long answer's drafts and final answer."""
  from rasr_jax.evaluation import methods
  prompts = _write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": f"{i}+{i % 5}"} for i in range(8)])
  settings = {**POST, **AVR, "avr.prompts_file": prompts, "avr.search_rounds": 2}
  search = avr_data.build(make_config(**{**settings, "avr.stage": "search"}), sft_run[0])
  assert search["stage"] == "search" and search["trajectories"] == 8
  for record in chat.read_records(f"{search['output']}/sft.jsonl", "sft.files",
                                  chat.sft_dialogue) if search["sft_records"] else []:
    assert chat.FINAL_SECTION.strip() in record.turns[-1].content
  finals = avr_data.build(make_config(**{
      **settings, "avr.stage": "final_pairs",
      "avr.samples": 3
  }), sft_run[0])
  assert finals["prompts"] == 8
  samples = [json.loads(line) for line in open(f"{finals['output']}/samples.jsonl")]
  assert all(len(s["responses"]) == 3 for s in samples)
  # every sample is accounted for: those without a final answer are counted, and each pair
  # (the one of every prompt whose answered samples scored differently) is a valid DPO record
  assert finals["no_final_answer"] == sum(f is None for s in samples for f in s["finals"])
  assert finals["pairs"] + finals["dropped_longer_chosen"] + finals["too_long"] == sum(
      avr_search.final_pair(s)[0] is not None or avr_search.final_pair(s)[1] for s in samples)
  pairs = chat.read_records(f"{finals['output']}/pairs.jsonl", "dpo.files",
                            chat.preference_pair) if finals["pairs"] else []
  assert len(pairs) == finals["pairs"]
  model = inference.InferenceModel(sft_run[1], sft_run[0])
  answers = methods.answer(model, ["1+1", "2+2"], "avr", max_new_tokens=4)
  for answer in answers:
    assert answer.stop == len(answer.drafts) - 1 and answer.generated_tokens > 0
  # `chat` asks in the chat layout, as the SFT model was trained: its draft is the greedy one.
  chatted = methods.answer(model, ["1+1"], "chat", max_new_tokens=4)
  options = model.options(max_new_tokens=4, reflect="off")
  asked = chat.prompt_tokens([chat.Turn("user", "1+1")], False, model.tokenizer)
  assert chatted[0].drafts == [model.generate_tokens([asked], options)[0]["text"]]


@pytest.mark.parametrize("record,reward,message", [
    ({
        "text": "x"
    }, "", "line 1: expected an object with a string field 'prompt'"),
    ({
        "prompt": " "
    }, "", "line 1: the prompt is empty"),
    ({
        "prompt": "2+2"
    }, "", "line 1: the task checker (config.avr.reward empty) needs"),
    ({
        "prompt": "2+2",
        "answer": "four"
    }, "", "data.qa_checker=final_answer finds no answer"),
])
def test_bad_avr_prompts_name_the_line(record, reward, message, tmp_path):
  path = _write_jsonl(tmp_path / "prompts.jsonl", [record])
  config = make_config(**{
      "avr.prompts_file": path,
      "avr.reward": reward,
      "data.qa_checker": "final_answer"
  })
  with pytest.raises(sources.DataError, match=_escaped(message)):
    avr.load_prompts(config)
  good = _write_jsonl(tmp_path / "good.jsonl", [{"prompt": "2+2", "answer": "#### 4"}] * 3)
  prompts = avr.load_prompts(
      make_config(**{
          "avr.prompts_file": good,
          "avr.num_prompts": 2,
          "data.qa_checker": "final_answer"
      }))
  assert prompts == [avr.Prompt("2+2", "#### 4", "final_answer")] * 2
  assert avr.Reward("")(prompts[0], "so #### 4") == 1.0


def test_the_critic_scores_a_response_as_a_draft_and_rewards_avr_trees(
    straight_run, sft_run, tmp_path):
  """`avr.reward=critic`: the RASR model's critic scores each response (the same score alone
  and in a batch of other lengths); a model without heads is refused by name."""
  workdir, config = straight_run
  model = inference.InferenceModel(config, workdir)
  together = model.critic_scores(["1+1", "what is 22+3?"], ["\n2", "\nit is 25, surely"])
  alone = [
      model.critic_scores([p], [r])[0]
      for p, r in [("1+1", "\n2"), ("what is 22+3?", "\nit is 25, surely")]
  ]
  np.testing.assert_allclose(together, alone, atol=1e-5)
  assert all(0 <= s <= 1 for s in together)
  with pytest.raises(config_lib.ConfigError, match="needs a model with reflection heads"):
    avr.Reward("critic", inference.InferenceModel(sft_run[1], sft_run[0]))
  prompts = _write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": f"{i}+{i}"} for i in range(4)])
  result = avr_data.build(
      make_config(
          **{
              "train.steps": 8,
              "avr.prompts_file": prompts,
              "avr.reward": "critic",
              "avr.max_new_tokens": 4,
              "avr.output": str(tmp_path / "out")
          }), workdir)
  trees = [json.loads(line) for line in open(tmp_path / "out" / "trees.jsonl")]
  assert result["trees"] == 4 and all(0 <= t["reward0"] <= 1 for t in trees)
  assert trees[0]["reward0"] == pytest.approx(model.critic_scores([trees[0]["prompt"]],
                                                                  ["\n" + trees[0]["y0"]])[0],
                                              abs=1e-6)
