// The watchdog (dist/watchdog.h) with operations whose start and end the test sets by hand.
#include "dist/watchdog.h"

#include <doctest/doctest.h>

#include <atomic>
#include <chrono>
#include <limits>
#include <thread>

#include "tests/error_of.h"

namespace longnet {
namespace {

using testing::contains;
using testing::error_of;
using namespace std::chrono_literals;

// An operation the test moves along, and what the watchdog reported.
struct Fake {
  std::atomic<bool> started{false};
  std::atomic<bool> finished{false};
};

struct Report {
  std::mutex mutex;
  int calls = 0;
  std::string what;
  double seconds = 0;
};

Watchdog::Handler recorder(Report& report) {
  return [&report](const std::string& what, double seconds) {
    std::lock_guard<std::mutex> lock(report.mutex);
    ++report.calls;
    report.what = what;
    report.seconds = seconds;
  };
}

void watch(Watchdog& dog, const std::string& what, Fake& op) {
  dog.watch(
      what, [&op] { return op.started.load(); }, [&op] { return op.finished.load(); });
}

int calls(Report& report) {
  std::lock_guard<std::mutex> lock(report.mutex);
  return report.calls;
}

// Waits until ok() or about 10 s have passed (slack for a loaded machine).
template <class F>
bool eventually(F ok) {
  for (int i = 0; i < 1000 && !ok(); ++i) std::this_thread::sleep_for(10ms);
  return ok();
}

TEST_SUITE("dist") {
  TEST_CASE("the watchdog reports, once, an operation that runs past the timeout") {
    // The fakes outlive the watchdog that reads them.
    Report report;
    Fake quick;
    Fake stuck;
    Fake later;
    Watchdog dog(recorder(report), 0.01);
    dog.set_timeout(0.2);
    quick.started = quick.finished = true;
    stuck.started = true;
    auto before = std::chrono::steady_clock::now();
    watch(dog, "all_reduce of the quick one", quick);
    watch(dog, "all_reduce of the stuck one", stuck);
    REQUIRE(eventually([&] { return calls(report) > 0; }));
    double waited =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - before).count();
    CHECK(report.what == "all_reduce of the stuck one");
    CHECK(report.seconds > 0.2);
    CHECK(report.seconds <= waited);
    // Reported once: nothing more is watched, and later operations are ignored.
    CHECK(dog.watching() == 0);
    later.started = true;
    watch(dog, "later", later);
    CHECK(dog.watching() == 0);
    std::this_thread::sleep_for(400ms);
    CHECK(calls(report) == 1);
  }

  TEST_CASE("the watchdog times an operation from its start, and lets finished ones go") {
    Report report;
    Fake queued;
    Watchdog dog(recorder(report), 0.01);
    dog.set_timeout(2);
    watch(dog, "queued behind other work", queued);
    // Not started: waiting in the queue for longer than the timeout is no fault.
    std::this_thread::sleep_for(2500ms);
    CHECK(dog.watching() == 1);
    queued.started = true;
    std::this_thread::sleep_for(50ms);
    queued.finished = true;
    REQUIRE(eventually([&] { return dog.watching() == 0; }));
    CHECK(calls(report) == 0);
  }

  TEST_CASE("a timeout set later applies to operations already watched") {
    Report report;
    Fake stuck;
    Watchdog dog(recorder(report), 0.01);
    dog.set_timeout(1e9);
    stuck.started = true;
    watch(dog, "stuck", stuck);
    std::this_thread::sleep_for(100ms);
    CHECK(calls(report) == 0);
    dog.set_timeout(0.05);
    REQUIRE(eventually([&] { return calls(report) == 1; }));
    CHECK(report.what == "stuck");
  }

  TEST_CASE("the watchdog's handler runs without its lock, and a busy watchdog stops at once") {
    Fake stuck;
    Fake waiting;
    std::atomic<std::size_t> seen{99};
    {
      Watchdog dog([&](const std::string&, double) { seen = 0; }, 0.01);
      dog.set_timeout(0.05);
      stuck.started = true;
      watch(dog, "stuck", stuck);
      REQUIRE(eventually([&] { return seen.load() == 0; }));
    }
    {
      // The handler asks the watchdog (its lock would deadlock here).
      Watchdog* self = nullptr;
      Watchdog dog([&](const std::string&, double) { seen = self->watching() + 1; }, 0.01);
      self = &dog;
      dog.set_timeout(0.05);
      watch(dog, "stuck", stuck);
      REQUIRE(eventually([&] { return seen.load() == 1; }));
    }
    // Destroyed while it watches an operation that never starts: no wait for it.
    auto before = std::chrono::steady_clock::now();
    {
      Watchdog dog([](const std::string&, double) {}, 0.01);
      dog.set_timeout(1000);
      watch(dog, "never starts", waiting);
      CHECK(dog.watching() == 1);
    }
    CHECK(std::chrono::steady_clock::now() - before < 5s);
  }

  TEST_CASE("without a timeout the watchdog watches nothing; timeout and poll must be positive") {
    Report report;
    Fake stuck;
    Watchdog dog(recorder(report), 0.01);
    stuck.started = true;
    watch(dog, "stuck", stuck);
    CHECK(dog.watching() == 0);
    CHECK(contains(error_of([&] { dog.set_timeout(0); }), "valid: seconds > 0"));
    CHECK(contains(error_of([&] { Watchdog(recorder(report), 0); }), "valid: > 0"));
    dog.set_timeout(std::numeric_limits<double>::infinity());
    watch(dog, "stuck", stuck);
    CHECK(dog.watching() == 0);
  }
}

}  // namespace
}  // namespace longnet
