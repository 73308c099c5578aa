// Safetensors files: round trips of every dtype and shape, the exact bytes of a small file
// built by hand from the spec, files laid out as Python's writer lays them out, every
// malformed input rejected with a message naming what is wrong, and the write-then-rename
// that keeps a crash from leaving a half-written file.
#include <doctest/doctest.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <limits>
#include <map>
#include <string>

#include "tensor/copy.h"
#include "tensor/creation.h"
#include "tensor/cuda/runtime.h"
#include "tensor/view.h"
#include "tests/error_of.h"
#include "tests/temp_dir.h"
#include "train/safetensors.h"

namespace longnet {
namespace {

using testing::contains;
using testing::error_of;

namespace fs = std::filesystem;

// The 8-byte little-endian length prefix.
std::string le64(std::uint64_t n) {
  std::string out;
  for (int i = 0; i < 8; ++i) out += static_cast<char>((n >> (8 * i)) & 0xFFU);
  return out;
}

// A file from its header JSON and data section.
std::string file_of(const std::string& header, const std::string& data = "") {
  return le64(header.size()) + header + data;
}

std::string parse_error(const std::string& header, const std::string& data = "") {
  return error_of([&] { parse_safetensors(file_of(header, data), "bad.safetensors"); });
}

// The bytes of a tensor's elements, row-major.
std::string bytes_of(const Tensor& t) {
  Tensor host = contiguous(to(t, Device::cpu()));
  return {static_cast<const char*>(host.raw_data()),
          static_cast<std::size_t>(host.numel()) * element_size(host.dtype())};
}

// Checks that loaded holds exactly the elements of original, as a CPU contiguous tensor.
void check_same(const Tensor& loaded, const Tensor& original) {
  CHECK(loaded.dtype() == original.dtype());
  CHECK(loaded.shape() == original.shape());
  CHECK(loaded.device().is_cpu());
  CHECK(loaded.strides() == contiguous_strides(loaded.shape()));
  CHECK(loaded.offset() == 0);
  CHECK(bytes_of(loaded) == bytes_of(original));
}

std::string read_file(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

void write_file(const fs::path& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary);
  out << bytes;
}

using testing::TempDir;

// A small valid file: three tensors of different dtypes and a metadata entry.
std::string small_file() {
  return serialize_safetensors({{"w", from_data<float>({1, -2, 3.5f, 0}, {2, 2})},
                                {"ids", from_data<std::int32_t>({7, -1}, {2})},
                                {"count", from_data<std::int64_t>({1LL << 40}, {})}},
                               {{"format", "pt"}});
}

}  // namespace

TEST_SUITE("safetensors") {
  TEST_CASE("every dtype round-trips bit for bit, with its shape") {
    Generator gen(3);
    Tensor f32 = randn({3, 5}, gen);
    fill_(narrow(f32, 0, 0, 1), -0.0);
    Tensor f64 = randn({2, 3, 4}, gen, {DType::f64});
    Tensor bf = to(randn({7}, gen), DType::bf16);
    Tensor i32 = from_data<std::int32_t>(
        {0, -1, std::numeric_limits<std::int32_t>::min(), std::numeric_limits<std::int32_t>::max()},
        {2, 2});
    Tensor i64 = from_data<std::int64_t>(
        {std::numeric_limits<std::int64_t>::min(), -2, std::numeric_limits<std::int64_t>::max()},
        {3, 1});
    NamedTensors tensors = {{"f32", f32}, {"f64", f64}, {"bf16", bf}, {"i32", i32}, {"i64", i64}};
    SafetensorsFile file = parse_safetensors(serialize_safetensors(tensors));
    REQUIRE(file.tensors.size() == tensors.size());
    for (std::size_t i = 0; i < tensors.size(); ++i) {
      CAPTURE(tensors[i].first);
      CHECK(file.tensors[i].first == tensors[i].first);  // written and read in the order given
      check_same(file.tensors[i].second, tensors[i].second);
    }
    CHECK(file.metadata.empty());
    CHECK(file.at("bf16").to_vector<float>() == bf.to_vector<float>());
  }

  TEST_CASE("0-d and zero-size tensors round-trip") {
    NamedTensors tensors = {{"scalar", scalar(2.5)},
                            {"empty_front", zeros({0, 3})},
                            {"empty_middle", zeros({2, 0, 5}, {DType::i64})},
                            {"after", from_data<float>({4, 5}, {2})},
                            {"empty_last", zeros({0}, {DType::bf16})}};
    SafetensorsFile file = parse_safetensors(serialize_safetensors(tensors));
    REQUIRE(file.tensors.size() == tensors.size());
    for (const auto& item : tensors) {
      CAPTURE(item.first);
      check_same(file.at(item.first), item.second);
    }
    CHECK(file.at("scalar").dim() == 0);
    CHECK(file.at("scalar").item() == 2.5);
    CHECK(file.at("empty_middle").shape() == Shape{2, 0, 5});
  }

  TEST_CASE("non-contiguous views are written as their row-major elements") {
    Tensor base = arange(0, 24);
    Tensor t = transpose(reshape(base, {4, 6}), 0, 1);  // strides {1, 6}
    Tensor n = narrow(reshape(base, {4, 6}), 1, 2, 3);  // offset 2, rows of 3
    Tensor e = expand(reshape(arange(0, 3, 1, {DType::i32}), {3, 1}), {3, 4});  // stride 0
    Tensor s = slice(arange(0, 10, 1, {DType::f64}), 0, 1, 10, 3);              // 1, 4, 7
    REQUIRE(!t.is_contiguous());
    REQUIRE(!n.is_contiguous());
    REQUIRE(!e.is_contiguous());
    NamedTensors tensors = {{"t", t}, {"n", n}, {"e", e}, {"s", s}};
    SafetensorsFile file = parse_safetensors(serialize_safetensors(tensors));
    for (const auto& item : tensors) {
      CAPTURE(item.first);
      check_same(file.at(item.first), item.second);
    }
    CHECK(file.at("s").to_vector<double>() == std::vector<double>{1, 4, 7});
    CHECK(file.at("n").to_vector<float>() ==
          std::vector<float>{2, 3, 4, 8, 9, 10, 14, 15, 16, 20, 21, 22});
  }

  TEST_CASE("metadata round-trips, escapes and non-ASCII included") {
    std::map<std::string, std::string> metadata = {
        {"format", "pt"},
        {"note", "quote \" backslash \\ newline \n tab \t é 中"},
        {"", "empty key"},
        {"empty value", ""}};
    std::string bytes = serialize_safetensors({{"x", ones({2})}}, metadata);
    CHECK(parse_safetensors(bytes).metadata == metadata);
    // Without metadata the header has no __metadata__ entry at all.
    CHECK(!contains(serialize_safetensors({{"x", ones({2})}}), "__metadata__"));
  }

  TEST_CASE("a small file has exactly the bytes the spec prescribes") {
    NamedTensors tensors = {{"weight", from_data<float>({1.0f, -2.5f}, {2})},
                            {"step", from_data<std::int64_t>({7}, {})},
                            {"half", to(from_data<float>({1.0f, -2.0f}, {1, 2}), DType::bf16)}};
    // 207 bytes of JSON, entries in the order given, padded with one space to 208 = 0xD0.
    std::string header = R"({"__metadata__":{"format":"pt"},)"
                         R"("weight":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                         R"("step":{"dtype":"I64","shape":[],"data_offsets":[8,16]},)"
                         R"("half":{"dtype":"BF16","shape":[1,2],"data_offsets":[16,20]}} )";
    REQUIRE(header.size() == 208);
    std::string expected = std::string("\xD0\0\0\0\0\0\0\0", 8) + header +
                           std::string(
                               "\x00\x00\x80\x3F"  // 1.0f
                               "\x00\x00\x20\xC0"  // -2.5f
                               "\x07\0\0\0\0\0\0\0"
                               "\x80\x3F"   // bf16 1.0 = 0x3F80
                               "\x00\xC0",  // bf16 -2.0 = 0xC000
                               20);
    std::string bytes = serialize_safetensors(tensors, {{"format", "pt"}});
    CHECK(bytes == expected);
    CHECK(bytes.size() == 8 + 208 + 20);

    // An empty file is "{}" padded to 8 bytes.
    CHECK(serialize_safetensors({}) == std::string("\x08\0\0\0\0\0\0\0{}      ", 16));
    CHECK(parse_safetensors(serialize_safetensors({})).tensors.empty());
  }

  TEST_CASE("a file whose entries are not in data order loads, as Python's writer makes them") {
    // Python's safetensors lays data out by dtype alignment, then name: f64 "c" first, then
    // f32 "a", then i32 "b"; the header lists them in another order, the metadata last, and
    // its length (202) is not a multiple of 8.
    std::string header = R"({"a": {"dtype": "F32", "shape": [2], "data_offsets": [8, 16]}, )"
                         R"("b":{"shape":[1],"data_offsets":[16,20],"dtype":"I32"},)"
                         R"("c":{"dtype":"F64","shape":[1],"data_offsets":[0,8]},)"
                         R"("__metadata__":{"format":"pt"}})";
    REQUIRE(header.size() % 8 != 0);
    std::string data = std::string("\0\0\0\0\0\0\xF8\x3F", 8)      // 1.5
                       + std::string("\0\0\x80\x3F\0\0\0\x40", 8)  // 1.0f, 2.0f
                       + std::string("\xFE\xFF\xFF\xFF", 4);       // -2
    SafetensorsFile file = parse_safetensors(file_of(header, data));
    REQUIRE(file.tensors.size() == 3);
    CHECK(file.tensors[0].first == "c");
    CHECK(file.tensors[1].first == "a");
    CHECK(file.tensors[2].first == "b");
    CHECK(file.at("c").to_vector<double>() == std::vector<double>{1.5});
    CHECK(file.at("a").to_vector<float>() == std::vector<float>{1, 2});
    CHECK(file.at("b").to_vector<std::int32_t>() == std::vector<std::int32_t>{-2});
    CHECK(file.metadata == std::map<std::string, std::string>{{"format", "pt"}});
  }

  TEST_CASE("at names the missing tensor and lists those present") {
    SafetensorsFile file = parse_safetensors(small_file(), "ckpt.safetensors");
    CHECK(file.at("ids").to_vector<std::int32_t>() == std::vector<std::int32_t>{7, -1});
    std::string e = error_of([&] { file.at("bias"); });
    CHECK(contains(e, "ckpt.safetensors"));
    CHECK(contains(e, "no tensor 'bias'"));
    CHECK(contains(e, "'w', 'ids', 'count'"));
  }

  TEST_CASE("a file too short for the length prefix is rejected") {
    CHECK(contains(error_of([] { parse_safetensors("", "x.st"); }), "x.st: 0 bytes is too short"));
    CHECK(contains(error_of([] { parse_safetensors(std::string(7, '\0')); }),
                   "7 bytes is too short"));
  }

  TEST_CASE("a header length past the end of the file or over 100 MB is rejected") {
    CHECK(contains(error_of([] { parse_safetensors(le64(100) + "{}        "); }),
                   "header length 100 is past the 10 bytes"));
    CHECK(contains(error_of([] { parse_safetensors(le64(1ULL << 40) + "{}"); }),
                   "header length 1099511627776 is over the 100000000-byte limit"));
    CHECK(contains(error_of([] { parse_safetensors(le64(~0ULL) + "{}"); }),
                   "header length 18446744073709551615 is over"));
  }

  TEST_CASE("a header that is not a JSON object is rejected") {
    CHECK(contains(parse_error(R"({"a": )"), "bad.safetensors: header is not valid JSON"));
    CHECK(contains(parse_error(""), "header is not valid JSON"));
    CHECK(contains(parse_error("{\"\xFF\": 1}"), "header is not valid JSON"));  // not UTF-8
    CHECK(contains(parse_error("[1, 2]"), "header is a JSON array, not a JSON object"));
    CHECK(contains(parse_error("42"), "header is 42, not a JSON object"));
    // Deep nesting is parsed and freed without recursion, and is not echoed back.
    std::string deep = std::string(100000, '[') + std::string(100000, ']');
    CHECK(contains(parse_error(deep), "header is a JSON array, not a JSON object"));
    CHECK(contains(parse_error(R"({"a": )" + deep + "}"),
                   "tensor 'a': entry is a JSON array, not an object"));
  }

  TEST_CASE("an entry missing or mistyping dtype, shape or data_offsets is rejected") {
    const std::string d = R"("dtype":"F32")";
    const std::string s = R"("shape":[1])";
    const std::string o = R"("data_offsets":[0,4])";
    const std::string data(4, '\0');
    auto entry = [&](const std::string& fields) {
      return parse_error("{\"t\":{" + fields + "}}", data);
    };
    CHECK(parse_error(R"({"t":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}})", data) ==
          "no error");
    CHECK(contains(parse_error(R"({"t":[1]})", data), "tensor 't': entry is a JSON array"));
    CHECK(contains(entry(s + "," + o), "tensor 't': entry has no \"dtype\""));
    CHECK(contains(entry(R"("dtype":4,)" + s + "," + o), "\"dtype\" is 4, not a string"));
    CHECK(contains(entry(d + "," + o), "tensor 't': entry has no \"shape\""));
    CHECK(contains(entry(d + R"(,"shape":4,)" + o), "\"shape\" is 4, not an array"));
    CHECK(contains(entry(d + R"(,"shape":[1.0],)" + o),
                   "shape dimension 0 is 1.0, not a non-negative integer"));
    CHECK(contains(entry(d + R"(,"shape":["1"],)" + o),
                   R"(shape dimension 0 is "1", not a non-negative integer)"));
    CHECK(contains(entry(d + "," + s), "tensor 't': entry has no \"data_offsets\""));
    CHECK(contains(entry(d + "," + s + R"(,"data_offsets":[0])"),
                   "\"data_offsets\" has 1 elements, not 2 [begin, end]"));
    CHECK(contains(entry(d + "," + s + R"(,"data_offsets":{"begin":0})"),
                   "\"data_offsets\" is a JSON object, not an array [begin, end]"));
    CHECK(contains(entry(d + "," + s + R"(,"data_offsets":[0,"4"])"),
                   R"("data_offsets" [0, "4"] are not non-negative integers)"));
    CHECK(contains(entry(d + "," + s + R"(,"data_offsets":[-4,4])"),
                   R"("data_offsets" [-4, 4] are not non-negative integers)"));
  }

  TEST_CASE("an unsupported dtype is rejected, naming it") {
    std::string e = parse_error(R"({"h":{"dtype":"F16","shape":[2],"data_offsets":[0,4]}})",
                                std::string(4, '\0'));
    CHECK(contains(e, "bad.safetensors: tensor 'h': unsupported dtype \"F16\""));
    CHECK(contains(e, "F32, F64, BF16, I32, I64"));
  }

  TEST_CASE("a negative or oversized dimension is rejected") {
    CHECK(contains(parse_error(R"({"t":{"dtype":"F32","shape":[2,-1],"data_offsets":[0,0]}})"),
                   "tensor 't': shape dimension 1 is -1, not a non-negative integer"));
    CHECK(contains(
        parse_error(R"({"t":{"dtype":"F32","shape":[9223372036854775808],"data_offsets":[0,0]}})"),
        "shape dimension 0 is 9223372036854775808, not a non-negative integer"));
    CHECK(contains(parse_error(R"({"t":{"dtype":"F32","shape":[1e30],"data_offsets":[0,0]}})"),
                   "shape dimension 0 is 1e+30, not a non-negative integer"));
  }

  TEST_CASE("data_offsets that begin after they end or leave the data section are rejected") {
    CHECK(contains(parse_error(R"({"t":{"dtype":"F32","shape":[1],"data_offsets":[8,4]}})",
                               std::string(8, '\0')),
                   "tensor 't': data_offsets [8, 4] begin after they end"));
    CHECK(contains(parse_error(R"({"t":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}})",
                               std::string(8, '\0')),
                   "tensor 't': data_offsets [0, 16] end past the 8-byte data section"));
    CHECK(contains(
        parse_error(
            R"({"t":{"dtype":"F32","shape":[1],"data_offsets":[18446744073709551612,18446744073709551615]}})",
            std::string(8, '\0')),
        "end past the 8-byte data section"));
  }

  TEST_CASE("a byte range that does not match numel times the element size is rejected") {
    CHECK(contains(parse_error(R"({"t":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})",
                               std::string(8, '\0')),
                   "tensor 't': dtype F32 and shape [3] need 3 x 4 bytes, but data_offsets "
                   "[0, 8] hold 8"));
    CHECK(contains(parse_error(R"({"t":{"dtype":"BF16","shape":[2,2],"data_offsets":[0,4]}})",
                               std::string(4, '\0')),
                   "need 4 x 2 bytes, but data_offsets [0, 4] hold 4"));
    // numel overflows 64 bits; numel fits but its byte count does not.
    CHECK(contains(parse_error(R"({"t":{"dtype":"F32","shape":[4611686018427387904,4],)"
                               R"("data_offsets":[0,0]}})"),
                   "shape [4611686018427387904, 4] has more elements than fit in 64 bits"));
    CHECK(contains(parse_error(R"({"t":{"dtype":"F64","shape":[2305843009213693952],)"
                               R"("data_offsets":[0,0]}})"),
                   "need 2305843009213693952 x 8 bytes, but data_offsets [0, 0] hold 0"));
    // A zero dimension makes the tensor empty however large the others are.
    CHECK(parse_error(R"({"t":{"dtype":"F32","shape":[4611686018427387904,4,0],)"
                      R"("data_offsets":[0,0]}})") == "no error");
  }

  TEST_CASE("overlapping byte ranges are rejected, naming both tensors") {
    std::string e = parse_error(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                                R"("b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})",
                                std::string(12, '\0'));
    CHECK(contains(e,
                   "bad.safetensors: tensor 'b' data_offsets [4, 12] overlap tensor 'a' "
                   "data_offsets [0, 8]"));
    CHECK(contains(parse_error(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                               R"("b":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})",
                               std::string(8, '\0')),
                   "tensor 'b' data_offsets [0, 8] overlap tensor 'a'"));
  }

  TEST_CASE("data bytes that belong to no tensor are rejected") {
    const std::string a = R"("a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]})";
    CHECK(
        contains(parse_error("{" + a + R"(,"b":{"dtype":"F32","shape":[1],"data_offsets":[8,12]}})",
                             std::string(12, '\0')),
                 "data bytes [4, 8) belong to no tensor (a hole before tensor 'b')"));
    CHECK(contains(parse_error("{" + a + "}", std::string(8, '\0')),
                   "data bytes [4, 8) belong to no tensor (a hole at the end of the 8-byte data "
                   "section)"));
    CHECK(contains(parse_error(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})",
                               std::string(8, '\0')),
                   "data bytes [0, 4) belong to no tensor (a hole before tensor 'a')"));
    CHECK(contains(parse_error("{}", "abc"), "data bytes [0, 3) belong to no tensor"));
  }

  TEST_CASE("metadata that is not an object of strings is rejected") {
    CHECK(contains(parse_error(R"({"__metadata__":{"format":"pt","epoch":3}})"),
                   "bad.safetensors: __metadata__ value for key 'epoch' is 3, not a string"));
    CHECK(contains(parse_error(R"({"__metadata__":{"nested":{"a":"b"}}})"),
                   "__metadata__ value for key 'nested' is a JSON object, not a string"));
    CHECK(contains(parse_error(R"({"__metadata__":["pt"]})"),
                   "__metadata__ is a JSON array, not an object"));
  }

  TEST_CASE("every truncation of a valid file is rejected") {
    std::string bytes = small_file();
    REQUIRE_NOTHROW(parse_safetensors(bytes));
    for (std::size_t n = 0; n < bytes.size(); ++n) {
      CAPTURE(n);
      CHECK(error_of([&] { parse_safetensors(bytes.substr(0, n)); }) != "no error");
    }
  }

  TEST_CASE("any corrupted byte either parses or is a longnet::Error, never a crash") {
    // Under ASan this also shows that no input makes the reader touch memory past its end.
    std::string bytes = small_file();
    int rejected = 0;
    int accepted = 0;
    for (std::size_t i = 0; i < bytes.size(); ++i) {
      for (unsigned flip : {0x01U, 0x20U, 0x80U, 0xFFU}) {
        std::string bad = bytes;
        bad[i] = static_cast<char>(static_cast<unsigned char>(bad[i]) ^ flip);
        CAPTURE(i);
        try {
          parse_safetensors(bad);
          ++accepted;
        } catch (const Error&) {
          ++rejected;
        } catch (const std::exception& e) {
          FAIL("not a longnet::Error: " << e.what());
        }
      }
    }
    CHECK(rejected > 0);
    CHECK(accepted > 0);  // flips in the data section, at least
  }

  TEST_CASE("save refuses duplicate, reserved or non-UTF-8 names and undefined tensors") {
    CHECK(contains(error_of([] {
                     serialize_safetensors({{"a", ones({1})}, {"a", ones({2})}});
                   }),
                   "two tensors are called 'a'"));
    CHECK(contains(error_of([] {
                     serialize_safetensors({{"__metadata__", ones({1})}});
                   }),
                   "a tensor may not be called '__metadata__'"));
    CHECK(contains(error_of([] {
                     serialize_safetensors({{"x", Tensor()}});
                   }),
                   "tensor 'x' is undefined"));
    CHECK(contains(error_of([] {
                     serialize_safetensors({{"bad\xFF", ones({1})}});
                   }),
                   "is not valid UTF-8"));
    CHECK(contains(error_of([] {
                     serialize_safetensors({}, {{"k", "\xC3"}});
                   }),
                   "metadata value for key 'k' is not valid UTF-8"));
  }

  TEST_CASE("save writes path.tmp and renames it over path") {
    TempDir dir;
    fs::path path = dir.path / "model.safetensors";
    NamedTensors first = {{"a", ones({3})}};
    NamedTensors second = {{"b", from_data<float>({4, 5}, {2})}};

    save_safetensors(path, first, {{"step", "1"}});
    CHECK(dir.entries() == std::vector<std::string>{"model.safetensors"});
    CHECK(read_file(path) == serialize_safetensors(first, {{"step", "1"}}));

    // An existing file is replaced, and a .tmp left by an earlier crash is overwritten.
    write_file(dir.path / "model.safetensors.tmp", std::string(1000, 'x'));
    save_safetensors(path, second);
    CHECK(dir.entries() == std::vector<std::string>{"model.safetensors"});
    SafetensorsFile file = load_safetensors(path);
    CHECK(file.source == path.string());
    REQUIRE(file.tensors.size() == 1);
    check_same(file.at("b"), second[0].second);
    CHECK(file.metadata.empty());

    // Invalid arguments are refused before anything is written.
    CHECK(contains(error_of([&] {
                     save_safetensors(path, {{"a", ones({1})}, {"a", ones({1})}});
                   }),
                   "two tensors are called 'a'"));
    CHECK(dir.entries() == std::vector<std::string>{"model.safetensors"});
    CHECK(read_file(path) == serialize_safetensors(second));
  }

  TEST_CASE("a failed save names the path and the reason, and leaves no .tmp") {
    TempDir dir;
    fs::path missing = dir.path / "no-such-dir" / "m.safetensors";
    std::string e = error_of([&] { save_safetensors(missing, {{"a", ones({1})}}); });
    CHECK(contains(e, "cannot create " + missing.string() + ".tmp: No such file or directory"));

    // The rename fails when path is a non-empty directory; the .tmp is removed.
    fs::path occupied = dir.path / "occupied";
    fs::create_directories(occupied / "inside");
    e = error_of([&] { save_safetensors(occupied, {{"a", ones({1})}}); });
    CHECK(contains(e, "renaming " + occupied.string() + ".tmp to " + occupied.string() + ": "));
    CHECK(dir.entries() == std::vector<std::string>{"occupied"});
  }

  TEST_CASE("load names the path and the reason when the file cannot be read or is malformed") {
    TempDir dir;
    fs::path path = dir.path / "absent.safetensors";
    CHECK(contains(error_of([&] { load_safetensors(path); }),
                   "cannot open " + path.string() + ": No such file or directory"));
    CHECK(contains(error_of([&] { load_safetensors(dir.path); }),
                   dir.path.string() + " is not a regular file"));
    fs::path bad = dir.path / "bad.safetensors";
    std::string bytes = small_file();
    write_file(bad, bytes.substr(0, bytes.size() - 1));
    CHECK(contains(error_of([&] { load_safetensors(bad); }),
                   bad.string() + ": tensor 'count': data_offsets [24, 32] end past the 31-byte "
                                  "data section"));
  }

  TEST_CASE("a saved file loads back through the file functions") {
    TempDir dir;
    Generator gen(5);
    NamedTensors tensors = {{"layer.0.weight", transpose(randn({4, 3}, gen), 0, 1)},
                            {"layer.0.bias", zeros({0})},
                            {"embed", to(randn({5, 2}, gen), DType::bf16)},
                            {"step", scalar(12, {DType::i64})}};
    fs::path path = dir.path / "ckpt.safetensors";
    save_safetensors(path, tensors, {{"format", "pt"}});
    SafetensorsFile file = load_safetensors(path);
    REQUIRE(file.tensors.size() == tensors.size());
    for (std::size_t i = 0; i < tensors.size(); ++i) {
      CAPTURE(tensors[i].first);
      CHECK(file.tensors[i].first == tensors[i].first);
      check_same(file.tensors[i].second, tensors[i].second);
    }
    CHECK(file.metadata.at("format") == "pt");
  }
}

TEST_SUITE("gpu") {
  TEST_CASE("safetensors: CUDA tensors and strided CUDA views are saved through host copies") {
    Generator gen(8);
    Tensor host = randn({3, 4, 5}, gen);
    Tensor device = to(host, Device::cuda());
    NamedTensors tensors = {
        {"plain", device},
        {"transposed", transpose(device, 0, 2)},
        {"narrowed", narrow(narrow(device, 2, 1, 3), 0, 1, 2)},
        {"expanded", expand(narrow(device, 1, 2, 1), {3, 6, 5})},
        {"empty", narrow(device, 1, 0, 0)},
        {"bf16", to(to(host, DType::bf16), Device::cuda())},
    };
    SafetensorsFile file = parse_safetensors(serialize_safetensors(tensors));
    REQUIRE(file.tensors.size() == tensors.size());
    check_same(file.at("plain"), host);
    check_same(file.at("transposed"), transpose(host, 0, 2));
    check_same(file.at("narrowed"), narrow(narrow(host, 2, 1, 3), 0, 1, 2));
    check_same(file.at("expanded"), expand(narrow(host, 1, 2, 1), {3, 6, 5}));
    check_same(file.at("empty"), narrow(host, 1, 0, 0));
    check_same(file.at("bf16"), to(host, DType::bf16));
  }
}

}  // namespace longnet
