// The test runner: doctest plus a listener that writes one line per test case (PASS, FAIL
// or SKIP and its name) to $LONGNET_TEST_RESULTS, from which .ci/run counts. Without a
// CUDA device the "gpu" suite is filtered out and so reported as skipped.
#define DOCTEST_CONFIG_IMPLEMENT
#include <doctest/doctest.h>

#include <cstdlib>
#include <fstream>
#include <mutex>

#include "tensor/cuda/runtime.h"

namespace {

class ResultsListener : public doctest::IReporter {
 public:
  explicit ResultsListener(const doctest::ContextOptions&) {
    if (const char* path = std::getenv("LONGNET_TEST_RESULTS")) out_.open(path, std::ios::app);
  }
  void report_query(const doctest::QueryData&) override {}
  void test_run_start() override {}
  void test_run_end(const doctest::TestRunStats&) override {}
  void test_case_start(const doctest::TestCaseData& tc) override { current_ = tc.m_name; }
  void test_case_reenter(const doctest::TestCaseData&) override {}
  void test_case_end(const doctest::CurrentTestCaseStats& stats) override {
    write(stats.testCaseSuccess ? "PASS" : "FAIL", current_);
  }
  void test_case_exception(const doctest::TestCaseException&) override {}
  void subcase_start(const doctest::SubcaseSignature&) override {}
  void subcase_end() override {}
  void log_assert(const doctest::AssertData&) override {}
  void log_message(const doctest::MessageData&) override {}
  void test_case_skipped(const doctest::TestCaseData& tc) override { write("SKIP", tc.m_name); }

 private:
  void write(const char* status, const std::string& test) {
    std::lock_guard<std::mutex> lock(mutex_);
    if (out_) out_ << status << ' ' << test << '\n' << std::flush;
  }
  std::ofstream out_;
  std::string current_;
  std::mutex mutex_;
};

}  // namespace

DOCTEST_REGISTER_LISTENER("results", 1, ResultsListener);

int main(int argc, char** argv) {
  doctest::Context context;
  if (longnet::cuda::device_count() == 0) context.addFilter("test-suite-exclude", "gpu");
  context.applyCommandLine(argc, argv);
  return context.run();
}
