// Watches operations that the host never waits on: NCCL's collectives run in stream order,
// so a rank whose peer stopped or hangs would otherwise wait forever inside whatever next
// synchronises with the device. A thread polls each watched operation; once one has run
// longer than the timeout, the watchdog calls its handler once and watches nothing more.
//
// An operation is watched from when it starts running (started() first returns true), not
// from when it was queued behind other work, until finished() returns true. Both are called
// from the watchdog's thread only, without its lock held (they may block), and must not
// throw; they are destroyed there too, once the operation finished.
#pragma once

#include <chrono>
#include <condition_variable>
#include <functional>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

namespace longnet {

class Watchdog {
 public:
  // Called once, from the watchdog's thread, with what the operation was and how long it
  // had run: it reports and ends the run (the NCCL backend exits the process).
  using Handler = std::function<void(const std::string& what, double seconds)>;

  // poll: seconds between two looks at the watched operations (> 0).
  Watchdog(Handler on_timeout, double poll);
  Watchdog(const Watchdog&) = delete;
  Watchdog& operator=(const Watchdog&) = delete;
  ~Watchdog();

  // Seconds an operation may run (> 0; infinity, the default, watches nothing). Applies to
  // operations already watched, too.
  void set_timeout(double seconds);

  // Watches an operation; does nothing while the timeout is infinite or once the handler
  // was called.
  void watch(std::string what, std::function<bool()> started, std::function<bool()> finished);

  // How many watched operations have not been seen finished (for tests).
  std::size_t watching() const;

 private:
  using Clock = std::chrono::steady_clock;

  struct Operation {
    std::string what;
    std::function<bool()> started;
    std::function<bool()> finished;
    bool running = false;
    Clock::time_point since;
  };

  void loop();

  Handler on_timeout_;
  Clock::duration poll_;
  mutable std::mutex mutex_;
  std::condition_variable wake_;
  std::vector<Operation> operations_;
  std::size_t polling_ = 0;  // operations the thread is looking at, outside operations_
  double timeout_;
  bool stopping_ = false;
  bool fired_ = false;
  std::thread thread_;
};

}  // namespace longnet
