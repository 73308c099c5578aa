// The CUDA runtime layer: caching allocator, streams and events, copies and casts, random
// creation. The "gpu" suite runs only where a device is present; elsewhere the runner
// reports it as skipped. The CPU is the oracle: copies, casts and random draws must agree
// with it bit for bit.
#include <doctest/doctest.h>

#include <bit>
#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <thread>

#include "tensor/copy.h"
#include "tensor/creation.h"
#include "tensor/cuda/runtime.h"
#include "tensor/distributions.h"
#include "tensor/view.h"
#include "tests/gpu_check.h"

namespace longnet {

namespace {

using testing::kGpu;
using testing::poisoned;
using testing::relative_error;

constexpr DType kAllDtypes[] = {DType::f32, DType::f64, DType::bf16, DType::i32, DType::i64};

// Distance in units in the last place between two doubles of one sign.
std::int64_t ulps(double a, double b) {
  return std::abs(std::bit_cast<std::int64_t>(a) - std::bit_cast<std::int64_t>(b));
}

// Bit patterns of t's elements, read back in t's own dtype (exact: every dtype fits).
std::vector<std::uint64_t> bits_of(const Tensor& t) {
  Tensor host = contiguous(to(t, Device::cpu()));
  std::vector<std::uint64_t> out(static_cast<std::size_t>(host.numel()));
  std::size_t size = element_size(host.dtype());
  const auto* p = static_cast<const unsigned char*>(host.raw_data());
  for (std::size_t i = 0; i < out.size(); ++i) std::memcpy(&out[i], p + i * size, size);
  return out;
}

// Fresh values of dtype: normals scaled to exercise integer casts, or integers.
Tensor random_values(const Shape& shape, DType dtype, Generator& gen) {
  if (!is_floating(dtype)) return randint(-1000, 1000, shape, gen, {dtype});
  std::vector<double> values = randn(shape, gen, {DType::f64}).to_vector<double>();
  for (double& v : values) v *= 300.0;
  return to(from_data(values, shape), dtype);
}

}  // namespace

TEST_SUITE("cuda") {
  TEST_CASE("device_count answers without throwing on any machine") {
    int n = cuda::device_count();
    CHECK(n >= 0);
    if (!cuda::built_with_cuda()) CHECK(n == 0);
  }

  TEST_CASE("the shared logarithm is within one ulp of libm") {
    std::mt19937_64 rng(3);
    for (int i = 0; i < 200000; ++i) {
      double u = (static_cast<double>(rng() >> 32) + 1.0) * 0x1p-32;
      REQUIRE(ulps(distributions::log_positive(u), std::log(u)) <= 1);
    }
    CHECK(distributions::log_positive(1.0) == 0.0);
  }

  TEST_CASE("normal draws have pinned bits whatever the compiler fuses") {
    // A hash of 400000 draws made with -ffp-contract=off: the host build must not differ.
    std::uint64_t hash = 0;
    for (std::uint32_t c = 0; c < 100000; ++c) {
      double values[4];
      distributions::Normal{}(distributions::philox_words(c, 1234), values);
      for (double v : values) hash = (hash * 1000003) ^ std::bit_cast<std::uint64_t>(v);
    }
    CHECK(hash == 0xf87b7a3238fa9ffdULL);
  }

  TEST_CASE("the shared sine and cosine of a turn fraction are within one ulp") {
    std::mt19937_64 rng(4);
    for (int i = 0; i < 200000; ++i) {
      std::uint64_t m = (rng() >> 32) + 1;
      // Reference: the same exact quarter-turn reduction, then long double sin/cos.
      std::uint64_t quarter = (m + (std::uint64_t{1} << 29)) >> 30;
      auto rest = static_cast<std::int64_t>(m) - static_cast<std::int64_t>(quarter << 30);
      long double x = 2.0L * 3.14159265358979323846264338327950288L * rest / 4294967296.0L;
      long double s = std::sin(x);
      long double c = std::cos(x);
      long double turned_s[] = {s, c, -s, -c};
      long double turned_c[] = {c, -s, -c, s};
      double got_s = 0;
      double got_c = 0;
      distributions::sincos_turn(m, &got_s, &got_c);
      REQUIRE(ulps(got_s, static_cast<double>(turned_s[quarter & 3])) <= 1);
      REQUIRE(ulps(got_c, static_cast<double>(turned_c[quarter & 3])) <= 1);
    }
  }
}

TEST_SUITE("gpu") {
  TEST_CASE("tensors round-trip between host and device for every dtype") {
    Generator gen(11);
    for (DType dtype : kAllDtypes) {
      Tensor host = is_floating(dtype) ? randn({3, 257}, gen, {dtype})
                                       : randint(-50, 50, {3, 257}, gen, {dtype});
      Tensor device = to(host, kGpu);
      CHECK(device.device() == kGpu);
      Tensor back = to(device, Device::cpu());
      CHECK(back.to_vector<double>() == host.to_vector<double>());
    }
  }

  TEST_CASE("fill writes every element on the device") {
    for (DType dtype : kAllDtypes) {
      Tensor t = empty({100003}, {dtype, kGpu});
      fill_(t, 3.0);
      auto v = to(t, Device::cpu()).to_vector<double>();
      for (double x : v) REQUIRE(x == 3.0);
    }
  }

  TEST_CASE("fill of a strided view writes the view and nothing else") {
    for (DType dtype : kAllDtypes) {
      Tensor gpu = zeros({6, 10}, {dtype, kGpu});
      Tensor cpu = zeros({6, 10}, {dtype});
      fill_(slice(transpose(gpu, 0, 1), 0, 1, 9, 3), -2.5);
      fill_(slice(transpose(cpu, 0, 1), 0, 1, 9, 3), -2.5);
      CHECK(bits_of(gpu) == bits_of(cpu));
    }
  }

  TEST_CASE("a released block is reused without a new cudaMalloc") {
    cuda::empty_cache(0);
    cuda::MemoryStats before = cuda::memory_stats(0);
    { Tensor a = empty({1000, 1000}, {DType::f32, kGpu}); }
    cuda::MemoryStats after_first = cuda::memory_stats(0);
    CHECK(after_first.device_allocations == before.device_allocations + 1);
    CHECK(after_first.current_bytes == before.current_bytes);
    CHECK(after_first.reserved_bytes >= before.reserved_bytes + 4000000);
    for (int i = 0; i < 5; ++i) {
      Tensor b = empty({1000, 1000}, {DType::f32, kGpu});
      Tensor c = empty({500, 1000}, {DType::f32, kGpu});  // another size class: one more
    }
    CHECK(cuda::memory_stats(0).device_allocations == before.device_allocations + 2);
  }

  TEST_CASE("a block released while queued kernels still read it is reused safely") {
    Generator gen(6);
    Tensor host = randn({1 << 24}, gen);
    Tensor want = to(host, DType::bf16);
    std::int64_t allocations = 0;
    Tensor cast;
    {
      Tensor x = to(host, kGpu);
      cast = to(x, DType::bf16);  // queued: still reading x when x is released below
      allocations = cuda::memory_stats(0).device_allocations;
    }
    Tensor reused = full({1 << 24}, -1.0, {DType::f32, kGpu});  // takes x's block
    CHECK(cuda::memory_stats(0).device_allocations == allocations);
    CHECK(bits_of(cast) == bits_of(want));
  }

  TEST_CASE("threads allocate and release concurrently") {
    cuda::MemoryStats before = cuda::memory_stats(0);
    std::vector<std::thread> threads;
    for (int t = 0; t < 4; ++t) {
      threads.emplace_back([t] {
        for (int i = 0; i < 500; ++i) {
          Tensor a = empty({1000 + 37 * t}, {DType::f32, kGpu});
          Tensor b = empty({(i % 7) * 1000 + 1}, {DType::bf16, kGpu});
        }
      });
    }
    for (auto& thread : threads) thread.join();
    cuda::MemoryStats after = cuda::memory_stats(0);
    CHECK(after.current_bytes == before.current_bytes);
    CHECK(after.reserved_bytes >= after.current_bytes);
  }

  TEST_CASE("current and peak bytes follow live tensors") {
    cuda::reset_peak_memory(0);
    std::size_t base = cuda::memory_stats(0).current_bytes;
    std::size_t peak = 0;
    {
      Tensor a = empty({1 << 20}, {DType::f32, kGpu});  // 4 MiB
      Tensor b = empty({1 << 19}, {DType::f32, kGpu});  // 2 MiB
      cuda::MemoryStats live = cuda::memory_stats(0);
      CHECK(live.current_bytes == base + (6u << 20));
      CHECK(live.peak_bytes == live.current_bytes);
      CHECK(live.reserved_bytes >= live.current_bytes);
      peak = live.peak_bytes;
    }
    Tensor small = empty({100}, {DType::f32, kGpu});  // 400 bytes: a 512-byte block
    cuda::MemoryStats after = cuda::memory_stats(0);
    CHECK(after.current_bytes == base + 512);
    CHECK(after.peak_bytes == peak);
    cuda::reset_peak_memory(0);
    CHECK(cuda::memory_stats(0).peak_bytes == base + 512);
  }

  TEST_CASE("empty_cache hands cached blocks back to the driver") {
    { Tensor a = empty({3 << 20}, {DType::f32, kGpu}); }
    CHECK(cuda::memory_stats(0).reserved_bytes > cuda::memory_stats(0).current_bytes);
    cuda::empty_cache(0);
    cuda::MemoryStats stats = cuda::memory_stats(0);
    CHECK(stats.reserved_bytes == stats.current_bytes);
  }

  TEST_CASE("steady-state steps call no cudaMalloc") {
    Generator gen(5);
    auto step = [&] {
      Tensor x = randn({64, 300}, gen, {DType::f32, kGpu});
      Tensor y = contiguous(transpose(to(x, DType::bf16), 0, 1));
      Tensor z = concat({y, y}, 1);
      return to(z, DType::f32).numel();
    };
    step();
    std::int64_t allocations = cuda::memory_stats(0).device_allocations;
    for (int i = 0; i < 5; ++i) step();
    CHECK(cuda::memory_stats(0).device_allocations == allocations);
  }

  TEST_CASE("an impossible allocation is an out-of-memory error with advice") {
    std::string message;
    try {
      empty({std::int64_t{1} << 50}, {DType::f32, kGpu});
    } catch (const Error& e) {
      message = e.what();
    }
    CHECK(message.find("out of GPU memory") != std::string::npos);
    CHECK(message.find("asked for 4.00 PiB") != std::string::npos);
    CHECK(message.find("free of") != std::string::npos);
    CHECK(message.find("cached") != std::string::npos);
    CHECK(message.find("batch_size") != std::string::npos);
    CHECK(message.find("activation recomputation") != std::string::npos);
    // The allocator still works afterwards.
    Tensor t = ones({10}, {DType::f32, kGpu});
    CHECK(t.to_vector<double>() == std::vector<double>(10, 1.0));
  }

  TEST_CASE("casts between every pair of dtypes equal the CPU's bit for bit") {
    Generator gen(21);
    for (DType from : kAllDtypes) {
      Tensor host = random_values({7, 1031}, from, gen);
      Tensor device = to(host, kGpu);
      for (DType dtype : kAllDtypes) {
        std::string from_name = name(from);
        CAPTURE(from_name);
        std::string dtype_name = name(dtype);
        CAPTURE(dtype_name);
        Tensor got = poisoned({7, 1031}, {dtype, kGpu});
        copy_(got, device);
        CHECK(bits_of(got) == bits_of(to(host, dtype)));
        CHECK(bits_of(to(device, dtype)) == bits_of(to(host, dtype)));
      }
    }
  }

  TEST_CASE("casts between floating dtypes keep infinities, NaN, zeros and rounding ties") {
    double inf = std::numeric_limits<double>::infinity();
    std::vector<double> values = {inf,   -inf,         std::nan(""),          0.0,
                                  -0.0,  1.0 + 0x1p-8, 1.0 + 0x1p-7 + 0x1p-8, 3.0e38,
                                  1e-40, 65504.0};
    Tensor host = from_data(values, {10});
    for (DType from : {DType::f32, DType::f64, DType::bf16}) {
      Tensor source = to(host, from);
      for (DType dtype : {DType::f32, DType::f64, DType::bf16}) {
        std::string from_name = name(from);
        CAPTURE(from_name);
        std::string dtype_name = name(dtype);
        CAPTURE(dtype_name);
        CHECK(bits_of(to(to(source, kGpu), dtype)) == bits_of(to(source, dtype)));
      }
    }
  }

  TEST_CASE("strided and broadcast copies on the device equal the CPU's") {
    Generator gen(31);
    Tensor host = randn({4, 5, 6, 7}, gen, {DType::f32});
    Tensor device = to(host, kGpu);
    auto views = [](const Tensor& t) {
      return std::vector<Tensor>{
          transpose(t, 1, 3),
          permute(t, {2, 0, 3, 1}),
          slice(t, 2, 1, 6, 2),
          narrow(transpose(t, 0, 2), 1, 1, 3),
          expand(narrow(t, 1, 2, 1), {4, 5, 6, 7}),
          expand(reshape(narrow(flatten(t), 0, 7, 6), {1, 1, 6, 1}), {3, 4, 6, 9}),
          slice(slice(t, 3, 1, 7, 3), 0, 0, 4, 3),
      };
    };
    std::vector<Tensor> on_host = views(host);
    std::vector<Tensor> on_device = views(device);
    for (std::size_t i = 0; i < on_host.size(); ++i) {
      CAPTURE(i);
      for (DType dtype : {DType::f32, DType::bf16, DType::f64}) {
        Tensor got = poisoned(on_host[i].shape(), {dtype, kGpu});
        copy_(got, on_device[i]);
        Tensor want = empty(on_host[i].shape(), {dtype});
        copy_(want, on_host[i]);
        CHECK(bits_of(got) == bits_of(want));
      }
      CHECK(bits_of(contiguous(on_device[i])) == bits_of(contiguous(on_host[i])));
      CHECK(bits_of(clone(on_device[i])) == bits_of(clone(on_host[i])));
    }
  }

  TEST_CASE("copies into a strided destination write only the view") {
    Generator gen(32);
    Tensor src_host = randint(-9, 9, {3, 1, 4}, gen, {DType::i64});
    Tensor dst_host = randn({4, 3, 5, 2}, gen, {DType::bf16});
    Tensor src = to(src_host, kGpu);
    Tensor dst = to(dst_host, kGpu);
    // A [3, 5, 4] view of dst with every stride non-contiguous; src broadcasts along 5.
    auto view = [](const Tensor& t) { return permute(squeeze(narrow(t, 3, 1, 1), 3), {1, 2, 0}); };
    copy_(view(dst), src);
    copy_(view(dst_host), src_host);
    CHECK(bits_of(dst) == bits_of(dst_host));
  }

  TEST_CASE("non-contiguous views move between host and device") {
    Generator gen(41);
    for (DType dtype : kAllDtypes) {
      std::string dtype_name = name(dtype);
      CAPTURE(dtype_name);
      Tensor host = random_values({6, 8, 5}, dtype, gen);
      Tensor view = slice(transpose(host, 0, 2), 1, 1, 8, 2);
      Tensor up = to(view, kGpu);
      CHECK(up.is_contiguous());
      CHECK(bits_of(up) == bits_of(view));
      Tensor device = to(host, kGpu);
      Tensor down = to(slice(transpose(device, 0, 2), 1, 1, 8, 2), Device::cpu());
      CHECK(bits_of(down) == bits_of(view));
    }
    // Across devices with a cast and a broadcast into a strided destination.
    Tensor row = randn({1, 5}, gen, {DType::f64});
    Tensor dst = zeros({5, 3}, {DType::bf16, kGpu});
    copy_(transpose(dst, 0, 1), row);
    Tensor want = zeros({5, 3}, {DType::bf16});
    copy_(transpose(want, 0, 1), row);
    CHECK(bits_of(dst) == bits_of(want));
  }

  TEST_CASE("concat on the device equals the CPU's") {
    Generator gen(51);
    Tensor a = randn({3, 4, 5}, gen);
    Tensor b = randn({3, 2, 5}, gen);
    Tensor c = transpose(randn({5, 1, 3}, gen), 0, 2);  // [3, 1, 5], non-contiguous
    Tensor want = concat({a, b, c}, 1);
    Tensor got = concat({to(a, kGpu), to(b, kGpu), to(c, kGpu)}, 1);
    CHECK(got.device() == kGpu);
    CHECK(bits_of(got) == bits_of(want));
  }

  TEST_CASE("random draws on the device equal the CPU's bit for bit") {
    for (std::int64_t n : {1, 3, 4, 1001, 70001}) {
      CAPTURE(n);
      for (DType dtype : {DType::f32, DType::f64, DType::bf16}) {
        std::string dtype_name = name(dtype);
        CAPTURE(dtype_name);
        Generator cpu_gen(1234);
        Generator gpu_gen(1234);
        cpu_gen.set_offset(77);
        gpu_gen.set_offset(77);
        CHECK(bits_of(randn({n}, gpu_gen, {dtype, kGpu})) == bits_of(randn({n}, cpu_gen, {dtype})));
        CHECK(bits_of(uniform({n}, -0.5, 2.0, gpu_gen, {dtype, kGpu})) ==
              bits_of(uniform({n}, -0.5, 2.0, cpu_gen, {dtype})));
        CHECK(gpu_gen.offset() == cpu_gen.offset());
      }
      for (DType dtype : {DType::i32, DType::i64}) {
        Generator cpu_gen(99);
        Generator gpu_gen(99);
        CHECK(bits_of(randint(-7, 1000003, {n}, gpu_gen, {dtype, kGpu})) ==
              bits_of(randint(-7, 1000003, {n}, cpu_gen, {dtype})));
        CHECK(bits_of(randint(0, std::int64_t{1} << 32, {n}, gpu_gen, {DType::i64, kGpu})) ==
              bits_of(randint(0, std::int64_t{1} << 32, {n}, cpu_gen, {DType::i64})));
      }
    }
  }

  TEST_CASE("constant and range creation on the device equals the CPU's") {
    for (DType dtype : kAllDtypes) {
      std::string dtype_name = name(dtype);
      CAPTURE(dtype_name);
      CHECK(bits_of(zeros({3, 5}, {dtype, kGpu})) == bits_of(zeros({3, 5}, {dtype})));
      CHECK(bits_of(ones({7}, {dtype, kGpu})) == bits_of(ones({7}, {dtype})));
      CHECK(bits_of(full({2, 2}, -3.7, {dtype, kGpu})) == bits_of(full({2, 2}, -3.7, {dtype})));
      CHECK(bits_of(arange(-2, 9, 0.7, {dtype, kGpu})) == bits_of(arange(-2, 9, 0.7, {dtype})));
    }
  }

  TEST_CASE("events time queued work and order it") {
    Generator gen(61);
    Tensor x = randn({1 << 22}, gen, {DType::f32, kGpu});
    cuda::Event start(0);
    cuda::Event end(0);
    start.record();
    Tensor y;
    for (int i = 0; i < 10; ++i) y = to(to(x, DType::bf16), DType::f32);
    end.record();
    float ms = end.elapsed_ms(start);
    CHECK(end.done());
    CHECK(ms > 0.0f);
    CHECK(ms < 10000.0f);
    // A wait on an already recorded event is queued without error; synchronize drains it.
    end.wait(0);
    cuda::synchronize(0);
    CHECK(start.done());
    CHECK(relative_error(y, to(to(to(x, Device::cpu()), DType::bf16), DType::f32)) == 0.0);
  }

  TEST_CASE("an event recorded before a long kernel is done before the kernel is") {
    Tensor big = empty({1 << 26}, {DType::f32, kGpu});
    cuda::Event before(0);
    cuda::Event after(0);
    before.record();
    fill_(big, 1.0);
    for (int i = 0; i < 20; ++i) fill_(slice(big, 0, 0, 1 << 26, 2), 2.0);
    after.record();
    after.synchronize();
    CHECK(before.done());
    CHECK(after.done());
    CHECK(after.elapsed_ms(before) >= 0.0f);
  }
}

}  // namespace longnet
