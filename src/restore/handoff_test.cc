// The migration's page path in one process, on a real child (python, so
// that the dump sees an ordinary program): pre-copy rounds into HeldPages,
// a dump with the handoff (kept records for what was sent and is still
// good, page records for the rest), and a restore that takes the kept
// pages from HeldPages. The restored child checks its own memory byte for
// byte, so a page from the wrong moment shows.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <functional>
#include <sstream>
#include <thread>

#include "checkpoint/dump.h"
#include "image/endpoint.h"
#include "mem/held_pages.h"
#include "mem/precopy.h"
#include "restore/restore.h"
#include "sys/features.h"
#include "sys/log.h"

namespace stasis {
namespace {

namespace fs = std::filesystem;

// Regions: a (256 pages), b (64, unmapped after round 1), c (64, mapped
// after round 1), d (32: pages 0-7 dropped after round 1, 16-19 after the
// last round). a's pages 100-109 are written between the rounds, 10-19
// after the last one, and c's 0-3 too. Each page holds its index and a
// value; dropped pages must read as zeros.
constexpr char kChild[] = R"PY(
import mmap, os, struct, sys, time
d = sys.argv[1]
P = 4096
maps, want = {}, {}
def page(i, v):
    return struct.pack('<QQ', i, v) + bytes([v & 0xff]) * (P - 16)
def fill(name, first, count, v):
    for i in range(first, first + count):
        maps[name][i * P:(i + 1) * P] = page(i, v)
        want[name][i] = v
def new(name, n, v):
    maps[name] = mmap.mmap(-1, n * P, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS,
                           prot=mmap.PROT_READ | mmap.PROT_WRITE)
    want[name] = [0] * n
    fill(name, 0, n, v)
def drop(name, first, count):
    maps[name].madvise(mmap.MADV_DONTNEED, first * P, count * P)
    for i in range(first, first + count):
        want[name][i] = None
def check():
    bad = []
    for name, m in maps.items():
        for i, v in enumerate(want[name]):
            exp = bytes(P) if v is None else page(i, v)
            if m[i * P:(i + 1) * P] != exp:
                bad.append('%s[%d]' % (name, i))
    return 'ok' if not bad else 'bad ' + ' '.join(bad[:20])
def put(name, text):
    with open(os.path.join(d, name + '.tmp'), 'w') as f:
        f.write(text)
    os.rename(os.path.join(d, name + '.tmp'), os.path.join(d, name))
new('a', 256, 1); new('b', 64, 2); new('d', 32, 4)
done = '0'
put('ack', done)
while True:
    try:
        with open(os.path.join(d, 'cmd')) as f:
            cmd = f.read()
    except FileNotFoundError:
        cmd = done
    if cmd != done:
        if cmd == '1':
            maps.pop('b').close(); want.pop('b')
            new('c', 64, 3)
            drop('d', 0, 8)
            fill('a', 100, 10, 11)
        elif cmd == '2':
            fill('a', 10, 10, 12)
            fill('c', 0, 4, 13)
            drop('d', 16, 4)
        elif cmd == 'check':
            put('result', check())
            sys.exit(0)
        done = cmd
        put('ack', done)
    time.sleep(0.002)
)PY";

// An image kept in memory.
class MemoryImageSink final : public image::ImageSink {
 public:
  Status Write(const void* data, size_t len) override {
    bytes_ += len;
    return data_.Write(data, len);
  }
  Status Flush() override { return Ok(); }
  Status Commit() override { return Ok(); }
  void Abort() override {}
  std::string Describe() const override { return "memory"; }
  const std::string& data() const { return data_.data(); }

 private:
  image::StringSink data_;
};

std::string ReadText(const fs::path& p) {
  std::ifstream in(p);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

// The pids this process is the parent of.
std::vector<pid_t> Children() {
  std::vector<pid_t> out;
  for (const auto& task : fs::directory_iterator("/proc/self/task")) {
    std::istringstream in(ReadText(task.path() / "children"));
    for (pid_t p; in >> p;) out.push_back(p);
  }
  return out;
}

// The python child in a directory of its own; kills and reaps whatever the
// test started (the child, a restored copy and its namespace's init) and
// removes the directory, also when an assertion ends the test early.
class HandoffTest : public testing::Test {
 protected:
  void SetUp() override {
    if (!features_.Has("uffd WP_ASYNC")) GTEST_SKIP() << "no uffd WP_ASYNC";
    std::string tmpl = (fs::temp_directory_path() / "stasis-handoff-XXXXXX").string();
    ASSERT_NE(mkdtemp(tmpl.data()), nullptr);
    dir_ = tmpl;
    std::ofstream(dir_ / "child.py") << kChild;
    pid_ = fork();
    ASSERT_GE(pid_, 0);
    if (pid_ == 0) {
      int null_fd = open("/dev/null", O_RDWR);
      for (int fd = 0; fd < 3; ++fd) dup2(null_fd, fd);
      close_range(3, ~0u, 0);
      execl("/usr/bin/python3", "python3", (dir_ / "child.py").c_str(), dir_.c_str(), nullptr);
      _exit(127);
    }
    ASSERT_TRUE(WaitFile("ack", "0"));
  }
  void TearDown() override {
    for (pid_t p : {pid_, restored_, init_}) {
      if (p > 0) kill(p, SIGKILL);
    }
    for (pid_t p : {pid_, init_}) {
      if (p > 0) waitpid(p, nullptr, 0);
    }
    std::error_code ec;
    if (!dir_.empty()) fs::remove_all(dir_, ec);
  }
  bool WaitFile(const std::string& name, const std::string& want, int seconds = 20) {
    auto until = std::chrono::steady_clock::now() + std::chrono::seconds(seconds);
    while (std::chrono::steady_clock::now() < until) {
      if (ReadText(dir_ / name) == want) return true;
      std::this_thread::sleep_for(std::chrono::milliseconds(2));
    }
    return false;
  }
  void Command(const std::string& cmd) {
    std::ofstream(dir_ / "cmd.tmp") << cmd;
    fs::rename(dir_ / "cmd.tmp", dir_ / "cmd");
  }
  // Rounds into held, with the steps between them; then the dump (which
  // kills the child) into sink.
  Result<checkpoint::DumpStats> MigrateImage(
      mem::HeldPages& held, MemoryImageSink& sink, std::vector<mem::RoundStats>* rounds,
      bool defer_rest = false,
      std::function<Status(const std::vector<checkpoint::DeferredPages>&)> on_deferred = {}) {
    mem::Precopy pc = mem::Precopy::StartTracking(pid_);
    mem::SendRun send = [&held](uint32_t pid, uint64_t addr, uint64_t n, const uint8_t* data) {
      return held.Add(pid, addr, n, data);
    };
    for (const char* step : {"1", "2"}) {
      rounds->push_back(STASIS_TRY(pc.SendRound(send)));
      Command(step);
      if (!WaitFile("ack", step)) return Error(ErrorCode::kFailed, "the child did not answer");
    }
    checkpoint::PageHandoff handoff{&pc, defer_rest};
    checkpoint::DumpOptions options;
    options.pid = pid_;
    options.handoff = &handoff;
    options.on_deferred = std::move(on_deferred);
    sys::Env env{features_, log_, {}};
    Result<checkpoint::DumpStats> stats = checkpoint::Dump(env, options, sink);
    if (stats.ok()) {
      waitpid(pid_, nullptr, 0);
      pid_ = 0;
    }
    return stats;
  }

  sys::KernelFeatures features_ = sys::KernelFeatures::Probe();
  MemoryLogger log_;
  fs::path dir_;
  pid_t pid_ = 0, restored_ = 0, init_ = 0;
};

class HandoffRoundTrip : public HandoffTest, public testing::WithParamInterface<bool> {};

TEST_P(HandoffRoundTrip, RestoredChildFindsEveryPageAsItLeftIt) {
  auto held = std::make_shared<mem::HeldPages>();
  MemoryImageSink sink;
  std::vector<mem::RoundStats> rounds;
  Result<checkpoint::DumpStats> dumped = MigrateImage(*held, sink, &rounds);
  ASSERT_TRUE(dumped.ok()) << dumped.error().ToString();
  ASSERT_EQ(rounds.size(), 2u);
  EXPECT_GE(rounds[0].pages_sent, 256u + 64u + 32u);
  EXPECT_GE(rounds[1].pages_sent, 64u + 10u);  // c, and a's pages written meanwhile
  // Most of the tree is kept; what changed since (a's 10-19, c's 0-3 and
  // whatever python wrote) comes in page records.
  EXPECT_GE(dumped->handoff_pages_kept, 256u + 64u + 32u - 30u);
  EXPECT_GE(dumped->pages_written, 14u);
  EXPECT_EQ(dumped->handoff_pages_deferred, 0u);

  restore::RestoreOptions options;
  options.held = held;
  options.lazy = GetParam();
  sys::Env env{features_, log_, {}};
  image::MemorySource source(sink.data());
  Result<restore::RestoreResult> restored = restore::Restore(env, options, source);
  ASSERT_TRUE(restored.ok()) << restored.error().ToString();
  restored_ = restored->host_pid;
  init_ = restored->init_host_pid;
  Command("check");
  ASSERT_TRUE(WaitFile("result", "ok")) << ReadText(dir_ / "result");
  if (restored->pager) {
    EXPECT_TRUE(restored->pager->Wait().ok());
  }
}

INSTANTIATE_TEST_SUITE_P(EagerAndLazy, HandoffRoundTrip, testing::Bool());

// Post-copy: the pages written since the last round are deferred, read
// from the frozen child before the image is committed, and fed to the
// store only once the restored child runs (it waits for them on fault).
TEST_F(HandoffTest, DeferredPagesComeAfterTheImageWhileTheTreeRuns) {
  struct Later {
    uint32_t pid;
    uint64_t addr;
    std::vector<uint8_t> data;
  };
  std::vector<Later> later;
  uint64_t announced = 0;
  auto read_deferred = [&](const std::vector<checkpoint::DeferredPages>& procs) -> Status {
    for (const checkpoint::DeferredPages& p : procs) {
      std::string path = "/proc/" + std::to_string(p.host_pid) + "/mem";
      sys::UniqueFd mem(open(path.c_str(), O_RDONLY | O_CLOEXEC));
      for (const mem::Range& r : p.ranges) {
        Later l{p.pid, r.start, std::vector<uint8_t>(r.end - r.start)};
        ssize_t n = pread(mem.get(), l.data.data(), l.data.size(), static_cast<off_t>(r.start));
        if (n != static_cast<ssize_t>(l.data.size())) return Error::Errno("read deferred pages");
        announced += l.data.size() / image::kPageSize;
        later.push_back(std::move(l));
      }
    }
    return Ok();
  };
  auto held = std::make_shared<mem::HeldPages>();
  MemoryImageSink sink;
  std::vector<mem::RoundStats> rounds;
  Result<checkpoint::DumpStats> dumped = MigrateImage(*held, sink, &rounds, true, read_deferred);
  ASSERT_TRUE(dumped.ok()) << dumped.error().ToString();
  EXPECT_GE(dumped->handoff_pages_deferred, 14u);  // a's 10-19, c's 0-3, and python's
  EXPECT_EQ(dumped->handoff_pages_deferred, announced);

  restore::RestoreOptions options;
  options.held = held;
  options.lazy = true;
  options.deferred_allowed = true;
  sys::Env env{features_, log_, {}};
  image::MemorySource source(sink.data());
  Result<restore::RestoreResult> restored = restore::Restore(env, options, source);
  ASSERT_TRUE(restored.ok()) << restored.error().ToString();
  restored_ = restored->host_pid;
  init_ = restored->init_host_pid;
  ASSERT_NE(restored->pager, nullptr);
  mem::PageStore& store = restored->pager->store();
  uint64_t missing = 0;
  for (const mem::Range& r : store.Missing(restored->pid)) missing += (r.end - r.start) / 4096;
  EXPECT_EQ(missing, announced);
  for (const Later& l : later) {
    image::PageRun run{l.pid, l.addr, static_cast<uint32_t>(l.data.size() / 4096), l.data.data()};
    ASSERT_TRUE(store.Add(run).ok());
  }
  store.Close(Ok());
  Command("check");
  ASSERT_TRUE(WaitFile("result", "ok")) << ReadText(dir_ / "result");
  EXPECT_TRUE(restored->pager->Wait().ok());
}

TEST_F(HandoffTest, AKeptRecordWithoutItsHeldCopyIsRefusedAndLeavesNothing) {
  mem::HeldPages held;
  MemoryImageSink sink;
  std::vector<mem::RoundStats> rounds;
  Result<checkpoint::DumpStats> dumped = MigrateImage(held, sink, &rounds);
  ASSERT_TRUE(dumped.ok()) << dumped.error().ToString();
  ASSERT_GT(dumped->handoff_pages_kept, 0u);
  std::vector<pid_t> before = Children();
  sys::Env env{features_, log_, {}};
  for (bool with_held : {false, true}) {
    restore::RestoreOptions options;
    if (with_held) options.held = std::make_shared<mem::HeldPages>();  // empty
    image::MemorySource source(sink.data());
    Result<restore::RestoreResult> r = restore::Restore(env, options, source);
    ASSERT_FALSE(r.ok());
    EXPECT_EQ(r.error().code(), ErrorCode::kCorrupt) << r.error().ToString();
    EXPECT_NE(r.error().message().find("kept pages 0x"), std::string::npos) << r.error().message();
    EXPECT_EQ(Children(), before);
  }
}

TEST_F(HandoffTest, RefusesHandoffWithLeaveRunningOrWithoutTracking) {
  mem::Precopy pc = mem::Precopy::StartTracking(pid_);
  checkpoint::PageHandoff handoff{&pc, false};
  checkpoint::DumpOptions options;
  options.pid = pid_;
  options.handoff = &handoff;
  options.leave_running = true;
  MemoryImageSink sink;
  sys::Env env{features_, log_, {}};
  Result<checkpoint::DumpStats> r = checkpoint::Dump(env, options, sink);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code(), ErrorCode::kInvalid);
  EXPECT_EQ(kill(pid_, 0), 0);  // untouched
}

}  // namespace
}  // namespace stasis
