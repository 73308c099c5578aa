#include "dist/watchdog.h"

#include <cmath>
#include <iterator>
#include <limits>

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
  return operations_.size() + polling_;
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
    // Polled without the lock: a CUDA query (or an event's destruction with the last copy of
    // a finished operation) may block while the device is in trouble, and watch() must not
    // wait for it.
    std::vector<Operation> polling = std::move(operations_);
    operations_.clear();
    polling_ = polling.size();
    const double timeout = timeout_;
    lock.unlock();
    const Clock::time_point now = Clock::now();
    std::erase_if(polling, [&](Operation& op) {
      if (op.finished()) return true;
      if (!op.running && op.started()) {
        op.running = true;
        op.since = now;
      }
      return false;
    });
    std::string late;
    double ran = 0;
    for (const Operation& op : polling) {
      double seconds = std::chrono::duration<double>(now - op.since).count();
      if (op.running && seconds > timeout) {
        late = op.what;
        ran = seconds;
        break;
      }
    }
    if (!late.empty()) polling.clear();
    lock.lock();
    polling_ = 0;
    if (late.empty()) {
      // Still running: watched on, before the operations that arrived meanwhile.
      operations_.insert(operations_.begin(), std::make_move_iterator(polling.begin()),
                         std::make_move_iterator(polling.end()));
      continue;
    }
    fired_ = true;
    operations_.clear();
    lock.unlock();
    on_timeout_(late, ran);
    lock.lock();
  }
}

}  // namespace longnet
