#include "checkpoint/dump.h"

#include <fcntl.h>
#include <fmt/format.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/utsname.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <filesystem>

#include "checkpoint/task_dump.h"
#include "image/stream.h"
#include "sys/kernel_abi.h"

namespace stasis::checkpoint {
namespace {

using Clock = std::chrono::steady_clock;

double MsSince(Clock::time_point t) {
  return std::chrono::duration<double, std::milli>(Clock::now() - t).count();
}

void FillManifest(const image::Process& proc, image::Manifest* m) {
  m->set_format_major(1);
  m->set_format_minor(0);
  m->set_stasis_version(STASIS_VERSION);
  struct utsname u;
  if (uname(&u) == 0) {
    m->set_kernel_release(u.release);
    m->set_hostname(u.nodename);
  }
  m->set_created_unix_ns(std::chrono::duration_cast<std::chrono::nanoseconds>(
                             std::chrono::system_clock::now().time_since_epoch())
                             .count());
  m->set_root_pid(proc.pid());
  const std::string& xstate = proc.threads(0).xstate();
  size_t off = sys::abi::kXsaveSwBytesOffset;
  uint32_t magic = 0, size = 0;
  uint64_t features = 0;
  if (xstate.size() >= off + 20) {
    memcpy(&magic, xstate.data() + off, 4);
    memcpy(&features, xstate.data() + off + 8, 8);
    memcpy(&size, xstate.data() + off + 16, 4);
  }
  if (magic == sys::abi::kFpXstateMagic1) {
    m->set_xfeatures(features);
    m->set_xstate_size(size);
  }
}

Status WriteImage(pid_t pid, CollectedTask& task, const image::Manifest& manifest,
                  image::Writer& writer, DumpStats* stats) {
  STASIS_TRY(writer.Begin());
  STASIS_TRY(writer.WriteMessage(image::RecordType::kManifest, manifest));
  for (const image::File& file : task.files) {
    STASIS_TRY(writer.WriteMessage(image::RecordType::kFile, file));
  }
  STASIS_TRY(writer.WriteMessage(image::RecordType::kProcess, task.proc));
  kinds::memory::PageStats pages;
  STASIS_TRY(kinds::memory::WritePages(pid, task.proc.pid(), task.pages, writer, &pages));
  image::Trailer trailer;
  trailer.set_records(writer.records());
  trailer.set_page_bytes(pages.pages_written * image::kPageSize);
  trailer.set_pages(pages.pages_written);
  STASIS_TRY(writer.WriteMessage(image::RecordType::kTrailer, trailer));
  STASIS_TRY(writer.Flush());
  stats->resident_bytes = pages.pages_present * image::kPageSize;
  stats->pages_written = pages.pages_written;
  stats->zero_pages = pages.zero_pages;
  return Ok();
}

// The image file under a temporary name until it is complete.
class PendingImage {
 public:
  explicit PendingImage(std::string dir)
      : final_(image::ImagePath(dir)), temp_(final_ + ".partial") {}
  ~PendingImage() {
    if (!committed_) unlink(temp_.c_str());
  }
  const std::string& temp() const { return temp_; }
  Status Commit() {
    if (rename(temp_.c_str(), final_.c_str()) < 0) return Error::Errno("rename to " + final_);
    committed_ = true;
    return Ok();
  }

 private:
  std::string final_, temp_;
  bool committed_ = false;
};

Status MakeDir(const std::string& dir) {
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (ec) return Error::FromErrno("create image directory " + dir, ec.value());
  return Ok();
}

}  // namespace

Result<DumpStats> Dump(const DumpOptions& options) {
  Clock::time_point start = Clock::now();
  DumpStats stats;
  pid_t pid = options.pid;
  STASIS_TRY(PrecheckTask(pid));
  STASIS_TRY(MakeDir(options.dir));
  PendingImage pending(options.dir);
  auto sink = STASIS_TRY(image::FdSink::CreateFile(pending.temp()));

  Clock::time_point frozen = Clock::now();
  std::vector<sys::Tracee> threads = STASIS_TRY(SeizeThreads(pid));
  image::Manifest manifest;
  CollectedTask task = STASIS_TRY_CTX(CollectTask(pid, threads, &manifest), "dump");
  FillManifest(task.proc, &manifest);
  image::Writer writer(*sink);
  STASIS_TRY_CTX(WriteImage(pid, task, manifest, writer, &stats), "write image");
  STASIS_TRY(sink->Sync());
  STASIS_TRY(pending.Commit());
  if (!options.leave_running && kill(pid, SIGKILL) < 0) {
    return Error::Errno(fmt::format("kill pid {} after dump", pid));
  }
  for (sys::Tracee& t : threads) STASIS_TRY(t.Detach());
  stats.frozen_ms = MsSince(frozen);
  struct stat st;
  if (stat(image::ImagePath(options.dir).c_str(), &st) == 0) stats.image_bytes = st.st_size;
  stats.total_ms = MsSince(start);
  return stats;
}

}  // namespace stasis::checkpoint
