// Where a tensor's storage lives.
#pragma once

#include <string>

namespace longnet {

enum class DeviceType { cpu, cuda };

struct Device {
  DeviceType type = DeviceType::cpu;
  int index = 0;

  static Device cpu() { return {}; }
  static Device cuda(int index = 0) { return {DeviceType::cuda, index}; }
  bool is_cpu() const { return type == DeviceType::cpu; }
  bool is_cuda() const { return type == DeviceType::cuda; }
  bool operator==(const Device&) const = default;
};

std::string str(Device device);  // "cpu", "cuda:0"

// Parses "cpu", "cuda" or "cuda:N"; anything else is an error naming the text.
Device parse_device(const std::string& text);

}  // namespace longnet
