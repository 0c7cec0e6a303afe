"""rasr_jax: JAX/Flax pretraining with Recursive Alignment via Self-Reflection.

Folders, lowest floor first; a module imports its own floor and those below, never one above
(tests/test_house.py checks it):
  config, sharding, distributed   the validated config, the mesh and its one rules table;
  progress, storage, rounding     progress lines, paths on any filesystem, shape rounding
  tasks                           bundled verifiable tasks: generators and checkers
  model/                          layers, transformer (+ KV cache), heads, sampling, decoding
  reflection/                     the RASR loop's one home: layout and special ids, loop state,
                                  critique / decide / refine steps, quality oracles
  data/                           tokenizers, document sources, the grain pipeline
  training/                       state, optimizer, losses, the step, the loop, checkpoints,
                                  metrics, FLOPs, fault injection
  generation/                     draft-critique-refine generation; checkpoint -> model host side
  evaluation/, interop/           lm-eval adapter and reports; HuggingFace import / export
  modes/, main                    the command line: describe, compile, and the entry point

Dimension letters, one legend for the whole package (shape comments and einsums use them; a file
may not redefine a letter):
  B batch (reflection rows are a batch too)   T query length     S key / cache length
  D model width      F MLP width      N query heads      K kv heads       G = N / K
  H head width       V vocabulary     L layers           R refinement iterations
  C critic dimensions                 P reflection prompt length
  Y reflection target / draft length  A critic agents    M mesh devices
  E sentences of a draft (a hierarchical critic's)
"""
