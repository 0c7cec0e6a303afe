"""AvR Stage II: greedy refinement search serialised into long answers (`avr.stage=search`),
and length-controlled preference pairs of sampled long answers (`avr.stage=final_pairs`).

search: from the Stage I model, each prompt's y0 is refined greedily for up to
`avr.search_rounds` rounds: a round samples `avr.critiques` critiques of the latest answer and
`avr.improvements` improvements per critique (the refinement conversation of avr.py), and keeps
the best improvement (with its critique) only when it raises the reward; the first round
without a gain ends the search. Every trajectory with at least one kept round is written out
as one long answer (data/chat.py: `### Draft`, `### Critique`, `### Improved answer`, ...,
`### Final answer`) and becomes an SFT record {"messages": [user: x, assistant: long answer]}.

final_pairs: the model fine-tuned on those records writes `avr.samples` long answers per
prompt; the reward scores each one's final answer (the text after the final-answer marker). The
best and the worst form a pair (prompt x, chosen and rejected: the whole long answers) when they
score differently, unless the chosen final answer has more tokens than the rejected one (the
length control of AvR's Stage II: such pairs are dropped, counted in the summary). At test
time the answer is the final answer (evaluation method `avr`).
"""

import dataclasses
import os

import numpy as np

from rasr_jax.data import chat
from rasr_jax.data.chat import Turn
from rasr_jax.posttrain import avr


@dataclasses.dataclass(frozen=True)
class Trajectory:
  """One prompt's greedy search: every kept answer raised the reward."""
  prompt: str
  answers: tuple[str, ...]  # y0, y1, ...
  critiques: tuple[str, ...]  # the critique before each of y1, y2, ...
  rewards: tuple[float, ...]  # r(y0), r(y1), ...: rising

  def conversation(self):
    """The refinement conversation through the last kept answer."""
    return avr.conversation(self.prompt, self.answers, self.critiques)


def search(model, prompts, reward, cfg, seed) -> list:
  """The greedy searches of `prompts` (model: an InferenceModel), batched round by round."""
  J, K = cfg.critiques, cfg.improvements
  y0 = avr.sample(model, [[Turn("user", p.text)] for p in prompts], cfg, seed)
  found = [Trajectory(p.text, (y,), (), (reward(p, y),)) for p, y in zip(prompts, y0)]
  active = [i for i, t in enumerate(found) if avr.usable(t.answers[0])]
  for round_index in range(cfg.search_rounds):
    if not active:
      break
    asks = [avr.critique_request(found[i].conversation()) for i in active for _ in range(J)]
    critiques = avr.sample(model, asks, cfg, seed + 1 + 2 * round_index)  # [active J]
    improve = [
        avr.improve_request(asks[c], critiques[c]) for c in range(len(asks)) for _ in range(K)
    ]
    improvements = avr.sample(model, improve, cfg, seed + 2 + 2 * round_index)  # [active J K]
    still = []
    for slot, i in enumerate(active):
      # the round's usable improvements (with their critiques), by reward
      usable = [(reward(prompts[i], improvements[c]), c)
                for c in range(slot * J * K, (slot + 1) * J * K)
                if avr.usable(improvements[c], critiques[c // K])]
      kept = found[i]
      score, best = max(usable, key=lambda sc: sc[0], default=(None, None))  # first on a tie
      if usable and score > kept.rewards[-1]:
        found[i] = Trajectory(kept.prompt, kept.answers + (improvements[best],), kept.critiques +
                              (critiques[best // K],), kept.rewards + (score,))
        still.append(i)
    active = still
  return found


def sft_record(trajectory):
  """A trajectory with a kept round as an SFT record of its long answer, else None."""
  if len(trajectory.answers) < 2:
    return None
  long_answer = chat.write_refinement(trajectory.answers, trajectory.critiques)
  return {
      "messages": [{
          "role": "user",
          "content": trajectory.prompt
      }, {
          "role": "assistant",
          "content": long_answer
      }],
      "rewards": list(trajectory.rewards)
  }


def search_chunk(model, prompts, reward, cfg, seed) -> list:
  return [dataclasses.asdict(t) for t in search(model, prompts, reward, cfg, seed)]


def write_search(records, output, rows: avr.Rows) -> dict:
  """search.jsonl (every trajectory) and sft.jsonl (records too long for `rows` left out,
  counted as `too_long`); returns the summary."""
  found = [
      Trajectory(r["prompt"], tuple(r["answers"]), tuple(r["critiques"]), tuple(r["rewards"]))
      for r in records
  ]
  sft, too_long = rows.keep([r for r in map(sft_record, found) if r is not None])
  avr.write_jsonl(os.path.join(output, "search.jsonl"), records)
  avr.write_jsonl(os.path.join(output, "sft.jsonl"), sft)
  return {
      "trajectories": len(found),
      "sft_records": len(sft),
      "too_long": too_long,
      "improved": float(np.mean([len(t.answers) > 1 for t in found])) if found else 0.0,
      "rounds_kept": avr.distribution([len(t.answers) - 1 for t in found]),
      "reward_y0": avr.distribution([t.rewards[0] for t in found]),
      "reward_gain": avr.distribution([t.rewards[-1] - t.rewards[0] for t in found]),
  }


def finals_chunk(model, prompts, reward, cfg, seed) -> list:
  """`avr.samples` long answers per prompt, each with its final answer, that answer's reward
  and its length in tokens (all three None for a long answer without the final-answer
  marker: it gives no answer)."""
  options = model.options(max_new_tokens=chat.long_answer_tokens(cfg.max_new_tokens,
                                                                 cfg.search_rounds),
                          temperature=cfg.temperature,
                          top_p=cfg.top_p,
                          reflect="off")
  tokens = [
      chat.prompt_tokens([Turn("user", p.text)], False, model.tokenizer)
      for p in prompts
      for _ in range(cfg.samples)
  ]
  texts = [r["text"] for r in model.generate_tokens(tokens, options, seed=seed)]
  records = []
  for i, prompt in enumerate(prompts):
    responses = texts[i * cfg.samples:(i + 1) * cfg.samples]
    finals = [chat.final_answer(t) for t in responses]
    records.append({
        "prompt": prompt.text,
        "responses": responses,
        "finals": finals,
        "rewards": [None if f is None else reward(prompt, f) for f in finals],
        "final_tokens": [None if f is None else len(model.tokenizer.encode(f)) for f in finals]
    })
  return records


def final_pair(record):
  """(the pair of the best and worst long answer with a final answer, or None; whether length
  control dropped it)."""
  rewards = record["rewards"]
  answered = [i for i, r in enumerate(rewards) if r is not None]
  if not answered:
    return None, False
  best = max(answered, key=lambda i: rewards[i])
  worst = min(answered, key=lambda i: rewards[i])
  if rewards[best] <= rewards[worst]:
    return None, False
  if record["final_tokens"][best] > record["final_tokens"][worst]:
    return None, True
  return avr.pair([Turn("user", record["prompt"])], record["responses"][best],
                  record["responses"][worst], "final", record["rewards"][best],
                  record["rewards"][worst]), False


def write_finals(records, output, rows: avr.Rows) -> dict:
  """samples.jsonl (every sampled long answer) and pairs.jsonl (pairs too long for `rows` left
  out, counted as `too_long`); returns the summary."""
  outcomes = [final_pair(r) for r in records]
  pairs, too_long = rows.keep([p for p, _ in outcomes if p is not None])
  avr.write_jsonl(os.path.join(output, "samples.jsonl"), records)
  avr.write_jsonl(os.path.join(output, "pairs.jsonl"), pairs)
  return {
      "prompts":
          len(records),
      "pairs":
          len(pairs),
      "dropped_longer_chosen":
          sum(dropped for _, dropped in outcomes),
      "too_long":
          too_long,
      "no_final_answer":
          sum(r is None for record in records for r in record["rewards"]),
      "reward_final":
          avr.distribution([r for record in records for r in record["rewards"] if r is not None]),
  }
