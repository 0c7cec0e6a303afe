"""Question/answer reflection rows: encoding, user files and their errors, training on them
(metrics, resume, a sharded mesh)."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import (
    QA,
    assert_resume_from_the_last_but_one_checkpoint_is_bit_identical,
    assert_same_losses,
    make_config,
    run_main,
    train_on_mesh,
)
from rasr_jax import tasks
from rasr_jax.data import qa
from rasr_jax.data import tokenizer as tok_lib
from rasr_jax.data.sources import DataError
from rasr_jax.evaluation import report
from rasr_jax.evaluation import run as eval_run
from rasr_jax.reflection import answers
from rasr_jax.reflection import rows as rows_lib
from rasr_jax.training import loop, reflect
from rasr_jax.training.metrics import read_records

STEPS = 6


@pytest.fixture(scope="module")
def tokenizer():
  return tok_lib.train(["what is two plus two?\n#### 4", "is the sky blue? answer: true"] * 50, 300)


def _write(path, lines):
  path.write_bytes(b"\n".join(lines) + b"\n")
  return str(path)


def test_rows_are_left_padded_prompts_and_eos_ended_answers(tokenizer):
  records = [qa.Record("what is two plus two?", "#### 4", "final_answer", "t line 1")]
  arrays, left_out = qa.encode(records, tokenizer, prompt_len=16, target_len=6, reference_width=8)
  prompt = tokenizer.encode_prompt("what is two plus two?")
  target = tokenizer.encode("\n#### 4") + [tokenizer.eos_id]
  assert target[0] == tokenizer.encode("\n")[0]  # the newline a document has before its answer
  assert left_out == 0 and prompt[0] == tokenizer.eos_id
  np.testing.assert_array_equal(arrays["prompt"][0, -len(prompt):], prompt)
  assert arrays["prompt_valid"][0].tolist() == [False] * (16 - len(prompt)) + [True] * len(prompt)
  np.testing.assert_array_equal(arrays["target"][0, :len(target)], target)
  assert arrays["target_valid"][0].sum() == len(target)
  assert arrays["checker"][0] == answers.CHECKER_IDS["final_answer"]
  assert bytes(arrays["reference"][0, :arrays["reference_len"][0]]) == b"4"
  assert rows_lib.QA_TASKS[arrays["task"][0]] == "qa"


@pytest.mark.parametrize("line, message", [
    (b'{"prompt": "q"}', "line 2: expected an object with string fields 'prompt' and 'answer'"),
    (b'{"prompt": "q", "answer": "  "}', "line 2: the answer is empty"),
    (b'{"prompt": "q", "answer": "no marker"}', "line 2: data.qa_checker=final_answer finds no"),
    (b'{"prompt": "q", "answer": "#### 4 \xff"}', "line 2: invalid UTF-8 at byte 34 of the line"),
    (b'[1, 2]', "line 2: expected an object"),
    (b'{"prompt": "q",', "line 2: not JSON"),
    (b'{"prompt": "q", "answer": "' + b"#### 4 " * 20 + b'"}', "line 2: the answer takes"),
])
def test_a_malformed_record_names_its_file_and_line(tmp_path, tokenizer, line, message):
  path = _write(tmp_path / "qa.jsonl", [b'{"prompt": "q", "answer": "#### 4"}', line])
  cfg = make_config(**{"data.qa_files": path, "data.qa_checker": "final_answer", **QA}).data
  with pytest.raises(DataError, match=message) as error:
    records = qa.load(cfg, 0)
    qa.encode(records, tokenizer, prompt_len=8, target_len=8, reference_width=8)
  assert path in str(error.value)


def test_a_malformed_qa_file_is_one_error_line_at_start_up(tmp_path):
  path = _write(tmp_path / "qa.jsonl", [b'{"prompt": "q", "answer": "a"}', b'{"prompt": "q"}'])
  workdir = tmp_path / "run"
  result = run_main(str(workdir), **{"data.qa_files": path, **QA})
  assert result.returncode == 2
  last = result.stderr.strip().splitlines()[-1]
  assert last.startswith("error: ") and f"{path} line 2" in last
  assert "Traceback" not in result.stderr and not (workdir / "checkpoints").exists()


QA_RUN = {
    "reflect.stop_warmup": 0.0,
    "reflect.critics.agents": 2,
    "reflect.safety_dims": "misinformation,privacy,robustness",
    **QA
}


@pytest.fixture(scope="module")
def qa_run(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("qa"))
  # A committee of two critics (A = 1 is every other reflection test's) with two safety
  # dimensions labelled on the host through a callback from the step, and robustness.
  config = make_config(**{**QA_RUN, "train.steps": STEPS})
  loop.train(config, workdir)
  return workdir, config


def test_training_on_question_answer_rows_reports_what_refinement_does(qa_run):
  workdir, config = qa_run
  records = read_records(workdir)
  last = records[-1]
  assert last["step"] == STEPS
  for k in range(config.reflect.iterations):
    assert last[f"loss/reflect_k{k}"] > 0  # the refiner trains to the last step
    for name in ("acc", "wrong_to_right", "right_to_wrong", "stop_rate"):
      assert 0 <= last[f"reflect/{name}_k{k}"] <= 1
  assert 0 <= last["reflect/acc_final"] <= 1
  assert 0 <= last["critic/auroc"] <= 1 and 0 <= last["eval/critic/auroc"] <= 1
  assert last["critic/disagreement"] > 0 and last["critic/loss_consensus"] > 0
  assert 0 <= last["critic/disagreement_auroc"] <= 1
  assert 0 <= last["eval/critic/disagreement_auroc"] <= 1
  for name in ("misinformation", "privacy", "robustness"):
    assert 0 <= last[f"safety/rate/{name}"] <= 1 and 0 <= last[f"critic/auroc/{name}"] <= 1
    assert 0 <= last[f"safety/rate_k0/{name}"] <= 1 and 0 <= last[f"safety/rate_final/{name}"] <= 1
    assert 0 <= last[f"eval/safety/rate/{name}"] <= 1
  for task in rows_lib.QA_TASKS:
    for k in range(config.reflect.iterations + 1):
      assert 0 <= last[f"eval/acc_k{k}/{task}"] <= 1
  # Rows of the bundled tasks only (no user records), and of those whose answers fit Y.
  assert last["eval/rows/qa"] == 0
  assert sum(last[f"eval/rows/{task}"] for task in tasks.TASKS) > 0


def test_evaluation_labels_the_robustness_of_every_draft(qa_run, tmp_path):
  """--mode=eval labels every draft's robustness as the step does (a perturbed question flips
  one of the critic's verdicts), so the report has its rates and the critic's AUROC against it."""
  workdir, config = qa_run
  results = eval_run.evaluate(config,
                              workdir,
                              task_list="facts",
                              method_list="rasr",
                              limit=4,
                              output_dir=str(tmp_path / "out"),
                              max_new_tokens=8,
                              batch_size=4)
  facts = results["methods"]["rasr"]["facts"]
  rates = facts["safety_rates_per_iteration"]["robustness"]
  assert len(rates) == config.reflect.iterations + 1
  assert all(rate * 4 == pytest.approx(round(rate * 4)) for rate in rates)  # a label per draft
  assert facts["critic_dimensions"]["robustness"]["target"] == "safe"
  assert 0 <= facts["safety_rates"]["robustness"] <= 1


def test_resume_with_question_answer_rows_is_bit_identical(qa_run, tmp_path):
  reference, config = qa_run
  assert_resume_from_the_last_but_one_checkpoint_is_bit_identical(config, reference, str(tmp_path))


def test_user_qa_files_feed_reflection_rows_and_join_the_corpus(tmp_path):
  """A run on the bundled corpus with the user's question/answer file: its records are the
  reflection rows of every batch (read by the file's checker) and documents of the corpus."""
  lines = [
      json.dumps({
          "prompt": f"what is {a} plus {b}?",
          "answer": f"{a} + {b} = {a + b}. #### {a + b}"
      }).encode() for a in range(8) for b in range(8)
  ]
  path = _write(tmp_path / "train.jsonl", lines)
  config = make_config(**{"data.qa_files": path, "data.qa_checker": "final_answer", **QA})
  run = loop.setup(config, str(tmp_path / "run"))
  batch = next(run.data)
  assert batch["qa"]["prompt"].shape == (config.reflect.rows, config.reflect.prompt_len)
  assert set(batch["qa"]["task"]) == {rows_lib.QA_TASKS.index("qa")}
  assert set(batch["qa"]["checker"]) == {answers.CHECKER_IDS["final_answer"]}
  bundled_only = loop.setup(make_config(**QA), str(tmp_path / "bundled"))
  assert run.meta["data_fingerprint"] != bundled_only.meta["data_fingerprint"]
  run.checkpointer.close()
  bundled_only.checkpointer.close()


def test_question_answer_rows_on_a_mesh_of_8_equal_one_device(qa_run, tmp_path):
  """R = 3 with free-running drafts on question/answer rows, a committee of two critics and
  safety dimensions (labelled by a host callback), one row per data shard of a (2, 2, 2) mesh of
  8 fake devices through the CLI, against one device: the same losses."""
  reference, config = qa_run
  assert config.reflect.rows == 4 and jax.device_count() == 1
  # No held-out evaluation: it changes no training loss, and its compilation is half the run's.
  train_on_mesh(str(tmp_path), (2, 2, 2), **{
      **QA_RUN, "train.steps": STEPS,
      "train.eval_batches": 0
  })
  assert_same_losses(str(tmp_path), reference)


def test_mixed_source_reflects_on_question_answer_rows_and_text_windows(tmp_path):
  """reflect.source=mixed: half the rows are question/answer rows, half text windows."""
  config = make_config(
      **{
          **QA,
          "reflect.source": "mixed",
          "train.steps": 2,
          "train.eval_batches": 0,
          "data.seq_len": 48,  # text windows of P + Y = 40 tokens
      })
  loop.train(config, str(tmp_path))
  last = read_records(str(tmp_path))[-1]
  assert last["step"] == 2 and last["loss/reflect_k0"] > 0
  assert sum(last[f"rows/{task}"] for task in rows_lib.QA_TASKS) == 2  # of 4 rows


def test_held_out_task_accuracy_is_weighted_by_the_task_rows():
  batches = [{
      "loss": 1.0,
      "acc_k0/logic": 1.0,
      "rows/logic": 3.0
  }, {
      "loss": 3.0,
      "acc_k0/logic": 0.0,
      "rows/logic": 1.0
  }, {
      "loss": 2.0,
      "acc_k0/logic": 0.0,
      "rows/logic": 0.0
  }]  # no logic rows: no weight
  means = loop.mean_metrics(batches)
  assert means["loss"] == 2.0 and means["rows/logic"] == pytest.approx(4 / 3)
  assert means["acc_k0/logic"] == 0.75


def test_critic_auroc_on_device_equals_the_evaluation_report():
  rng = np.random.default_rng(0)
  for _ in range(20):
    n = int(rng.integers(2, 40))
    scores = rng.integers(0, 5, n) / 4  # ties on purpose
    correct = (rng.random(n) < 0.5).astype(np.float32)
    qa_row = rng.random(n) < 0.8
    area, pairs = reflect.critic_auroc(jnp.asarray(scores), jnp.asarray(correct),
                                       jnp.asarray(qa_row))
    expected = report.auroc(scores[qa_row], correct[qa_row] > 0.5)
    right = int(np.sum(correct[qa_row] > 0.5))
    assert float(pairs) == right * (int(qa_row.sum()) - right)
    assert float(area) == pytest.approx(0.5 if expected is None else expected, abs=1e-6)
  # Text windows are not answers: a perfectly ordered pair among QA rows stays perfect.
  area, pairs = reflect.critic_auroc(jnp.array([0.9, 0.1, 0.0]), jnp.array([1.0, 0.0, 1.0]),
                                     jnp.array([True, True, False]))
  assert float(area) == 1.0 and float(pairs) == 1.0


def test_held_out_critic_auroc_is_weighted_by_its_pairs():
  batches = [{
      "critic/auroc": 1.0,
      "critic/auroc_pairs": 3.0
  }, {
      "critic/auroc": 0.5,
      "critic/auroc_pairs": 0.0
  }, {
      "critic/auroc": 0.0,
      "critic/auroc_pairs": 1.0
  }]
  assert loop.mean_metrics(batches)["critic/auroc"] == 0.75
  no_pairs = [{"critic/auroc": 0.5, "critic/auroc_pairs": 0.0}] * 2  # undefined: no signal
  assert loop.mean_metrics(no_pairs)["critic/auroc"] == 0.5
