// Not run by default (DISABLED_): the numbers of the migration page path
// for a 1 GiB idle child, printed. Run with
//   build/stasis_unit_tests --gtest_also_run_disabled_tests
//     --gtest_filter='*HandoffMeasure*'
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstring>

#include "checkpoint/dump.h"
#include "image/endpoint.h"
#include "mem/held_pages.h"
#include "mem/precopy.h"
#include "sys/features.h"
#include "sys/log.h"

namespace stasis {
namespace {

constexpr uint64_t kBytes = 1ull << 30;

// Counts what it is given and keeps nothing.
class CountingSink final : public image::ImageSink {
 public:
  Status Write(const void*, size_t len) override {
    bytes_ += len;
    return Ok();
  }
  Status Flush() override { return Ok(); }
  Status Commit() override { return Ok(); }
  void Abort() override {}
  std::string Describe() const override { return "counter"; }
};

// A child holding 1 GiB of written private memory, idle (pause) with no fd
// of ours; killed and reaped on destruction.
struct IdleChild {
  pid_t pid = 0;
  IdleChild() {
    int p[2];
    if (pipe(p) != 0) return;
    pid = fork();
    if (pid == 0) {
      close(p[0]);
      auto* mem = static_cast<uint64_t*>(
          mmap(nullptr, kBytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0));
      if (mem == MAP_FAILED) _exit(1);
      for (uint64_t i = 0; i < kBytes / 8; ++i) mem[i] = i * 0x9E3779B97F4A7C15ull + 1;
      // Nothing of ours left open once the parent sees EOF.
      close_range(0, p[1] - 1, 0);
      close_range(p[1] + 1, ~0u, 0);
      char c = 1;
      if (write(p[1], &c, 1) != 1) _exit(2);
      close(p[1]);
      for (;;) pause();
    }
    close(p[1]);
    char c;
    if (read(p[0], &c, 1) != 1 || read(p[0], &c, 1) != 0) pid = 0;
    close(p[0]);
  }
  ~IdleChild() {
    if (pid > 0) {
      kill(pid, SIGKILL);
      waitpid(pid, nullptr, 0);
    }
  }
};

double MsSince(std::chrono::steady_clock::time_point t) {
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t).count();
}

TEST(HandoffMeasure, DISABLED_OneGibIdleChild) {
  sys::KernelFeatures features = sys::KernelFeatures::Probe();
  if (!features.Has("uffd WP_ASYNC")) GTEST_SKIP() << "no uffd WP_ASYNC";
  MemoryLogger log;
  // When each phase of a dump began, for the breakdown of its frozen time.
  std::string phases;
  auto t0 = std::chrono::steady_clock::now();
  sys::Env env{features, log, [&](const Progress& p) {
                 std::string name(p.phase);
                 if (phases.find(name + "@") != std::string::npos) return;
                 char at[64];
                 snprintf(at, sizeof at, "%s@%.1f ", name.c_str(), MsSince(t0));
                 phases += at;
               }};

  {
    IdleChild child;
    ASSERT_GT(child.pid, 0);
    mem::HeldPages held;
    mem::SendRun send = [&held](uint32_t pid, uint64_t addr, uint64_t n, const uint8_t* data) {
      return held.Add(pid, addr, n, data);
    };
    auto t = std::chrono::steady_clock::now();
    mem::Precopy pc = mem::Precopy::StartTracking(child.pid);
    double start_ms = MsSince(t);
    Result<mem::RoundStats> r1 = pc.SendRound(send);
    ASSERT_TRUE(r1.ok()) << r1.error().ToString();
    Result<uint64_t> dirty = pc.DirtyPages();
    ASSERT_TRUE(dirty.ok());
    Result<mem::RoundStats> r2 = pc.SendRound(send);
    ASSERT_TRUE(r2.ok());
    checkpoint::PageHandoff handoff{&pc, false};
    checkpoint::DumpOptions options;
    options.pid = child.pid;
    options.handoff = &handoff;
    CountingSink sink;
    phases.clear();
    t0 = std::chrono::steady_clock::now();
    Result<checkpoint::DumpStats> d = checkpoint::Dump(env, options, sink);
    ASSERT_TRUE(d.ok()) << d.error().ToString();
    printf("tracking start: %.1f ms\n", start_ms);
    printf("round 1: %lu pages, %lu bytes, %.1f ms (%.0f MB/s, into HeldPages)\n", r1->pages_sent,
           r1->bytes, r1->ms, r1->bytes / 1e3 / r1->ms);
    printf("dirty before round 2: %lu pages\n", dirty.value());
    printf("round 2: %lu pages sent, %lu dirty, %.1f ms\n", r2->pages_sent, r2->dirty_pages,
           r2->ms);
    printf(
        "handoff dump: frozen %.1f ms, total %.1f ms, image %lu bytes, kept %lu, page "
        "records %lu pages\n",
        d->frozen_ms, d->total_ms, d->image_bytes, d->handoff_pages_kept, d->pages_written);
    printf("  phases (ms since the dump began): %s\n", phases.c_str());
  }
  {
    IdleChild child;
    ASSERT_GT(child.pid, 0);
    checkpoint::DumpOptions options;
    options.pid = child.pid;
    CountingSink sink;
    phases.clear();
    t0 = std::chrono::steady_clock::now();
    Result<checkpoint::DumpStats> d = checkpoint::Dump(env, options, sink);
    ASSERT_TRUE(d.ok()) << d.error().ToString();
    printf("ordinary dump: frozen %.1f ms, total %.1f ms, image %lu bytes, %lu pages\n",
           d->frozen_ms, d->total_ms, d->image_bytes, d->pages_written);
    printf("  phases (ms since the dump began): %s\n", phases.c_str());
  }
  {
    // The source's own cost of round 1: sent nowhere.
    IdleChild child;
    ASSERT_GT(child.pid, 0);
    mem::Precopy pc = mem::Precopy::StartTracking(child.pid);
    Result<mem::RoundStats> r1 =
        pc.SendRound([](uint32_t, uint64_t, uint64_t, const uint8_t*) -> Status { return Ok(); });
    ASSERT_TRUE(r1.ok());
    printf("round 1, sent nowhere: %lu bytes, %.1f ms (%.0f MB/s)\n", r1->bytes, r1->ms,
           r1->bytes / 1e3 / r1->ms);
  }
}

}  // namespace
}  // namespace stasis
