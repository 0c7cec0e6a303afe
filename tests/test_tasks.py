"""Tests for the bundled verifiable tasks (rasr_jax.tasks)."""

import dataclasses
import itertools
import re

import pytest

from rasr_jax.tasks import (
    TASKS,
    CheckResult,
    Example,
    bundled_corpus,
    check,
    elicited_answer,
    final_answer,
    generate,
)
from rasr_jax.tasks.logic import _SCALES

ALL = TASKS + ("filler",)

# ---- generation ---------------------------------------------------------------------------------


@pytest.mark.parametrize("task", ALL)
def test_deterministic_and_prefix_stable(task):
  full = generate(task, 3, 50)
  assert full == generate(task, 3, 50)
  assert full[:17] == generate(task, 3, 17)
  assert generate(task, 4, 50) != full
  assert [ex.uid for ex in full] == [f"{task}-3-{i}" for i in range(50)]
  assert all(ex.task == task for ex in full)


def test_unknown_task_and_bad_count():
  with pytest.raises(ValueError, match="poetry"):
    generate("poetry", 0, 3)
  with pytest.raises(ValueError):
    generate("logic", 0, -1)
  assert generate("logic", 0, 0) == []


def test_bundled_corpus():
  corpus = bundled_corpus(0, 2000)
  assert len(corpus) == 2000
  assert len({ex.uid for ex in corpus}) == 2000
  assert corpus == bundled_corpus(0, 2000)
  assert corpus != bundled_corpus(1, 2000)
  counts = {task: sum(ex.task == task for ex in corpus) for task in ALL}
  assert counts == {
      "arithmetic": 400,
      "logic": 400,
      "facts": 400,
      "probe": 400,
      "support": 200,
      "filler": 200
  }
  assert [ex.task for ex in corpus[:50]] != sorted(ex.task for ex in corpus[:50])  # shuffled

  custom = bundled_corpus(5, 7, {"logic": 2.0, "filler": 1.0})
  assert len(custom) == 7 and {ex.task for ex in custom} == {"logic", "filler"}
  with pytest.raises(ValueError, match="poetry"):
    bundled_corpus(0, 10, {"poetry": 1.0})
  with pytest.raises(ValueError):
    bundled_corpus(0, 10, {"logic": 0.0})


def test_example_text_and_frozen():
  ex = Example("arithmetic", "u", "q?", "1 + 1 = 2. #### 2")
  assert ex.text() == "q?\n1 + 1 = 2. #### 2"
  filler = generate("filler", 0, 1)[0]
  assert filler.answer == "" and filler.text() == filler.question
  with pytest.raises(dataclasses.FrozenInstanceError):
    ex.answer = "x"


@pytest.mark.parametrize("task", ALL)
def test_texts_short_and_ascii(task):
  texts = [ex.text() for ex in generate(task, 1, 200)]
  assert all(t.isascii() and t == t.lower() for t in texts)
  assert sum(len(t) < 500 for t in texts) >= 0.95 * len(texts)
  assert len(set(texts)) > 190


# ---- self-consistency of the references ----------------------------------------------------------


@pytest.mark.parametrize("task", TASKS)
def test_references_check_correct(task):
  for ex in generate(task, 0, 200):
    result = check(ex, ex.answer)
    assert result.correct, ex
    assert result.steps_right == result.steps_total
    assert result.quantities_used == result.quantities_total > 0
    if task == "arithmetic":
      assert 2 <= result.steps_total <= 4


def test_arithmetic_results_small_and_non_negative():
  for ex in generate("arithmetic", 2, 200):
    for _, _, _, c in re.findall(r"(\d+) ([-+*]) (\d+) = (\d+)", ex.answer):
      assert 0 <= int(c) < 1000
    assert ex.answer.endswith(f"#### {final_answer('arithmetic', ex.answer)}")


def _syllogism_must_hold(premises, option):
  """Whether `option` holds in every 3-term model (non-empty terms) satisfying `premises`."""
  pattern = re.compile(r"(all|no|some) (\w+) are (not )?(\w+)")
  parsed = [pattern.fullmatch(s.strip()).groups() for s in premises + [option]]
  terms = sorted({g[1] for g in parsed} | {g[3] for g in parsed})
  assert len(terms) == 3

  def holds(model, quantifier, x, negated, y):
    ix, iy = 1 << terms.index(x), 1 << terms.index(y)
    if quantifier == "all":
      return all(r & iy for r in model if r & ix)
    if quantifier == "no":
      return not any(r & ix and r & iy for r in model)
    return any(r & ix and bool(r & iy) != bool(negated) for r in model)

  for bits in range(256):
    model = [r for r in range(8) if bits >> r & 1]
    if not all(any(r >> t & 1 for r in model) for t in range(3)):
      continue
    if all(holds(model, *p) for p in parsed[:-1]) and not holds(model, *parsed[-1]):
      return False
  return True


def _ordering_answers(premises, label, names):
  """Names that can fill `label` ("the tallest", "the second shortest", ...) given the premises."""
  more = {s[0]: s for s in _SCALES}
  less = {s[1]: s for s in _SCALES}
  facts = []
  for premise in premises:
    left, word, right = re.fullmatch(r"(\w+) is (\w+) than (\w+)", premise.strip()).groups()
    facts.append((left, right) if word in more else (right, left))
    scale = more.get(word) or less[word]
  most, least = scale[2], scale[3]
  position = {
      f"the {most}": 0,
      f"the {least}": 3,
      f"the second {most}": 1,
      f"the second {least}": 2,
  }[label]
  fits = set()
  for order in itertools.permutations(names):
    if all(order.index(a) < order.index(b) for a, b in facts):
      fits.add(order[position])
  return fits


def test_logic_exactly_one_correct_option():
  for ex in generate("logic", 0, 200):
    head, _, tail = ex.question.partition("? ")
    options = re.split(r"\s*[a-d]\) ", tail)[1:]
    assert len(options) == 4 and len(set(options)) == 4
    letter = final_answer("logic", ex.answer)
    sentences = head.split(". ")
    premises, ask = sentences[:-1], sentences[-1]
    if ask.startswith("who is "):
      fits = _ordering_answers(premises, ask[len("who is "):], options)
      assert fits == {options["abcd".index(letter)]}, ex
    else:
      valid = [o for o in options if _syllogism_must_hold(premises, o)]
      assert valid == [options["abcd".index(letter)]], ex


def test_logic_mixes_kinds_and_letters():
  examples = generate("logic", 1, 200)
  assert 60 < sum("who is" in ex.question for ex in examples) < 140
  assert {final_answer("logic", ex.answer) for ex in examples} == set("abcd")


def _facts_truth(question):
  facts_part, statement = re.fullmatch(r"facts: (.*) statement: (.*)\. true or false\?",
                                       question).groups()
  facts = set(facts_part.rstrip(".").split(". "))
  positive = (statement.replace("does not live",
                                "lives").replace("does not work",
                                                 "works").replace(" is not ", " is "))
  negated = positive != statement
  subject = re.match(r"\w+('s \w+( \w+)?)?", positive).group()
  assert any(f.startswith(subject) for f in facts), question  # decidable from the context
  return (positive in facts) != negated


def test_facts_labels_balanced_and_correct():
  examples = generate("facts", 0, 400)
  labels = [final_answer("facts", ex.answer) for ex in examples]
  assert 0.35 <= labels.count("true") / len(labels) <= 0.65
  for ex, label in zip(examples, labels):
    assert _facts_truth(ex.question) == (label == "true"), ex


# ---- checking drafts -----------------------------------------------------------------------------

TOM = Example(
    "arithmetic",
    "hand-0",
    "tom has 12 apples. he buys 7 more. then he gives away 5. how many apples does tom have now?",
    "12 + 7 = 19. 19 - 5 = 14. #### 14",
)


def test_arithmetic_check_by_hand():
  assert check(TOM, TOM.answer) == CheckResult(True, 2, 2, 3, 3)
  assert check(TOM, "12 + 7 = 20. 20 - 5 = 15. #### 15") == CheckResult(False, 2, 1, 3, 3)
  assert check(TOM, "7 apples, so #### 14") == CheckResult(True, 0, 0, 3, 1)
  assert check(TOM, "12 + 7 - 5 = 14 #### 14.") == CheckResult(True, 1, 1, 3, 3)
  assert check(TOM, "2 + 3 * 4 = 14. 120 + 5 = 125. #### 1,4") == CheckResult(True, 2, 2, 3, 1)
  assert check(TOM, "").quantities_total == 3


def test_one_wrong_step_in_generated_answer():
  for ex in generate("arithmetic", 7, 50):
    steps = re.findall(r"\d+ [-+*] \d+ = (\d+)\.", ex.answer)
    first = re.search(r"= (\d+)\.", ex.answer)
    broken = ex.answer[:first.start(1)] + str(int(first.group(1)) + 1) + ex.answer[first.end(1):]
    result = check(ex, broken)
    assert result.steps_total == len(steps)
    assert result.steps_right == result.steps_total - 1


def test_logic_and_facts_check_by_hand():
  logic = Example(
      "logic",
      "hand-1",
      "amy is taller than ben. ben is taller than cal. dan is shorter than cal. "
      "who is the shortest? a) amy b) ben c) cal d) dan",
      "so dan is the shortest. answer: d",
  )
  assert check(logic, "answer: d") == CheckResult(True, 0, 0, 4, 0)
  assert check(logic, "amy and dan... answer: c") == CheckResult(False, 0, 0, 4, 2)
  facts = Example(
      "facts",
      "hand-2",
      "facts: mia lives in oslo. mia's pet is a cat. statement: mia's pet is a dog. true or false?",
      "the facts say mia's pet is a cat, not a dog. answer: false",
  )
  assert check(facts, "mia has a cat. answer: False") == CheckResult(True, 0, 0, 2, 1)
  assert check(facts, "answer: true").correct is False


def test_a_draft_after_an_answer_prompt_is_its_answer():
  """Self-Refine asks "improved answer:"; a model that continues it with the bare answer has
  answered. Without the flag the same draft has no answer (the artefact that scored 0 %)."""
  logic = Example("logic", "hand-3", "who is the shortest? a) amy b) ben c) cal d) dan",
                  "so dan is the shortest. answer: d")
  facts = Example("facts", "hand-4", "facts: mia has a cat. statement: mia has a dog. true or "
                  "false?", "the facts say mia has a cat. answer: false")
  for example, right, wrong in ((TOM, " 14", " 15"), (logic, " d) dan", " (c)"), (facts, " False.",
                                                                                  " true")):
    assert check(example, right, after_answer_prompt=True).correct
    assert not check(example, right).correct
    assert not check(example, wrong, after_answer_prompt=True).correct
  assert elicited_answer("arithmetic", " #### 1,024 apples") == "1024"
  assert elicited_answer("arithmetic", "12 + 2 = 14. #### 14") == "14"  # its own marker wins
  assert elicited_answer("logic", "not sure. answer: b") == "b"
  assert elicited_answer("logic", "not sure") is None
  assert elicited_answer("facts", "maybe") is None


def test_final_answer_by_hand():
  assert final_answer("arithmetic", "12 + 7 = 19. #### 19") == "19"
  assert final_answer("arithmetic", "#### 3 then #### 1,024.") == "1024"
  assert final_answer("arithmetic", "#### 007") == "7"
  assert final_answer("arithmetic", "#### -4") == "-4"
  assert final_answer("arithmetic", "the answer is 14") is None
  assert final_answer("logic", "so cal. Answer: C") == "c"
  assert final_answer("logic", "answer: (b)") == "b"
  assert final_answer("logic", "answer: cat") is None
  assert final_answer("facts", "answer: true ... answer: false") == "false"
  assert final_answer("facts", "false") is None
  with pytest.raises(ValueError, match="filler"):
    final_answer("filler", "x")


GARBAGE = [
    "",
    "####",
    "#### ",
    "answer:",
    "answer: ",
    "=",
    "1 + = 2",
    "+ - * =",
    "answer: z",
    "#### x",
    "\u00e9\u4e2d\U0001f600\x00\u200b",
    "9" * 5000,
    "#### " + "9" * 5000,
    "1 + " * 20000,
    "1 + " * 2000 + "1 = 2",
    ("9" * 12 + " * ") * 50 + "1 = 1",
    "12 + 7 = " + "1" * 40,
    "-" * 100,
    "answer: " * 300,
]


@pytest.mark.parametrize("task", TASKS)
def test_garbage_drafts_never_raise(task):
  examples = generate(task, 0, 5) + [
      Example(task, "odd", "", ""),
      Example(task, "odd2", "???", "#### "),
  ]
  for ex in examples:
    for draft in GARBAGE:
      result = check(ex, draft)
      assert 0 <= result.steps_right <= result.steps_total
      assert 0 <= result.quantities_used <= result.quantities_total
      assert final_answer(task, draft) is None or isinstance(final_answer(task, draft), str)


def test_check_rejects_filler():
  with pytest.raises(ValueError, match="filler"):
    check(generate("filler", 0, 1)[0], "anything")


def test_probe_states_its_sum_first_then_the_column_steps():
  from rasr_jax.tasks import probe
  for index in range(200):
    a, b = probe.operands(3, index)
    assert 100 <= a <= 999 and 100 <= b <= 999
    first, last = probe.make(3, index), probe.make(3, index, sum_first=False)
    steps = first.answer.split(" steps ")[1].split()
    # Column k: the k-th digits from the right, the carry out of column k-1, and their sum.
    carry = 0
    for k, step in enumerate(steps):
      digits = (a // 10**k % 10, b // 10**k % 10)
      assert step == f"{digits[0]}+{digits[1]}+{carry}={sum(digits) + carry:02d}"
      carry = (sum(digits) + carry) // 10
    # The sum reads off the steps: the last step's two digits, then the others' units.
    read_off = steps[-1][-2:] + "".join(step[-1] for step in reversed(steps[:-1]))
    assert int(read_off) == a + b
    assert first.answer == f"#### {a + b} steps {' '.join(steps)}"
    assert last.answer == f"steps {' '.join(steps)} #### {a + b}"
    assert first.question == last.question == f"what is {a} + {b}?"
    assert check(first, first.answer).correct and check(last, last.answer).correct
    assert check(first, f"#### {a + b + 1} steps {' '.join(steps)}").correct is False
    assert probe.quantities(first.question)[0] == str(a + b)
