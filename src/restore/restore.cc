#include "restore/restore.h"

#include <fmt/format.h>
#include <signal.h>
#include <sys/wait.h>

#include <chrono>
#include <cstring>

#include "kinds/memory.h"
#include "kinds/registry.h"
#include "kinds/vdso.h"
#include "restore/puppet.h"
#include "restore/spawn.h"
#include "sys/kernel_abi.h"

namespace stasis::restore {
namespace {

struct ImageHead {
  image::Manifest manifest;
  std::vector<image::File> files;
  image::Process proc;
};

Result<image::Record> NextRecord(image::Reader& reader) {
  image::Record rec;
  if (!STASIS_TRY(reader.Next(&rec))) {
    return Error::Corrupt(fmt::format("image truncated at offset {}: no trailer", reader.offset()));
  }
  return rec;
}

// Everything before the page records.
Result<ImageHead> ReadHead(image::Reader& reader) {
  ImageHead head;
  image::Record rec = STASIS_TRY(NextRecord(reader));
  if (rec.type != image::RecordType::kManifest)
    return Error::Corrupt("image does not start with a manifest");
  STASIS_TRY(image::ParseMessage(rec, &head.manifest));
  for (;;) {
    rec = STASIS_TRY(NextRecord(reader));
    if (rec.type == image::RecordType::kProcess) break;
    if (rec.type != image::RecordType::kFile) {
      return Error::Corrupt(fmt::format("unexpected {} record before the process record",
                                        image::RecordTypeName(rec.type)));
    }
    STASIS_TRY(image::ParseMessage(rec, &head.files.emplace_back()));
  }
  STASIS_TRY(image::ParseMessage(rec, &head.proc));
  return head;
}

uint64_t OwnXfeatures() {
  uint32_t lo, hi;
  asm volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
  return (uint64_t{hi} << 32) | lo;
}

Status CheckHost(const ImageHead& head) {
  uint64_t own = OwnXfeatures();
  if ((head.manifest.xfeatures() & ~own) != 0) {
    return Error::Unsupported(fmt::format(
        "the image's CPU state uses xsave features {:#x} that this CPU lacks (it has {:#x})",
        head.manifest.xfeatures(), own));
  }
  return kinds::vdso::CheckCompatible(head.manifest, head.proc);
}

Result<LocalFiles> CreateFiles(const std::vector<image::File>& files) {
  kinds::RestoreContext ctx;
  LocalFiles out;
  for (bool last_pass : {false, true}) {
    for (const image::File& file : files) {
      const kinds::FdKind* kind = kinds::FindFdKind(file.kind());
      if (kind == nullptr)
        return Error::Corrupt("unknown file kind '" + file.kind() + "' in image");
      if (kind->restore_last != last_pass) continue;
      sys::UniqueFd fd = STASIS_TRY_CTX(kind->restore(ctx, file), "restore " + file.kind());
      ctx.local_fds[file.id()] = fd.get();
      out[file.id()] = std::move(fd);
    }
  }
  return out;
}

// Streams page records into the puppet until the trailer, which must be
// the last record and agree with what came before it.
Status FeedPages(image::Reader& reader, pid_t host_pid, const image::Process& proc,
                 uint64_t* pages) {
  for (;;) {
    image::Record rec = STASIS_TRY(NextRecord(reader));
    if (rec.type == image::RecordType::kPages) {
      image::PageRun run = STASIS_TRY(image::ParsePageRun(rec));
      if (static_cast<int>(run.pid) != proc.pid()) {
        return Error::Corrupt(
            fmt::format("page record for pid {} in an image of pid {}", run.pid, proc.pid()));
      }
      STASIS_TRY(kinds::memory::RestorePageRun(host_pid, proc, run));
      *pages += run.npages;
      continue;
    }
    if (rec.type != image::RecordType::kTrailer) {
      return Error::Corrupt(
          fmt::format("unexpected {} record among page records", image::RecordTypeName(rec.type)));
    }
    image::Trailer trailer;
    STASIS_TRY(image::ParseMessage(rec, &trailer));
    if (trailer.pages() != *pages) {
      return Error::Corrupt(
          fmt::format("trailer counts {} pages, image holds {}", trailer.pages(), *pages));
    }
    image::Record extra;
    if (STASIS_TRY(reader.Next(&extra))) return Error::Corrupt("records after the trailer");
    return Ok();
  }
}

// Kills the puppet unless the restore completed. As its tracer we must
// also reap it: the namespace init, when killed next, waits for every task
// of the namespace to be reaped, and a traced zombie waits for its tracer.
class PuppetGuard {
 public:
  PuppetGuard(pid_t pid, const std::vector<sys::Tracee>* threads) : pid_(pid), threads_(threads) {}
  ~PuppetGuard() {
    if (pid_ == 0) return;
    kill(pid_, SIGKILL);
    for (const sys::Tracee& t : *threads_) Reap(t.tid());
    Reap(pid_);
  }
  void Release() { pid_ = 0; }

 private:
  static void Reap(pid_t tid) {
    while (waitpid(tid, nullptr, __WALL) < 0 && errno == EINTR) {
    }
  }
  pid_t pid_;
  const std::vector<sys::Tracee>* threads_;
};

}  // namespace

Result<RestoreResult> Restore(const RestoreOptions& options) {
  auto start = std::chrono::steady_clock::now();
  auto source = STASIS_TRY(image::FdSource::OpenFile(image::ImagePath(options.dir)));
  image::Reader reader(*source);
  STASIS_TRY(reader.Begin());
  ImageHead head = STASIS_TRY(ReadHead(reader));
  STASIS_TRY(CheckHost(head));
  LocalFiles files = STASIS_TRY(CreateFiles(head.files));

  RestoreResult result;
  result.pid = head.proc.pid();
  int slot = FreeFdSlot(head.proc);
  Spawner spawner = STASIS_TRY(Spawner::Start(options.new_pid_ns));
  Puppet puppet = STASIS_TRY(spawner.CreatePuppet(head.proc.pid(), slot));
  result.host_pid = puppet.host_pid;
  sys::Tracee tracee = STASIS_TRY(sys::Tracee::Seize(puppet.host_pid, /*kill_on_exit=*/true));
  std::vector<sys::Tracee> threads;
  PuppetGuard guard(puppet.host_pid, &threads);

  PuppetPlan plan = {&head.manifest, &head.proc, &files, slot};
  auto feed = [&](const image::Process& proc) {
    return FeedPages(reader, puppet.host_pid, proc, &result.pages);
  };
  STASIS_TRY_CTX(BuildTask(tracee, puppet.host_pid, plan, feed, &threads),
                 fmt::format("restore pid {}", head.proc.pid()));
  // The restorer's references must be gone before the task runs: a reader
  // waits for EOF until every write end of its pipe is closed.
  files.clear();
  for (sys::Tracee& t : threads) STASIS_TRY(t.Detach());
  STASIS_TRY(tracee.Detach());
  guard.Release();
  STASIS_TRY(spawner.Commit(head.proc.pid()));
  result.total_ms =
      std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
  return result;
}

}  // namespace stasis::restore
