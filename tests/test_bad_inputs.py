"""RELIABILITY.md item 8: each bad input ends the real CLI with one `error:` line naming the
problem, exit code 2, before anything compiles, and no existing checkpoint changes (every file of
a trained work directory hashed before and after). How fast each case ends is printed (the
figure in docs/results.md), not asserted: a loaded machine must not fail the suite."""

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from array_record.python import array_record_module

from conftest import REPO, cli_args, subprocess_env
from rasr_jax.data import documents

W = "{trained}"  # a copy of a trained work directory (checkpoints, tokenizer)
FILES = "--config.data.source=files"


def _cases(tmp):
  """(name, work directory, extra arguments, environment, words the error line contains)."""

  def write(name, data):
    path = os.path.join(tmp, name)
    with open(path, "wb") as f:
      f.write(data)
    return path

  empty, bad_utf8 = write("empty.txt", b" \n"), write("bad.txt", b"ok \xff\xfe text")
  not_json, no_field = write("bad.jsonl", b'{"text": "a"}\nnope\n'), write("f.jsonl", b'{"b": 1}\n')
  corrupt_tokenizer = write("corrupt.model", b"\x00not a sentencepiece model")
  corrupt_tokenizer_json = write("tokenizer.json", b'{"model": {"type": "BPE"')
  long_document = write("long.txt", b"short\n\n" + b"x" * 2000 + b"\n")
  no_text_column = os.path.join(tmp, "body.parquet")
  pq.write_table(pa.table({"body": ["a", "b"]}), no_text_column)
  shards = os.path.join(tmp, "shards")  # token shards of a tokenizer no run has
  os.makedirs(shards)
  writer = array_record_module.ArrayRecordWriter(os.path.join(shards, "shard-00000.array_record"),
                                                 "group_size:1")
  for i in range(8):
    writer.write(np.arange(2, 12 + i, dtype=np.int32).tobytes())
  writer.close()
  with open(os.path.join(shards, documents.TOKENS_META), "w") as f:
    json.dump(
        {
            "format": documents.TOKENS_FORMAT,
            "version": documents.TOKENS_VERSION,
            "tokenizer_sha256": "0" * 64,
            "shards": ["shard-00000.array_record"]
        }, f)
  shard_glob = os.path.join(shards, "*.array_record")
  fresh = os.path.join(tmp, "fresh")
  unwritable = os.path.join(tmp, "unwritable")  # its checkpoints/ is sysfs: not even root writes
  os.makedirs(unwritable)
  os.symlink("/sys/kernel", os.path.join(unwritable, "checkpoints"))
  return [
      # config: keys, types, ranges, rules
      ("unknown key", W, ["--config.model.num_layerz=3"], {},
       ["config.model.num_layerz", "unknown"]),
      ("unknown section key", W, ["--config.trian.steps=3"], {}, ["config.trian"]),
      ("wrong type", W, ["--config.train.steps=abc"], {}, ["config.train.steps", "abc"]),
      ("negative rate", W, ["--config.train.lr=-0.1"], {}, ["config.train.lr", "> 0"]),
      ("zero size", W, ["--config.model.d_model=0"], {}, ["config.model.d_model", "> 0"]),
      ("non-finite rate", W, ["--config.train.lr=nan"], {}, ["config.train.lr", "finite"]),
      ("heads vs kv heads", W, ["--config.model.num_kv_heads=3"], {},
       ["config.model.num_heads", "num_kv_heads"]),
      ("unknown dtype", W, ["--config.model.dtype=float16"], {}, ["config.model.dtype", "float16"]),
      ("unknown nan policy", W, ["--config.train.nan_policy=maybe"], {},
       ["config.train.nan_policy", "maybe"]),
      ("reflection rows", W, ["--config.reflect.rows=16"], {}, ["config.reflect.rows"]),
      ("zero checkpoint interval", W, ["--config.checkpoint.every_steps=0"], {},
       ["config.checkpoint.every_steps"]),
      ("missing config file", W, ["--config=/nonexistent/c.py"], {},
       ["no config file at /nonexistent/c.py"]),
      ("unknown mode", W, ["--mode=fly"], {}, ["--mode", "fly"]),
      ("bad fault spec", W, [], {
          "RASR_FAULTS": "nan_at=3"
      }, ["RASR_FAULTS"]),
      ("unknown save phase", W, [], {
          "RASR_FAULTS": "crash_in_save=3:write"
      }, ["RASR_FAULTS", "'crash_in_save=3:write'", "request, commit, done"]),
      ("commit fault on sync saves", W, ["--config.checkpoint.async_save=False"], {
          "RASR_FAULTS": "crash_in_save=3:commit"
      }, ["RASR_FAULTS", "checkpoint.async_save"]),
      # mesh
      ("mesh product", W, ["--config.mesh.fsdp=1",
                           "--config.mesh.data=2"], {}, ["mesh", "device count 1"]),
      ("two fill axes", W, ["--config.mesh.data=-1"], {}, ["mesh", "-1"]),
      # data
      ("glob matches nothing", fresh, [FILES, "--config.data.files=/nonexistent/*.txt"], {},
       ["/nonexistent/*.txt", "matches no file"]),
      ("empty file", fresh, [FILES, f"--config.data.files={empty}"], {}, [empty, "empty"]),
      ("invalid UTF-8", fresh, [FILES, f"--config.data.files={bad_utf8}"], {},
       [bad_utf8, "invalid UTF-8 at byte offset 3"]),
      ("not JSON", fresh, [FILES,
                           f"--config.data.files={not_json}"], {}, [not_json, "line 2",
                                                                    "not JSON"]),
      ("missing text field", fresh, [FILES,
                                     f"--config.data.files={no_field}"], {}, [no_field, "'text'"]),
      ("document far longer than a row", fresh,
       [FILES, f"--config.data.files={long_document}", "--config.data.max_document_chars=1000"
       ], {}, [long_document, "line 3", "2,000 characters", "max_document_chars=1,000"]),
      ("Parquet without the text column", fresh, [FILES, f"--config.data.files={no_text_column}"],
       {}, [no_text_column, "no string column 'text'"]),
      ("negative mixture weight", fresh, [FILES, f"--config.data.mixture={empty}=-1;{bad_utf8}=1"],
       {}, ["config.data.mixture", "weight must be a finite number > 0"]),
      ("zero mixture weight", fresh, [FILES, f"--config.data.mixture={empty}=0;{bad_utf8}=1"], {},
       ["config.data.mixture", "weight must be a finite number > 0"]),
      ("token shards and no tokenizer", fresh,
       [FILES, f"--config.data.files={shard_glob}", "--config.reflect.source=text"
       ], {}, ["token shards, which hold no text", "config.data.tokenizer"]),
      ("token shards of another tokenizer", W,
       [FILES, f"--config.data.files={shard_glob}", "--config.reflect.source=text"
       ], {}, ["converted with the tokenizer of sha256 " + "0" * 64]),
      ("unsupported extension", fresh, [FILES, f"--config.data.files={corrupt_tokenizer}"], {},
       [corrupt_tokenizer, "extension"]),
      # tokenizer
      ("missing tokenizer", fresh, ["--config.data.tokenizer=/nonexistent/t.model"], {},
       ["/nonexistent/t.model"]),
      ("corrupt tokenizer", fresh, [f"--config.data.tokenizer={corrupt_tokenizer}"], {},
       [corrupt_tokenizer, "sentencepiece"]),
      # remote paths that cannot be opened: refused, and no local "ftp:" folder appears
      ("unknown scheme", "ftp://host/run", [], {},
       ["--workdir='ftp://host/run'", "ftp:// is not a storage scheme"]),
      ("remote data without its backend", fresh, [FILES, "--config.data.files=s3://bucket/*.jsonl"],
       {}, ["config.data.files", "s3:// paths need the s3fs package"]),
      ("remote benchmark data", W, ["--mode=eval", "--benchmarks_dir=gs://bucket/benchmarks"], {},
       ["--benchmarks_dir", "must be a local path"]),
      ("tokenizer.json that does not parse", fresh,
       [f"--config.data.tokenizer={corrupt_tokenizer_json}"
       ], {}, [corrupt_tokenizer_json, "not a valid tokenizer.json"]),
      ("tokenizer larger than the model", W, ["--config.model.vocab_size=256"], {}, ["vocab"]),
      # checkpoint
      ("checkpoint of another model", W, ["--config.model.mlp_dim=96"], {},
       ["does not match", "mlp"]),
      ("another model's dtype", W, ["--config.model.param_dtype=bfloat16"], {},
       ["does not match", "bfloat16"]),
      ("data changed since the checkpoint", W, ["--config.data.bundled_examples=1000"], {},
       ["data files", "data_fingerprint"]),
      ("another data order than the checkpoint's", W, ["--config.seed=5"], {},
       ["seed=5 differs from the checkpoint's 0"]),
      ("unwritable checkpoint directory", unwritable, [], {},
       [f"checkpoint directory {unwritable}/checkpoints is not writable"]),
      ("generate without a checkpoint", fresh, ["--mode=generate", "--prompt=hi"], {},
       ["no checkpoint at", "/checkpoints (train first, or pass --checkpoint)"]),
      ("generate from a missing step", W,
       ["--mode=generate", "--prompt=hi", "--checkpoint=/nonexistent/checkpoints/7"
       ], {}, ["no checkpoint at /nonexistent/checkpoints/7"]),
      ("init_from a missing directory", fresh, ["--config.init_from=/nonexistent/params"], {},
       ["/nonexistent/params"]),
      ("unknown eval task", W, ["--mode=eval", "--eval_tasks=gsm9k"], {}, ["gsm9k"]),
      ("unknown mesh preset", fresh, [f"--config={REPO}/configs/8b.py:gpu8"], {},
       ["unknown mesh preset 'gpu8'"]),
      ("a preset for a config without presets", fresh, [f"--config={REPO}/configs/tiny.py:gpu_8"],
       {}, ["get_config() takes 0 positional arguments"]),
      ("processes without a coordinator", fresh, ["--num_processes=2", "--process_id=0"], {},
       ["--num_processes and --process_id need --coordinator_address"]),
      ("batch size 0", W, ["--mode=generate", "--prompt=hi",
                           "--batch_size=0"], {}, ["--batch_size=0: must be >= 1"]),
      ("a prompts file that is missing", W, ["--mode=generate",
                                             "--prompts_file=/nonexistent"], {}, ["/nonexistent"]),
  ]


def _digest(directory):
  """sha256 over every file's relative path and bytes under `directory`."""
  digest = hashlib.sha256()
  for root, dirs, files in sorted(os.walk(directory)):
    dirs.sort()
    for name in sorted(files):
      path = os.path.join(root, name)
      digest.update(os.path.relpath(path, directory).encode())
      with open(path, "rb") as f:
        digest.update(f.read())
  return digest.hexdigest()


def test_bad_inputs_fail_fast_with_one_line_and_leave_checkpoints_alone(straight_run, tmp_path):
  trained = str(tmp_path / "trained")
  shutil.copytree(straight_run[0], trained)
  before = _digest(trained)
  cases = _cases(str(tmp_path))
  assert len(cases) >= 25
  pending, running, results = list(cases), [], []
  while pending or running:  # as many at a time as there are cores, so each is timed fairly
    while pending and len(running) < (os.cpu_count() or 2):
      name, workdir, extra, env, words = pending.pop(0)
      config = next((e for e in extra if e.startswith("--config=")),
                    f"--config={REPO}/configs/tiny.py")
      extra = [e for e in extra if e != config]
      small = [a for a in cli_args() if a.split("=")[0] not in {e.split("=")[0] for e in extra}]
      cmd = [
          sys.executable, "-m", "rasr_jax.main", config,
          f"--workdir={workdir.format(trained=trained)}", *small, *extra
      ]
      running.append((subprocess.Popen(cmd,
                                       cwd=REPO,
                                       env={
                                           **subprocess_env(),
                                           **env
                                       },
                                       stdout=subprocess.PIPE,
                                       stderr=subprocess.PIPE,
                                       text=True), time.monotonic(), name, words))
    time.sleep(0.05)
    for entry in [r for r in running if r[0].poll() is not None]:
      running.remove(entry)
      proc, start, name, words = entry
      results.append(
          (name, proc.returncode, time.monotonic() - start, proc.communicate()[1], words))
  failures = []
  for name, code, seconds, stderr, words in results:
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    if (code != 2 or len(errors) != 1 or "Traceback" in stderr
        or "compiling the training step" in stderr or not all(word in errors[0] for word in words)):
      failures.append(f"{name}: exit {code} after {seconds:.1f}s, wanted {words}: "
                      f"{(errors or [stderr[-1500:]])[0]}")
  assert not failures, "\n".join(failures)
  seconds = sorted((r[2], r[0]) for r in results)
  print(f"{len(results)} bad inputs: median {seconds[len(seconds) // 2][0]:.1f} s, slowest "
        + ", ".join(f"{name} {s:.1f} s" for s, name in seconds[-3:]))
  assert _digest(trained) == before
  assert not os.path.exists(os.path.join(REPO, "ftp:"))
