"""RASR: gradient routing, the leak rule, masking of stopped examples, losses and oracles."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from conftest import make_config
from rasr_jax import config as config_lib
from rasr_jax import sharding
from rasr_jax.data import tokenizer as tok_lib
from rasr_jax.data.packing import PackedRows
from rasr_jax.model import heads
from rasr_jax.reflection import quality, steps
from rasr_jax.reflection import rows as rows_lib
from rasr_jax.reflection import state as loop_state
from rasr_jax.reflection.layout import Layout
from rasr_jax.training import losses, optim, reflect, safety_quality, train_state
from rasr_jax.training import step as train_step

IDS = tok_lib.TRAINED_MARKER_IDS
TERMS = ("loss/lm", "loss/reflect", "loss/critic", "loss/controller")
RNG = np.random.RandomState(0)


def _setup(**overrides):
  config = config_lib.resolve_mesh(make_config(**overrides), 1)
  mesh = sharding.make_mesh(config.mesh)
  state, shardings = train_state.init_state(config, mesh)
  graphdef, _, _ = train_state.abstract_model(config)
  tokens = jnp.asarray(
      RNG.randint(6, config.model.vocab_size, (config.train.batch_size, config.data.seq_len + 1)),
      jnp.int32)
  return config, mesh, state, shardings, graphdef, tokens


@pytest.fixture(scope="module")
def rasr():
  return _setup()


@pytest.fixture(scope="module")
def committee():
  # Free-running drafts: the refine pass reads the critique tokens (the aligned mask hides them).
  return _setup(**{"reflect.critics.agents": 3, "reflect.draft_mode": "autoregressive"})


def _routing_grads(setup, safety=None, pieces=None):
  """One jitted function (params, progress, label) -> the step's combined gradient, each term's
  own gradient and the metrics; `safety(label)` builds the step's safety input from the traced
  float `label`, so one compilation serves every label."""
  config, _, _, _, graphdef, tokens = setup
  n = jnp.float32(tokens.shape[0] * (tokens.shape[1] - 1))

  @jax.jit
  def grads(params, progress, label):
    loss_fn = train_step.make_loss_fn(graphdef,
                                      config,
                                      IDS,
                                      safety=safety(label) if safety else None,
                                      pieces=pieces)
    args = (PackedRows(tokens), None, n, jax.random.key(1), jnp.float32(0.5), progress)

    def losses(p):  # [5]: the step's loss, then each term's
      total, aux = loss_fn(p, *args)
      return jnp.stack([total, *(aux[name] for name in TERMS)]), aux

    # One backward pass, vmapped over the five losses (reverse mode: rows of the Jacobian).
    jacobian, aux = jax.jacrev(losses, has_aux=True)(params)
    combined = jax.tree.map(lambda rows: rows[0], jacobian)
    terms = {
        name: jax.tree.map(lambda rows, i=i: rows[i + 1], jacobian) for i, name in enumerate(TERMS)
    }
    return combined, terms, aux

  return grads


@pytest.fixture(scope="module")
def routing_grads(rasr):
  return _routing_grads(rasr)


def _check_routing(setup, grads, progress, label=0.0):
  """psi <- grad(a Ls + b Lr), phi <- grad(b Lr + g Lc), xi <- grad(Lctrl), exactly (§7.5);
  -> the combined gradient, each term's, and the step's metrics."""
  config, mesh, state, _, _, _ = setup
  r = config.reflect
  with sharding.activate(mesh):
    combined, terms, aux = grads(state.params, jnp.float32(progress), jnp.float32(label))
  ls, lr, lc, lctrl = (terms[k] for k in TERMS)
  assert float(aux["loss/reflect"]) > 0 and float(aux["loss/controller"]) > 0
  expected = {
      "generator": jax.tree.map(lambda a, b: r.alpha * a + r.beta * b, ls, lr),
      "critic": jax.tree.map(lambda b, c: r.beta * b + r.gamma * c, lr, lc),
      "controller": lctrl,
  }
  labels = jax.tree.leaves(optim.group_labels(state.params))
  checked = {g: 0 for g in expected}
  for i, (label, got) in enumerate(zip(labels, jax.tree.leaves(combined))):
    want = jax.tree.leaves(expected[label])[i]
    scale = float(jnp.max(jnp.abs(want))) + 1e-12
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5 * scale)
    checked[label] += 1
  assert all(checked.values()), checked
  # Not vacuous: each group's gradient is non-zero.
  for group, norm in optim.group_norms(combined).items():
    assert float(norm) > 0, group
  return combined, terms, aux


@pytest.mark.parametrize("progress", [0.0, 1.0], ids=["all-refine", "stopping-on"])
def test_gradient_routing_matches_separate_grads(rasr, routing_grads, progress):
  _check_routing(rasr, routing_grads, progress)


def test_committee_gradient_routing(committee):
  """With A = 3 critic agents the groups route as with one critic; the consensus weights are
  trained by L_critic (the consensus term) and L_reflection (the refine pass reads the
  consensus), never by L_standard or L_controller; the agents disagree from the start."""
  _, terms, aux = _check_routing(committee, _routing_grads(committee), 0.0)
  consensus = {name: grad["critic"]["consensus_logits"][...] for name, grad in terms.items()}
  assert consensus["loss/critic"].shape == (3, committee[0].reflect.num_dims)
  assert float(jnp.max(jnp.abs(consensus["loss/critic"]))) > 0
  assert float(jnp.max(jnp.abs(consensus["loss/reflect"]))) > 0
  assert float(jnp.max(jnp.abs(consensus["loss/lm"]))) == 0
  assert float(jnp.max(jnp.abs(consensus["loss/controller"]))) == 0
  assert float(aux["critic/disagreement"]) > 0 and float(aux["critic/loss_consensus"]) > 0


def test_hierarchy_gradient_routing():
  """A hierarchical critic's sentence head and scale weights are critic parameters trained by
  L_critic (its sentence and coordination terms) and L_reflection (the refine pass reads the
  combined critique), never by L_standard or L_controller."""
  setup = _setup(**{"reflect.critics.hierarchy": True, "reflect.draft_mode": "autoregressive"})
  pieces = tok_lib.train(["one. two! three?\nfour five six. " * 20],
                         300).piece_bytes(setup[0].model.vocab_size)
  with pytest.raises(ValueError, match="needs `pieces`"):
    train_step.make_loss_fn(setup[4], setup[0], IDS)
  _, terms, aux = _check_routing(setup, _routing_grads(setup, pieces=pieces), 0.0)
  for name in ("sentence_w", "scale_logits"):
    grads = {term: grad["critic"][name][...] for term, grad in terms.items()}
    assert float(jnp.max(jnp.abs(grads["loss/critic"]))) > 0, name
    assert float(jnp.max(jnp.abs(grads["loss/reflect"]))) > 0, name
    assert float(jnp.max(jnp.abs(grads["loss/lm"]))) == 0, name
    assert float(jnp.max(jnp.abs(grads["loss/controller"]))) == 0, name
  assert float(aux["critic/loss_sentences"]) > 0 and float(aux["critic/loss_coordination"]) > 0


def test_the_unified_loss_weighs_the_paradigms_alike_and_coordination_apart():
  """Eq. 5: lambda_i (0.2) times each of L_standard, L_reflection, L_critic without its
  coordination terms and L_controller, plus lambda_coord (0.15) times the committee's consensus
  term."""
  config, mesh, state, _, graphdef, tokens = _setup(**{
      "reflect.unified.enabled": True,
      "reflect.critics.agents": 2
  })
  loss_fn = train_step.make_loss_fn(graphdef, config, IDS)
  n = jnp.float32(tokens.shape[0] * (tokens.shape[1] - 1))
  with sharding.activate(mesh):
    total, m = jax.jit(loss_fn)(state.params, PackedRows(tokens), None, n, jax.random.key(1),
                                jnp.float32(0.5), jnp.float32(0.0))
  coordination = float(m["loss/coordination"])
  assert coordination == pytest.approx(float(m["critic/loss_consensus"]), rel=1e-6)
  paradigms = (float(m["loss/lm"]) + float(m["loss/reflect"]) + float(m["loss/critic"])
               - coordination + float(m["loss/controller"]))
  assert float(total) == pytest.approx(0.2 * paradigms + 0.15 * coordination, rel=1e-5)


def _constant_safety(quality):
  """A stand-in for the host labels: every draft's safety quality is `quality` in every text
  dim."""
  return safety_quality.SafetyQuality(lambda draft, length: jnp.full(
      (draft.shape[0], len(config_lib.SAFETY_DIMS)), quality))


def _perturbing_safety(rate):
  """Text dims all safe; questions perturbed at `rate` (robustness)."""
  return safety_quality.SafetyQuality(safety_quality.all_safe,
                                      ordinary_ids=np.arange(10, 200, dtype=np.int32),
                                      rate=rate)


def test_safety_dimensions_are_critic_dimensions_trained_by_their_labels():
  """reflect.safety_dims add critic dimensions whose targets are the labels: flagging every
  draft moves L_critic and the gradient of the safety columns of the critic's scores, and the
  groups route as without them."""
  setup = _setup(**{"reflect.safety_dims": "toxicity,privacy"})
  config, _, state, _, _, _ = setup
  assert config.reflect.dim_names == ("factual", "logic", "relevance", "toxicity", "privacy")
  assert state.params["critic"]["score_w"].shape[-1] == 5
  grads = _routing_grads(setup, _constant_safety)
  _, clean, clean_aux = _check_routing(setup, grads, 0.0, label=1.0)
  _, flagged, flagged_aux = _check_routing(setup, grads, 0.0, label=0.0)
  for rate in ("rate", "rate_k0", "rate_final"):
    assert float(clean_aux[f"safety/{rate}/privacy"]) == 0
    assert float(flagged_aux[f"safety/{rate}/privacy"]) == 1
  assert float(flagged_aux["loss/critic"]) != pytest.approx(float(clean_aux["loss/critic"]))
  clean_w = clean["loss/critic"]["critic"]["score_w"][...]
  flagged_w = flagged["loss/critic"]["critic"]["score_w"][...]
  assert float(jnp.max(jnp.abs(clean_w[:, 3:] - flagged_w[:, 3:]))) > 0
  with pytest.raises(ValueError, match="needs `safety`"):
    train_step.make_loss_fn(setup[4], config, IDS)


def test_robustness_is_a_critic_dimension_trained_by_the_critics_stability():
  """reflect.safety_dims=robustness: a critique is flagged when perturbing its question flips one
  of the critic's other verdicts. Unperturbed (rate 0) nothing is flagged; with every question
  token replaced some critiques are (each one wholly: a label, not a mean change), which moves
  L_critic and the gradient of the robustness column, with the groups routed as without it."""
  setup = _setup(**{"reflect.safety_dims": "robustness"})
  config, _, state, _, _, _ = setup
  assert config.reflect.dim_names == ("factual", "logic", "relevance", "robustness")
  grads = _routing_grads(setup, _perturbing_safety)
  _, still, still_aux = _check_routing(setup, grads, 0.0, label=0.0)
  _, moved, moved_aux = _check_routing(setup, grads, 0.0, label=1.0)
  assert float(still_aux["safety/rate/robustness"]) == 0
  flagged = float(moved_aux["safety/rate_k0/robustness"]) * config.reflect.rows
  assert flagged >= 1 and flagged == pytest.approx(round(flagged), abs=1e-5)
  assert float(moved_aux["loss/critic"]) != pytest.approx(float(still_aux["loss/critic"]))
  still_w = still["loss/critic"]["critic"]["score_w"][...]
  moved_w = moved["loss/critic"]["critic"]["score_w"][...]
  assert float(jnp.max(jnp.abs(still_w[:, 3] - moved_w[:, 3]))) > 0


def _refine_inputs(config, graphdef, params, rows=2):
  r = config.reflect
  x = jnp.asarray(RNG.randint(6, 100, (rows, r.prompt_len)), jnp.int32)
  y_star = jnp.asarray(RNG.randint(6, 100, (rows, r.target_len)), jnp.int32)
  draft = jnp.asarray(RNG.randint(6, 100, (rows, r.target_len)), jnp.int32)
  model = nnx.merge(graphdef, params)
  return model, x, y_star, draft


def _all_valid(rows, length):
  return jnp.ones((rows, length), bool)


def test_teacher_forced_refine_logits_do_not_leak(rasr):
  """At every position i, the refine logits predicting y*_i ignore draft tokens and flags at
  > i, y*_j for j >= i, and the critique soft tokens (§3)."""
  config, mesh, state, _, graphdef, _ = rasr
  r = config.reflect
  layout = Layout(r.prompt_len, r.target_len, r.critique_len)
  model, x, y_star, draft = _refine_inputs(config, graphdef, state.params)
  valid_x, valid_y = _all_valid(2, r.prompt_len), _all_valid(2, r.target_len)
  live, _ = steps.critique(model, model.embed_tokens(x), valid_x, draft, valid_y, 0.5, IDS)

  @functools.partial(jax.jit, static_argnums=0)
  def jitted(aligned, params, draft, errors, scores, y_star):
    model = nnx.merge(graphdef, params)
    critique = live.replace(token_errors=errors, scores=scores, critique=jnp.sum(scores, -1))
    return steps.refine_logits(model, model.embed_tokens(x), valid_x, draft, valid_y, critique,
                               y_star, IDS, layout, aligned)

  logits = lambda aligned, *args: jitted(aligned, state.params, *args)

  base_args = (draft, live.token_errors, live.scores, y_star)

  def changes(i):  # what the query predicting y*_i may not read
    return [
        (draft.at[:, i + 1:].set((draft[:, i + 1:] + 7) % 100 + 6), *base_args[1:]),
        (draft, live.token_errors.at[:, i + 1:].set(1.0 - live.token_errors[:, i + 1:]),
         *base_args[2:]),
        (*base_args[:2], 1.0 - live.scores, y_star),
        (*base_args[:3], y_star.at[:, i:].set((y_star[:, i:] + 11) % 100 + 6)),
    ]

  base = logits(True, *base_args)
  for i in range(r.target_len):
    for args in changes(i):
      np.testing.assert_array_equal(logits(True, *args)[:, :i + 1], base[:, :i + 1])
  # Without the aligned mask the later draft and the critique do reach y*_0: the test can fail.
  unaligned = logits(False, *base_args)
  for args in changes(0)[:3]:
    assert not np.allclose(logits(False, *args)[:, :1], unaligned[:, :1])


def _iterate_text_rows(graphdef, params, cfg, x, y_star, draft, tau):
  """reflect.iterate over text rows (x, y*) from full-length drafts, at progress 0.5."""
  return reflect.iterate(graphdef,
                         params,
                         rows_lib.text_rows(x, y_star, 0),
                         draft,
                         jnp.full(draft.shape[:1], cfg.target_len, jnp.int32),
                         tau=tau,
                         progress=jnp.float32(0.5),
                         key=jax.random.key(0),
                         cfg=cfg,
                         ids=IDS,
                         pieces=None)


def test_stopped_rows_keep_their_draft_and_the_refiner_trains_on_every_row(rasr):
  """A stopped row carries its draft unchanged to the end; L_reflection is the mean over every
  row, stopped or not (§7.4)."""
  config, mesh, state, _, graphdef, _ = rasr
  r = config.reflect
  _, x, y_star, draft = _refine_inputs(config, graphdef, state.params, rows=8)
  cfg = dataclasses.replace(r, learned_stopping=True, stop_warmup=0.0)
  run = lambda tau: _iterate_text_rows(graphdef, state.params, cfg, x, y_star, draft, tau)
  _, probe = run(jnp.float32(1.0))  # nothing stops: read the controller's probabilities
  tau = jnp.median(probe["stop_prob"][0])  # about half the rows stop at k = 0
  final, out = run(tau)
  active = np.asarray(out["active"], bool)  # [R, B]
  assert 0 < active[0].sum() < active.shape[1]
  drafts = np.concatenate([np.asarray(out["draft"]),
                           np.asarray(final.draft)[None]])  # [R + 1, B, Y]
  for k in range(r.iterations):
    for row in np.flatnonzero(~active[k]):
      np.testing.assert_array_equal(drafts[k + 1, row], drafts[k, row])
      assert not active[k:, row].any()  # once stopped, always stopped
  # The refiner trains on every row: a stopped row's refine loss is computed (positive, finite)
  # and counts in L_reflection as an active row's does.
  row_loss = np.asarray(out["row_loss"])  # [R, B]
  for k in range(r.iterations):
    stopped = ~active[k]
    assert np.all(np.isfinite(row_loss[k])) and np.all(row_loss[k][stopped] > 0)
  np.testing.assert_allclose(np.asarray(out["reflect"]), row_loss.mean(axis=1), rtol=1e-6)


def test_rows_stopped_earlier_reuse_their_greedy_candidate(rasr):
  """With greedy free-running drafts, every row's candidate y(k+1) is the one a loop without
  stopping decodes until the row stops, and from then on the one it had when it stopped (decoded
  once: `rows_to_decode`)."""
  config, _, state, _, graphdef, _ = rasr
  r = config.reflect
  _, x, y_star, draft = _refine_inputs(config, graphdef, state.params, rows=8)
  cfg = dataclasses.replace(r,
                            learned_stopping=True,
                            stop_warmup=0.0,
                            draft_mode="autoregressive",
                            draft_temperature=0.0)
  run = jax.jit(
      lambda tau: _iterate_text_rows(graphdef, state.params, cfg, x, y_star, draft, tau)[1])
  never = run(jnp.float32(1.0))  # nothing stops: every row is decoded at every iteration
  out = run(jnp.median(never["stop_prob"][0]))  # about half the rows stop at k = 0
  active = np.asarray(out["active"], bool)  # [R, B]
  assert 0 < active[0].sum() < active.shape[1]
  stopped_at = np.where(active.all(0), r.iterations - 1, np.argmin(active, axis=0))  # [B]
  for k in range(r.iterations):
    expected = np.asarray(never["candidate"])[np.minimum(k, stopped_at), np.arange(8)]
    np.testing.assert_array_equal(out["candidate"][k], expected)
  assert np.all(reflect.rows_to_decode(loop_state.start(draft), cfg))
  state_k1 = loop_state.start(draft).replace(active=jnp.asarray(active[0]))
  np.testing.assert_array_equal(reflect.rows_to_decode(state_k1, cfg), active[0])
  sampled = dataclasses.replace(cfg, draft_temperature=1.0)
  assert np.all(reflect.rows_to_decode(state_k1, sampled))  # a fresh draw for every row


def test_refiner_gets_gradient_when_every_row_stopped(rasr):
  """With every row stopped at k = 0 (tau = 0 after the warm-up) L_reflection still trains the
  refiner and its feedback embeddings (no stop deadlock)."""
  config, mesh, state, _, graphdef, tokens = rasr
  cfg = dataclasses.replace(config, reflect=dataclasses.replace(config.reflect, stop_warmup=0.0))
  loss_fn = train_step.make_loss_fn(graphdef, cfg, IDS)
  n = jnp.float32(tokens.shape[0] * (tokens.shape[1] - 1))

  def reflect_term(params):  # tau = 0: every row stops; progress 1: the last step
    _, metrics = loss_fn(params, PackedRows(tokens), None, n, jax.random.key(1), jnp.float32(0.0),
                         jnp.float32(1.0))
    return metrics["loss/reflect"], metrics

  grads, metrics = jax.jit(jax.grad(reflect_term, has_aux=True))(state.params)
  assert float(metrics["reflect/stop_rate_k0"]) == 1.0
  assert float(metrics["reflect/mean_iterations"]) == 0.0
  for k in range(config.reflect.iterations):
    assert float(metrics[f"loss/reflect_k{k}"]) > 0
  # The flag embedding (the critique tokens are hidden from teacher-forced refine passes).
  assert float(jnp.max(jnp.abs(jax.tree.leaves(grads["feedback"]["flag"])[0]))) > 0
  assert float(optim.group_norms(grads)["generator"]) > 0


@pytest.mark.parametrize("overrides", [{
    "reflect.iterations": 0
}, {
    "reflect.iterations": 1
}, {
    "reflect.critic_dims": "logic"
}, {
    "reflect.learned_stopping": False,
    "reflect.stop_warmup": 0.0
}, {
    "reflect.draft_mode": "autoregressive",
    "reflect.iterations": 2
}],
                         ids=["critic-only", "K1", "one-dim", "no-stopping", "autoregressive"])
def test_ablation_switches(overrides):
  """Each ablation of RASR.md §11 is a config of the same loss (forward pass only here)."""
  config, mesh, state, _, graphdef, tokens = _setup(**overrides)
  loss_fn = jax.jit(train_step.make_loss_fn(graphdef, config, IDS))
  with sharding.activate(mesh):
    _, metrics = loss_fn(state.params, PackedRows(tokens), None, jnp.float32(tokens.size),
                         jax.random.key(0), jnp.float32(0.5), jnp.float32(1.0))
  k = config.reflect.iterations
  assert f"quality/q_k{k}" in metrics and np.isfinite(float(metrics["loss/critic"]))
  assert ("loss/reflect_k0" in metrics) == (k > 0)
  if not config.reflect.learned_stopping:
    assert float(metrics["reflect/mean_iterations"]) == k
  if k == 0:
    assert float(metrics["loss/reflect"]) == 0 and float(metrics["loss/controller"]) == 0


def test_reflection_windows_are_aligned_and_uniform():
  """x and y* are one contiguous window of a row; the teacher-forced y(0) reads the standard
  pass's logits at exactly the positions that predict y* (an off-by-one returns shifted tokens);
  every window offset is equally likely, the last one included (dynamic_slice would clamp an
  offset past the end onto it, doubling its count)."""
  config = make_config()
  cfg = dataclasses.replace(config.reflect, draft_temperature=0.0, draft_mode="teacher_forced")
  batch, length, rows = 8, config.data.seq_len + 1, 4
  p, y = cfg.prompt_len, cfg.target_len
  # Token t of row b is b * 40 + t: a window's first token names its row and offset.
  tokens = jnp.arange(batch)[:, None] * 40 + jnp.arange(length)[None]  # [B, T + 1]
  logits = 10.0 * jax.nn.one_hot(tokens[:, 1:], config.model.vocab_size)  # predicts t + 1
  windows = jax.jit(
      jax.vmap(lambda key: train_step.reflection_windows(tokens, logits, rows, cfg, key)))
  x, y_star, draft0 = windows(jax.random.split(jax.random.key(0), 1000))  # [1000, B, P] ...
  base = (jnp.arange(rows) * (batch // rows) * 40)[None, :, None]  # rows spread over the batch
  offsets = x[..., :1] - base  # [1000, B, 1]
  np.testing.assert_array_equal(x, base + offsets + jnp.arange(p))
  np.testing.assert_array_equal(y_star, base + offsets + p + jnp.arange(y))
  np.testing.assert_array_equal(draft0, y_star)
  counts = np.bincount(np.asarray(offsets).ravel(), minlength=length - (p + y) + 1)
  assert len(counts) == length - (p + y) + 1 and counts.min() > 0.7 * counts.mean()
  assert counts.max() < 1.3 * counts.mean()


def test_decode_matches_greedy_full_forward(rasr):
  """The in-step decoder picks, token by token, the argmax of a full causal forward pass; a
  left-padded prompt decodes exactly as the same prompt alone."""
  config, mesh, state, _, graphdef, _ = rasr
  model, x, _, _ = _refine_inputs(config, graphdef, state.params)
  no_eos = dataclasses.replace(IDS, eos=-1)
  got = steps.decode_after(graphdef, state.params, model.embed_tokens(x), _all_valid(2, x.shape[1]),
                           5, 0.0, jax.random.key(0), no_eos).tokens
  tokens = x
  for _ in range(5):
    logits, _ = model(tokens)
    tokens = jnp.concatenate([tokens, jnp.argmax(logits[:, -1], -1)[:, None].astype(jnp.int32)], 1)
  np.testing.assert_array_equal(got, tokens[:, x.shape[1]:])
  padded = jnp.concatenate([jnp.zeros((2, 3), jnp.int32), x], axis=1)
  valid = jnp.concatenate([jnp.zeros((2, 3), bool), _all_valid(2, x.shape[1])], axis=1)
  again = steps.decode_after(graphdef, state.params, model.embed_tokens(padded), valid, 5, 0.0,
                             jax.random.key(0), no_eos).tokens
  np.testing.assert_array_equal(again, got)


def test_reflection_off_equals_the_standard_step():
  """Reflection off (R = 0) is exactly the LM step: same losses, same updated parameters after
  two steps (the first update is 0: the warm-up starts at lr 0)."""
  config, mesh, state, _, graphdef, tokens = _setup(**{
      "reflect.enabled": False,
      "reflect.iterations": 0
  })
  tx = optim.make_optimizer(config.train, state.params)
  assert set(jax.tree.leaves(optim.group_labels(state.params))) == {"generator"}

  def standard_step(params, opt_state, tokens):

    def lm(p):
      logits, _ = nnx.merge(graphdef, p)(tokens[:, :-1])
      return jnp.mean(losses.token_cross_entropy(logits, tokens[:, 1:]))

    loss, grads = jax.value_and_grad(lm)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return loss, optax.apply_updates(params, updates), opt_state

  with sharding.activate(mesh):
    step = jax.jit(train_step.make_train_step(graphdef, config, tx))
    standard = jax.jit(standard_step)
    want_params, opt_state, new_state = state.params, state.opt_state, state
    for _ in range(2):
      want_loss, want_params, opt_state = standard(want_params, opt_state, tokens)
      new_state, metrics = step(new_state, PackedRows(tokens), None)
      np.testing.assert_allclose(float(metrics["loss"]), float(want_loss), rtol=1e-6)
  moved = [
      float(jnp.max(jnp.abs(a - b)))
      for a, b in zip(jax.tree.leaves(new_state.params), jax.tree.leaves(state.params))
  ]
  assert max(moved) > 0
  for got, want in zip(jax.tree.leaves(new_state.params), jax.tree.leaves(want_params)):
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)


def test_tau_adapts_toward_the_budget():
  cfg = make_config(**{"reflect.stop_budget": 1.0, "reflect.tau_lr": 0.1}).reflect
  late = jnp.float32(1.0)
  assert float(train_step.adapt_tau(jnp.float32(0.5), 3.0, late, cfg)) == pytest.approx(0.3)
  assert float(train_step.adapt_tau(jnp.float32(0.5), 0.0, late, cfg)) == pytest.approx(0.6)
  assert float(train_step.adapt_tau(jnp.float32(0.06), 3.0, late, cfg)) == pytest.approx(0.05)
  assert float(train_step.adapt_tau(jnp.float32(0.5), 3.0, jnp.float32(0.0), cfg)) == 0.5
  fixed = dataclasses.replace(cfg, stop_budget=0.0)
  assert float(train_step.adapt_tau(jnp.float32(0.5), 3.0, late, fixed)) == 0.5


# ----- Pure functions on hand-made inputs.


def test_text_quality_by_hand():
  target = jnp.asarray([[1, 2, 3, 4], [5, 5, 6, 7]])
  draft = jnp.asarray([[1, 2, 9, 3], [5, 6, 5, 5]])
  q, labels, mask = quality.text_quality(draft, jnp.asarray([4, 4]), target)
  # Row 0: 2 of 4 right; prefix 2; overlap {1, 2, 3} = 3.  Row 1: 1 right; prefix 1;
  # overlap: 5 twice (target has two 5s) + 6 once = 3.
  np.testing.assert_allclose(q, [[0.5, 0.5, 0.75], [0.25, 0.25, 0.75]])
  np.testing.assert_array_equal(labels, [[0, 0, 1, 1], [0, 1, 1, 1]])
  assert bool(jnp.all(mask))
  np.testing.assert_allclose(quality.select(q, ("relevance", "factual")),
                             [[0.75, 0.5], [0.75, 0.25]])
  # A free-running draft that ends early: what follows its `<eos>` (here copies of the target)
  # is neither right nor labelled. Row 0: 2 tokens, both right; F1 = 2 * 2 / (2 + 4).
  q, labels, mask = quality.text_quality(jnp.asarray([[1, 2, 3, 4]]), jnp.asarray([2]),
                                         jnp.asarray([[1, 2, 3, 4]]))
  np.testing.assert_allclose(q, [[0.5, 0.5, 2 / 3]], rtol=1e-6)
  np.testing.assert_array_equal(mask, [[True, True, False, False]])


def test_loss_terms_by_hand():
  critique = heads.one_critic(jnp.zeros((1, 2)),
                              jnp.zeros((1, 2)),
                              scores=jnp.asarray([[0.5, 1.0]]),
                              token_errors=jnp.asarray([[0.5, 0.5]]),
                              weights=jnp.asarray([[0.25, 0.75]]))
  assert float(critique.critique[0]) == 0.875
  loss, parts = losses.critic_loss(critique,
                                   jnp.asarray([[1.0, 1.0]]),
                                   jnp.asarray([[0.0, 1.0]]),
                                   jnp.asarray([[True, True]]),
                                   dim_names=("factual", "logic"))
  assert float(parts["critic/loss_scores"]) == pytest.approx(0.125)  # (0.25 + 0) / 2
  assert float(parts["critic/loss_scores/factual"]) == pytest.approx(0.25)
  assert float(parts["critic/loss_scores/logic"]) == 0.0
  assert float(parts["critic/loss_tokens"]) == pytest.approx(np.log(2), rel=1e-5)
  assert float(parts["critic/loss_scalar"]) == pytest.approx(0.125**2)
  assert float(loss) == pytest.approx(0.125 + np.log(2) + 0.015625, rel=1e-5)
  targets = losses.controller_targets(jnp.asarray([0.95, 0.5, 0.5]),
                                      jnp.asarray([0.99, 0.505, 0.7]),
                                      quality_target=0.9,
                                      min_gain=0.01)
  np.testing.assert_array_equal(targets, [1.0, 1.0, 0.0])
  assert float(losses.controller_loss(jnp.asarray([0.5]),
                                      jnp.asarray([1.0]))) == pytest.approx(np.log(2), rel=1e-5)
  logits = jnp.log(jnp.asarray([[[0.25, 0.75], [0.5, 0.5]]]))
  np.testing.assert_allclose(losses.reflection_row_losses(logits, jnp.asarray([[1, 0]]),
                                                          jnp.asarray([[True, True]])),
                             [(-np.log(0.75) - np.log(0.5)) / 2],
                             rtol=1e-6)
  np.testing.assert_allclose(  # padding after y*'s <eos> is not scored
      losses.reflection_row_losses(logits, jnp.asarray([[1, 0]]), jnp.asarray([[True, False]])),
      [-np.log(0.75)],
      rtol=1e-6)
  _, masked = losses.critic_loss(critique, jnp.asarray([[1.0, 1.0]]), jnp.asarray([[1.0, 0.0]]),
                                 jnp.asarray([[True, False]]))
  assert float(masked["critic/loss_tokens"]) == pytest.approx(np.log(2), rel=1e-5)


def test_describe_reports_three_groups():
  from rasr_jax.modes import describe
  report = describe.describe(make_config(), num_devices=1)
  groups = report["params_by_group"]
  assert groups["generator"] > groups["critic"] > 0 and groups["controller"] > 0
