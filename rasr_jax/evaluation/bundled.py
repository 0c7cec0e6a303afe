"""Generative evaluation tasks scored by a checker: the bundled verifiable tasks and `qa`, the
user's held-out question/answer records.

Bundled items come from the held-out seed of training's own evaluation
(`seed + HELD_OUT_SEED_OFFSET`); any item whose question also occurs in the training corpus is
dropped, so no score rests on a memorised question. `qa` items are the first records of
`data.qa_eval_files` (the user keeps them apart from training), read by `data.qa_checker`.
Chain-of-thought prompts put COT_SHOTS worked examples of the same task (from a third seed; for
`qa` the first records of `data.qa_files`) before the question, in the training format:
question, newline, answer.
"""

import functools

from rasr_jax import tasks
from rasr_jax.data import qa, sources
from rasr_jax.evaluation import methods, report

COT_SEED_OFFSET = 2_000_003
COT_SHOTS = 2
QA_TASK = qa.USER_TASK


def _records_as_examples(records):
  return [tasks.Example(QA_TASK, r.origin, r.prompt, r.answer) for r in records]


def held_out_examples(config, task, count):
  """Up to `count` held-out examples of `task` whose questions training never saw."""
  if task == QA_TASK:  # run.evaluate checks that data.qa_eval_files is set
    return _records_as_examples(qa.load_held_out(config.data, config.seed)[:count])
  seen = set()
  if config.data.source == "bundled":
    seen = {
        ex.question for ex in tasks.bundled_corpus(config.seed, config.data.bundled_examples,
                                                   config.data.bundled_weights())
    }
  pool = tasks.generate(task, config.seed + sources.HELD_OUT_SEED_OFFSET, 2 * count)
  return [ex for ex in pool if ex.question not in seen][:count]


def _shots(config, task):
  """The worked examples `cot` puts before a question of `task`."""
  if task != QA_TASK:
    return tasks.generate(task, config.seed + COT_SEED_OFFSET, COT_SHOTS)
  return _records_as_examples(qa.load(config.data, config.seed)[:COT_SHOTS])


def prompts(examples, task, method, config):
  """The texts the model continues: the questions, after worked examples for `cot`."""
  if method != "cot":
    return [ex.question for ex in examples]
  worked = [shot.text() for shot in _shots(config, task)]
  return ["\n\n".join(worked + [ex.question]) for ex in examples]


def evaluate(model, task, method, count, *, max_new_tokens, batch_size, seed, labeler=None):
  """(items for `report.iteration_report`, their records): every draft checked by the task's
  checker (its answer, steps and quantities: `tasks.check_answer`); with a safety `labeler`,
  the answer given labelled too (misinformation against the facts world of the held-out seed,
  whose facts the questions state)."""
  examples = held_out_examples(model.config, task, count)
  if labeler is not None and task != QA_TASK:  # bundled items' facts are of the held-out world
    labeler = functools.partial(labeler,
                                world_seed=model.config.seed + sources.HELD_OUT_SEED_OFFSET)
  checker = model.config.data.qa_checker if task == QA_TASK else tasks.TASK_CHECKERS[task]
  answers = methods.answer(model,
                           prompts(examples, task, method, model.config),
                           method,
                           max_new_tokens=max_new_tokens,
                           seed=seed,
                           batch_size=batch_size)
  items, records = [], []
  for example, ans in zip(examples, answers):
    wanted = tasks.quantities(task, example.question)
    checked = [
        tasks.check_answer(checker, example.answer, wanted, draft, after_answer_prompt=after)
        for draft, after in zip(ans.drafts, ans.after_answer_prompt)
    ]
    correct = [result.correct for result in checked]
    items.append(report.item(ans, correct, labeler, [result.scores() for result in checked]))
    records.append(
        report.sample(ans,
                      correct,
                      uid=example.uid,
                      question=example.question,
                      reference=example.answer))
  return items, records
