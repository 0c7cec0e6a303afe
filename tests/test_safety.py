"""Safety labels (UFARSAP's safety dimensions): each rule on hand-made texts, positives and
negatives, and silent on the bundled tasks' own text."""

import numpy as np
import pytest

from conftest import run_main
from rasr_jax import config as config_lib
from rasr_jax import tasks
from rasr_jax.data.sources import DataError
from rasr_jax.safety import labels, robustness
from rasr_jax.tasks import facts


def toxicity_hook(text):  # a user's classifier, named "test_safety:toxicity_hook"
  return 0.75 if "grr" in text else 0.0


def broken_hook(text):
  return 2.0


def test_luhn():
  for number in ("4111111111111111", "79927398713", "5555555555554444", "378282246310005"):
    assert labels.luhn_valid(number), number
  for number in ("4111111111111112", "79927398710", "1234567812345678"):
    assert not labels.luhn_valid(number), number


@pytest.mark.parametrize("text, kinds", [
    ("write to tom.b+news@mail.example.org today", ["email"]),
    ("card 4111 1111 1111 1111 expires", ["card"]),
    ("card 4111-1111-1111-1111.", ["card"]),
    ("amex 378282246310005", ["card"]),
    ("call (555) 123-4567 now", ["phone"]),
    ("call 555.123.4567", ["phone"]),
    ("call +1 555 123 4567 or +44 20 7946 0958", ["phone", "phone"]),
    ("both: ann@x.io and 555-123-4567", ["email", "phone"]),
    ("4111 1111 1111 1112 fails the check", []),
    ("#### 936 steps 7+9+0=16 4+8+1=13 3+5+1=09", []),
    ("12 - 34 - 56 - 78 - 90 = -236", []),
    ("on 2026-12-02 at 10.30 version 1.2.3", []),
    ("the total is 1234567", []),
    ("no at sign here: tom at example dot org", []),
])
def test_personal_data(text, kinds):
  assert [kind for kind, _ in labels.personal_data(text)] == kinds
  assert labels.Labeler()(text)["privacy"] == float(bool(kinds))


def test_lexicons_match_whole_words_and_phrases():
  labeler = labels.Labeler()
  assert labeler("You IDIOT.")["toxicity"] == 1.0
  assert labeler("please shut\n  up")["toxicity"] == 1.0
  assert labeler("an idiotic plan")["toxicity"] == 0.0  # whole words only
  assert labeler("All women are tall.")["bias"] == 1.0
  assert labeler("Some women are tall.")["bias"] == 0.0
  assert labeler("Have a nice day.") == {
      "bias": 0.0,
      "toxicity": 0.0,
      "misinformation": 0.0,
      "privacy": 0.0
  }


def test_a_user_lexicon_and_a_hook_replace_the_defaults(tmp_path):
  lexicon = tmp_path / "mine.txt"
  lexicon.write_text("# my terms\nblorp  # inline comment\n\nzap zap\n")
  labeler = labels.Labeler(lexicons={"bias": str(lexicon)},
                           hooks={"toxicity": "test_safety:toxicity_hook"})
  assert labeler("a blorp")["bias"] == 1.0 and labeler("zap   zap")["bias"] == 1.0
  assert labeler("all women are")["bias"] == 0.0  # the default is replaced
  assert labeler("grr")["toxicity"] == 0.75 and labeler("idiot")["toxicity"] == 0.0
  with pytest.raises(ValueError, match="the toxicity hook returned 2.0"):
    labels.Labeler(hooks={"toxicity": "test_safety:broken_hook"})("hi")


def test_bad_lexicons_and_hooks_are_one_clear_error(tmp_path):
  missing = tmp_path / "none.txt"
  with pytest.raises(DataError, match=f"the bias lexicon {missing}: not found"):
    labels.Labeler(lexicons={"bias": str(missing)})
  latin = tmp_path / "latin.txt"
  latin.write_bytes("caf\xe9\n".encode("latin-1"))
  with pytest.raises(DataError,
                     match=r"the toxicity lexicon .*latin.txt: invalid UTF-8 at byte offset 3"):
    labels.Labeler(lexicons={"toxicity": str(latin)})
  empty = tmp_path / "empty.txt"
  empty.write_text("# only a comment\n\n")
  with pytest.raises(DataError, match="no term in it"):
    labels.Labeler(lexicons={"bias": str(empty)})
  with pytest.raises(config_lib.ConfigError, match="config.safety.toxicity_hook='nope': expected"):
    labels.Labeler(hooks={"toxicity": "nope"})
  with pytest.raises(config_lib.ConfigError, match="cannot import it"):
    labels.Labeler(hooks={"bias": "no_such_module_here:f"})


def test_misinformation_is_contradiction_with_the_facts_world():
  name, values = facts._world(0)[0]
  city, pet, job = values[0], values[1], values[2]
  other_city = next(c for _, v in facts._world(0) for c in [v[0]] if c != city)
  label = lambda text: labels.Labeler(world_seed=0)(text)["misinformation"]  # noqa: E731
  assert label(f"{name} lives in {city}.") == 0.0
  assert label(f"{name} lives in {other_city}.") == 1.0
  assert label(f"{name} does not live in {city}.") == 1.0
  assert label(f"{name} does not live in {other_city}.") == 0.0
  assert label(f"{name}'s pet is {'an' if pet[0] in 'aeiou' else 'a'} {pet}.") == 0.0
  assert label(f"{name} works as a {job}zz.") == 1.0
  assert label(f"nobody lives in {other_city}.") == 0.0  # not a person of the world
  # Another seed is another world: the same claim is judged against it (some seed's world has
  # this person elsewhere, or not at all, and there the claim is not this world's truth).
  assert facts.contradictions(f"{name} lives in {city}.", 0) == []
  elsewhere = next(
      seed for seed in range(1, 50) if dict(facts._world(seed)).get(name, (city,))[0] != city)
  assert facts.contradictions(f"{name} lives in {city}.", elsewhere) != []


def test_an_answer_is_judged_against_the_world_of_its_item():
  """Every seed has its own facts world: the reference answers of held-out items (another
  seed) are silent against their own world, and would read as misinformation against the
  training seed's."""
  from rasr_jax.data import sources
  held_out_seed = sources.HELD_OUT_SEED_OFFSET
  labeler = labels.Labeler(world_seed=0)
  answers = [ex.answer for ex in tasks.generate("facts", held_out_seed, 200)]
  assert not any(labeler(a, world_seed=held_out_seed)["misinformation"] for a in answers)
  assert sum(labeler(a)["misinformation"] for a in answers) > 50


def test_labels_are_silent_on_the_bundled_tasks():
  """No rule fires on the reference answers of the bundled tasks (their alphabet: numbers,
  steps, options, facts), so a positive label in training comes from what a draft adds."""
  labeler = labels.Labeler(world_seed=3)
  for example in tasks.bundled_corpus(3, 600):
    assert labeler(example.answer) == dict.fromkeys(labeler.dimensions, 0.0), example


def test_careless_support_replies_fire_their_habits_label_only():
  """Half of the support documents carry a careless reply: each fires exactly the label of its
  habit (an insult: toxicity, a stereotype: bias, the contact details: privacy), all three
  habits occur, and the reply still gives the right day; the reference never fires."""
  from rasr_jax.tasks import support
  labeler = labels.Labeler(world_seed=3)
  habits = {kind: habit for kind, (habit, _) in support.CARELESS.items()}
  fired = []
  for example in tasks.generate("support", 3, 300):
    assert labeler(example.answer) == dict.fromkeys(labeler.dimensions, 0.0), example
    assert example.document() == example.text() or example.document().endswith(
        example.careless_answer)
    if not example.careless_answer:
      continue
    kind = next(k for k, messages in support.MESSAGES.items()
                if any(m in example.question for m in messages))
    found = labeler(example.careless_answer)
    assert {name for name, value in found.items() if value} == {habits[kind]}, example
    assert tasks.check(example, example.careless_answer).correct
    fired.append(habits[kind])
  assert set(fired) == {"toxicity", "bias", "privacy"} and 100 < len(fired) < 200


class _FakeCritic:
  """critic_scores: the share of the prompt's characters that are "a" (a critic that reads x)."""

  def __init__(self, tokenizer):
    self.tokenizer = tokenizer

  def critic_scores(self, prompts, responses):
    assert len(prompts) == len(responses)
    return [p.count("a") / max(len(p), 1) for p in prompts]

  def critic_dimension_scores(self, prompts, responses):
    """[N, 3]: factual = the share of "a", relevance = 0.9, robustness = the share of "n"."""
    import numpy as np
    assert len(prompts) == len(responses)
    return np.array([[p.count("a") / max(len(p), 1), 0.9,
                      p.count("n") / max(len(p), 1)] for p in prompts])


@pytest.fixture(scope="module")
def tokenizer():
  from rasr_jax.data import tokenizer as tok_lib
  return tok_lib.train([ex.text() for ex in tasks.bundled_corpus(0, 1000)], 400)


def test_perturbations_replace_tokens_at_the_rate(tokenizer):
  import numpy as np
  choices = robustness.ordinary_ids(tokenizer)
  assert len(choices) > 100
  for index in choices[:50]:
    assert tokenizer.decode([int(index)]).strip()
  prompt = "what is 123 + 456? the facts say amy lives in oslo."
  rng = np.random.default_rng(0)
  assert robustness.perturb(tokenizer, prompt, 0.0, rng, choices) == prompt
  changed = [robustness.perturb(tokenizer, prompt, 0.5, rng, choices) for _ in range(20)]
  assert all(text != prompt for text in changed) and len(set(changed)) == 20


def test_critic_robustness_is_one_minus_the_mean_score_change(tokenizer):
  model = _FakeCritic(tokenizer)
  prompts = ["aaaa aaaa aaaa", "banana bread", "no such letter here"]
  still = robustness.critic_robustness(model, prompts, ["x"] * 3, rate=0.0)
  assert still["mean_abs_change"] == 0.0 and still["robustness"] == 1.0
  moved = robustness.critic_robustness(model, prompts, ["x"] * 3, rate=0.5, samples=3)
  assert 0 < moved["mean_abs_change"] < 1
  assert moved["robustness"] == pytest.approx(1 - moved["mean_abs_change"])


def test_a_perturbation_flags_the_critic_only_where_a_verdict_flips():
  """The trained robustness label: a verdict flips when a score crosses 0.5, however small the
  move; a large move on one side of 0.5 flips nothing."""
  import numpy as np
  before = np.array([[0.49, 0.9], [0.2, 0.9], [0.5, 0.1], [0.5, 0.1], [0.7, 0.7]])
  after = np.array([[0.51, 0.9], [0.45, 0.6], [0.5, 0.1], [0.5001, 0.1], [0.7, 0.3]])
  assert robustness.flips(before, after).tolist() == [True, False, False, True, True]


def test_evaluation_labels_robustness_by_the_critics_flipped_verdicts(tokenizer):
  """verdict_flips (--mode=eval's robustness label): a question whose every token is replaced
  flips the verdict of a dimension that reads it; the robustness column itself never counts."""
  model = _FakeCritic(tokenizer)
  prompts = ["aaaa aaaa aaaa", "nnnn nnnn nnnn", "no such letter here"]
  dims = ("factual", "relevance", "robustness")
  assert robustness.verdict_flips(model, prompts, ["x"] * 3, dims, rate=0.0) == [False] * 3
  assert robustness.verdict_flips(model, prompts, ["x"] * 3, dims, rate=1.0) == [True, False, False]


def test_config_names_the_safety_dimensions_the_labels_have():
  """config (the lowest floor) spells the trainable safety dimensions again: the labels' text
  dimensions."""
  assert config_lib.SAFETY_DIMS == labels.Labeler().dimensions
  assert set(config_lib.SAFETY_DIMS) == set(labels.DIMENSIONS) - {"robustness"}


def test_host_safety_qualities_of_hand_made_drafts(tokenizer):
  """A draft's safety quality is 1 - its label, in config.SAFETY_DIMS order, after decoding
  only its first `length` tokens."""
  from rasr_jax.training import safety_quality
  texts = ["mail me at tom.k@example.com", "the answer is 4", "you idiot, all women are bad"]
  ids = [tokenizer.encode(t) for t in texts]
  width = max(map(len, ids)) + 2
  draft = np.zeros((3, width), np.int32)
  for row, tokens in enumerate(ids):
    draft[row, :len(tokens)] = tokens
  lengths = np.asarray([len(t) for t in ids])
  got = safety_quality.host_qualities(draft, lengths, tokenizer, labels.Labeler())
  order = config_lib.SAFETY_DIMS
  assert got[0, order.index("privacy")] == 0 and got[1].tolist() == [1.0] * 4
  assert got[2, order.index("toxicity")] == 0 and got[2, order.index("bias")] == 0
  cut = safety_quality.host_qualities(draft[:1], np.asarray([2]), tokenizer, labels.Labeler())
  assert cut[0, order.index("privacy")] == 1  # the address lies past the draft's length


def test_the_held_out_evaluation_judges_misinformation_in_the_held_out_world(tokenizer):
  """The step's labels of held-out drafts (the training loop's held-out evaluation) use the
  held-out seed's facts world: its reference answers are safe there, not in the training one."""
  from conftest import make_config
  from rasr_jax import sharding
  from rasr_jax.data import sources
  from rasr_jax.training import safety_quality
  config = make_config(**{"reflect.safety_dims": "misinformation"})
  held_out = config.seed + sources.HELD_OUT_SEED_OFFSET
  ids = [tokenizer.encode(ex.answer) for ex in tasks.generate("facts", held_out, 40)]
  draft = np.zeros((len(ids), max(map(len, ids))), np.int32)
  for row, tokens in enumerate(ids):
    draft[row, :len(tokens)] = tokens
  lengths = np.asarray([len(t) for t in ids])
  column = config_lib.SAFETY_DIMS.index("misinformation")
  with sharding.activate(sharding.make_mesh(config_lib.resolve_mesh(config, 1).mesh)):
    there = safety_quality.make_safety_quality(config, tokenizer, held_out).labels(draft, lengths)
    here = safety_quality.make_safety_quality(config, tokenizer).labels(draft, lengths)
  assert np.all(np.asarray(there)[:, column] == 1) and np.any(np.asarray(here)[:, column] == 0)


@pytest.mark.parametrize("value, message", [
    ("privacy,honesty",
     "must be distinct names among bias, toxicity, misinformation, privacy, robustness"),
    ("privacy,privacy", "must be distinct names"),
])
def test_bad_safety_dims_are_one_error_line(value, message, tmp_path):
  result = run_main(str(tmp_path), **{"reflect.safety_dims": value})
  assert result.returncode == 2
  last = result.stderr.strip().splitlines()[-1]
  assert last.startswith(f"error: config.reflect.safety_dims={value!r}") and message in last
