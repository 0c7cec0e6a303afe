"""Every configuration field of rasr_jax, with its default and a one-line comment.

No logic and no I/O: other config files start from `get_config()` here and change fields.
Fields are read by `rasr_jax/config.py`, which validates them into frozen dataclasses.
"""

from ml_collections import config_dict


def get_config():
  c = config_dict.ConfigDict()
  c.seed = 0  # seeds parameter init, data order, dropout-free sampling and reflection windows
  # Parameters to start a new run from: WORKDIR/imported_params written by
  # `python -m rasr_jax.interop.hf import`, or a training run's work directory, checkpoints
  # directory or step directory (its newest step; its tokenizer too when data.tokenizer is
  # empty); "" = random init. Ignored when resuming.
  c.init_from = ""

  c.model = config_dict.ConfigDict()
  c.model.vocab_size = 1024  # embedding rows; must be >= the tokenizer's vocabulary
  c.model.d_model = 128  # residual width D
  c.model.num_layers = 2  # transformer blocks L (stacked and scanned)
  c.model.num_heads = 4  # query heads N
  c.model.num_kv_heads = 2  # key/value heads K (grouped-query attention); divides num_heads
  c.model.head_dim = 32  # per-head width H
  c.model.mlp_dim = 384  # SwiGLU hidden width F
  c.model.rope_theta = 10000.0  # rotary base frequency
  # Rotary frequency scaling, as HF configs name it: default | linear (all frequencies / factor)
  # | llama3 (long wavelengths / factor, short ones kept, a blend between; the wavelength bounds
  # are rope_original_max_positions / rope_low_freq_factor and / rope_high_freq_factor).
  c.model.rope_type = "default"
  c.model.rope_factor = 1.0
  c.model.rope_low_freq_factor = 1.0
  c.model.rope_high_freq_factor = 4.0
  c.model.rope_original_max_positions = 8192
  # Context length the model was made for (written as max_position_embeddings on export);
  # 0 = data.seq_len.
  c.model.max_positions = 0
  c.model.norm_eps = 1e-5  # RMSNorm epsilon
  c.model.init_std = 0.02  # stddev of the normal initialiser for weight matrices
  c.model.tie_embeddings = False  # share the input embedding with the LM head
  c.model.attention_bias = False  # biases on the q, k, v projections (Qwen2's layout)
  # auto (dense on CPUs, splash on TPUs, cuDNN flash attention on GPUs with 16-bit activations,
  # else XLA) | xla | dense (einsums, probabilities recomputed in the backward pass) | cudnn |
  # splash (Pallas, TPUs) | blockwise (blocks with an online softmax, masked blocks skipped);
  # docs/performance.md
  c.model.attention_impl = "auto"
  c.model.param_dtype = "float32"  # parameter (and optimizer state) dtype
  c.model.dtype = "float32"  # compute dtype: float32 or bfloat16
  # Per-block rematerialisation, cheapest first: none | dots | dots_no_batch | full, or auto (the
  # cheapest whose compiled step fits the device memory; rasr_jax/training/memory_fit.py).
  c.model.remat_policy = "none"
  # Blocks run per iteration of the scanned loop over layers: 1 compiles one block, num_layers
  # unrolls them all (longer compiles; faster steps on CPUs: docs/performance.md).
  c.model.scan_unroll = 1

  c.data = config_dict.ConfigDict()
  # bundled (generated verifiable tasks) | files (.txt, .jsonl, .array_record, .parquet)
  c.data.source = "bundled"
  c.data.files = ""  # comma-separated globs of data files when source=files
  # Instead of data.files, a weighted mixture "GLOBS=WEIGHT;GLOBS=WEIGHT" (each component's
  # comma-separated globs; the weights are each one's share of the documents drawn).
  c.data.mixture = ""
  c.data.text_field = "text"  # the text's field in .jsonl / JSON ArrayRecord / Parquet files
  c.data.eval_files = ""  # held-out globs (source=files); bundled data holds out another seed
  # Question/answer data (.jsonl with `prompt` and `answer`): reflection rows, and documents of
  # the corpus too. The checker reads answers: exact | final_answer (#### N) | choice
  # (answer: <a-d>) | true_false (answer: true|false). Bundled data brings its own.
  c.data.qa_files = ""
  c.data.qa_checker = "exact"
  c.data.qa_eval_files = ""  # held-out question/answer files: --mode=eval --eval_tasks=qa
  c.data.bundled_examples = 20000  # number of generated task documents when source=bundled
  # Their shares by task, "TASK=WEIGHT,TASK=WEIGHT" (a task not named is left out); empty = the
  # default mix of rasr_jax/tasks/corpus.py.
  c.data.bundled_mix = ""
  c.data.seq_len = 128  # tokens per training row T (packed)
  # A sentencepiece .model, an HF tokenizer.json, or a folder holding one (local or gs://);
  # empty = train one on the corpus into the workdir.
  c.data.tokenizer = ""
  c.data.tokenizer_sample_docs = 50000  # documents the tokenizer trainer reads at most
  # Packed rows: a token attends only to its own document, positions restart per document, and
  # no target is predicted across a document boundary (False: plain causal rows).
  c.data.document_masking = True
  c.data.invalid_utf8 = "error"  # policy for invalid UTF-8 in files: error | replace
  # A file document longer than this is refused at start-up, naming file and line: usually a
  # .txt without line breaks or a broken JSONL field (0 = no limit). Documents longer than a
  # row are split across rows.
  c.data.max_document_chars = 1_000_000
  c.data.num_workers = 0  # grain worker processes (0 = in-process); part of the data state
  # Row streams over disjoint document shards that fill each batch (0 = one per process). A
  # fixed count makes the batches independent of the process count; a multiple of it.
  c.data.streams = 0

  c.train = config_dict.ConfigDict()
  c.train.steps = 200  # optimizer updates in the whole run
  c.train.batch_size = 16  # global batch (rows of seq_len tokens) per optimizer update
  # Micro-batches per update (accumulated inside the jitted step), or "auto": the smallest whose
  # compiled step fits the device memory (rasr_jax/training/memory_fit.py).
  c.train.grad_accum_steps = config_dict.FieldReference(1, field_type=object)
  # Caps the device memory the "auto" settings fit into, GiB (0 = no cap: what the device reports;
  # CPUs report none, so a fake-device compile check passes the accelerator's).
  c.train.memory_limit_gib = 0.0
  c.train.lr = 2e-4  # peak learning rate of the generator group
  c.train.warmup_steps = 20  # linear warm-up steps from 0 to the peak
  c.train.end_lr_ratio = 0.1  # final learning rate of the cosine decay, as a fraction of the peak
  c.train.weight_decay = 0.1  # AdamW decoupled weight decay (weights only: optim.decays)
  c.train.b1 = 0.9  # AdamW first-moment decay
  c.train.b2 = 0.95  # AdamW second-moment decay
  c.train.eps = 1e-8  # AdamW epsilon
  c.train.grad_clip = 1.0  # global gradient-norm clip (applied to the whole gradient)
  c.train.critic_lr = 1e-4  # peak learning rate of the critic group (phi)
  c.train.controller_lr = 5e-5  # peak learning rate of the controller group (xi)
  c.train.log_every_steps = 10  # steps between metric records in metrics.jsonl / tensorboard
  c.train.eval_every_steps = 0  # steps between held-out evaluations (0 = only after the last step)
  c.train.eval_batches = 2  # held-out batches per evaluation (0 = no evaluation)
  c.train.peak_flops_per_device = 0.0  # MFU denominator in FLOP/s; 0 = look up or measure
  # Non-finite loss or gradients: the update is always dropped inside the step (state kept,
  # `skipped_updates` counts it); "stop" also ends the run there (exit code 3, no checkpoint of
  # that step), "skip" trains on. The loop reads no flag from the device per step: "stop" reads
  # every step's flag at the next log or checkpoint step, before writing anything of it.
  c.train.nan_policy = "stop"
  # "FIRST,LAST": write a jax.profiler trace of steps FIRST..LAST to WORKDIR/profile ("" = none).
  c.train.profile_steps = ""

  c.reflect = config_dict.ConfigDict()  # RASR (design/RASR.md); off = standard pretraining
  c.reflect.enabled = False  # add the critic, the controller and R refinement iterations
  # Where reflection rows come from: qa (question/answer rows: bundled tasks or data.qa_files) |
  # text (windows of the packed corpus) | mixed (half each).
  c.reflect.source = "qa"
  c.reflect.iterations = 3  # R: draft-critique-refine iterations per step (0 = critic only)
  c.reflect.rows = 0  # rows of the global batch that reflect (0 = batch/8, at least one per shard)
  c.reflect.prompt_len = 128  # P: tokens of the prompt x (RASR.md §10)
  c.reflect.target_len = 64  # Y: tokens of the target y* (and the most of every draft)
  # autoregressive (drafts decoded from x, as at inference) | teacher_forced (sampled from the
  # standard pass's logits under an aligned mask: a control whose drafts carry no information
  # the standard pass lacked)
  c.reflect.draft_mode = "autoregressive"
  c.reflect.draft_temperature = 0.0  # sampling temperature of drafts (0 = argmax)
  c.reflect.critic_dims = "factual,logic,relevance"  # critic dimensions (any non-empty subset)
  # Safety dimensions the critic also scores, each trained on its programmatic label of the
  # draft (docs/ufarsap.md#safety-dimensions): any of bias, toxicity, misinformation, privacy,
  # and robustness (the critic's own stability under perturbed questions).
  c.reflect.safety_dims = ""
  c.reflect.alpha = 0.6  # weight of L_standard
  c.reflect.beta = 0.3  # weight of L_reflection
  c.reflect.gamma = 0.1  # weight of L_critic
  c.reflect.learned_stopping = True  # the controller may stop an example (off: always R iterations)
  c.reflect.stop_warmup = 0.25  # fraction of train.steps before stopping takes effect (all refine)
  c.reflect.tau = 0.5  # stopping threshold: stop when R_xi > tau
  c.reflect.stop_budget = 0.0  # target mean iterations; > 0 adapts tau each step (0 = fixed tau)
  c.reflect.tau_lr = 0.01  # eta_tau: step size of the tau adaptation
  c.reflect.quality_target = 0.9  # stop target: y(k) already this good (weighted TrueQuality)
  c.reflect.min_gain = 0.01  # stop target: refining gained at most this much quality
  c.reflect.controller_hidden = 64  # width of the controller MLP
  # The critic committee (UFARSAP, docs/ufarsap.md): A critic agents, each a
  # full critic with its own initialisation, combined by learned consensus weights; with A > 1
  # their disagreement is one more soft token of the refine pass. 1 = one critic.
  c.reflect.critics = config_dict.ConfigDict()
  c.reflect.critics.agents = 1
  # Hierarchical critics (docs/ufarsap.md#hierarchical-critics): the critique c combines a token,
  # a sentence and a document scale with learned weights.
  c.reflect.critics.hierarchy = False
  # UFARSAP's unified loss (docs/ufarsap.md#the-unified-loss): lambda_i of every paradigm loss
  # (in place of alpha, beta, gamma and the controller's 1; adaptive strategies still choose the
  # first three) and lambda_coord of the coordination terms, seed 003's defaults.
  c.reflect.unified = config_dict.ConfigDict()
  c.reflect.unified.enabled = False
  c.reflect.unified.paradigm_weight = 0.2
  c.reflect.unified.coordination_weight = 0.15
  # Adaptive strategy evolution (docs/ufarsap.md#adaptive-strategy-evolution): candidate loss
  # weight vectors "alpha,beta,gamma;..." among which a multiplicative-weights bandit chooses
  # every `every_steps` steps, by the held-out quality gain of a look-ahead update ("" = off:
  # alpha, beta and gamma above, fixed).
  c.reflect.strategies = config_dict.ConfigDict()
  c.reflect.strategies.weights = ""
  c.reflect.strategies.every_steps = 50
  c.reflect.strategies.eta = 1.0

  # Supervised fine-tuning (--mode=sft; docs/posttraining.md): .jsonl records with `messages`
  # (role/content turns) or `prompt` + `completion`; the loss counts only the responses.
  c.sft = config_dict.ConfigDict()
  c.sft.files = ""  # comma-separated globs of the training records
  c.sft.eval_files = ""  # held-out records ("" = no held-out evaluation)

  # Direct preference optimisation (--mode=dpo; docs/posttraining.md): .jsonl records with
  # `prompt`, `chosen`, `rejected` (and an optional `type`), against a frozen reference model
  # whose log-probabilities are computed once, before training.
  c.dpo = config_dict.ConfigDict()
  c.dpo.files = ""  # comma-separated globs of the training pairs
  c.dpo.eval_files = ""  # held-out pairs ("" = no held-out evaluation)
  c.dpo.reference = ""  # the reference model's checkpoint, as init_from names one ("" = init_from)
  c.dpo.beta = 0.1  # strength of the KL penalty to the reference (sigmoid DPO's beta)
  c.dpo.label_smoothing = 0.0  # the chance a pair's preference is flipped (conservative DPO)
  # none | drop_longer (pairs whose chosen response has more tokens are left out: AvR's Stage II)
  # | normalize (log-probabilities per response token, so length cannot carry the margin)
  c.dpo.length_control = "none"

  # AvR data (--mode=avr_data; docs/posttraining.md): refinement trees (Stage I) and greedy
  # refinement searches (Stage II) from the model's own generator, scored by a reward.
  c.avr = config_dict.ConfigDict()
  # trees (Stage I) | search (Stage II: greedy search -> long answers for SFT) | final_pairs
  # (Stage II: length-controlled pairs of the SFT model's sampled long answers)
  c.avr.stage = "trees"
  # Prompts: .jsonl with `prompt` (and `answer`, read by data.qa_checker, when the checker
  # scores); "" = the bundled tasks' questions.
  c.avr.prompts_file = ""
  c.avr.num_prompts = 256  # prompts at most
  # The reward: "" = the task checker (1 right, 0 wrong); "critic" = the model's own RASR critic
  # (its weighted score, a model with reflection heads); "module:function" = a Python function
  # called as function(prompt, response) -> float.
  c.avr.reward = ""
  c.avr.critiques = 2  # critiques of y0 per prompt
  c.avr.improvements = 2  # improvements per critique
  c.avr.temperature = 0.7  # sampling temperature of every response
  c.avr.top_p = 0.8  # nucleus of every response
  c.avr.max_new_tokens = 64  # tokens per response, at most
  c.avr.search_rounds = 5  # Stage II: critique-improve rounds at most (while the reward rises)
  c.avr.samples = 4  # Stage II final_pairs: long answers sampled per prompt
  c.avr.chunk_prompts = 64  # prompts per chunk of trees written (a killed run resumes there)
  c.avr.output = ""  # the output folder ("" = WORKDIR/avr/<stage>)

  # The Constitutional AI baseline (--eval_methods=constitutional; docs/evaluation.md).
  c.constitutional = config_dict.ConfigDict()
  # One principle a line ("" = the shipped rasr_jax/evaluation/principles.txt).
  c.constitutional.principles_file = ""
  c.constitutional.rounds = 2  # critique-revision rounds per answer

  # Autonomous self-alignment (--mode=self_align; docs/ufarsap.md#self-alignment-rounds): rounds
  # of prompts from task templates (some written by the model), sampled responses ranked by the
  # checker, the critic and the safety labels, and SFT on the best response per prompt.
  c.self_align = config_dict.ConfigDict()
  c.self_align.rounds = 2
  c.self_align.tasks = "arithmetic,logic,facts"  # bundled tasks whose templates give the prompts
  c.self_align.prompts = 64  # prompts per round
  c.self_align.self_written = 0.5  # the share of them the model writes itself
  c.self_align.samples = 4  # responses sampled per prompt
  c.self_align.temperature = 0.8
  c.self_align.top_p = 0.95
  c.self_align.max_new_tokens = 64  # tokens per response (and per written prompt), at most
  c.self_align.sft_steps = 50  # SFT steps per round on the kept responses
  c.self_align.lr_ratio = 0.1  # their peak learning rate: train.lr x this (1 forgets the corpus)
  c.self_align.eval_items = 50  # held-out items per task for each round's accuracy
  c.self_align.output = ""  # "" = WORKDIR/self_align

  # Safety labels (docs/ufarsap.md#safety-labels): the lexicons of toxicity and bias ("" = the
  # shipped ones), or a hook "module:function" (text -> score in [0, 1]) that replaces one.
  # --mode=eval reports each label's rate among the answers given.
  c.safety = config_dict.ConfigDict()
  c.safety.toxicity_lexicon = ""
  c.safety.bias_lexicon = ""
  c.safety.toxicity_hook = ""
  c.safety.bias_hook = ""

  c.checkpoint = config_dict.ConfigDict()
  c.checkpoint.every_steps = 100  # steps between checkpoints (the last step is always saved)
  c.checkpoint.max_to_keep = 3  # newest checkpoints kept on disk
  c.checkpoint.async_save = True  # write checkpoints in a background thread

  c.metrics = config_dict.ConfigDict()
  # Also log every metric record to this Weights & Biases project ("" = off; needs the optional
  # wandb package). The run id follows the work directory, so a resume continues the run.
  c.metrics.wandb_project = ""

  c.mesh = config_dict.ConfigDict()
  c.mesh.data = 1  # pure data-parallel axis (-1 = fill with the remaining devices)
  c.mesh.fsdp = -1  # fully sharded data-parallel axis: params and batch (-1 = fill)
  c.mesh.tensor = 1  # tensor-parallel axis: heads, MLP and vocab (-1 = fill)
  # DCN granules (TPU slices; processes elsewhere) the data axis spans; > 1 builds a hybrid
  # mesh with `data / dcn_data` replicas inside each granule (multislice TPU, GPU hosts).
  c.mesh.dcn_data = 1
  return c
