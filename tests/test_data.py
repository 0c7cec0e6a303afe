"""Tokenizer, document sources and the grain pipeline."""

import numpy as np
import pytest

from conftest import make_config
from rasr_jax import config as config_lib
from rasr_jax import tasks
from rasr_jax.data import pipeline, qa, sources
from rasr_jax.data import tokenizer as tok_lib
from rasr_jax.evaluation import bundled


@pytest.fixture(scope="module")
def corpus():
  return sources.load_corpus(make_config().data, seed=0)


@pytest.fixture(scope="module")
def tokenizer(corpus):
  return tok_lib.train(corpus.documents, 512)


def test_tokenizer_round_trips_and_reserves_special_tokens(tokenizer, tmp_path):
  assert list(tokenizer.special_ids) == list(tok_lib.SPECIAL_TOKENS)
  assert len(set(tokenizer.special_ids.values())) == len(tok_lib.SPECIAL_TOKENS)
  for token in (tok_lib.DRAFT, tok_lib.CRITIQUE, tok_lib.REFINE):  # one piece each
    assert tokenizer.encode(f"a{token}b").count(tokenizer.special_ids[token]) == 1
  for token in (tok_lib.PAD, tok_lib.EOS):  # control ids: never produced from text
    assert tokenizer.special_ids[token] not in tokenizer.encode(f"x {token} y")
  # The ids the step is compiled with when no tokenizer is at hand (--mode=compile, benchmarks).
  assert tokenizer.marker_ids == tok_lib.TRAINED_MARKER_IDS
  assert tokenizer.eos_id == 1 and tokenizer.pad_id == 0
  for text in [
      "tom has 12 apples. #### 12", "Ünïcödé ✓ and 漢字", "a <draft> b <critique> c <refine> d",
      "line one\n\n  indented\tcode\n    deeper  end", " leading space\r\n"
  ]:  # identity normalisation: newlines, tabs and runs of spaces decode back exactly
    assert tokenizer.decode(tokenizer.encode(text)) == text
  # No piece spans a line break, and no space is added in front: a document cut at one encodes
  # as its parts, so a question prompt reads as its document's first tokens.
  for example in (tasks.generate(task, 5, 20) for task in tasks.TASKS):
    for ex in example:
      assert (tokenizer.encode_prompt(ex.question)
              + tokenizer.encode(tasks.ANSWER_SEPARATOR + ex.answer) == tokenizer.encode_prompt(
                  ex.text()))
  assert tokenizer.encode("\n") == [tokenizer._piece_id(tok_lib.NEWLINE)]
  spaceless = tok_lib.train(["1+2=3", "add4+5"] * 50, 300)  # spaces still decode as spaces
  assert spaceless.decode(spaceless.encode("a b  c")) == "a b  c"
  for marker in tok_lib.ROLE_MARKERS:
    assert len(tokenizer.encode(marker)) == 1
  path = str(tmp_path / "tok.model")
  tokenizer.save(path)
  loaded = tok_lib.load(path)
  assert loaded.checksum == tokenizer.checksum and loaded.encode("abc 123") == tokenizer.encode(
      "abc 123")


LLAMA3_SPECIALS = ("<|begin_of_text|>", "<|end_of_text|>",
                   *(f"<|reserved_special_token_{i}|>" for i in range(3)))


def byte_level_tokenizer(path, texts, vocab_size=400):
  """A Llama 3-style tokenizer.json (byte-level BPE, its special tokens) trained on `texts`."""
  import tokenizers
  from tokenizers import decoders, models, pre_tokenizers, processors, trainers
  tok = tokenizers.Tokenizer(models.BPE())
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = decoders.ByteLevel()
  tok.train_from_iterator(
      texts,
      trainers.BpeTrainer(vocab_size=vocab_size,
                          special_tokens=list(LLAMA3_SPECIALS),
                          initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                          show_progress=False))
  bos = LLAMA3_SPECIALS[0]  # Llama 3's own tokenizer.json puts it before every text
  tok.post_processor = processors.TemplateProcessing(single=f"{bos} $A",
                                                     special_tokens=[(bos, tok.token_to_id(bos))])
  tok.save(str(path))
  return str(path)


def test_an_hf_tokenizer_json_behind_the_same_interface(corpus, tmp_path):
  path = byte_level_tokenizer(tmp_path / "tokenizer.json", corpus.documents[:2000])
  tokenizer = tok_lib.load(path, model_vocab_size=400)
  ids = {piece: tokenizer._piece_id(piece) for piece in LLAMA3_SPECIALS}
  markers = tokenizer.marker_ids
  assert (markers.draft, markers.critique,
          markers.refine) == tuple(ids[f"<|reserved_special_token_{i}|>"] for i in range(3))
  assert tokenizer.start_id == tokenizer.bos_id == ids["<|begin_of_text|>"]
  assert tokenizer.eos_id == ids["<|end_of_text|>"] and not tokenizer.markers_past_pieces
  text = "tom has 12 apples.\n\n  #### 12 \u2713 \u6f22\u5b57"  # newlines and spaces are kept
  encoded = tokenizer.encode(text)
  assert tokenizer.decode(encoded) == text
  assert tokenizer.decode(tokenizer.encode_document(text)) == text  # bos and eos decode to ""
  pieces = tokenizer.piece_bytes(403)  # the model's 3 extra rows add nothing
  assert b"".join(bytes(pieces.table[i, :pieces.lengths[i]]) for i in encoded) == text.encode()
  assert pieces.lengths[ids["<|end_of_text|>"]] == 0 and pieces.lengths[402] == 0
  (tmp_path / "copy").mkdir()
  tokenizer.save(str(tmp_path / "copy" / "tokenizer.json"))
  copy = tok_lib.load(str(tmp_path / "copy"), model_vocab_size=400)  # a directory holding one
  assert copy.checksum == tokenizer.checksum and copy.hf_token_ids == tokenizer.hf_token_ids
  # tokenizer_config.json beside the file names the end of a document.
  (tmp_path / "tokenizer_config.json").write_text('{"eos_token": {"content": "<|begin_of_text|>"}}')
  assert tok_lib.load(path).eos_id == ids["<|begin_of_text|>"]
  (tmp_path / "broken.json").write_text('{"model": ')
  with pytest.raises(tok_lib.TokenizerError, match="broken.json: not a valid tokenizer.json"):
    tok_lib.load(str(tmp_path / "broken.json"))


def test_tokenizer_errors(tmp_path):
  with pytest.raises(tok_lib.TokenizerError, match="file not found"):
    tok_lib.load(str(tmp_path / "missing.model"))
  bad = tmp_path / "corrupt.model"
  bad.write_bytes(b"\x00\x01 this is not a model")
  with pytest.raises(tok_lib.TokenizerError, match="not a valid sentencepiece model"):
    tok_lib.load(str(bad))
  import io

  import sentencepiece as spm
  buf = io.BytesIO()
  spm.SentencePieceTrainer.train(sentence_iterator=iter(["plain text here"] * 50),
                                 model_writer=buf,
                                 vocab_size=300,
                                 byte_fallback=True,
                                 hard_vocab_limit=False,
                                 minloglevel=2)
  with pytest.raises(tok_lib.TokenizerError,
                     match="special tokens missing: <draft>, <critique>, <refine>"):
    tok_lib.SentencePieceTokenizer(buf.getvalue(), "plain.model")


def test_a_plain_sentencepiece_model_gets_fallback_ids():
  """A user's model with only <unk> <s> </s>: </s> ends documents and pads, and the markers
  take the last ids of a larger model vocabulary, which the tokenizer never produces."""
  import io

  import sentencepiece as spm
  buf = io.BytesIO()
  spm.SentencePieceTrainer.train(sentence_iterator=iter(["plain text here"] * 50),
                                 model_writer=buf,
                                 vocab_size=300,
                                 byte_fallback=True,
                                 hard_vocab_limit=False,
                                 minloglevel=2)
  tokenizer = tok_lib.SentencePieceTokenizer(buf.getvalue(), "plain.model", model_vocab_size=512)
  eos = tokenizer._sp.piece_to_id("</s>")
  assert tokenizer.eos_id == tokenizer.pad_id == eos
  assert [tokenizer.special_ids[t] for t in tok_lib.MARKERS] == [509, 510, 511]
  ids = tokenizer.encode("plain text")
  assert tokenizer.decode(ids + [509, 511]) == "plain text"


def test_bundled_corpus_is_seeded(corpus):
  again = sources.load_corpus(make_config().data, seed=0)
  other = sources.load_corpus(make_config().data, seed=1)
  assert again.documents == corpus.documents and again.fingerprint == corpus.fingerprint
  assert other.fingerprint != corpus.fingerprint


def test_bundled_mix_weighs_the_corpus_the_reflection_rows_and_the_held_out_split():
  mix = {"support": 3.0, "logic": 1.0}
  data = make_config(**{"data.bundled_examples": 400, "data.bundled_mix": "support=3,logic=1"}).data
  kinds = [ex.task for ex in tasks.bundled_corpus(0, 400, mix)]
  assert kinds.count("support") == 300 and kinds.count("logic") == 100
  documents = lambda seed: sorted(ex.document() for ex in tasks.bundled_corpus(seed, 400, mix))
  assert sorted(sources.load_corpus(data, seed=0).documents) == documents(0)
  held_out = sources.load_held_out(data, seed=0).documents
  assert sorted(held_out) == documents(sources.HELD_OUT_SEED_OFFSET)
  assert [r.task for r in qa.load(data, seed=0)] == kinds
  assert {r.task for r in qa.load_held_out(data, seed=0)} == {"support", "logic"}
  default = make_config(**{"data.bundled_examples": 400}).data
  assert {r.task for r in qa.load(default, seed=0)} == set(tasks.TASKS)
  assert sources.load_corpus(default, seed=0).fingerprint != sources.load_corpus(data,
                                                                                 seed=0).fingerprint


def test_held_out_items_under_a_bundled_mix_are_never_training_questions():
  """20,000 training additions cover about 2.5 % of the probe's questions, so about ten of 400
  fresh ones were seen; the held-out items leave them out only if they know the mix."""
  config = make_config(**{"data.bundled_examples": 20000, "data.bundled_mix": "probe=1"})
  seen = {ex.question for ex in tasks.bundled_corpus(0, 20000, {"probe": 1.0})}
  held_out = bundled.held_out_examples(config, "probe", 400)
  assert len(held_out) == 400 and not seen & {ex.question for ex in held_out}


@pytest.mark.parametrize("spec, message", [
    ("support", "is not TASK=WEIGHT"),
    ("support=x", "is not TASK=WEIGHT"),
    ("poetry=1", "is not a bundled task"),
    ("support=0", "weight must be a finite number > 0"),
    ("support=1,support=2", "named twice"),
])
def test_bad_bundled_mixes_are_refused_at_start_up(spec, message):
  with pytest.raises(config_lib.ConfigError, match=f"config.data.bundled_mix=.*{message}"):
    make_config(**{"data.bundled_mix": spec})
  on_files = {"data.source": "files", "data.files": "x.txt", "reflect.enabled": False}
  with pytest.raises(config_lib.ConfigError, match="needs data.source=bundled"):
    make_config(**on_files, **{"data.bundled_mix": "support=1"})


class _OneTokenPerDoc:
  """Document i (the string 'i') encodes to the single token i + 2; <eos> is 1."""
  eos_id = 1

  def encode_document(self, text):
    return [int(text) + 2, self.eos_id]


def _stream(num_docs,
            process_index,
            process_count,
            batches,
            state=None,
            streams=None,
            global_batch=None):
  ds = pipeline.make_dataset(sources.single_corpus([str(i) for i in range(num_docs)]),
                             _OneTokenPerDoc(),
                             seq_len=7,
                             global_batch=global_batch or 2 * process_count,
                             seed=3,
                             streams=streams or process_count,
                             process_index=process_index,
                             process_count=process_count)
  it = pipeline.ResumableIterator(ds)
  if state is not None:
    it.set_state(state)
  return it, [next(it)["tokens"] for _ in range(batches)]


def test_pipeline_shapes_and_exactly_once_per_epoch():
  num_docs = 32  # 16 docs per shard, 2 tokens each, 16 tokens per batch: 2 batches an epoch
  seen = []
  for shard in range(2):
    _, batches = _stream(num_docs, shard, 2, batches=2)
    assert all(b.shape == (2, 8) and b.dtype == np.int32 for b in batches)
    ids = [int(t) - 2 for b in batches for t in b.reshape(-1) if t != 1]
    seen.extend(ids)
  assert sorted(seen) == list(range(num_docs))


def test_global_batches_do_not_depend_on_the_process_count():
  """With a fixed number of streams, 2 processes read exactly the rows 1 process reads."""
  _, alone = _stream(40, 0, 1, batches=3, streams=2, global_batch=2)
  _, first = _stream(40, 0, 2, batches=3, streams=2, global_batch=2)
  _, second = _stream(40, 1, 2, batches=3, streams=2, global_batch=2)
  _, one_stream = _stream(40, 0, 1, batches=3, streams=1, global_batch=2)
  for whole, a, b in zip(alone, first, second):
    assert whole.shape == (2, 8) and a.shape == b.shape == (1, 8)
    np.testing.assert_array_equal(whole, np.concatenate([a, b]))
  assert any((x != y).any() for x, y in zip(alone, one_stream))


def test_pipeline_resumes_exactly_across_an_epoch_boundary():
  it, _ = _stream(10, 0, 1, batches=2)
  state = it.get_state()
  want = [next(it)["tokens"] for _ in range(4)]  # crosses the end of epoch 1 (10 docs = 20 tokens)
  _, got = _stream(10, 0, 1, batches=4, state=state)
  for a, b in zip(want, got):
    np.testing.assert_array_equal(a, b)


def test_exactly_once_per_epoch_across_five_interruptions():
  """16 documents of 2 tokens fill 2 batches: an epoch ends exactly at every second batch. The
  iterator state is saved (JSON, as in a checkpoint) and a new pipeline resumes from it
  before the first batch, mid-epoch, at an epoch boundary, later, and before the last batch:
  the batches equal an uninterrupted read, and every document comes once per epoch."""
  _, want = _stream(16, 0, 1, batches=6)
  got, state = [], None
  for cut in (0, 1, 2, 3, 5, 6):
    it, _ = _stream(16, 0, 1, batches=0, state=state)
    got += [next(it)["tokens"] for _ in range(cut - len(got))]
    state = it.get_state()  # JSON bytes, what the checkpoint stores
  for a, b in zip(want, got, strict=True):
    np.testing.assert_array_equal(a, b)
  ids = [int(t) - 2 for b in got for t in b.reshape(-1) if t != 1]
  for epoch in range(3):
    assert sorted(ids[16 * epoch:16 * (epoch + 1)]) == list(range(16))


def _data_cfg(tmp_path, pattern, **kw):
  return make_config(**{"data.source": "files", "data.files": str(tmp_path / pattern), **kw}).data


def test_files_txt_and_jsonl(tmp_path):
  (tmp_path / "a.txt").write_text("first line\n\nsecond line\n")
  # A JSON string may hold a raw line separator (U+2028): it is not a line break of the file.
  (tmp_path / "b.jsonl").write_text('{"text": "json doc"}\n{"text": "an\u2028other"}\n',
                                    encoding="utf-8")
  corpus = sources.load_corpus(_data_cfg(tmp_path, "*"), seed=0)
  assert corpus.documents == ["first line", "second line", "json doc", "an\u2028other"]
  (tmp_path / "a.txt").write_text("first line changed\n")
  assert sources.load_corpus(_data_cfg(tmp_path, "*"), seed=0).fingerprint != corpus.fingerprint


@pytest.mark.parametrize("name, content, message", [
    ("empty.txt", b"  \n", "empty"),
    ("bad.txt", b"good text \xff\xfe more", "invalid UTF-8 at byte offset 10"),
    ("bad.jsonl", b'{"text": "ok"}\nnot json\n', "line 2: not JSON"),
    ("field.jsonl", b'{"body": "x"}\n', "string field 'text'"),
])
def test_bad_files_are_named(tmp_path, name, content, message):
  (tmp_path / name).write_bytes(content)
  with pytest.raises(sources.DataError, match=message) as error:
    sources.load_corpus(_data_cfg(tmp_path, name), seed=0)
  assert name in str(error.value)


def test_invalid_utf8_replace_policy_counts(tmp_path):
  (tmp_path / "bad.txt").write_bytes(b"ab\xffcd\xfe\n")
  corpus = sources.load_corpus(_data_cfg(tmp_path, "bad.txt", **{"data.invalid_utf8": "replace"}),
                               seed=0)
  assert corpus.replaced_utf8_errors == 2 and corpus.documents == ["ab\ufffdcd\ufffd"]


def test_glob_matching_nothing(tmp_path):
  with pytest.raises(sources.DataError, match="matches no file"):
    sources.load_corpus(_data_cfg(tmp_path, "*.jsonl"), seed=0)


def test_tokenizer_larger_than_the_model_vocabulary_is_refused(tokenizer, corpus, tmp_path):
  from rasr_jax.training import loop
  path = str(tmp_path / "big.model")
  tokenizer.save(path)
  config = make_config(**{"data.tokenizer": path, "model.vocab_size": 256})
  with pytest.raises(tok_lib.TokenizerError, match="exceed config.model.vocab_size=256"):
    loop.prepare_tokenizer(config, str(tmp_path / "work"), corpus)


def _qa_stream(state=None, batches=0):
  records = 6  # 2 rows a batch: an epoch of records every 3 batches
  qa_arrays = {"checker": np.arange(records, dtype=np.int32), "prompt": np.ones((records, 3))}
  ds = pipeline.make_dataset(sources.single_corpus([str(i) for i in range(16)]),
                             _OneTokenPerDoc(),
                             seq_len=7,
                             global_batch=2,
                             seed=3,
                             streams=1,
                             qa=qa_arrays,
                             qa_rows=2)
  it = pipeline.ResumableIterator(ds)
  if state is not None:
    it.set_state(state)
  return it, [next(it) for _ in range(batches)]


def test_question_answer_rows_resume_exactly_and_come_once_per_epoch():
  """The question/answer stream lives in the same iterator state as the documents: resuming
  from the JSON state at any batch continues both exactly; every record comes once an epoch."""
  _, want = _qa_stream(batches=7)
  got, state = [], None
  for cut in (0, 1, 3, 4, 7):
    it, _ = _qa_stream(state)
    got += [next(it) for _ in range(cut - len(got))]
    state = it.get_state()
  for a, b in zip(want, got, strict=True):
    np.testing.assert_array_equal(a["tokens"], b["tokens"])
    np.testing.assert_array_equal(a["qa"]["checker"], b["qa"]["checker"])
    assert a["qa"]["prompt"].shape == (2, 3)
  ids = [int(i) for b in got for i in b["qa"]["checker"]]
  for epoch in range(2):
    assert sorted(ids[6 * epoch:6 * (epoch + 1)]) == list(range(6))
  assert ids[:6] != list(range(6))  # shuffled


def test_a_file_digest_sees_an_edit_anywhere_in_a_mid_sized_file_and_the_ends_of_a_large_one(
    tmp_path):
  """Files up to 128 KiB are hashed whole; larger ones by their size and first and last 64 KiB."""
  from rasr_jax.data import documents
  path = tmp_path / "a.bin"
  for size, edit_at, seen in ((100_000, 90_000, True), (300_000, 250_000, True), (300_000, 150_000,
                                                                                  False)):
    data = bytearray(size)
    path.write_bytes(bytes(data))
    before = documents.file_digest(str(path))
    data[edit_at] = 1
    path.write_bytes(bytes(data))
    assert (documents.file_digest(str(path)) != before) == seen, (size, edit_at)


def test_txt_lines_end_at_newlines_only():
  """A .txt document is a line as an editor numbers it: CRLF endings dropped, and a U+2028 or a
  form feed inside a line does not split it."""
  text = "one\r\ntwo\u2028still two\n\n\x0cthree\n"
  assert sources.line_documents("a.txt", text, "text") == [(1, "one"), (2, "two\u2028still two"),
                                                           (4, "\x0cthree")]
