"""Generation: cached decoding with padding, sampling, stop rules, draft-critique-refine, and
the generate / score CLI modes."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from conftest import make_config, run_main
from rasr_jax.data import tokenizer as tok_lib
from rasr_jax.generation import generate, inference
from rasr_jax.model import decoding, sampling
from rasr_jax.reflection import spans, steps
from rasr_jax.reflection.layout import Layout
from rasr_jax.training import losses, train_state

IDS = tok_lib.TRAINED_MARKER_IDS
RNG = np.random.RandomState(0)


def _split(config, seed=0):
  graphdef, params = nnx.split(train_state.build_model(config, seed), nnx.Param)
  return graphdef, nnx.to_pure_dict(params)


def _run(graphdef,
         params,
         prompt,
         valid=None,
         *,
         tau=0.5,
         progress=1.0,
         seed=0,
         live=None,
         **options):
  prompt = jnp.asarray(prompt, jnp.int32)
  valid = jnp.ones(prompt.shape, bool) if valid is None else jnp.asarray(valid)
  keys = jax.random.split(jax.random.key(seed), prompt.shape[0])
  opts = generate.GenerateOptions(**options)
  fn = jax.jit(lambda p, x, v, k, t: generate.generate(
      graphdef, p, x, v, k, t, progress, options=opts, ids=IDS, live=live))
  return jax.device_get(fn(params, prompt, valid, keys, jnp.float32(tau)))


@pytest.fixture(scope="module")
def rasr_model():
  config = make_config()
  return (config, *_split(config))


def test_left_padded_cached_decoding_equals_full_forward(rasr_model):
  """Prompts of different lengths, left-padded into one prefill, then one token at a time:
  every row's logits equal a full forward pass over that row alone (fp32, 1e-5)."""
  config, graphdef, params = rasr_model
  model = nnx.merge(graphdef, params)
  lengths, total, width = (9, 4), 12, 9
  rows = [RNG.randint(6, 512, (n + total - width,)) for n in lengths]
  prompt = np.zeros((2, width), np.int32)
  valid = np.zeros((2, width), bool)
  for r, n in enumerate(lengths):
    prompt[r, width - n:], valid[r, width - n:] = rows[r][:n], True
  hidden, cache = model.cached_hidden_states(model.embed_tokens(prompt),
                                             model.init_cache(2, 16),
                                             valid=jnp.asarray(valid))
  got = [[model.logits(hidden)[r, width - n:]] for r, n in enumerate(lengths)]
  for t in range(total - width):
    step = np.asarray([[rows[r][n + t]] for r, n in enumerate(lengths)], np.int32)
    hidden, cache = model.cached_hidden_states(model.embed_tokens(step), cache)
    for r in range(2):
      got[r].append(model.logits(hidden)[r])
  for r in range(2):
    want, _ = model(jnp.asarray(rows[r])[None])
    np.testing.assert_allclose(jnp.concatenate(got[r]), want[0], rtol=1e-5, atol=1e-5)


CYCLE = (7, 9, 11, 13, 15)


@pytest.fixture(scope="module")
def copier():
  """A small LM trained to continue the cycle 7 9 11 13 15 7 9 ... from any phase."""
  config = make_config(**{
      "reflect.enabled": False,
      "reflect.iterations": 0,
      "model.vocab_size": 32
  })
  graphdef, params = _split(config)
  tx = optax.adam(1e-2)

  @jax.jit
  def step(params, opt_state, tokens):

    def loss_fn(params):
      logits, _ = nnx.merge(graphdef, params)(tokens[:, :-1])
      return losses.lm_loss_sum(logits, tokens[:, 1:], jnp.ones(
          tokens[:, 1:].shape)) / tokens[:, 1:].size

    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, opt_state = tx.update(grads, opt_state)
    return optax.apply_updates(params, updates), opt_state, loss

  opt_state = tx.init(params)
  cycle = np.asarray(CYCLE * 8, np.int32)
  for i in range(120):
    phases = np.random.RandomState(i).randint(0, len(CYCLE), 16)
    params, opt_state, loss = step(params, opt_state, np.stack([cycle[p:p + 24] for p in phases]))
  assert float(loss) < 0.05
  return graphdef, params


def _cycle_from(phase, n):
  return [CYCLE[(phase + i) % len(CYCLE)] for i in range(n)]


def test_greedy_generation_continues_the_learned_pattern(copier):
  graphdef, params = copier
  prompt = np.asarray([_cycle_from(0, 6), _cycle_from(2, 6)], np.int32)
  out = _run(graphdef, params, prompt, max_new_tokens=7, eos_id=None)
  np.testing.assert_array_equal(out.drafts[0], [_cycle_from(6, 7), _cycle_from(8, 7)])
  np.testing.assert_array_equal(out.lengths[0], [7, 7])


def test_eos_and_stop_sequences_end_each_row(copier):
  """<eos> (id 11 here) ends row 0 after two tokens and row 1 after one; the stop sequence
  (11, 13) ends them after it, and is kept. The rest is padding; the lengths say so."""
  graphdef, params = copier
  prompt = np.asarray([_cycle_from(0, 5), _cycle_from(1, 5)], np.int32)  # next 7 9 11 / 9 11 13
  out = _run(graphdef, params, prompt, max_new_tokens=8, eos_id=11, pad_id=0)
  np.testing.assert_array_equal(out.drafts[0],
                                [[7, 9, 11, 0, 0, 0, 0, 0], [9, 11, 0, 0, 0, 0, 0, 0]])
  np.testing.assert_array_equal(out.lengths[0], [2, 1])
  out = _run(graphdef, params, prompt, max_new_tokens=8, eos_id=None, stop_sequences=((11, 13),))
  np.testing.assert_array_equal(out.drafts[0],
                                [[7, 9, 11, 13, 0, 0, 0, 0], [9, 11, 13, 0, 0, 0, 0, 0]])
  np.testing.assert_array_equal(out.lengths[0], [4, 3])


def test_stop_strings_cut_the_text():
  assert inference.cut_at_stop("a = 3\n#### 3\n\nQ: next", ["\n\n", "Q:"]) == "a = 3\n#### 3"
  assert inference.cut_at_stop("no stop here", ["\n\n"]) == "no stop here"


def test_sampling_is_deterministic_per_key_and_filters_respect_k_and_p(rasr_model):
  _, graphdef, params = rasr_model
  prompt = RNG.randint(6, 512, (3, 8))
  hot = dict(max_new_tokens=8,
             eos_id=None,
             sampling_params=sampling.SamplingParams(temperature=1.0))
  a, b = _run(graphdef, params, prompt, **hot), _run(graphdef, params, prompt, **hot)
  other = _run(graphdef, params, prompt, seed=1, **hot)
  np.testing.assert_array_equal(a.drafts, b.drafts)
  assert (a.drafts != other.drafts).any()
  greedy = _run(graphdef, params, prompt, max_new_tokens=8, eos_id=None)
  for filtered in (sampling.SamplingParams(1.0, top_k=1), sampling.SamplingParams(1.0, top_p=1e-6)):
    got = _run(graphdef, params, prompt, max_new_tokens=8, eos_id=None, sampling_params=filtered)
    np.testing.assert_array_equal(got.drafts, greedy.drafts)
  logits = jnp.log(jnp.asarray([0.5, 0.3, 0.15, 0.05]))

  def kept(params):
    return np.isfinite(np.asarray(sampling.filter_logits(logits, params)))

  np.testing.assert_array_equal(kept(sampling.SamplingParams(1.0, top_k=2)), [1, 1, 0, 0])
  np.testing.assert_array_equal(kept(sampling.SamplingParams(1.0, top_p=0.75)), [1, 1, 0, 0])
  np.testing.assert_array_equal(kept(sampling.SamplingParams(1.0, top_p=0.85)), [1, 1, 1, 0])


def _with_stop_bias(params, bias):
  params = jax.tree.map(lambda x: x, params)
  params["controller"]["b_out"] = jnp.float32(bias)
  return params


def test_reflection_off_fixed_and_learned_stopping(rasr_model):
  """off returns y(0) only; the controller's decision sets where each row stops."""
  config, graphdef, params = rasr_model
  prompt = RNG.randint(6, 512, (4, 8))
  common = dict(max_new_tokens=6, eos_id=None, iterations=3)
  off = _run(graphdef, params, prompt, **dict(common, reflect="off"))
  assert off.drafts.shape == (1, 4, 6) and off.stop_iteration.tolist() == [0] * 4
  fixed = _run(graphdef, params, prompt, **dict(common, reflect="fixed"))
  np.testing.assert_array_equal(fixed.drafts[0], off.drafts[0])
  assert fixed.stop_iteration.tolist() == [3] * 4
  always = _run(graphdef, _with_stop_bias(params, 30.0), prompt, **dict(common, reflect="learned"))
  never = _run(graphdef, _with_stop_bias(params, -30.0), prompt, **dict(common, reflect="learned"))
  assert always.stop_iteration.tolist() == [0] * 4 and never.stop_iteration.tolist() == [3] * 4
  assert fixed.scores.shape == (4, 4, config.reflect.num_dims)


def test_filler_rows_decode_nothing_and_leave_the_live_rows_alone(rasr_model):
  """A partial batch's filler rows (not live) get empty drafts and are never refined; the live
  rows' drafts equal those of the same batch with every row live."""
  _, graphdef, params = rasr_model
  prompt = RNG.randint(6, 512, (4, 8))
  common = dict(max_new_tokens=6, eos_id=None, iterations=2, reflect="fixed")
  every = _run(graphdef, params, prompt, **common)
  live = np.asarray([True, False, True, False])
  partial = _run(graphdef, params, prompt, live=jnp.asarray(live), **common)
  np.testing.assert_array_equal(partial.drafts[:, live], every.drafts[:, live])
  assert (partial.lengths[:, ~live] == 0).all() and (every.lengths[:, ~live] == 6).all()
  assert partial.stop_iteration.tolist() == [2, 0, 2, 0]


def test_per_example_stopping_leaves_stopped_rows_unchanged(rasr_model):
  """With tau between the rows' first stop probabilities, the rows above it keep y(0) and the
  others refine exactly as in the fixed run (the rows do not interact)."""
  _, graphdef, params = rasr_model
  prompt = RNG.randint(6, 512, (6, 8))
  common = dict(max_new_tokens=6, eos_id=None, iterations=1)
  fixed = _run(graphdef, params, prompt, **dict(common, reflect="fixed"))
  first = fixed.stop_probs[0]
  tau = float(np.median(first))
  stops = first > tau
  assert 0 < stops.sum() < len(stops)
  learned = _run(graphdef, params, prompt, tau=tau, **dict(common, reflect="learned"))
  np.testing.assert_array_equal(learned.stop_iteration, np.where(stops, 0, 1))
  final = learned.drafts[learned.stop_iteration, np.arange(6)]
  np.testing.assert_array_equal(final[stops], fixed.drafts[0][stops])
  np.testing.assert_array_equal(final[~stops], fixed.drafts[1][~stops])
  assert (fixed.drafts[1] != fixed.drafts[0]).any()


@pytest.mark.parametrize("draft_mode, agents, hierarchy", [("teacher_forced", 1, False),
                                                           ("autoregressive", 1, False),
                                                           ("autoregressive", 3, False),
                                                           ("autoregressive", 1, True)])
def test_refined_draft_is_the_training_refine_pass_argmax(draft_mode, agents, hierarchy):
  """For drafts y(0) of every length 1..Y, ended by `<eos>` or not, after left-padded prompts:
  greedy y(1) from the cached generator equals the argmax of the training-time refine pass
  teacher-forced on y(1) itself (through y(1)'s `<eos>`), with the mask of the draft mode, and
  the generator's critic scores equal the training critic pass's: generation sees exactly what
  the refine pass was trained to see (with a critic committee too: its disagreement token; with
  a hierarchical critic: its combined critique, over the same sentences)."""
  config = make_config(
      **{
          "reflect.draft_mode": draft_mode,
          "reflect.critics.agents": agents,
          "reflect.critics.hierarchy": hierarchy
      })
  vocab = np.arange(config.model.vocab_size)
  marks = spans.SentenceMarks(ends=vocab % 5 == 0, breaks=vocab % 23 == 0, spaced=vocab
                              % 2 == 0) if hierarchy else None
  graphdef, params = _split(config)
  r = config.reflect
  y, p = r.target_len, r.prompt_len
  lengths = np.concatenate([np.arange(1, y + 1), np.arange(1, y + 1)])  # [B]
  with_eos = np.arange(2 * y) < y
  draft = RNG.randint(6, 512, (2 * y, y)).astype(np.int32)
  draft[np.arange(y)[None] >= lengths[:, None]] = IDS.pad
  ended = with_eos & (lengths < y)
  draft[ended, lengths[ended]] = IDS.eos
  prompt = RNG.randint(6, 512, (2 * y, p)).astype(np.int32)
  prompt_valid = np.arange(p)[None] >= RNG.randint(0, p - 1, (2 * y, 1))  # left padding
  prompt[~prompt_valid] = IDS.pad
  opts = generate.GenerateOptions(max_new_tokens=y,
                                  eos_id=IDS.eos,
                                  reflect="fixed",
                                  iterations=1,
                                  aligned=draft_mode == "teacher_forced")

  @jax.jit
  def both(params):
    keys = jax.random.split(jax.random.key(0), 2 * y)
    first = decoding.Decoded(tokens=jnp.asarray(draft), lengths=jnp.asarray(lengths, jnp.int32))
    out = generate.generate(graphdef,
                            params,
                            jnp.asarray(prompt),
                            jnp.asarray(prompt_valid),
                            keys,
                            jnp.float32(0.5),
                            0.5,
                            options=opts,
                            ids=IDS,
                            first=first,
                            marks=marks)
    model = nnx.merge(graphdef, params)
    x_emb = model.embed_tokens(jnp.asarray(prompt))
    draft_valid = jnp.arange(y)[None] < first.lengths[:, None]
    live, _ = steps.critique(model, x_emb, prompt_valid, first.tokens, draft_valid, 0.5, IDS, marks)
    logits = steps.refine_logits(model, x_emb, prompt_valid,
                                 first.tokens, draft_valid, live, out.drafts[1], IDS,
                                 Layout(p, y, r.critique_len), draft_mode == "teacher_forced")
    return out, jnp.argmax(logits, -1), live.scores, live.disagreement

  out, argmax, scores, disagreement = jax.device_get(both(params))
  refined, refined_len = out.drafts[1], out.lengths[1]
  for row in range(2 * y):
    upto = min(refined_len[row] + 1, y)  # the refined tokens and the <eos> that ends them
    np.testing.assert_array_equal(argmax[row, :upto], refined[row, :upto], err_msg=f"row {row}")
  np.testing.assert_allclose(out.scores[0], scores, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(out.disagreement[0], disagreement, rtol=1e-4, atol=1e-9)
  assert (disagreement > 0).all() == (agents > 1)


def _generate_cli(workdir, *extra, devices=1, **overrides):
  return run_main(workdir, "--mode=generate", *extra, devices=devices, **overrides)


def test_generate_and_score_cli_round_trip(straight_run, tmp_path):
  workdir, config = straight_run
  prompts_file = tmp_path / "prompts.jsonl"
  prompts_file.write_text(json.dumps({"prompt": "Tom has 3 apples."}) + "\n")
  result = _generate_cli(workdir, "--prompt=Q: 2 + 3 =", "--prompt=The cat", "--max_new_tokens=12",
                         f"--prompts_file={prompts_file}", "--stop=.")
  assert result.returncode == 0, result.stderr[-3000:]
  records = [json.loads(line) for line in result.stdout.splitlines()]
  assert [r["prompt"] for r in records] == ["Q: 2 + 3 =", "The cat", "Tom has 3 apples."]
  for r in records:
    k = r["stop_iteration"]
    assert 0 <= k <= config.reflect.iterations and len(r["drafts"]) == k + 1
    assert r["text"] == r["drafts"][-1] and "." not in r["text"]
    assert len(r["scores"]) == k + 1 and len(r["scores"][0]) == config.reflect.num_dims
    assert all(0 <= p <= 1 for p in r["stop_probs"])
  # 8 devices (data=2, fsdp=2, tensor=2) load the checkpoint onto their mesh: same tokens.
  sharded = _generate_cli(workdir,
                          "--prompt=Q: 2 + 3 =",
                          "--prompt=The cat",
                          "--prompt=Tom has 3 apples.",
                          "--max_new_tokens=12",
                          "--stop=.",
                          devices=8,
                          **{
                              "mesh.data": 2,
                              "mesh.fsdp": 2,
                              "mesh.tensor": 2
                          })
  assert sharded.returncode == 0, sharded.stderr[-3000:]
  assert [json.loads(line)["drafts"] for line in sharded.stdout.splitlines()
         ] == [r["drafts"] for r in records]

  scored = run_main(workdir, "--mode=score", "--text=Tom has 3 apples.", "--text=")
  assert scored.returncode == 0, scored.stderr[-3000:]
  first, empty = [json.loads(line) for line in scored.stdout.splitlines()]
  assert empty["num_tokens"] == 0 and empty["sum_logprob"] == 0
  model = inference.InferenceModel(config, workdir)
  ids = [model.tokenizer.eos_id] + model.tokenizer.encode("Tom has 3 apples.")
  assert first["token_ids"] == ids[1:]
  logits, _ = nnx.merge(model.graphdef, model.params)(jnp.asarray([ids[:-1]]))
  want = jnp.take_along_axis(jax.nn.log_softmax(logits[0]), jnp.asarray(ids[1:])[:, None], -1)
  np.testing.assert_allclose(first["logprobs"], want[:, 0], atol=1e-5)
  assert first["sum_logprob"] == pytest.approx(float(jnp.sum(want)), abs=1e-4)


def test_a_prompt_longer_than_p_keeps_its_last_p_tokens_when_reflecting(straight_run):
  """With reflection on, x holds the prompt's last P tokens, as a reflection row does in
  training: the same drafts and scores as the cut prompt (and not those of the whole prompt,
  read when max_prompt_tokens says so)."""
  workdir, config = straight_run
  model = inference.InferenceModel(config, workdir)
  p = config.reflect.prompt_len
  ids = model.tokenizer.encode_prompt("Tom has 3 apples and 4 pears. " * 4)
  assert len(ids) > p
  options = model.options(max_new_tokens=8, reflect="fixed")
  whole, cut = model.generate_tokens([ids, ids[-p:]], options)
  assert whole["drafts"] == cut["drafts"] and whole["scores"] == cut["scores"]
  uncut = model.generate_tokens([ids], options, max_prompt_tokens=len(ids))[0]
  assert uncut["scores"] != cut["scores"]  # the cut matters: the critic reads x


def test_reading_a_checkpoint_leaves_a_save_in_flight_alone(straight_run, tmp_path):
  """Generation (and evaluation, export) beside a training run that is saving: loading the
  model never deletes the save's temporary directory; the trainer's own Checkpointer does."""
  import shutil

  from rasr_jax.training import checkpoint as ckpt_lib
  workdir, config = straight_run
  copy = tmp_path / "run"
  shutil.copytree(workdir, copy)
  in_flight = copy / "checkpoints" / "99999.orbax-checkpoint-tmp-1"
  in_flight.mkdir()
  inference.InferenceModel(config, str(copy))
  assert in_flight.is_dir()
  ckpt_lib.Checkpointer(ckpt_lib.checkpoint_dir(str(copy)), config.checkpoint).close()
  assert not in_flight.exists()
