"""Question/answer records (RASR.md §2) and their reflection rows.

Records come from the bundled tasks' verifiable examples (the training seed's, the same
examples the corpus holds; evaluation never scores a question training saw) or from the user's
`data.qa_files`: `.jsonl` lines with string fields `prompt` and `answer`, read by
`data.qa_checker`. A record's document is prompt, newline, answer, as a bundled task's is
(`tasks.ANSWER_SEPARATOR`). A row is x = the tokenizer's start token (its bos, else `<eos>`) +
prompt, left-padded to P (a longer prompt
keeps its last P tokens, as generation does), and y* = the newline, the answer and `<eos>`
(what a model prompted with the question writes after it), right-padded to Y, with the answer
the checker reads in the reference (`reflection.answers.reference_bytes`) and the question's
quantities (`tasks.quantities`).

A user's record that is not an object with both fields, has an empty answer, an answer the
checker finds nothing in, a y* longer than Y tokens, or invalid UTF-8 is a `DataError`
naming the file and line. A bundled example whose answer does not fit Y is left out (counted).
"""

import dataclasses

import numpy as np

from rasr_jax import tasks
from rasr_jax.data import sources
from rasr_jax.data.sources import DataError
from rasr_jax.reflection import answers
from rasr_jax.reflection import rows as rows_lib

FIELDS = ("prompt", "answer")
USER_TASK = "qa"  # the task name of a user's records (reflection.rows.QA_TASKS)


@dataclasses.dataclass(frozen=True)
class Record:
  prompt: str
  answer: str
  checker: str  # one of tasks.CHECKERS
  origin: str  # "path line N", or the bundled example's uid
  task: str = USER_TASK  # a bundled task's name, or USER_TASK

  def document(self):
    """The record as a corpus document (the bundled tasks' format: question, newline, answer)."""
    return f"{self.prompt}{tasks.ANSWER_SEPARATOR}{self.answer}"


def _bundled(data_cfg, seed, count):
  return [
      Record(ex.question, ex.answer, tasks.TASK_CHECKERS[ex.task], ex.uid, ex.task)
      for ex in tasks.bundled_corpus(seed, count, data_cfg.bundled_weights())
      if ex.task in tasks.TASKS
  ]


def _read_file(path, checker):
  records = []
  for number, record in sources.jsonl_records(path, "question/answer file"):
    where = f"question/answer file {path} line {number}"
    if not isinstance(record, dict) or not all(isinstance(record.get(f), str) for f in FIELDS):
      raise DataError(f"{where}: expected an object with string fields 'prompt' and 'answer'")
    if not record["answer"].strip():
      raise DataError(f"{where}: the answer is empty")
    if tasks.read_answer(checker, record["answer"]) is None:
      raise DataError(f"{where}: data.qa_checker={checker} finds no answer in {record['answer']!r}")
    records.append(Record(record["prompt"], record["answer"], checker, f"{path} line {number}"))
  return records


def _files(patterns, checker):
  paths = sources.expand_globs(patterns, "data.qa_files", (".jsonl",))
  return [record for path in paths for record in _read_file(path, checker)]


def load(data_cfg, seed):
  """The training question/answer records: data.qa_files, else the bundled tasks'."""
  if data_cfg.qa_files:
    return _files(data_cfg.qa_files, data_cfg.qa_checker)
  if data_cfg.source == "bundled":
    return _bundled(data_cfg, seed, data_cfg.bundled_examples)
  return []


def load_held_out(data_cfg, seed):
  """Held-out records: data.qa_eval_files, the bundled held-out seed's, or None."""
  if data_cfg.qa_eval_files:
    return _files(data_cfg.qa_eval_files, data_cfg.qa_checker)
  if data_cfg.source == "bundled" and not data_cfg.qa_files:
    count = min(data_cfg.bundled_examples, sources.HELD_OUT_BUNDLED_EXAMPLES)
    return _bundled(data_cfg, seed + sources.HELD_OUT_SEED_OFFSET, count)
  return None


def encode(records, tokenizer, *, prompt_len, target_len, reference_width):
  """Records -> ({field of reflection.rows.ReflectRows: [n, ...] array}, bundled examples left
  out).

  Raises DataError for a user's y* longer than target_len tokens."""
  n = len(records)
  arrays = {
      "prompt": np.full((n, prompt_len), tokenizer.pad_id, np.int32),
      "prompt_valid": np.zeros((n, prompt_len), bool),
      "target": np.full((n, target_len), tokenizer.pad_id, np.int32),
      "target_valid": np.zeros((n, target_len), bool),
      "checker": np.zeros((n,), np.int32),
      "reference": np.zeros((n, reference_width), np.uint8),
      "reference_len": np.zeros((n,), np.int32),
      "task": np.zeros((n,), np.int32),
      "quantity": np.zeros((n, tasks.MAX_QUANTITIES, tasks.QUANTITY_BYTES), np.uint8),
      "quantity_len": np.zeros((n, tasks.MAX_QUANTITIES), np.int32),
  }
  kept = 0
  for record in records:
    target = tokenizer.encode(tasks.ANSWER_SEPARATOR + record.answer) + [tokenizer.eos_id]
    if len(target) > target_len:
      if record.task != USER_TASK:
        continue
      raise DataError(f"question/answer file {record.origin}: the answer takes {len(target)} "
                      f"tokens with the newline before it and <eos> after it, more than "
                      f"reflect.target_len = {target_len}")
    prompt = tokenizer.encode_prompt(record.prompt)[-prompt_len:]
    row = kept
    arrays["prompt"][row, prompt_len - len(prompt):] = prompt
    arrays["prompt_valid"][row, prompt_len - len(prompt):] = True
    arrays["target"][row, :len(target)] = target
    arrays["target_valid"][row, :len(target)] = True
    arrays["checker"][row] = answers.CHECKER_IDS[record.checker]
    reference, size = answers.reference_bytes(record.checker, record.answer, reference_width)
    arrays["reference"][row], arrays["reference_len"][row] = reference, size
    arrays["task"][row] = rows_lib.QA_TASKS.index(record.task)
    for index, quantity in enumerate(tasks.quantities(record.task, record.prompt)):
      raw = quantity.encode()
      arrays["quantity"][row, index, :len(raw)] = np.frombuffer(raw, np.uint8)
      arrays["quantity_len"][row, index] = len(raw)
    kept += 1
  return {name: array[:kept] for name, array in arrays.items()}, n - kept
