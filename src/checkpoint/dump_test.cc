// Dump as a library entry: what it does with its Env (features, log,
// progress) and its sink, on a real child (`sleep`, with no fd of ours).
#include "checkpoint/dump.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <string>
#include <thread>
#include <vector>

#include "image/endpoint.h"
#include "sys/proc.h"

namespace stasis::checkpoint {
namespace {

namespace fs = std::filesystem;

// A child running sleep with only /dev/null open, so nothing ties it to
// this process; killed and reaped on destruction.
class SleepChild {
 public:
  SleepChild() {
    pid_ = fork();
    if (pid_ == 0) {
      int null_fd = open("/dev/null", O_RDWR);
      for (int fd = 0; fd < 3; ++fd) dup2(null_fd, fd);
      close_range(3, ~0u, 0);
      execl("/bin/sleep", "sleep", "100", nullptr);
      _exit(127);
    }
    // Ready once it is sleep, no longer a copy of the test.
    for (int i = 0; i < 2000; ++i) {
      auto exe = sys::proc::ReadLink("/proc/" + std::to_string(pid_) + "/exe");
      if (exe.ok() && exe->ends_with("/sleep")) break;
      usleep(1000);
    }
  }
  ~SleepChild() {
    if (pid_ <= 0) return;
    kill(pid_, SIGKILL);
    Reap();
  }
  pid_t pid() const { return pid_; }
  int Reap() {
    int status = 0;
    while (waitpid(pid_, &status, 0) < 0 && errno == EINTR) {
    }
    pid_ = 0;
    return status;
  }
  // Not stopped and not traced, as a failed dump must leave it. Right after
  // the detach it may still be running its way back into nanosleep.
  bool Untouched() const {
    for (int i = 0; i < 1000; ++i) {
      auto text = sys::proc::ReadFile("/proc/" + std::to_string(pid_) + "/status");
      if (!text.ok()) return false;
      auto status = sys::proc::ParseStatus(*text);
      if (!status.ok()) return false;
      if (status->tracer_pid == 0 && status->state == 'S') return true;
      usleep(1000);
    }
    return false;
  }

 private:
  pid_t pid_ = 0;
};

sys::KernelFeatures ProbedWithout(std::string_view missing) {
  std::vector<sys::Feature> all = sys::KernelFeatures::Probe().all();
  for (sys::Feature& f : all) {
    if (f.name == missing) f.present = false;
  }
  return sys::KernelFeatures::With(std::move(all));
}

// An image sink whose Commit fails: the tree must not be killed.
class FailingCommitSink final : public image::ImageSink {
 public:
  Status Write(const void* data, size_t len) override { return inner_.Write(data, len); }
  Status Flush() override { return Ok(); }
  Status Commit() override { return Error::Errno("commit (test)"); }
  void Abort() override { aborted_ = true; }
  std::string Describe() const override { return "a failing sink"; }
  bool aborted() const { return aborted_; }

 private:
  image::StringSink inner_;
  bool aborted_ = false;
};

class DumpEnvTest : public testing::Test {
 protected:
  void SetUp() override {
    std::string tmpl = (fs::temp_directory_path() / "stasis-dump-test-XXXXXX").string();
    ASSERT_NE(mkdtemp(tmpl.data()), nullptr);
    dir_ = tmpl;
  }
  void TearDown() override {
    std::error_code ec;
    fs::remove_all(dir_, ec);
  }
  sys::Env EnvWith(const sys::KernelFeatures& features) {
    return sys::Env{features, log_, [this](const Progress& p) {
                      if (phases_.empty() || phases_.back() != p.phase) {
                        phases_.emplace_back(p.phase);
                      }
                    }};
  }

  fs::path dir_;
  MemoryLogger log_;
  std::vector<std::string> phases_;
};

TEST_F(DumpEnvTest, MissingFeatureIsRefusedBeforeAnything) {
  SleepChild child;
  sys::KernelFeatures none = ProbedWithout("pidfd_getfd");
  auto sink = image::DirectorySink::Create(dir_);
  ASSERT_TRUE(sink.ok());
  DumpOptions options;
  options.pid = child.pid();
  auto stats = Dump(EnvWith(none), options, **sink);
  ASSERT_FALSE(stats.ok());
  EXPECT_EQ(stats.error().code(), ErrorCode::kUnsupported);
  EXPECT_NE(stats.error().ToString().find("pidfd_getfd"), std::string::npos)
      << stats.error().ToString();
  EXPECT_TRUE(phases_.empty());
  EXPECT_TRUE(fs::is_empty(dir_));
  EXPECT_TRUE(child.Untouched());
}

TEST_F(DumpEnvTest, LeaveRunningWithoutWpAsyncReadsWhileFrozen) {
  SleepChild child;
  sys::KernelFeatures features = ProbedWithout("uffd WP_ASYNC");
  auto sink = image::DirectorySink::Create(dir_);
  ASSERT_TRUE(sink.ok());
  DumpOptions options;
  options.pid = child.pid();
  options.leave_running = true;
  auto stats = Dump(EnvWith(features), options, **sink);
  ASSERT_TRUE(stats.ok()) << stats.error().ToString();
  EXPECT_EQ(stats->precopy_pages_kept, 0u);
  EXPECT_EQ(stats->image_bytes, fs::file_size(image::ImagePath(dir_)));
  bool said = false;
  for (const auto& [level, text] : log_.lines()) said |= text.find("no uffd WP_ASYNC") == 0;
  EXPECT_TRUE(said);
  EXPECT_EQ(phases_, (std::vector<std::string>{"freeze", "collect", "write", "pages", "release"}));
  EXPECT_TRUE(child.Untouched());
}

TEST_F(DumpEnvTest, TreeIsKilledOnlyAfterCommit) {
  SleepChild child;
  sys::KernelFeatures features = sys::KernelFeatures::Probe();
  FailingCommitSink sink;
  DumpOptions options;
  options.pid = child.pid();
  auto stats = Dump(EnvWith(features), options, sink);
  ASSERT_FALSE(stats.ok());
  EXPECT_NE(stats.error().ToString().find("commit (test)"), std::string::npos)
      << stats.error().ToString();
  EXPECT_TRUE(sink.aborted());
  EXPECT_TRUE(child.Untouched());
}

TEST_F(DumpEnvTest, StreamIsWholeWhenTheTreeIsKilled) {
  SleepChild child;
  sys::KernelFeatures features = sys::KernelFeatures::Probe();
  int p[2];
  ASSERT_EQ(pipe2(p, O_CLOEXEC), 0);
  Result<std::unique_ptr<image::MappedFileSource>> spooled = Error::Invalid("not read");
  std::thread reader([&] {
    image::FdSource source(p[0]);
    spooled = image::SpoolImage(source, dir_);
  });
  image::StreamSink sink(p[1], "a pipe");
  DumpOptions options;
  options.pid = child.pid();
  auto stats = Dump(EnvWith(features), options, sink);
  close(p[1]);
  reader.join();
  close(p[0]);
  ASSERT_TRUE(stats.ok()) << stats.error().ToString();
  // The dump, as its tracer, waited for it to go (and so reaped it).
  auto text = sys::proc::ReadFile("/proc/" + std::to_string(child.pid()) + "/status");
  EXPECT_TRUE(!text.ok() || text->find("State:\tZ") != std::string::npos);
  child.Reap();
  ASSERT_TRUE(spooled.ok()) << spooled.error().ToString();
  EXPECT_TRUE(fs::is_empty(dir_));  // the spool file is unlinked
}

}  // namespace
}  // namespace stasis::checkpoint
