// The CUDA runtime layer. The "gpu" suite runs only where a device is present; elsewhere
// the runner reports it as skipped.
#include <doctest/doctest.h>

#include "tensor/copy.h"
#include "tensor/creation.h"
#include "tensor/cuda/runtime.h"

namespace longnet {

TEST_SUITE("cuda") {
  TEST_CASE("device_count answers without throwing on any machine") {
    int n = cuda::device_count();
    CHECK(n >= 0);
    if (!cuda::built_with_cuda()) CHECK(n == 0);
  }
}

TEST_SUITE("gpu") {
  TEST_CASE("tensors round-trip between host and device for every dtype") {
    Generator gen(11);
    for (DType dtype : {DType::f32, DType::f64, DType::bf16, DType::i32, DType::i64}) {
      Tensor host = is_floating(dtype) ? randn({3, 257}, gen, {dtype})
                                       : randint(-50, 50, {3, 257}, gen, {dtype});
      Tensor device = to(host, Device::cuda(0));
      CHECK(device.device() == Device::cuda(0));
      Tensor back = to(device, Device::cpu());
      CHECK(back.to_vector<double>() == host.to_vector<double>());
    }
  }

  TEST_CASE("fill writes every element on the device") {
    for (DType dtype : {DType::f32, DType::f64, DType::bf16, DType::i32, DType::i64}) {
      Tensor t = empty({100003}, {dtype, Device::cuda(0)});
      fill_(t, 3.0);
      auto v = to(t, Device::cpu()).to_vector<double>();
      for (double x : v) REQUIRE(x == 3.0);
    }
  }

  TEST_CASE("an impossible allocation is an out-of-memory error with advice") {
    std::string message;
    try {
      empty({std::int64_t{1} << 50}, {DType::f32, Device::cuda(0)});
    } catch (const Error& e) {
      message = e.what();
    }
    CHECK(message.find("out of GPU memory") != std::string::npos);
    CHECK(message.find("batch_size") != std::string::npos);
  }
}

}  // namespace longnet
