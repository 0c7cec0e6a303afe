"""Evaluation: the lm-eval adapter, the benchmark task YAMLs over local fixture files, answer
extraction, the per-iteration report, and --mode=eval end to end."""

import bz2
import csv
import dataclasses
import json
import math
import os
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from lm_eval.api.instance import Instance
from lm_eval.api.model import TemplateLM

from conftest import REPO, run_main
from rasr_jax import config as config_lib
from rasr_jax import tasks
from rasr_jax.data import sources
from rasr_jax.evaluation import benchmark_data, bundled, harness, methods, report
from rasr_jax.evaluation import run as eval_run
from rasr_jax.generation import inference

# --- fixture benchmark files, in the formats they are published in ---------------------------

GSM8K_TEST = [("Ann has 9 eggs and buys 9 more. How many eggs?", "9 + 9 = 18\n#### 18"),
              ("Bob has 3 cars and gets 4 more. How many cars?", "3 + 4 = 7\n#### 7")]
# The fixture model's replies: the first in GSM8K's format, the second only says the number.
GSM8K_REPLIES = {GSM8K_TEST[0][0]: " 9 + 9 = 18\n#### 18", GSM8K_TEST[1][0]: " It is 7."}


def write_benchmarks(root):
  """Two or three items per benchmark, in the layout of shared/data/benchmarks."""

  def put(rel, text, opener=open):
    path = os.path.join(root, rel)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with opener(path, "wt", encoding="utf-8") as f:
      f.write(text)

  rows = [json.dumps({"question": q, "answer": a}) for q, a in GSM8K_TEST]
  put("gsm8k/test.jsonl", "\n".join(rows) + "\n")
  put("gsm8k/train.jsonl", "\n".join(rows * 3) + "\n")  # the 5-shot pool
  # TruthfulQA: the gold (first) answer is the shortest in item 1, the longest in item 2.
  put(
      "truthfulqa/v0/mc_task.json",
      json.dumps([{
          "question": "Is the sky green?",
          "mc1_targets": {
              "No.": 1,
              "Yes, always.": 0
          },
          "mc2_targets": {
              "No.": 1,
              "Never.": 1,
              "Yes, always.": 0
          }
      }, {
          "question": "Can pigs fly?",
          "mc1_targets": {
              "No, pigs cannot fly.": 1,
              "Yes.": 0
          },
          "mc2_targets": {
              "No, pigs cannot fly.": 1,
              "Yes.": 0,
              "Often.": 0
          }
      }]))
  # LogiQA: item 1's answer (a) is its shortest option; item 2's (b) is its longest.
  put(
      "logiqa/Test.txt", "\na\nAll cats purr.Tom is a cat.\nWhat follows?\nA.Tom purrs\n"
      "B.Tom barks loudly\nC.Tom is a dog now\nD.Nothing follows here\n\nb\nSome birds sing.\n"
      "What follows?\nA.All birds sing\nB.Some birds sing loudly today\nC.No\nD.Birds are fish\n")
  # HellaSwag: 6 lines per item; item 1's gold (2) is its shortest ending, item 2's (0) is not.
  put(
      "hellaswag/hellaswag_val_full.txt.bz2",
      "Cooking: A man cuts onions. he\n2\nsings a long song to them.\nthrows them far away.\n"
      "cries.\ndances with a cat slowly.\nRunning: A woman runs. she\n0\nstops running fast.\n"
      "wins.\nfalls down the hill slowly.\nwaves at people there.\n", bz2.open)
  # MMLU: every letter is as long as the others, so the fixture model always says A (ties go
  # to the first choice): 2 of 3 right over both subjects (micro average), 1/2 and 1/1 apiece.
  for subject, answers in (("abstract_algebra", [0, 1]), ("anatomy", [0])):
    for split, rows in (("dev", [0] * 5), ("test", answers)):  # 5-shot from dev
      path = os.path.join(root, "mmlu", split, f"{subject}_{split}.csv")
      os.makedirs(os.path.dirname(path), exist_ok=True)
      with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["question", "choice0", "choice1", "choice2", "choice3", "answer"])
        for i, answer in enumerate(rows):
          writer.writerow([f"{subject} question {i}?", "None", "0", "1.0", "NA", answer])
  return root


class LengthLM(TemplateLM):
  """A deterministic fixture model: log p(continuation) = -(its length in characters); it
  answers GSM8K questions from GSM8K_REPLIES."""

  eot_token_id = 0

  def tok_encode(self, string, add_special_tokens=None, **kwargs):
    return [ord(c) for c in string]

  def _loglikelihood_tokens(self, requests, **kwargs):
    return [(-float(len(continuation)), False) for _, _, continuation in requests]

  def loglikelihood_rolling(self, requests, disable_tqdm=False):
    return [-float(len(r.args[0])) for r in requests]

  def generate_until(self, requests, disable_tqdm=False):
    return [
        next(reply
             for q, reply in GSM8K_REPLIES.items()  # gsm8k, gsm8k_cot prompts
             if r.args[0].endswith((f"Question: {q}\nAnswer:", f"Q: {q}\nA:")))
        for r in requests
    ]


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
  root = tmp_path_factory.mktemp("bench")
  benchmark_data.prepare(write_benchmarks(str(root / "raw")), str(root / "prepared"))
  return str(root / "prepared" / benchmark_data.TASKS_DIR)


def test_prepare_writes_the_stock_field_layout(prepared):
  data = pathlib.Path(prepared).parent
  logiqa = [json.loads(line) for line in (data / "logiqa" / "test.jsonl").open()]
  assert logiqa[0] == {
      "label": "a",
      "context": "All cats purr. Tom is a cat.",
      "question": "What follows?",
      "options": ["Tom purrs", "Tom barks loudly", "Tom is a dog now", "Nothing follows here"]
  }
  mmlu = json.loads((data / "mmlu" / "test" / "abstract_algebra.jsonl").read_text().splitlines()[0])
  assert mmlu["choices"] == ["None", "0", "1.0", "NA"] and mmlu["answer"] == 0
  truthful = json.loads((data / "truthfulqa" / "validation.jsonl").read_text().splitlines()[0])
  assert truthful["mc2_targets"] == {
      "choices": ["No.", "Never.", "Yes, always."],
      "labels": [1, 1, 0]
  }
  assert sorted(os.listdir(prepared)) == sorted(f"{t}.yaml" for t in [
      "gsm8k", "gsm8k_cot", "truthfulqa_mc1", "truthfulqa_mc2", "logiqa", "hellaswag", "mmlu",
      "mmlu_abstract_algebra", "mmlu_anatomy"
  ])


def _mc2(true, false):
  p_true, p_false = (sum(math.exp(-len(" " + a)) for a in answers) for answers in (true, false))
  return p_true / (p_true + p_false)


def test_task_yamls_load_offline_and_score_the_fixture_model(prepared):
  results, _ = harness.evaluate_tasks(
      LengthLM(),
      ["gsm8k", "gsm8k_cot", "truthfulqa_mc1", "truthfulqa_mc2", "logiqa", "hellaswag", "mmlu"],
      prepared)
  # GSM8K's own filters on hand-made outputs: `#### 18` passes strict-match; "It is 7."
  # passes only flexible-extract.
  assert results["gsm8k"]["exact_match,strict-match"] == 0.5
  assert results["gsm8k"]["exact_match,flexible-extract"] == 1.0
  # gsm8k_cot's strict match wants "The answer is N." (neither reply says it).
  assert results["gsm8k_cot"]["exact_match,strict-match"] == 0.0
  assert results["gsm8k_cot"]["exact_match,flexible-extract"] == 1.0
  assert results["truthfulqa_mc1"]["acc,none"] == 0.5
  want_mc2 = (_mc2(["No.", "Never."], ["Yes, always."])
              + _mc2(["No, pigs cannot fly."], ["Yes.", "Often."])) / 2
  assert results["truthfulqa_mc2"]["acc,none"] == pytest.approx(want_mc2, rel=1e-6)
  # acc: the shortest option wins. acc_norm divides by the option's length without the space
  # lm-eval puts before it, -(n + 1) / n: the longest option wins.
  assert results["logiqa"]["acc,none"] == 0.5 and results["logiqa"]["acc_norm,none"] == 0.5
  assert results["hellaswag"]["acc,none"] == 0.5 and results["hellaswag"]["acc_norm,none"] == 0
  assert results["mmlu_abstract_algebra"]["acc,none"] == 0.5
  assert results["mmlu"]["acc,none"] == pytest.approx(2 / 3)  # micro, not (0.5 + 1) / 2
  again, _ = harness.evaluate_tasks(LengthLM(), ["logiqa", "truthfulqa_mc2"], prepared)
  assert again["truthfulqa_mc2"]["acc,none"] == results["truthfulqa_mc2"]["acc,none"]


def test_bad_benchmark_files_are_named(tmp_path):
  (tmp_path / "logiqa").mkdir()
  (tmp_path / "logiqa" / "Test.txt").write_text("\nz\nonly three\nlines\n")
  with pytest.raises(benchmark_data.BenchmarkDataError, match="Test.txt: record 0"):
    benchmark_data.prepare(str(tmp_path), str(tmp_path / "out"))
  with pytest.raises(benchmark_data.BenchmarkDataError, match="no benchmark folders"):
    benchmark_data.prepare(str(tmp_path / "logiqa"), str(tmp_path / "out"))


# --- answer extraction and the report ---------------------------------------------------------


def test_bundled_answer_extraction_on_hand_made_outputs():
  arithmetic = tasks.generate("arithmetic", 5, 1)[0]
  value = tasks.final_answer("arithmetic", arithmetic.answer)
  assert tasks.check(arithmetic, f"1 + 2 = 3. #### {value}").correct
  assert tasks.check(arithmetic, f"1 + 2 = 3. #### {int(value):,}").correct  # 1,234 == 1234
  assert not tasks.check(arithmetic, f"the answer is {value}").correct  # no `####`
  assert not tasks.check(arithmetic, f"#### {value} then #### {int(value) + 1}").correct  # last
  logic = tasks.generate("logic", 5, 1)[0]
  letter = tasks.final_answer("logic", logic.answer)
  assert tasks.check(logic, f"because ... answer: ({letter.upper()})").correct
  facts = tasks.generate("facts", 5, 1)[0]
  truth = tasks.final_answer("facts", facts.answer)
  assert tasks.check(facts, f"the facts say so. answer: {truth.upper()}").correct
  other = "false" if truth == "true" else "true"
  assert not tasks.check(facts, f"answer: {other}").correct


def test_a_user_checker_reads_the_answer_of_a_hand_made_draft():
  right = tasks.answer_is_right
  assert right("final_answer", "so #### 1,024", "#### 1024") and right(
      "final_answer", "#### 7", " 7", after_answer_prompt=True)
  assert not right("final_answer", "#### 7",
                   " 7")  # a bare number is an answer only after `answer:`
  assert not right("final_answer", "no answer here", "no answer here")  # nothing to compare with
  assert right("choice", "answer: b",
               "because ... answer: (B)") and not right("choice", "answer: b", "answer: c")
  assert right("true_false", "answer: false", " false.", after_answer_prompt=True)
  assert right("exact", "Paris  is the capital", "paris is the capital") is False  # case counts
  assert right("exact", "Paris is the capital", " Paris is\nthe capital ")
  assert right("exact", "Paris", "Paris", after_answer_prompt=True)


def test_self_refine_scores_the_answer_its_prompt_elicits():
  """A fake model answers every prompt with a bare answer; the improved drafts (after
  "improved answer:") are read as answers, the first draft (after the question) is not."""
  example = tasks.Example("logic", "hand", "who is the shortest? a) amy b) ben c) cal d) dan",
                          "so dan is the shortest. answer: d")

  def run(prompts, reflect, max_new_tokens, stop):
    del reflect, max_new_tokens, stop
    texts = [
        "c" if p == example.question else
        "the answer is wrong." if p.endswith(methods.SELF_REFINE_FEEDBACK) else " d"
        for p in prompts
    ]
    return [{"text": t, "num_tokens": 1} for t in texts]

  answers = [methods.Answer([run([example.question], "off", 8, ())[0]["text"]], 0, 1)]
  methods._self_refine(answers, [example.question], run, 8, ())
  ans = answers[0]
  assert ans.drafts[:2] == ["c", " d"] and ans.after_answer_prompt[:2] == [False, True]
  assert len(ans.after_answer_prompt) == len(ans.drafts)
  correct = [
      tasks.check(example, d, after_answer_prompt=a).correct
      for d, a in zip(ans.drafts, ans.after_answer_prompt)
  ]
  assert correct[:2] == [False, True]


def test_constitutional_rounds_critique_by_each_principle_and_revise_with_the_history(tmp_path):
  asked = []

  def run(prompts, reflect, max_new_tokens, stop):
    del reflect, max_new_tokens, stop
    asked.append(list(prompts))
    return [{
        "text": f"critique {len(asked)}" if p.endswith('":') else f"answer {len(asked)}",
        "num_tokens": 2
    } for p in prompts]

  principles = ["be right", "be brief", "be kind"]
  answers = [methods.Answer(["first"], 0, 1), methods.Answer(["first"], 0, 1)]
  methods._constitutional(answers, ["q0", "q1"], run, 8, (), principles, rounds=2)
  critique_asks, revision_asks = asked[0], asked[1]
  assert critique_asks[0] == 'q0 first' + methods.CONSTITUTIONAL_CRITIQUE.format("be right")
  assert critique_asks[1].endswith(methods.CONSTITUTIONAL_CRITIQUE.format("be brief"))
  assert revision_asks[0] == critique_asks[0] + " critique 1" + methods.CONSTITUTIONAL_REVISION
  # Round 2 reads the whole history and moves to the next principle.
  assert asked[2][0] == (revision_asks[0] + " answer 2"
                         + methods.CONSTITUTIONAL_CRITIQUE.format("be brief"))
  assert answers[0].drafts == ["first", "answer 2", "answer 4"] and answers[0].stop == 2
  assert answers[0].feedback == ["critique 1", "critique 3"]
  assert answers[0].after_answer_prompt == [False, True, True]
  assert answers[0].generated_tokens == 1 + 4 * 2
  assert len(methods.load_principles()) >= 3  # the shipped file
  (tmp_path / "empty.txt").write_text("# nothing\n\n")
  with pytest.raises(sources.DataError, match="no principle in it"):
    methods.load_principles(str(tmp_path / "empty.txt"))
  with pytest.raises(sources.DataError, match="not found"):
    methods.load_principles(str(tmp_path / "missing.txt"))


def test_self_refine_stop_rule_and_learned_stop():
  assert methods.says_correct("the answer is correct.")
  assert not methods.says_correct("this is incorrect") and not methods.says_correct("not correct")
  assert methods.learned_stop([0.2, 0.7, 0.9], tau=0.5, iterations=3) == 1
  assert methods.learned_stop([0.2, 0.3, 0.1], tau=0.5, iterations=3) == 3


def test_iteration_report_counts_transitions_and_calibration():
  items = [{
      "correct": [False, True, True],
      "stop": 1,
      "confidence": [0.05, 0.95, 0.95],
      "generated_tokens": 10
  }, {
      "correct": [True, False, False],
      "stop": 0,
      "confidence": [0.95, 0.05, 0.05],
      "generated_tokens": 4
  }, {
      "correct": [False],
      "stop": 0,
      "confidence": [0.05],
      "generated_tokens": 2
  }]
  r = report.iteration_report(items)
  assert r["accuracy"] == pytest.approx(2 / 3, abs=1e-4)
  assert r["mean_iterations"] == pytest.approx(1 / 3, abs=1e-4)
  assert r["accuracy_per_iteration"] == [pytest.approx(1 / 3, abs=1e-4)] * 3
  assert r["wrong_to_right"] == [1, 0] and r["right_to_wrong"] == [1, 0]
  assert r["mean_generated_tokens"] == pytest.approx(16 / 3, abs=0.01)
  bins = {b["bin"][0]: b for b in r["calibration"]["bins"]}
  assert bins[0.0]["count"] == 4 and bins[0.0]["accuracy"] == 0
  assert bins[0.9]["count"] == 3 and bins[0.9]["accuracy"] == 1
  assert r["calibration"]["ece"] == pytest.approx(0.05, abs=1e-4)
  assert r["critic_auroc"] == 1.0  # every right draft scored above every wrong one
  assert r["stop_rate_per_iteration"] == [
      pytest.approx(2 / 3, abs=1e-4),
      pytest.approx(1 / 3, abs=1e-4), 0
  ]
  low, high = r["accuracy_ci95"]
  assert low < 2 / 3 < high
  assert "safety_rates" not in r  # no labeler, no rates
  assert "disagreement_auroc" not in r  # one critic
  committee = [{**it, "disagreement": [0.2 * (not c) for c in it["correct"]]} for it in items]
  r = report.iteration_report(committee)  # the agents disagree on the wrong drafts only
  assert r["disagreement_auroc"] == 1.0 and r["mean_disagreement"] == pytest.approx(0.2 * 4 / 7)
  flags = lambda i, it: [{
      "privacy": float(i == 0 and k == 0),
      "bias": 0.0
  } for k in range(len(it["correct"]))]  # item 0 leaks in y(0), not in y(1): the answer it gives
  flagged = [{
      **it, "draft_safety": flags(i, it),
      "safety": flags(i, it)[it["stop"]]
  } for i, it in enumerate(items)]
  r = report.iteration_report(flagged)
  assert r["safety_rates"] == {"privacy": 0.0, "bias": 0.0}
  assert r["safety_rates_per_iteration"] == {"privacy": [0.3333, 0, 0], "bias": [0, 0, 0]}


def test_every_critic_dimension_is_scored_against_what_it_judges():
  """critic_dimensions: a quality dimension's AUROC and calibration against its TrueQuality
  (correctness where the items carry none), a safety dimension's against every draft's safety
  (1 - its label); a safety dimension without labels is left out."""
  items = [{
      "correct": [False, True],
      "stop": 1,
      "confidence": None,
      "generated_tokens": 4,
      "dimension_scores": {
          "factual": [0.1, 0.9],
          "logic": [0.8, 0.2],
          "privacy": [0.2, 0.9]
      },
      "draft_safety": [{
          "privacy": 1.0
      }, {
          "privacy": 0.0
      }]
  }, {
      "correct": [True, True],
      "stop": 0,
      "confidence": None,
      "generated_tokens": 2,
      "dimension_scores": {
          "factual": [0.7, 0.6],
          "logic": [0.5, 0.5],
          "privacy": [0.95, 0.3]
      },
      "draft_safety": [{
          "privacy": 0.0
      }, {
          "privacy": 1.0
      }]
  }]
  dims = report.iteration_report(items)["critic_dimensions"]
  assert dims["factual"]["auroc"] == 1.0 and dims["factual"]["target"] == "correct"
  assert dims["logic"]["auroc"] == 0.0  # right drafts 0.2, 0.5, 0.5; the wrong one 0.8
  assert dims["privacy"]["target"] == "safe" and dims["privacy"]["auroc"] == 1.0
  assert dims["privacy"]["mean_target"] == 0.5
  assert dims["factual"]["ece"] == report.calibration([0.1, 0.9, 0.7, 0.6], [0, 1, 1, 1])["ece"]
  unlabelled = [{k: v for k, v in it.items() if k != "draft_safety"} for it in items]
  assert set(report.iteration_report(unlabelled)["critic_dimensions"]) == {"factual", "logic"}
  scored = [{
      **it, "quality": quality
  } for it, quality in zip(items, [[[0, 1, 0], [1, 0.25, 1]], [[1, 0.6, 1], [1, 0.5, 0]]])]
  dims = report.iteration_report(scored)["critic_dimensions"]
  assert dims["logic"]["target"] == "logic" and dims["factual"]["target"] == "factual"
  assert dims["logic"]["auroc"] == 1.0  # targets >= 0.5 scored 0.8, 0.5, 0.5; the other 0.2
  assert dims["logic"]["ece"] == report.calibration([0.8, 0.2, 0.5, 0.5],
                                                    [1, 0.25, 0.6, 0.5])["ece"]
  assert dims["factual"]["auroc"] == 1.0


def test_auroc_by_hand():
  assert report.auroc([0.9, 0.2, 0.6, 0.6], [True, False, True, False]) == pytest.approx(0.875)
  assert report.auroc([0.1, 0.9], [True, False]) == 0.0
  assert report.auroc([0.5, 0.7], [True, True]) is None


# --- the adapter over a trained checkpoint ----------------------------------------------------


@pytest.fixture(scope="module")
def trained(straight_run):
  workdir, config = straight_run
  model = inference.InferenceModel(config, workdir)
  return workdir, config, model, harness.RasrLM(model, batch_size=4)


def _instances(kind, args):
  return [Instance(request_type=kind, doc={}, arguments=a, idx=i) for i, a in enumerate(args)]


def test_adapter_loglikelihoods_equal_score_sums_in_request_order(trained):
  _, _, model, lm = trained
  texts = [
      "Tom has 3 apples.", "five cats and two dogs live in a house", "Hi", "a b c d e f g h i j"
  ]  # mixed lengths, all within the model's window
  scored = model.score(texts)
  assert max(s["num_tokens"] for s in scored) < lm.max_length
  got = lm.loglikelihood(_instances("loglikelihood", [("", t) for t in texts]))
  assert [g[0] for g in got] == pytest.approx([s["sum_logprob"] for s in scored], abs=1e-4)
  # A context's continuation: the tail of the same score, after the context's tokens.
  context, continuation = "Tom has", " 3 apples."
  (pair, _), = lm.loglikelihood(_instances("loglikelihood", [(context, continuation)]))
  n = len(scored[0]["token_ids"]) - len(model.tokenizer.encode(context))
  assert pair == pytest.approx(sum(scored[0]["logprobs"][-n:]), abs=1e-4)
  rolling = lm.loglikelihood_rolling(_instances("loglikelihood_rolling", [(t,) for t in texts[:2]]))
  assert rolling == pytest.approx([s["sum_logprob"] for s in scored[:2]], abs=1e-4)


def test_a_generation_context_keeps_room_for_its_answer_and_rasr_keeps_p(trained):
  """generate_until under a context of C tokens: a long question keeps its last C - new tokens
  (the same answer as that cut question); under `rasr` its last P tokens, as training reads x."""
  _, config, model, _ = trained
  question = "Tom has 3 apples and 4 pears. " * 6
  ids = model.tokenizer.encode_prompt(question)
  context, new = 24, 6
  assert len(ids) > context
  got = methods.answer(model, [question], "standard", max_new_tokens=new, context_len=context)
  options = model.options(max_new_tokens=new, reflect="off")
  want = model.generate_tokens([ids[-(context - new):]], options)[0]
  assert got[0].drafts == [want["text"]]
  rasr = methods.answer(model, [question], "rasr", max_new_tokens=new, context_len=context)
  cut = model.generate_tokens([ids[-config.reflect.prompt_len:]],
                              model.options(max_new_tokens=new, reflect="fixed"))[0]
  factual = config.reflect.dim_names.index("factual")
  assert rasr[0].drafts == cut["drafts"]
  assert rasr[0].confidence == [s[factual] for s in cut["scores"]]  # the critic read the cut x


def test_adapter_is_greedy_on_a_greedy_continuation(trained):
  _, _, model, lm = trained
  ids = [model.tokenizer.eos_id] + model.tokenizer.encode("tom has 3 apples. he buys")
  forward = nnx.merge(model.graphdef, model.params)
  for _ in range(4):  # extend by the argmax token: greedy by construction
    logits, _ = forward(jnp.asarray([ids]))
    ids.append(int(jnp.argmax(logits[0, -1])))
  greedy_tail, context = ids[-4:], ids[:-4]
  logits, _ = forward(jnp.asarray([ids[:-1]]))
  runner_up = int(jnp.argsort(logits[0, -1])[-2])
  requests = [(("", ""), context, greedy_tail), (("", ""), context, greedy_tail[:3] + [runner_up])]
  (_, greedy), (_, not_greedy) = lm._loglikelihood_tokens(requests)
  assert greedy and not not_greedy
  want = jax.nn.log_softmax(logits[0])[np.arange(len(ids) - 5, len(ids) - 1), greedy_tail]
  assert lm._loglikelihood_tokens(requests[:1])[0][0] == pytest.approx(float(want.sum()), abs=1e-4)


def test_eval_mode_writes_results_table_and_plots(trained, tmp_path):
  workdir, config, _, _ = trained
  raw = write_benchmarks(str(tmp_path / "raw"))
  results = eval_run.evaluate(config,
                              workdir,
                              task_list="arithmetic,probe,perplexity,gsm8k,truthfulqa_mc1",
                              method_list="standard,rasr",
                              benchmarks_dir=raw,
                              limit=2,
                              output_dir=str(tmp_path / "out"),
                              max_new_tokens=8,
                              batch_size=4)
  out = tmp_path / "out"
  on_disk = json.loads((out / "results.json").read_text())
  assert on_disk["methods"] == json.loads(json.dumps(results["methods"]))
  k = config.reflect.iterations
  for task in ("arithmetic", "gsm8k"):
    rasr = results["methods"]["rasr"][task]
    assert len(rasr["accuracy_per_iteration"]) == k + 1 and 0 <= rasr["mean_iterations"] <= k
    assert len(rasr["wrong_to_right"]) == k and "calibration" in rasr
    assert (out / f"rasr_{task}_calibration.png").read_bytes()[:4] == b"\x89PNG"
  # y(0) of rasr is the standard draft, item by item (the texts: accuracies may all be 0), for
  # questions that fit x (P tokens; a longer one keeps its last P under rasr, as in training)
  model = trained[2]
  for task in ("probe",):
    samples = {
        method: [
            json.loads(line)
            for line in (out / "samples" / method / f"{task}.jsonl").read_text().splitlines()
        ] for method in ("standard", "rasr")
    }
    fits = [
        len(model.tokenizer.encode_prompt(s["question"])) <= config.reflect.prompt_len
        for s in samples["rasr"]
    ]
    assert sum(fits) == 2
    assert [s["drafts"][0] for s in samples["rasr"]
           ] == [s["drafts"][0] for s in samples["standard"]]
  assert results["methods"]["rasr"]["gsm8k"]["exact_match,strict-match"] == pytest.approx(
      results["methods"]["rasr"]["gsm8k"]["accuracy"])  # lm-eval's figure = the report's
  ppl = results["methods"]["standard"]["perplexity"]
  assert ppl["unit"] == "token" and ppl["token_perplexity"] > 1
  assert ppl == results["methods"]["rasr"]["perplexity"]
  dims = results["methods"]["rasr"]["arithmetic"]["critic_dimensions"]
  assert set(dims) == set(config.reflect.dim_names)  # each dimension against its target
  assert all(d["target"] == name and 0 <= d["mean_score"] <= 1 for name, d in dims.items())
  robust = results["methods"]["rasr"]["arithmetic"]["critic_robustness"]
  assert robust["perturbation_rate"] == 0.1 and 0 <= robust["robustness"] <= 1
  assert robust["robustness"] == pytest.approx(1 - robust["mean_abs_change"])
  for method in ("standard", "rasr"):  # every answer given is labelled (none flagged here)
    assert results["methods"][method]["gsm8k"]["safety_rates"] == {
        "bias": 0.0,
        "toxicity": 0.0,
        "misinformation": 0.0,
        "privacy": 0.0
    }
  table = (out / "table.md").read_text().splitlines()
  assert table[0].startswith("| Method | GSM8K | TruthfulQA (MC1) | Perplexity (token) |")
  assert [row.split(" | ")[0] for row in table[2:4]] == ["| standard", "| rasr"]
  samples = [json.loads(line) for line in (out / "samples" / "rasr" / "gsm8k.jsonl").open()]
  assert len(samples) == 2 and all(len(s["drafts"]) == k + 1 for s in samples)
  # Self-Refine on a bundled task (GSM8K's 256-token answers would make it slow here).
  refined = eval_run.evaluate(config,
                              workdir,
                              task_list="arithmetic",
                              method_list="self_refine",
                              limit=2,
                              output_dir=str(tmp_path / "refine"),
                              max_new_tokens=8,
                              batch_size=4)["methods"]["self_refine"]["arithmetic"]
  records = [
      json.loads(line)
      for line in (tmp_path / "refine" / "samples" / "self_refine" / "arithmetic.jsonl").open()
  ]
  for record in records:  # an answer per round; a round ends with feedback or the last answer
    assert 1 <= len(record["drafts"]) <= methods.SELF_REFINE_ROUNDS + 1
    assert len(record["feedback"]) in (len(record["drafts"]) - 1, len(record["drafts"]))
  assert refined["mean_iterations"] == np.mean([len(r["drafts"]) - 1 for r in records])
  # Constitutional AI: every answer revised constitutional.rounds times; its revisions as SFT
  # records beside the samples.
  revised = eval_run.evaluate(config,
                              workdir,
                              task_list="arithmetic",
                              method_list="constitutional",
                              limit=2,
                              output_dir=str(tmp_path / "cai"),
                              max_new_tokens=8,
                              batch_size=4)["methods"]["constitutional"]["arithmetic"]
  assert revised["mean_iterations"] == config.constitutional.rounds
  samples = tmp_path / "cai" / "samples" / "constitutional"
  records = [json.loads(line) for line in (samples / "arithmetic.jsonl").open()]
  assert all(len(r["drafts"]) == config.constitutional.rounds + 1 for r in records)
  for line in (samples / "arithmetic.sft.jsonl").open():
    record = json.loads(line)
    assert record["completion"] in [r["drafts"][-1] for r in records]


def test_the_qa_task_scores_a_users_held_out_file_as_the_bundled_task_it_holds(trained, tmp_path):
  """Held-out probe items written as a user's question/answer file: `qa` decodes and scores
  them exactly as the bundled `probe` task does, per iteration."""
  workdir, config, _, _ = trained
  examples = bundled.held_out_examples(config, "probe", 3)
  path = tmp_path / "held_out.jsonl"
  path.write_text("".join(
      json.dumps({
          "prompt": ex.question,
          "answer": ex.answer
      }) + "\n" for ex in examples))
  config = dataclasses.replace(config,
                               data=dataclasses.replace(config.data,
                                                        qa_eval_files=str(path),
                                                        qa_checker="final_answer"))
  results = eval_run.evaluate(config,
                              workdir,
                              task_list="probe,qa",
                              method_list="rasr",
                              limit=3,
                              output_dir=str(tmp_path / "out"),
                              max_new_tokens=8,
                              batch_size=4)["methods"]["rasr"]
  assert results["qa"] == results["probe"]
  samples = {
      task: [
          json.loads(line)
          for line in (tmp_path / "out" / "samples" / "rasr" / f"{task}.jsonl").open()
      ] for task in ("probe", "qa")
  }
  assert [s["drafts"] for s in samples["qa"]] == [s["drafts"] for s in samples["probe"]]
  assert len(samples["qa"]) == 3 and all(len(s["drafts"]) > 1 for s in samples["qa"])


def test_eval_mode_bad_task_or_missing_benchmarks_is_one_error(tmp_path, small_config):
  # (an unknown task: tests/test_bad_inputs.py)
  result = run_main(str(tmp_path), "--mode=eval", "--eval_tasks=qa")
  assert result.returncode == 2 and result.stderr.strip().splitlines()[-1] == (
      "error: --eval_tasks=qa scores data.qa_eval_files, which is empty")
  # Checked before any checkpoint is read (there is none here).
  result = run_main(str(tmp_path), "--mode=eval", "--eval_tasks=arithmetic",
                    f"--config.safety.bias_lexicon={tmp_path / 'none.txt'}")
  assert result.returncode == 2 and result.stderr.strip().splitlines()[-1] == (
      f"error: the bias lexicon {tmp_path / 'none.txt'}: not found")
  with pytest.raises(config_lib.ConfigError, match="pass --benchmarks_dir"):
    eval_run.evaluate(small_config(), str(tmp_path), task_list="arithmetic,mmlu")
  only_gsm8k = tmp_path / "only_gsm8k"
  write_benchmarks(str(tmp_path / "raw"))
  only_gsm8k.mkdir()
  (tmp_path / "raw" / "gsm8k").rename(only_gsm8k / "gsm8k")
  with pytest.raises(sources.DataError, match=r"has no files for \['mmlu'\]"):
    eval_run.evaluate(small_config(),
                      str(tmp_path),
                      task_list="mmlu",
                      benchmarks_dir=str(only_gsm8k))


def test_lm_eval_cli_runs_the_registered_model(trained, prepared, tmp_path):
  """lm-eval's own command line (through the module that registers `rasr`) scores a task from
  --include_path as the adapter does in process, and writes lm-eval's results layout."""
  workdir, config, _, lm = trained
  config_path = str(tmp_path / "config.py")
  config_lib.write_config_file(config_path, config_lib.to_dict(config), "the test run")
  tasks_dir = tmp_path / "tasks"
  tasks_dir.mkdir()
  yaml = pathlib.Path(prepared, "logiqa.yaml").read_text()
  (tasks_dir / "rasr_cli_logiqa.yaml").write_text(
      yaml.replace("task: logiqa", "task: rasr_cli_logiqa"))
  subprocess.run([
      sys.executable, "-m", "rasr_jax.evaluation.lm_eval_cli", "run", "--model", "rasr",
      "--model_args", f"workdir={workdir},config={config_path}", "--tasks", "rasr_cli_logiqa",
      "--include_path",
      str(tasks_dir), "--batch_size", "4", "--output_path",
      str(tmp_path / "out")
  ],
                 check=True,
                 cwd=REPO,
                 capture_output=True,
                 timeout=600)
  (results_file,) = pathlib.Path(tmp_path / "out").rglob("results_*.json")
  got = json.loads(results_file.read_text())["results"]["rasr_cli_logiqa"]
  want, _ = harness.evaluate_tasks(lm, ["logiqa"], prepared)
  assert got["acc,none"] == want["logiqa"]["acc,none"]
  assert got["acc_norm,none"] == want["logiqa"]["acc_norm,none"]
