// Training data: corpora read back exactly from raw bytes and from llm.c token shards,
// every malformed shard and unreadable path rejected with a message naming the path and
// the numbers, the train/validation split rule, and batches that are true windows of the
// corpus drawn as a function of (seed, index) alone.
#include <doctest/doctest.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <limits>
#include <set>
#include <string>
#include <vector>

#include "tensor/creation.h"
#include "tests/error_of.h"
#include "tests/temp_dir.h"
#include "train/data.h"

namespace longnet {
namespace {

using testing::contains;
using testing::error_of;

namespace fs = std::filesystem;

void write_file(const fs::path& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary);
  out << bytes;
}

using testing::TempDir;

std::string le32(std::int32_t v) {
  auto u = static_cast<std::uint32_t>(v);
  std::string out;
  for (int i = 0; i < 4; ++i) out += static_cast<char>((u >> (8 * i)) & 0xFFU);
  return out;
}

// An llm.c shard header: magic, version, token count, then 253 zero int32.
std::string shard_header(std::int32_t magic, std::int32_t version, std::int32_t count) {
  return le32(magic) + le32(version) + le32(count) + std::string(253 * 4, '\0');
}

std::string shard_tokens(const std::vector<std::uint16_t>& tokens) {
  std::string out;
  for (std::uint16_t t : tokens) {
    out += static_cast<char>(t & 0xFFU);
    out += static_cast<char>(t >> 8);
  }
  return out;
}

// A well-formed tokens_u16 shard holding tokens.
std::string shard_of(const std::vector<std::uint16_t>& tokens) {
  return shard_header(20240520, 1, static_cast<std::int32_t>(tokens.size())) + shard_tokens(tokens);
}

// The error of loading bytes written to a file as a tokens_u16 shard; path receives the
// file's name.
std::string shard_error(const std::string& bytes, std::string& path) {
  static TempDir dir;
  static int counter = 0;
  path = (dir.path / cat("shard-", counter++, ".bin")).string();
  write_file(path, bytes);
  return error_of([&] { load_corpus(path, DataFormat::tokens_u16); });
}

// A corpus named "test corpus" holding tokens.
TokenCorpus corpus_of(std::vector<std::uint16_t> tokens) {
  return {"test corpus", std::move(tokens)};
}

// Tokens 0, 1, ..., n - 1: a window's first token is its start.
TokenCorpus counting_corpus(std::int64_t n) {
  std::vector<std::uint16_t> tokens(static_cast<std::size_t>(n));
  for (std::int64_t i = 0; i < n; ++i) tokens[i] = static_cast<std::uint16_t>(i);
  return corpus_of(std::move(tokens));
}

// The rows of a (batch, seq_len + 1) batch.
std::vector<std::vector<std::int64_t>> rows_of(const Tensor& t) {
  REQUIRE(t.dtype() == DType::i64);
  REQUIRE(t.device().is_cpu());
  REQUIRE(t.dim() == 2);
  const std::int64_t* p = t.data<std::int64_t>();
  std::vector<std::vector<std::int64_t>> rows;
  for (std::int64_t r = 0; r < t.shape()[0]; ++r) {
    rows.emplace_back(p + r * t.shape()[1], p + (r + 1) * t.shape()[1]);
  }
  return rows;
}

// The start of each row, after checking that every row is the window of the corpus there.
std::vector<std::int64_t> starts_of(const Tensor& t, const TokenCorpus& corpus) {
  std::vector<std::int64_t> starts;
  for (const auto& row : rows_of(t)) {
    std::int64_t start = row[0];
    REQUIRE(start >= 0);
    REQUIRE(start + static_cast<std::int64_t>(row.size()) <= corpus.size());
    std::vector<std::int64_t> window(corpus.tokens.begin() + start,
                                     corpus.tokens.begin() + start + row.size());
    CHECK(row == window);
    starts.push_back(start);
  }
  return starts;
}

}  // namespace

TEST_SUITE("data") {
  TEST_CASE("data formats parse from their names and name themselves") {
    CHECK(parse_data_format("bytes") == DataFormat::bytes);
    CHECK(parse_data_format("tokens_u16") == DataFormat::tokens_u16);
    CHECK(std::string(data_format_name(DataFormat::bytes)) == "bytes");
    CHECK(std::string(data_format_name(DataFormat::tokens_u16)) == "tokens_u16");
    std::string e = error_of([] { parse_data_format("u16"); });
    CHECK(contains(e, "unknown data format 'u16'"));
    CHECK(contains(e, "valid formats: bytes, tokens_u16"));
  }

  TEST_CASE("vocab_used is the largest token id plus one, 0 for an empty corpus") {
    CHECK(corpus_of({3, 9, 0, 2}).vocab_used() == 10);
    CHECK(corpus_of({65535}).vocab_used() == 65536);
    CHECK(corpus_of({}).vocab_used() == 0);
  }

  TEST_CASE("bytes: every byte of the file is one token, 0 to 255") {
    TempDir dir;
    std::string path = (dir.path / "text.txt").string();
    std::string bytes = "hi\n";
    bytes += std::string{'\0', '\x7f', '\x80', '\xff'};
    write_file(path, bytes);
    TokenCorpus c = load_corpus(path, DataFormat::bytes);
    CHECK(c.source == path);
    CHECK(c.tokens == std::vector<std::uint16_t>{'h', 'i', '\n', 0, 127, 128, 255});
    CHECK(c.size() == 7);
    CHECK(c.vocab_used() == 256);
  }

  TEST_CASE("bytes: a file larger than one read chunk reads back whole") {
    TempDir dir;
    std::string path = (dir.path / "big.bin").string();
    std::string bytes((1 << 20) * 2 + 17, '\0');
    for (std::size_t i = 0; i < bytes.size(); ++i) bytes[i] = static_cast<char>(i * 7 % 251);
    write_file(path, bytes);
    TokenCorpus c = load_corpus(path, DataFormat::bytes);
    REQUIRE(c.size() == static_cast<std::int64_t>(bytes.size()));
    bool same = true;
    for (std::size_t i = 0; i < bytes.size(); ++i) same = same && c.tokens[i] == i * 7 % 251;
    CHECK(same);
  }

  TEST_CASE("tokens_u16: an llm.c shard reads back exactly, little-endian") {
    TempDir dir;
    std::string path = (dir.path / "shard.bin").string();
    std::vector<std::uint16_t> tokens = {50256, 0, 1, 255, 256, 0x1234, 65535, 42};
    write_file(path, shard_of(tokens));
    TokenCorpus c = load_corpus(path, DataFormat::tokens_u16);
    CHECK(c.source == path);
    CHECK(c.tokens == tokens);
    CHECK(c.vocab_used() == 65536);
    // The byte order: 0x1234 is stored as 34 12.
    CHECK(shard_tokens({0x1234}) == std::string{'\x34', '\x12'});
  }

  TEST_CASE("tokens_u16: a shard larger than one read chunk reads back whole") {
    TempDir dir;
    std::string path = (dir.path / "shard.bin").string();
    std::vector<std::uint16_t> tokens((1 << 20) + 3);
    for (std::size_t i = 0; i < tokens.size(); ++i) tokens[i] = static_cast<std::uint16_t>(i * 31);
    write_file(path, shard_of(tokens));
    CHECK(load_corpus(path, DataFormat::tokens_u16).tokens == tokens);
  }

  TEST_CASE("tokens_u16: a wrong magic names the path, the magic found and the one expected") {
    std::string path;
    std::string e = shard_error(shard_header(12345, 1, 2) + shard_tokens({1, 2}), path);
    CHECK(contains(e, path + " (tokens_u16 shard): header magic is 12345, not 20240520"));
    CHECK(contains(e, "\"bytes\""));
  }

  TEST_CASE("tokens_u16: a wrong version names the version found and the one expected") {
    std::string path;
    std::string e = shard_error(shard_header(20240520, 2, 2) + shard_tokens({1, 2}), path);
    CHECK(contains(e, path + " (tokens_u16 shard): header version is 2, not 1"));
  }

  TEST_CASE("tokens_u16: a truncated shard names the count, the size needed and the size") {
    std::string path;
    std::string e = shard_error(shard_header(20240520, 1, 5) + shard_tokens({1, 2, 3, 4}), path);
    CHECK(contains(e, path + " (tokens_u16 shard): header says 5 tokens, which need 1024 + 2 x "
                             "5 = 1034 bytes, but the file has 1032"));
    // Half a token short.
    e = shard_error(shard_header(20240520, 1, 2) + shard_tokens({1, 2}).substr(0, 3), path);
    CHECK(contains(e,
                   "header says 2 tokens, which need 1024 + 2 x 2 = 1028 bytes, but the "
                   "file has 1027"));
  }

  TEST_CASE("tokens_u16: bytes past the header's count are an error") {
    std::string path;
    std::string e = shard_error(shard_header(20240520, 1, 2) + shard_tokens({1, 2, 3}), path);
    CHECK(contains(e, path + " (tokens_u16 shard): header says 2 tokens, which need 1024 + 2 x "
                             "2 = 1028 bytes, but the file has 1030"));
  }

  TEST_CASE("tokens_u16: a file shorter than the header is an error naming its size") {
    std::string path;
    std::string e = shard_error(shard_header(20240520, 1, 0).substr(0, 100), path);
    CHECK(contains(e, path + " (tokens_u16 shard): 100 bytes, shorter than the 1024-byte header"));
    // A raw text file given as a shard.
    e = shard_error("hello world\n", path);
    CHECK(contains(e, "12 bytes, shorter than the 1024-byte header"));
  }

  TEST_CASE("tokens_u16: a negative token count is an error") {
    std::string path;
    std::string e = shard_error(shard_header(20240520, 1, -3), path);
    CHECK(contains(e, path + " (tokens_u16 shard): header token count is negative: -3"));
  }

  TEST_CASE("a file with no tokens is an error in either format") {
    TempDir dir;
    std::string empty = (dir.path / "empty.bin").string();
    write_file(empty, "");
    for (DataFormat f : {DataFormat::bytes, DataFormat::tokens_u16}) {
      CAPTURE(data_format_name(f));
      CHECK(contains(error_of([&] { load_corpus(empty, f); }),
                     empty + " is empty: it holds no tokens"));
    }
    std::string path;
    std::string e = shard_error(shard_header(20240520, 1, 0), path);
    CHECK(contains(e, path + " (tokens_u16 shard): header token count is 0: it holds no tokens"));
  }

  TEST_CASE("a missing file names the path and the system's reason") {
    TempDir dir;
    std::string path = (dir.path / "nope.bin").string();
    for (DataFormat f : {DataFormat::bytes, DataFormat::tokens_u16}) {
      CHECK(contains(error_of([&] { load_corpus(path, f); }),
                     "cannot open " + path + ": No such file or directory"));
    }
  }

  TEST_CASE("a directory given as the corpus is an error naming it") {
    TempDir dir;
    std::string path = dir.path.string();
    for (DataFormat f : {DataFormat::bytes, DataFormat::tokens_u16}) {
      CHECK(contains(error_of([&] { load_corpus(path, f); }),
                     path + " is a directory, not a corpus file"));
    }
  }

  TEST_CASE("an unreadable file names the path and the system's reason") {
    if (::geteuid() == 0) return;  // root reads it anyway
    TempDir dir;
    fs::path path = dir.path / "secret.bin";
    write_file(path, "abc");
    fs::permissions(path, fs::perms::none);
    CHECK(contains(error_of([&] { load_corpus(path.string(), DataFormat::bytes); }),
                   "cannot open " + path.string() + ": Permission denied"));
  }

  TEST_CASE("split: the last ceil(fraction * size) tokens are validation, the rest training") {
    std::vector<std::uint16_t> tokens = {10, 11, 12, 13, 14, 15, 16, 17, 18, 19};
    CorpusSplit s = split_corpus(corpus_of(tokens), 0.25);  // ceil(2.5) = 3
    CHECK(s.train.tokens == std::vector<std::uint16_t>{10, 11, 12, 13, 14, 15, 16});
    CHECK(s.val.tokens == std::vector<std::uint16_t>{17, 18, 19});
    CHECK(s.train.source == "test corpus (train part)");
    CHECK(s.val.source == "test corpus (validation part)");

    CHECK(split_corpus(corpus_of(tokens), 0.5).val.size() == 5);
    CHECK(split_corpus(corpus_of(tokens), 0.01).val.size() == 1);  // ceil(0.1)
    CHECK(split_corpus(corpus_of(tokens), 0.9).train.size() == 1);
    CHECK(split_corpus(corpus_of({1, 2}), 0.5).val.tokens == std::vector<std::uint16_t>{2});
    CHECK(split_corpus(corpus_of({1, 2}), 1e-300).val.size() == 1);
  }

  TEST_CASE("split: a fraction that gives a whole number of tokens is not rounded up by error") {
    // 0.1 * 30 is 3.0000000000000004 in doubles; 0.07 * 100 is 7.000000000000001.
    CHECK(split_corpus(counting_corpus(30), 0.1).val.size() == 3);
    CHECK(split_corpus(counting_corpus(100), 0.07).val.size() == 7);
    CHECK(split_corpus(counting_corpus(1000), 0.001).val.size() == 1);
    CHECK(split_corpus(counting_corpus(1000), 0.0011).val.size() == 2);
  }

  TEST_CASE("split: a fraction outside (0, 1) is an error naming it") {
    for (double f : {0.0, 1.0, -0.5, 1.5, std::nan("")}) {
      CAPTURE(f);
      std::string e = error_of([&] { split_corpus(counting_corpus(10), f); });
      CHECK(contains(e, "split_corpus: validation fraction must be in (0, 1), got "));
      CHECK(contains(e, "test corpus"));
    }
  }

  TEST_CASE("split: a part that would be empty is an error naming the sizes") {
    std::string e = error_of([] { split_corpus(counting_corpus(10), 0.95); });
    CHECK(contains(e,
                   "split_corpus: test corpus holds 10 tokens; a validation fraction of 0.95 "
                   "leaves 0 for training and 10 for validation"));
    e = error_of([] { split_corpus(counting_corpus(1), 0.5); });
    CHECK(contains(e,
                   "holds 1 tokens; a validation fraction of 0.5 leaves 0 for training and 1 "
                   "for validation"));
    e = error_of([] { split_corpus(corpus_of({}), 0.5); });
    CHECK(contains(e, "holds 0 tokens"));
  }

  TEST_CASE("sample_batch: i64 (batch, seq_len + 1) on the cpu; rows are windows of the corpus") {
    TokenCorpus c = counting_corpus(1000);
    Tensor b = sample_batch(c, 16, 8, 1234, 0);
    CHECK(b.dtype() == DType::i64);
    CHECK(b.device().is_cpu());
    CHECK(b.shape() == Shape{8, 17});
    for (std::int64_t start : starts_of(b, c)) CHECK(start <= 1000 - 17);

    // Windows of a corpus whose tokens repeat: each row equals corpus[start : start + 17] for
    // some start, which the row's first tokens need not identify.
    std::vector<std::uint16_t> tokens(500);
    for (std::size_t i = 0; i < tokens.size(); ++i) tokens[i] = static_cast<std::uint16_t>(i % 7);
    TokenCorpus periodic = corpus_of(tokens);
    for (const auto& row : rows_of(sample_batch(periodic, 16, 8, 99, 3))) {
      bool found = false;
      for (std::size_t s = 0; s + row.size() <= tokens.size() && !found; ++s) {
        found = std::equal(row.begin(), row.end(), tokens.begin() + s);
      }
      CHECK(found);
    }
  }

  TEST_CASE("sample_batch: the same seed and index give the same batch") {
    TokenCorpus c = counting_corpus(5000);
    for (std::uint64_t index : {0ULL, 1ULL, 77ULL, 1ULL << 40}) {
      CAPTURE(index);
      CHECK(rows_of(sample_batch(c, 32, 4, 7, index)) == rows_of(sample_batch(c, 32, 4, 7, index)));
    }
  }

  TEST_CASE("sample_batch: a different index or seed gives a different batch") {
    TokenCorpus c = counting_corpus(5000);
    auto base = starts_of(sample_batch(c, 32, 4, 7, 5), c);
    CHECK(base != starts_of(sample_batch(c, 32, 4, 7, 6), c));
    CHECK(base != starts_of(sample_batch(c, 32, 4, 8, 5), c));
    // Indices that differ only in their high 32 bits, and seeds likewise.
    CHECK(base != starts_of(sample_batch(c, 32, 4, 7, 5 + (1ULL << 32)), c));
    CHECK(base != starts_of(sample_batch(c, 32, 4, 7 + (1ULL << 32), 5), c));
    // Rows of one batch are drawn independently.
    std::set<std::int64_t> distinct(base.begin(), base.end());
    CHECK(distinct.size() == base.size());
  }

  TEST_CASE("sample_batch: a batch depends on (seed, index) only, not on earlier calls") {
    TokenCorpus c = counting_corpus(3000);
    std::vector<std::vector<std::int64_t>> forward;
    for (std::uint64_t i = 0; i < 10; ++i)
      forward.push_back(starts_of(sample_batch(c, 8, 3, 42, i), c));
    // Other draws in between: other seeds, other shapes, a Generator's random tensors.
    Generator gen(42);
    (void)randint(0, 100, {64}, gen);
    (void)sample_batch(c, 64, 5, 1, 0);
    for (std::uint64_t i = 10; i-- > 0;) {
      CAPTURE(i);
      CHECK(starts_of(sample_batch(c, 8, 3, 42, i), c) == forward[i]);
    }
    // A batch's rows do not depend on how many rows are drawn: row r is the same draw.
    auto wide = starts_of(sample_batch(c, 8, 6, 42, 4), c);
    CHECK(std::vector<std::int64_t>(wide.begin(), wide.begin() + 3) == forward[4]);
  }

  TEST_CASE("sample_batch: the stream is fixed, so a resumed run continues it") {
    // Pinned draws, computed apart from this code (a Python Philox4x32-10 with counter
    // {index lo, index hi, row, 0x64617461}, key seed; start = (w0 | w1 << 32) * starts >> 64).
    // A change here breaks resuming runs started before it.
    TokenCorpus c = counting_corpus(10000);
    CHECK(starts_of(sample_batch(c, 100, 4, 0, 0), c) ==
          std::vector<std::int64_t>{6620, 6676, 4571, 1761});
    CHECK(starts_of(sample_batch(c, 100, 4, 1337, 12345), c) ==
          std::vector<std::int64_t>{298, 4829, 2075, 5387});
  }

  TEST_CASE("sample_batch: starts cover [0, size - seq_len - 1], both ends included") {
    TokenCorpus c = counting_corpus(20);
    std::int64_t seq_len = 4;  // starts 0 to 15
    std::vector<int> hits(16, 0);
    for (std::uint64_t i = 0; i < 400; ++i) {
      for (std::int64_t s : starts_of(sample_batch(c, seq_len, 4, 3, i), c)) {
        REQUIRE(s >= 0);
        REQUIRE(s <= 15);
        ++hits[s];
      }
    }
    // 1600 draws over 16 starts: 100 each expected; every start is reached, none far off.
    for (std::size_t s = 0; s < hits.size(); ++s) {
      CAPTURE(s);
      CHECK(hits[s] > 50);
      CHECK(hits[s] < 150);
    }
  }

  TEST_CASE("sample_batch: a corpus of exactly seq_len + 1 tokens has the one window at 0") {
    TokenCorpus c = corpus_of({5, 6, 7, 8, 9});
    for (std::uint64_t i = 0; i < 20; ++i) {
      for (const auto& row : rows_of(sample_batch(c, 4, 3, i * 31, i))) {
        CHECK(row == std::vector<std::int64_t>{5, 6, 7, 8, 9});
      }
    }
    CHECK(rows_of(eval_batch(c, 4, 2, 1, 3)) ==
          std::vector<std::vector<std::int64_t>>{{5, 6, 7, 8, 9}, {5, 6, 7, 8, 9}});
  }

  TEST_CASE("sample_batch: bad arguments are errors naming them") {
    TokenCorpus c = counting_corpus(10);
    CHECK(contains(error_of([&] { sample_batch(c, 0, 2, 0, 0); }),
                   "sample_batch: seq_len must be positive, got 0"));
    CHECK(contains(error_of([&] { sample_batch(c, -3, 2, 0, 0); }),
                   "sample_batch: seq_len must be positive, got -3"));
    CHECK(contains(error_of([&] { sample_batch(c, 4, 0, 0, 0); }),
                   "sample_batch: batch must be positive, got 0"));
    CHECK(contains(error_of([&] { sample_batch(c, 10, 2, 0, 0); }),
                   "sample_batch: corpus test corpus holds 10 tokens, fewer than the seq_len + 1 "
                   "= 11 that one window needs"));
    CHECK(contains(
        error_of([&] { sample_batch(c, std::numeric_limits<std::int64_t>::max(), 2, 0, 0); }),
        "fewer than the seq_len + 1 = 2^63"));
    CHECK(contains(error_of([&] { sample_batch(corpus_of({}), 1, 1, 0, 0); }), "holds 0 tokens"));
  }

  TEST_CASE("eval_batch: rows start evenly spaced from 0 to size - seq_len - 1") {
    TokenCorpus c = counting_corpus(1000);
    std::int64_t seq_len = 10;
    std::int64_t batch = 4;
    std::int64_t count = 5;
    std::vector<std::int64_t> all;
    for (std::int64_t i = 0; i < count; ++i) {
      auto starts = starts_of(eval_batch(c, seq_len, batch, i, count), c);
      all.insert(all.end(), starts.begin(), starts.end());
    }
    REQUIRE(all.size() == 20);
    CHECK(all.front() == 0);
    CHECK(all.back() == 1000 - seq_len - 1);
    for (std::size_t k = 0; k < all.size(); ++k) {
      CAPTURE(k);
      CHECK(all[k] == static_cast<std::int64_t>(k) * 989 / 19);
    }
    Tensor b = eval_batch(c, seq_len, batch, 0, count);
    CHECK(b.dtype() == DType::i64);
    CHECK(b.shape() == Shape{4, 11});
  }

  TEST_CASE("eval_batch: every evaluation gets the same batches") {
    TokenCorpus c = counting_corpus(777);
    for (std::int64_t i = 0; i < 3; ++i) {
      auto first = rows_of(eval_batch(c, 20, 5, i, 3));
      (void)sample_batch(c, 20, 5, 9, 9);
      CHECK(rows_of(eval_batch(c, 20, 5, i, 3)) == first);
    }
  }

  TEST_CASE("eval_batch: a single row starts at 0") {
    TokenCorpus c = counting_corpus(100);
    CHECK(starts_of(eval_batch(c, 10, 1, 0, 1), c) == std::vector<std::int64_t>{0});
  }

  TEST_CASE("eval_batch: bad arguments are errors naming them") {
    TokenCorpus c = counting_corpus(10);
    CHECK(contains(error_of([&] { eval_batch(c, 4, 2, 3, 3); }),
                   "eval_batch: index 3 is outside [0, 3)"));
    CHECK(contains(error_of([&] { eval_batch(c, 4, 2, -1, 3); }),
                   "eval_batch: index -1 is outside [0, 3)"));
    CHECK(contains(error_of([&] { eval_batch(c, 4, 2, 0, 0); }),
                   "eval_batch: count must be positive, got 0"));
    CHECK(contains(error_of([&] { eval_batch(c, 0, 2, 0, 1); }),
                   "eval_batch: seq_len must be positive, got 0"));
    CHECK(contains(error_of([&] { eval_batch(c, 4, -1, 0, 1); }),
                   "eval_batch: batch must be positive, got -1"));
    CHECK(contains(error_of([&] { eval_batch(c, 12, 1, 0, 1); }),
                   "eval_batch: corpus test corpus holds 10 tokens, fewer than the seq_len + 1 = "
                   "13 that one window needs"));
  }
}

}  // namespace longnet
