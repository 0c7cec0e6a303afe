"""The on-device answer reader (reflection/answers.py) against the host checkers."""

import random

import jax
import numpy as np
import pytest

from rasr_jax import tasks
from rasr_jax.data import tokenizer as tok_lib
from rasr_jax.reflection import answers

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
  return drafts


def _drafts(tokenizer, rng):
  """(example, token ids) pairs: text variants, token-level truncations and random ids."""
  out = []
  for task in tasks.TASKS:
    for example in tasks.generate(task, 5, 12):
      for text in _variants(example, rng):
        ids = tokenizer.encode(text)
        out.append((example, ids))
        if len(ids) > 1:
          out.append((example, ids[:rng.randint(1, len(ids) - 1)]))  # truncated
      out.append((example, [rng.randint(0, VOCAB - 1) for _ in range(rng.randint(1, 20))]))
  return out


def _device_correct(tokenizer, pairs, checkers, references, target_len):
  pieces = tokenizer.piece_bytes(VOCAB)
  width = pieces.text_bytes(target_len)
  draft = np.zeros((len(pairs), target_len), np.int32)
  length = np.asarray([len(ids) for _, ids in pairs], np.int32)
  for row, (_, ids) in enumerate(pairs):
    draft[row, :len(ids)] = ids
  refs = [answers.reference_bytes(c, r, width) for c, r in zip(checkers, references)]
  fn = jax.jit(lambda *a: answers.correct(*a, pieces))
  return np.asarray(
      fn(draft, length, np.asarray([answers.CHECKER_IDS[c] for c in checkers], np.int32),
         np.stack([ref for ref, _ in refs]), np.asarray([n for _, n in refs], np.int32)))


def test_device_reader_agrees_with_the_host_checkers_on_every_draft(tokenizer):
  rng = random.Random(0)
  pairs = _drafts(tokenizer, rng)
  assert len(pairs) >= 1000
  target_len = max(len(ids) for _, ids in pairs)
  checkers = [tasks.TASK_CHECKERS[ex.task] for ex, _ in pairs]
  device = _device_correct(tokenizer, pairs, checkers, [ex.answer for ex, _ in pairs], target_len)
  host = np.asarray([tasks.check(ex, tokenizer.decode(ids)).correct for ex, ids in pairs])
  disagree = [tokenizer.decode(ids) for (_, ids), d, h in zip(pairs, device, host) if d != h]
  assert not disagree, disagree[:5]
  assert 0.1 < host.mean() < 0.9  # right and wrong drafts both tried


def test_exact_checker_normalises_whitespace():
  tokenizer = tok_lib.train([ex.text() for ex in tasks.bundled_corpus(0, 2000)], VOCAB)
  reference = "ivy is the oldest"
  texts = [
      "ivy is the oldest", "  ivy   is the\toldest ", "ivy is the oldest.", "ivy is the",
      "Ivy is the oldest", "ivy isthe oldest", ""
  ]
  pairs = [(None, tokenizer.encode(t) or [0]) for t in texts]
  pairs[-1] = (None, [])
  device = _device_correct(tokenizer, pairs, ["exact"] * len(texts), [reference] * len(texts), 16)
  host = [tasks.read_answer("exact", tokenizer.decode(ids)) == reference for _, ids in pairs]
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
  """factual: the checker's answer; logic: the prefix that follows the reference, over its
  length; relevance: unigram F1 with the reference answer; labels on the draft's tokens only."""
  import jax.numpy as jnp

  from rasr_jax.reflection import quality
  from rasr_jax.reflection import rows as rows_lib
  answer = tokenizer.encode("so ivy is the oldest. answer: c")
  wrong = tokenizer.encode("so ivy is the oldest. answer: a")
  short = answer[:3]
  y = len(answer) + 2
  pieces = tokenizer.piece_bytes(VOCAB)
  width = pieces.text_bytes(y)
  reference, size = answers.reference_bytes("choice", "so ivy is the oldest. answer: c", width)
  target = np.zeros((y,), np.int32)
  target[:len(answer) + 1] = answer + [tokenizer.eos_id]
  drafts = [answer, wrong, short]
  rows = rows_lib.ReflectRows(
      prompt=jnp.zeros((3, 2), jnp.int32),
      prompt_valid=jnp.ones((3, 2), bool),
      target=jnp.asarray(np.stack([target] * 3)),
      target_valid=jnp.asarray(np.stack([target > 0] * 3) | (np.arange(y) == len(answer))),
      checker=jnp.full((3,), answers.CHECKER_IDS["choice"], jnp.int32),
      reference=jnp.asarray(np.stack([reference] * 3)),
      reference_len=jnp.full((3,), size, jnp.int32),
      task=jnp.zeros((3,), jnp.int32))
  draft = np.zeros((3, y), np.int32)
  for row, ids in enumerate(drafts):
    draft[row, :len(ids)] = ids
  length = np.asarray([len(d) for d in drafts], np.int32)
  q, labels, mask = jax.jit(lambda d, n: quality.answer_quality(d, n, rows, pieces))(draft, length)
  n = len(answer)
  np.testing.assert_allclose(q[:, 0], [1, 0, 0])  # factual
  np.testing.assert_allclose(q[:, 1], [1, (n - 1) / n, 3 / n], rtol=1e-6)  # logic
  np.testing.assert_allclose(q[:, 2], [1, 2 * (n - 1) / (2 * n), 2 * 3 / (3 + n)], rtol=1e-6)
  np.testing.assert_array_equal(mask, np.arange(y)[None] < length[:, None])
  assert labels[1, n - 1] == 1 and labels[1, :n - 1].sum() == 0
