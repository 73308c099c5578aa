#include "dist/watchdog.h"

#include <cmath>

#include "tensor/error.h"

namespace longnet {

Watchdog::Watchdog(Handler on_timeout, double poll)
    : on_timeout_(std::move(on_timeout)),
      poll_(std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(poll))),
      timeout_(std::numeric_limits<double>::infinity()) {
  LN_CHECK(poll > 0, "Watchdog: poll every ", poll, " s; valid: > 0");
  thread_ = std::thread([this] { loop(); });
}

Watchdog::~Watchdog() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stopping_ = true;
  }
  wake_.notify_all();
  thread_.join();
}

void Watchdog::set_timeout(double seconds) {
  LN_CHECK(seconds > 0, "Watchdog: timeout ", seconds, " s; valid: seconds > 0");
  std::lock_guard<std::mutex> lock(mutex_);
  timeout_ = seconds;
}

void Watchdog::watch(std::string what, std::function<bool()> started,
                     std::function<bool()> finished) {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    if (std::isinf(timeout_) || fired_) return;
    operations_.push_back({std::move(what), std::move(started), std::move(finished)});
  }
  wake_.notify_all();
}

std::size_t Watchdog::watching() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return operations_.size();
}

void Watchdog::loop() {
  std::unique_lock<std::mutex> lock(mutex_);
  while (true) {
    if (operations_.empty()) {
      wake_.wait(lock, [&] { return stopping_ || !operations_.empty(); });
    } else {
      wake_.wait_for(lock, poll_, [&] { return stopping_; });
    }
    if (stopping_) return;
    Clock::time_point now = Clock::now();
    const Operation* late = nullptr;
    double ran = 0;
    std::erase_if(operations_, [&](Operation& op) {
      if (op.finished()) return true;
      if (!op.running && op.started()) {
        op.running = true;
        op.since = now;
      }
      return false;
    });
    for (const Operation& op : operations_) {
      double seconds = std::chrono::duration<double>(now - op.since).count();
      if (op.running && seconds > timeout_) {
        late = &op;
        ran = seconds;
        break;
      }
    }
    if (late == nullptr) continue;
    std::string what = late->what;
    fired_ = true;
    operations_.clear();
    lock.unlock();
    on_timeout_(what, ran);
    lock.lock();
  }
}

}  // namespace longnet
