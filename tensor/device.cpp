#include "tensor/device.h"

#include "tensor/error.h"

namespace longnet {

std::string str(Device device) {
  return device.is_cpu() ? std::string("cpu") : "cuda:" + std::to_string(device.index);
}

Device parse_device(const std::string& text) {
  if (text == "cpu") return Device::cpu();
  if (text == "cuda") return Device::cuda(0);
  if (text.rfind("cuda:", 0) == 0 && text.size() > 5 &&
      text.find_first_not_of("0123456789", 5) == std::string::npos) {
    return Device::cuda(std::stoi(text.substr(5)));
  }
  throw Error(cat("unknown device \"", text, "\" (valid: cpu, cuda, cuda:N)"));
}

}  // namespace longnet
