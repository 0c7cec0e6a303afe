"""lm-evaluation-harness over a rasr_jax checkpoint: the `LM` adapter and offline task runs.

`RasrLM` implements lm-eval's `loglikelihood` (through `TemplateLM`, which moves a context's
trailing spaces onto the continuation), `loglikelihood_rolling` and `generate_until`, batched,
results in request order. Every sequence is read after the tokenizer's start token (its bos, or
`<eos>`), as `--mode=score` reads texts (the empty-context case of `TemplateLM` gives the same:
the start token is its prefix token). Contexts
are left-truncated to the model's `data.seq_len` tokens.

`generate_until` answers with one of the methods of `methods.py`. For `rasr` every draft is
decoded once and cached; `pick` chooses which one is returned (`None`: the answer at the
learned stop, `k`: y(k)), so lm-eval can score y(0), y(1), ... with its own filters and metrics
without decoding again.

The adapter is registered with lm-eval as `rasr`, so that lm-eval's own CLI runs it:
`python -m rasr_jax.evaluation.lm_eval_cli --model rasr --model_args workdir=W,config=FILE`
(see that module).

lm-eval is an optional extra: `pip install -e .[eval]`.
"""

import lm_eval
import numpy as np
from lm_eval import utils as lm_utils
from lm_eval.api.model import TemplateLM
from lm_eval.api.registry import register_model
from lm_eval.tasks import TaskManager

from rasr_jax import config as config_lib
from rasr_jax.evaluation import methods
from rasr_jax.generation import inference

DEFAULT_MAX_GEN_TOKS = 256  # lm-eval's default for generate_until


@register_model("rasr")
class RasrLM(TemplateLM):
  """lm-eval's model interface over an `inference.InferenceModel`.

  lm-eval builds it from `--model_args`: workdir (required), config (a config file; default
  WORKDIR/config.py, which `import` writes), checkpoint (a step or checkpoints directory;
  default the newest, else the imported parameters), method (standard | cot | self_refine |
  constitutional | chat | avr | rasr), seed; and its own `--batch_size` (an int; `auto` is read
  as 8).
  """

  def __init__(self, model, *, method="standard", batch_size=8, seed=0):
    super().__init__()
    if method not in methods.METHODS:
      raise ValueError(f"unknown method {method!r}; expected one of {methods.METHODS}")
    self.model = model
    self.method = method
    self.batch_size = batch_size
    self.seed = seed
    self.pick = None  # rasr: None = the learned stop's answer, k = draft y(k)
    self.answers = {}  # (context, generation settings) -> methods.Answer

  @classmethod
  def create_from_arg_string(cls, arg_string, additional_config=None):
    return cls.create_from_arg_obj(lm_utils.simple_parse_args_string(arg_string), additional_config)

  @classmethod
  def create_from_arg_obj(cls, arg_dict, additional_config=None):
    args = {**{k: v for k, v in (additional_config or {}).items() if v is not None}, **arg_dict}
    workdir = args.get("workdir")
    if not workdir:
      raise ValueError("--model_args needs workdir=DIR (and config=FILE unless DIR/config.py)")
    config = config_lib.load(
        config_lib.config_file(args.get("config") or config_lib.workdir_config_file(workdir)))
    batch_size = args.get("batch_size", 8)
    return cls(inference.InferenceModel(config, workdir, args.get("checkpoint")),
               method=args.get("method", "standard"),
               batch_size=int(batch_size) if str(batch_size).isdigit() else 8,
               seed=int(args.get("seed", 0)))

  @property
  def eot_token_id(self):
    return self.model.tokenizer.eos_id

  @property
  def prefix_token_id(self):  # what an empty context is read after
    return self.model.tokenizer.start_id

  @property
  def max_length(self):
    return self.model.config.data.seq_len

  def tok_encode(self, string, add_special_tokens=None, **kwargs):
    del add_special_tokens, kwargs  # the tokenizer adds no special tokens
    return self.model.tokenizer.encode(string)

  def _encode_pair(self, context, continuation):
    """A non-empty context is read after the start token too, like every document in
    training."""
    context_ids, continuation_ids = super()._encode_pair(context, continuation)
    return [self.prefix_token_id] + context_ids, continuation_ids

  def _loglikelihood_tokens(self, requests, disable_tqdm=False, **kwargs):
    """requests: ((context, continuation), context ids, continuation ids) -> (sum of the
    continuation's log-probabilities, whether greedy decoding would produce it), in order."""
    del disable_tqdm, kwargs
    sequences, lengths = [], []
    for _, context, continuation in requests:
      sequences.append((context + continuation)[-(self.max_length + 1):])
      lengths.append(len(continuation))
    order = sorted(range(len(sequences)), key=lambda i: -len(sequences[i]))  # fewer pad columns
    scored = self.model.score_tokens([sequences[i] for i in order], self.batch_size)
    results = [None] * len(sequences)
    for i, (logprobs, greedy) in zip(order, scored):
      start = max(len(logprobs) - lengths[i], 0)  # a continuation cut by the window: its tail
      results[i] = (float(np.sum(logprobs[start:], dtype=np.float64)), bool(np.all(greedy[start:])))
    return results

  def loglikelihood_rolling(self, requests, disable_tqdm=False):
    del disable_tqdm
    return self.rolling_logprobs([request.args[0] for request in requests])

  def rolling_logprobs(self, texts):
    """Total log-likelihood of each text: windows of `max_length` tokens, every token predicted
    once, the first after the start token."""
    windows, owners = [], []
    for index, text in enumerate(texts):
      for context, target in map(
          lm_utils.make_disjoint_window,
          lm_utils.get_rolling_token_windows(self.tok_encode(text),
                                             prefix_token=self.prefix_token_id,
                                             max_seq_len=self.max_length,
                                             context_len=1)):
        windows.append(((text, ""), context, target))
        owners.append(index)
    totals = np.zeros(len(texts))
    for index, (logprob, _) in zip(owners, self._loglikelihood_tokens(windows)):
      totals[index] += logprob
    return [float(t) for t in totals]

  def generate_until(self, requests, disable_tqdm=False):
    """Each context continued by the adapter's method, cut at the first `until` string."""
    del disable_tqdm
    groups = {}  # generation settings -> request indices
    for index, request in enumerate(requests):
      groups.setdefault(generation_settings(request.args[1]), []).append(index)
    outputs = [None] * len(requests)
    for settings, indices in groups.items():
      until, max_tokens, temperature = settings
      todo = sorted({
          requests[i].args[0]
          for i in indices
          if (requests[i].args[0], settings) not in self.answers
      })
      if todo:
        answers = methods.answer(self.model,
                                 todo,
                                 self.method,
                                 max_new_tokens=max_tokens,
                                 stop=until,
                                 temperature=temperature,
                                 seed=self.seed,
                                 batch_size=self.batch_size,
                                 context_len=self.max_length)
        self.answers.update({(context, settings): a for context, a in zip(todo, answers)})
      for i in indices:
        answer = self.answers[(requests[i].args[0], settings)]
        outputs[i] = (answer.final if self.pick is None else answer.drafts[min(
            self.pick,
            len(answer.drafts) - 1)])
    return outputs

  def answer_for(self, context, gen_kwargs):
    """The cached methods.Answer of a generate_until request."""
    return self.answers[(context, generation_settings(gen_kwargs))]


def generation_settings(gen_kwargs):
  """(stop strings, max new tokens, temperature) of lm-eval's generation kwargs."""
  until = gen_kwargs.get("until") or []
  until = (until,) if isinstance(until, str) else tuple(until)
  temperature = float(gen_kwargs.get("temperature", 0.0)) if gen_kwargs.get("do_sample") else 0.0
  return until, int(gen_kwargs.get("max_gen_toks", DEFAULT_MAX_GEN_TOKS)), temperature


def evaluate_tasks(lm, task_names, tasks_dir, *, limit=None):
  """lm-eval's `simple_evaluate` over the YAMLs in `tasks_dir` (no stock task is indexed):
  (results by task, per-sample records by task)."""
  manager = TaskManager(include_path=tasks_dir, include_defaults=False)
  out = lm_eval.simple_evaluate(model=lm,
                                tasks=list(task_names),
                                task_manager=manager,
                                limit=limit,
                                log_samples=True,
                                bootstrap_iters=1000)
  return out["results"], out.get("samples", {})
