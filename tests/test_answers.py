"""The on-device checkers (reflection/answers.py, working.py) against the host checkers."""

import dataclasses
import random

import jax
import numpy as np
import pytest

from rasr_jax import tasks
from rasr_jax.data import tokenizer as tok_lib
from rasr_jax.reflection import answers, working

VOCAB = 512


@pytest.fixture(scope="module")
def tokenizer():
  return tok_lib.train([ex.text() for ex in tasks.bundled_corpus(0, 2000)], VOCAB)


def _variants(example, rng):
  """Drafts of `example`'s answer: right, wrong, malformed (as text); truncation comes later."""
  answer, checker = example.answer, tasks.TASK_CHECKERS[example.task]
  marker = "####" if checker == "final_answer" else "answer:"
  head, _, tail = answer.rpartition(marker)
  others = {
      "final_answer": [
          str(rng.randint(0, 999)), "0" + tail.strip(),
          tail.strip()[:1] + "," + tail.strip()[1:], "-" + tail.strip(), "", "x"
      ],
      "choice": ["a", "b", "c", "d", "(" + tail.strip() + ")",
                 tail.strip().upper(), "e", "cab"],
      "true_false": ["true", "false", "True", "FALSE", "truest", "falsey", "maybe"],
  }[checker]
  drafts = [answer, answer + ".", answer + " and more", head, head + marker, answer.upper()]
  for other in others:
    drafts += [
        f"{head}{marker} {other}", f"{head}{marker}{other}", f"{head}{marker}  {other}.",
        f"{marker} {other} {marker} {tail.strip()}", f"{answer} {marker} {other}"
    ]
  drafts += [
      "answer : c", "####12", "answer:\tfalse", "the answer: (b) or so", "####-0", "#### 007"
  ]
  wanted = tasks.quantities(example.task, example.question)
  drafts += [" ".join(wanted[:k]) for k in range(len(wanted) + 1)]
  drafts += [f"0{q}, {q.upper()}s and x{q}" for q in wanted[:2]]
  return drafts + list(STEPS)


# Drafts with `a op b = c` steps the host pattern reads in tricky ways: chains and precedence,
# results that start the next run, decimals, signs, integers past 12 digits, broken operators.
STEPS = ("2 * 3 = 6. 6 - 2 = 4.", "2 * 3 = 7. 7 - 2 = 5. #### 5", "5+3=8+2=10", "1=2=3=4=5",
         "5+3=8.5", "5+3=85.5 4*2=8", "12 + 7 - 5 = 14", "2 + 3 * 4 = 14", "2+3*4=20",
         "2 * 3 + 4 * 5 - 6 = 20", "1234567890123+5=1234567890128", "123456789012+1=123456789013",
         "5+123456789012=123456789017", "7-9=-2", "7 - 9 = - 2", "3.5+1=4.5", "x3+4=7", "3+4 =7.",
         "3 +4= 07", "10*10*10*10*10=100000", "99999*99999=9999800001", "99999*99999=9999800002",
         "0+0=0", "4+=8", "4+ =8", "4 + 5 6 = 9", "1+2=3=3", "5*-1=-5", "2*3*4-1=23", "1-2-3=-4",
         "8-2*3+1=3", "12.5+3=15", "3+4=7.2", "3+4=7.x", "40 - 13 = 27\n27 * 2 = 54")


def _step_strings(count, rng):
  """Texts of chained `a op b = r` steps (right and off by one; `*` with `+ -`; spaces, leading
  zeros, negative results; decimals, `=`, operators or digits after the result) between
  integers of up to 13 digits and stray characters."""

  def chain():
    numbers = [rng.randint(0, 12) for _ in range(rng.randint(1, 4))]
    expression = str(numbers[0]) + "".join(
        rng.choice(["", " "]) + rng.choice("+-*") + rng.choice(["", " ", "  "]) + str(n)
        for n in numbers[1:])
    value = tasks.checks._evaluate(expression) + (rng.random() < 0.3) * rng.choice([-1, 1])
    result = (rng.choice(["", "0"]) + str(value) if value >= 0 else rng.choice(["-", "- "])
              + str(-value))
    return (expression + rng.choice(["=", " = ", "= ", " ="]) + result
            + rng.choice(["", ".", ".5", " ", "+", "=", "=3", ". ", "0", "x"]))

  def integer():
    return str(rng.choice([rng.randint(0, 20), rng.randint(10**11, 10**13)]))

  def stray():
    return rng.choice([" ", ".", "=", "+", "-", "*", "x", "\n", "= "])

  return [
      "".join(
          rng.choice([chain, chain, chain, integer, stray])()
          for _ in range(rng.randint(1, 6)))
      for _ in range(count)
  ]


def test_device_steps_equal_the_host_pattern_on_generated_step_strings():
  """working.steps on raw bytes against the host's pattern, on step-rich texts where the host's
  left-to-right search consumes results that could start the next run."""
  texts = _step_strings(3000, random.Random(2))
  width = max(len(t) for t in texts) + 2
  text = np.zeros((len(texts), width), np.int32)
  for row, t in enumerate(texts):
    text[row, :len(t)] = np.frombuffer(t.encode(), np.uint8)
  total, right = (np.asarray(a) for a in jax.jit(working.steps)(text))
  host = np.asarray([tasks.checks._steps(t) for t in texts])
  disagree = [
      (t, tuple(h), (s, r)) for t, h, s, r in zip(texts, host, total, right) if tuple(h) != (s, r)
  ]
  assert not disagree, disagree[:5]
  assert host[:, 0].sum() > 2000 and 0.2 < host[:, 1].sum() / host[:, 0].sum() < 0.8


def _task(example, checker):
  """The example's task, or a user's ("qa") when read by another checker than its task's."""
  return example.task if checker == tasks.TASK_CHECKERS.get(example.task) else "qa"


def _host(example, checker, draft):
  """The host's CheckResult of a draft of `example`'s question read by `checker`."""
  wanted = tasks.quantities(_task(example, checker), example.question)
  return tasks.check_answer(checker, example.answer, wanted, draft)


def _drafts(tokenizer, rng):
  """(example, checker, token ids): text variants, token-level truncations and random ids of
  every task's examples read by the task's checker, and of arithmetic questions as a user's
  records read by `exact` (their quantities: the question's numbers, matched as words)."""
  out = []
  for task in tasks.TASKS:
    for example in tasks.generate(task, 5, 12):
      checkers = [tasks.TASK_CHECKERS[task]] + (["exact"] if task == "arithmetic" else [])
      for checker in checkers:
        for text in _variants(example, rng):
          ids = tokenizer.encode(text)
          out.append((example, checker, ids))
          if len(ids) > 1:
            out.append((example, checker, ids[:rng.randint(1, len(ids) - 1)]))  # truncated
        ids = [rng.randint(0, VOCAB - 1) for _ in range(rng.randint(1, 20))]
        out.append((example, checker, ids))
  return out


def _device_results(tokenizer, drafts, target_len):
  """The device's CheckResult fields of (example, checker, ids) drafts -> [5, n] array."""
  pieces = tokenizer.piece_bytes(VOCAB)
  width = pieces.text_bytes(target_len)
  n = len(drafts)
  draft = np.zeros((n, target_len), np.int32)
  length = np.asarray([len(ids) for _, _, ids in drafts], np.int32)
  checker = np.asarray([answers.CHECKER_IDS[c] for _, c, _ in drafts], np.int32)
  reference = np.zeros((n, width), np.uint8)
  reference_len = np.zeros((n,), np.int32)
  quantity = np.zeros((n, tasks.MAX_QUANTITIES, tasks.QUANTITY_BYTES), np.uint8)
  quantity_len = np.zeros((n, tasks.MAX_QUANTITIES), np.int32)
  for row, (example, name, ids) in enumerate(drafts):
    draft[row, :len(ids)] = ids
    reference[row], reference_len[row] = answers.reference_bytes(name, example.answer, width)
    for index, q in enumerate(tasks.quantities(_task(example, name), example.question)):
      raw = q.encode()
      quantity[row, index, :len(raw)] = np.frombuffer(raw, np.uint8)
      quantity_len[row, index] = len(raw)

  @jax.jit
  def fn(draft, length, checker, reference, reference_len, quantity, quantity_len):
    text, count = answers.draft_bytes(draft, length, pieces)
    correct = answers.correct(text, count, checker, reference, reference_len)
    steps, right = working.steps(text)
    used, wanted = working.quantities_used(text, checker, quantity, quantity_len)
    return correct, steps, right, wanted, used

  return np.stack([
      np.asarray(a, np.int64)
      for a in fn(draft, length, checker, reference, reference_len, quantity, quantity_len)
  ])


def test_device_checkers_agree_with_the_host_checkers_on_every_draft(tokenizer):
  """Answer, steps and quantities, read on device from token ids, equal the host's reading of
  the decoded text on every draft: right, wrong, malformed, truncated and random."""
  rng = random.Random(0)
  drafts = _drafts(tokenizer, rng)
  assert len(drafts) >= 1000
  device = _device_results(tokenizer, drafts, max(len(ids) for _, _, ids in drafts))
  host = np.asarray([
      dataclasses.astuple(_host(example, checker, tokenizer.decode(ids)))
      for example, checker, ids in drafts
  ]).T  # [5, n]: correct, steps, right steps, quantities, used
  disagree = [(tokenizer.decode(ids), checker, list(host[:, i]), list(device[:, i]))
              for i, (_, checker, ids) in enumerate(drafts)
              if (host[:, i] != device[:, i]).any()]
  assert not disagree, disagree[:5]
  assert 0.1 < host[0].mean() < 0.9  # right and wrong drafts both tried
  steps, right = host[1], host[2]
  assert (right > 0).sum() > 100 and ((steps > right) & (right > 0)).sum() > 20
  assert ((host[4] > 0) & (host[4] < host[3])).sum() > 100  # some quantities, not all


def test_exact_checker_normalises_whitespace():
  tokenizer = tok_lib.train([ex.text() for ex in tasks.bundled_corpus(0, 2000)], VOCAB)
  reference = "ivy is the oldest"
  texts = [
      "ivy is the oldest", "  ivy   is the\toldest ", "ivy is the oldest.", "ivy is the",
      "Ivy is the oldest", "ivy isthe oldest", ""
  ]
  example = tasks.Example("qa", "", "", reference)
  drafts = [(example, "exact", tokenizer.encode(t) or [0]) for t in texts]
  drafts[-1] = (example, "exact", [])
  device = _device_results(tokenizer, drafts, 16)[0]
  host = [tasks.read_answer("exact", tokenizer.decode(ids)) == reference for _, _, ids in drafts]
  np.testing.assert_array_equal(device, host)
  assert list(device[:3]) == [True, True, False]


def test_piece_bytes_rebuild_the_decoded_text(tokenizer):
  """The device text of random ids equals `decode` (leading space aside) wherever it is UTF-8."""
  pieces = tokenizer.piece_bytes(VOCAB + 3)  # ids past the tokenizer decode to nothing
  rng = np.random.RandomState(0)
  draft = rng.randint(0, VOCAB + 3, (200, 12)).astype(np.int32)
  length = rng.randint(0, 13, (200,)).astype(np.int32)
  text, count = jax.jit(lambda d, n: answers.draft_bytes(d, n, pieces))(draft, length)
  checked = 0
  for row in range(200):
    raw = bytes(np.asarray(text[row, :count[row]], np.uint8))
    try:
      rebuilt = raw.decode("utf-8")
    except UnicodeDecodeError:
      continue
    decoded = tokenizer.decode(draft[row, :length[row]])
    assert rebuilt.lstrip(" ") == decoded.lstrip(" "), (rebuilt, decoded)
    checked += 1
  assert checked > 40


def test_answer_quality_by_hand(tokenizer):
  """A row encoded by data/qa.py and scored in the step: factual = the answer; logic = right
  steps over steps (factual without steps); relevance = the question's numbers mentioned, over
  all of them (12, 7, 5); labels on the draft's tokens only."""
  from rasr_jax.data import qa
  from rasr_jax.reflection import quality
  from rasr_jax.reflection import rows as rows_lib
  question = "tom has 12 apples. he buys 7 more. then he gives away 5. how many does he have?"
  record = qa.Record(question, "12 + 7 = 19. 19 - 5 = 14. #### 14", "final_answer", "hand",
                     "arithmetic")
  texts = [
      record.answer, "12 + 7 = 20. 20 - 5 = 15. #### 15", "7 apples, so #### 14", "#### 13",
      "12 + 7 = 19. 19 - 5 = 14. #### 14 and 6 * 7 = 42"
  ]
  expected = [(1, 1, 1), (0, 1 / 2, 1), (1, 1, 1 / 3), (0, 0, 0), (1, 1, 1)]
  drafts = [tokenizer.encode("\n" + t) for t in texts]
  y = max(len(d) for d in drafts) + 1
  pieces = tokenizer.piece_bytes(VOCAB)
  arrays, _ = qa.encode([record] * len(texts),
                        tokenizer,
                        prompt_len=8,
                        target_len=y,
                        reference_width=pieces.text_bytes(y))
  rows = rows_lib.ReflectRows(**arrays)
  draft = np.zeros((len(texts), y), np.int32)
  for row, ids in enumerate(drafts):
    draft[row, :len(ids)] = ids
  length = np.asarray([len(d) for d in drafts], np.int32)
  q, labels, mask = jax.jit(lambda d, n: quality.answer_quality(d, n, rows, pieces))(draft, length)
  np.testing.assert_allclose(q, expected, rtol=1e-6)
  np.testing.assert_array_equal(mask, np.arange(y)[None] < length[:, None])
  first_wrong = next(i for i, (a, b) in enumerate(zip(drafts[0], drafts[1])) if a != b)
  assert labels[1, first_wrong] == 1 and labels[1, :first_wrong].sum() == 0
  assert labels[0, :len(drafts[0])].sum() == 0
