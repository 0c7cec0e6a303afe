"""The bundled verifiable tasks as evaluation tasks: held-out seeds, scored by their checkers.

Items come from the held-out seed of training's own evaluation (`seed + HELD_OUT_SEED_OFFSET`);
any item whose question also occurs in the training corpus is dropped, so no score rests on a
memorised question. Chain-of-thought prompts put COT_SHOTS worked examples of the same task
(from a third seed) before the question, in the training format: question, newline, answer.
"""

from rasr_jax import tasks
from rasr_jax.data import sources
from rasr_jax.evaluation import methods, report

COT_SEED_OFFSET = 2_000_003
COT_SHOTS = 2


def held_out_examples(config, task, count):
  """Up to `count` held-out examples of `task` whose questions training never saw."""
  seen = set()
  if config.data.source == "bundled":
    seen = {ex.question for ex in tasks.bundled_corpus(config.seed, config.data.bundled_examples)}
  pool = tasks.generate(task, config.seed + sources.HELD_OUT_SEED_OFFSET, 2 * count)
  return [ex for ex in pool if ex.question not in seen][:count]


def prompt(example, method, config):
  """The text the model continues: the question, after worked examples for `cot`."""
  if method != "cot":
    return example.question
  shots = tasks.generate(example.task, config.seed + COT_SEED_OFFSET, COT_SHOTS)
  return "\n\n".join([shot.text() for shot in shots] + [example.question])


def evaluate(model, task, method, count, *, max_new_tokens, batch_size, seed):
  """(items for `report.iteration_report`, their records): every draft checked by the task's
  checker."""
  examples = held_out_examples(model.config, task, count)
  answers = methods.answer(model, [prompt(ex, method, model.config) for ex in examples],
                           method,
                           max_new_tokens=max_new_tokens,
                           seed=seed,
                           batch_size=batch_size)
  items, records = [], []
  for example, ans in zip(examples, answers):
    correct = [
        tasks.check(example, draft, after_answer_prompt=after).correct
        for draft, after in zip(ans.drafts, ans.after_answer_prompt)
    ]
    items.append(report.item(ans, correct))
    records.append(
        report.sample(ans,
                      correct,
                      uid=example.uid,
                      question=example.question,
                      reference=example.answer))
  return items, records
