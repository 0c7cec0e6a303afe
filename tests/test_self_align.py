"""Self-alignment rounds (--mode=self_align): a 2-round run on the tiny config end to end, a
resume that repeats no finished work, the ranking rule, diversity figures, the rounds' learning
rate and held-out perplexity, and bad input (the eval extra missing among it)."""

import json
import os
import types

import pytest

from conftest import REPO, losses, make_config, run_main
from rasr_jax import config as config_lib
from rasr_jax.evaluation import diversity
from rasr_jax.evaluation import run as evaluation
from rasr_jax.posttrain import self_align
from rasr_jax.safety import labels

ROUNDS = {
    "data.seq_len": 96,  # a question and its response fit a row
    "self_align.tasks": "arithmetic,facts",
    "self_align.prompts": 6,
    "self_align.samples": 2,
    "self_align.max_new_tokens": 16,
    "self_align.sft_steps": 3,
    "self_align.eval_items": 4,
}


def _config(tmp_path, **overrides):
  return make_config(**{
      **ROUNDS, "train.steps": 8,
      "self_align.output": str(tmp_path / "rounds"),
      **overrides
  })


def test_a_round_fine_tunes_at_its_share_of_the_learning_rate(tmp_path):
  config = _config(tmp_path, **{"train.lr": 2e-3, "self_align.lr_ratio": 0.25})
  sft_config = self_align._sft_config(self_align.Rounds(config, str(tmp_path), None), 1)
  assert sft_config.train.lr == pytest.approx(5e-4)
  assert sft_config.train.steps == config.self_align.sft_steps


def test_a_round_reports_no_perplexity_without_held_out_documents(tmp_path):
  (tmp_path / "train.txt").write_text("a document\n", encoding="utf-8")
  config = _config(tmp_path, **{"data.source": "files", "data.files": str(tmp_path / "train.txt")})
  assert evaluation.held_out_perplexity(types.SimpleNamespace(config=config), 4) is None


def _mtimes(folder):
  return {
      os.path.join(root, name): os.stat(os.path.join(root, name)).st_mtime_ns
      for root, _, names in os.walk(folder) for name in names
  }


def test_two_rounds_end_to_end_and_a_resume_repeats_nothing(straight_run, tmp_path):
  workdir, _ = straight_run
  one = self_align.run(_config(tmp_path, **{"self_align.rounds": 1}), workdir)
  assert [r["round"] for r in one["rounds"]] == [1]
  round_one = _mtimes(tmp_path / "rounds" / "round_1")
  summary = self_align.run(_config(tmp_path, **{"self_align.rounds": 2}), workdir)
  assert _mtimes(tmp_path / "rounds" / "round_1") == round_one  # round 1 is not redone
  assert [r["round"] for r in summary["rounds"]] == [1, 2]
  for report in summary["rounds"]:
    assert report["prompts"]["template"] == 3
    assert report["prompts"]["self_written"] + report["prompts"]["self_written_dropped"] == 3
    assert report["samples"] == 2 * (3 + report["prompts"]["self_written"])
    assert set(report["held_out_accuracy"]) == {"arithmetic", "facts"}
    assert 1 < report["held_out_perplexity"] < 1024  # above certainty, below the uniform vocab
    assert set(report["safety_rates"]) == set(labels.Labeler().dimensions)
    assert 0 < report["diversity"]["distinct_1"] <= 1
    assert report["mean_critic"] is not None and 0 <= report["mean_critic"] <= 1
    assert report["sft"]["steps"] == 3 and report["sft"]["last_loss"] > 0
  assert 1 < summary["initial"]["held_out_perplexity"] < 1024
  samples = [
      json.loads(line)
      for line in open(tmp_path / "rounds" / "round_2" / "samples.jsonl", encoding="utf-8")
  ]
  kept = [s for s in samples if s["kept"]]
  assert 0 < len(kept) <= len({(s["source"], s["text"]) for s in samples})
  # Killed after its SFT, before its report: the rerun neither samples nor trains again.
  os.remove(tmp_path / "rounds" / "round_2" / "report.json")
  before = _mtimes(tmp_path / "rounds" / "round_2" / "train")
  round_two_losses = losses(tmp_path / "rounds" / "round_2" / "train")
  again = self_align.run(_config(tmp_path, **{"self_align.rounds": 2}), workdir)
  assert again["rounds"][1]["held_out_accuracy"] == summary["rounds"][1]["held_out_accuracy"]
  after = _mtimes(tmp_path / "rounds" / "round_2" / "train")
  assert {
      p: t for p, t in after.items() if "checkpoints" in p
  } == {
      p: t for p, t in before.items() if "checkpoints" in p
  }
  assert losses(tmp_path / "rounds" / "round_2" / "train") == round_two_losses
  # Other settings in the same folder are refused, naming the folder.
  with pytest.raises(config_lib.ConfigError, match="holds rounds of other settings"):
    self_align.run(_config(tmp_path, **{"self_align.samples": 3}), workdir)


def test_the_best_response_of_each_prompt_is_kept():
  """The checker outweighs the critic, a safety label costs a point, an empty response is never
  kept, and a prompt the model wrote is ranked by the critic alone."""
  prompt = self_align.Prompt("arithmetic", self_align.TEMPLATE, "what is 2 + 2?", "#### 4", 0)
  written = self_align.Prompt("arithmetic", self_align.SELF_WRITTEN, "what is 3 + 3?", None, 0)
  responses = [["\n#### 5", "\n#### 4", "\n#### 4 mail me at a@b.com"],
               ["\n#### 6", "\n#### 7", " "]]
  critic = {
      "\n#### 5": 0.9,
      "\n#### 4": 0.1,
      "\n#### 4 mail me at a@b.com": 0.9,
      "\n#### 6": 0.2,
      "\n#### 7": 0.3,
      " ": 1.0
  }
  records = self_align.rank([prompt, written], responses,
                            lambda prompts, texts: [critic[t] for t in texts], labels.Labeler())
  assert [r["kept"] for r in records] == [False, True, False, False, True, False]
  assert records[1]["reward"] == pytest.approx(1.1)
  assert records[2]["reward"] == pytest.approx(0.9)  # right, but it leaks an e-mail address
  assert records[4]["right"] is None and records[4]["reward"] == pytest.approx(0.3)


def test_diversity_figures():
  assert diversity.distinct_n(["a b a b"], 1) == 0.5
  assert diversity.distinct_n(["a b", "a b"], 2) == 0.5
  assert diversity.distinct_n([""], 1) == 0.0
  assert diversity.self_bleu([["the cat sat on the mat"] * 3]) == pytest.approx(1.0)
  assert diversity.self_bleu([["the cat sat on the mat", "dogs run in wide green fields"]]) < 0.1
  assert diversity.self_bleu([["alone"]]) is None


@pytest.mark.parametrize("override, message", [
    ("--config.self_align.tasks=arithmetic,chess", "config.self_align.tasks="),
    ("--config.self_align.rounds=0", "config.self_align.rounds=0: must be > 0"),
    ("--config.self_align.lr_ratio=0", "config.self_align.lr_ratio=0"),
    ("--config.self_align.self_written=1.5", "config.self_align.self_written=1.5: must be in"),
])
def test_bad_self_align_settings_are_one_error_line(override, message, tmp_path):
  result = run_main(str(tmp_path), "--mode=self_align", override, timeout=120)
  assert result.returncode == 2
  assert result.stderr.strip().splitlines()[-1].startswith(f"error: {message}")


def test_self_align_without_the_eval_extra_is_one_error_line(tmp_path):
  hide = tmp_path / "site"  # a sitecustomize that makes lm_eval look uninstalled
  hide.mkdir()
  (hide / "sitecustomize.py").write_text(
      "import importlib.util\n"
      "_find_spec = importlib.util.find_spec\n"
      "importlib.util.find_spec = lambda name, package=None: (\n"
      "    None if name == 'lm_eval' else _find_spec(name, package))\n",
      encoding="utf-8")
  result = run_main(str(tmp_path),
                    "--mode=self_align",
                    timeout=120,
                    env={"PYTHONPATH": f"{hide}{os.pathsep}{REPO}"})
  assert result.returncode == 2
  assert result.stderr.strip().splitlines()[-1] == (
      "error: --mode=self_align needs the eval extra (pip install -e '.[eval]'): lm_eval not "
      "installed")
