#include "restore/restore.h"

#include <fcntl.h>
#include <fmt/format.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>

#include <chrono>
#include <cstring>
#include <set>

#include "image/endpoint.h"
#include "kinds/memory.h"
#include "kinds/pty.h"
#include "kinds/registry.h"
#include "kinds/shmem.h"
#include "kinds/vdso.h"
#include "mem/page_store.h"
#include "net/netlock.h"
#include "net/session_restore.h"
#include "net/tcp_nudge.h"
#include "pages.pb.h"
#include "pty.pb.h"
#include "restore/puppet.h"
#include "restore/spawn.h"
#include "restore/tree.h"
#include "sys/kernel_abi.h"

namespace stasis::restore {
namespace {

struct ImageHead {
  image::Manifest manifest;
  std::vector<image::File> files;
  std::vector<image::Process> procs;  // parents before children
};

// The reader with one record of lookahead: page records are consumed per
// process until the next process's first one.
class Records {
 public:
  explicit Records(image::Reader& reader) : reader_(reader) {}
  Result<image::Record*> Peek() {
    if (!has_) {
      if (!STASIS_TRY(reader_.Next(&rec_))) {
        return Error::Corrupt(
            fmt::format("image truncated at offset {}: no trailer", reader_.offset()));
      }
      has_ = true;
    }
    return &rec_;
  }
  void Consume() { has_ = false; }
  Result<bool> AtEnd() {
    image::Record extra;
    return !STASIS_TRY(reader_.Next(&extra));
  }

 private:
  image::Reader& reader_;
  image::Record rec_;
  bool has_ = false;
};

// The manifest and the File records.
Result<ImageHead> ReadFiles(Records& records) {
  ImageHead head;
  image::Record* rec = STASIS_TRY(records.Peek());
  if (rec->type != image::RecordType::kManifest) {
    return Error::Corrupt("image does not start with a manifest");
  }
  STASIS_TRY(image::ParseMessage(*rec, &head.manifest));
  records.Consume();
  for (;; records.Consume()) {
    rec = STASIS_TRY(records.Peek());
    if (rec->type != image::RecordType::kFile) break;
    STASIS_TRY(image::ParseMessage(*rec, &head.files.emplace_back()));
  }
  return head;
}

// An image of a shell job needs a terminal to be restored on, and only
// such an image takes one.
Status CheckShellJob(const ImageHead& head, const RestoreOptions& options) {
  bool needs = head.manifest.shell_job().has_ctty();
  for (const image::File& f : head.files) needs |= f.state().Is<image::ExternalTtyState>();
  if (!needs) return Ok();
  if (!options.shell_job) {
    return Error::Unsupported(
        "the image is a job of a terminal outside the dumped tree (dumped with --shell-job): "
        "restore it with --shell-job, from the terminal it is to run on");
  }
  return kinds::pty::CheckShellJobTerminal();
}

// Contents of the shared-memory objects, written into the new objects
// through a read-write description of each (the task's may be read-only).
Status FillShmem(Records& records, const LocalFiles& files) {
  std::map<uint64_t, sys::UniqueFd> writable;
  for (;; records.Consume()) {
    image::Record* rec = STASIS_TRY(records.Peek());
    if (rec->type != image::RecordType::kPages) return Ok();
    image::PageRun run = STASIS_TRY(image::ParsePageRun(*rec));
    if (!(run.pid & image::kShmemPageOwner)) return Ok();
    uint64_t id = run.pid & ~image::kShmemPageOwner;
    auto it = files.find(id);
    if (it == files.end()) return Error::Corrupt("shared memory pages for an unknown object");
    sys::UniqueFd& fd = writable[id];
    if (!fd.valid()) {
      fd.reset(open(fmt::format("/proc/self/fd/{}", it->second.get()).c_str(), O_RDWR | O_CLOEXEC));
      if (!fd.valid()) return Error::Errno("reopen shared memory object for writing");
    }
    struct stat st;
    if (fstat(fd.get(), &st) < 0) return Error::Errno("fstat shared memory object");
    STASIS_TRY(kinds::shmem::FillPages(fd.get(), run, static_cast<uint64_t>(st.st_size)));
  }
}

Status ReadProcesses(Records& records, ImageHead* head) {
  for (;; records.Consume()) {
    image::Record* rec = STASIS_TRY(records.Peek());
    if (rec->type != image::RecordType::kProcess) break;
    STASIS_TRY(image::ParseMessage(*rec, &head->procs.emplace_back()));
  }
  return ValidateTree(head->procs);
}

uint64_t OwnXfeatures() {
  uint32_t lo, hi;
  asm volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
  return (uint64_t{hi} << 32) | lo;
}

Status CheckHost(const sys::KernelFeatures& features, const ImageHead& head) {
  for (const image::Process& proc : head.procs) {
    for (const image::Thread& thread : proc.threads()) {
      if (thread.rseq_abi() != 0 && !features.Has("rseq")) {
        return Error::Unsupported(
            fmt::format("pid {} thread {} registered rseq, which this kernel lacks (4.18+)",
                        proc.pid(), thread.tid()));
      }
    }
  }
  uint64_t own = OwnXfeatures();
  if ((head.manifest.xfeatures() & ~own) != 0) {
    return Error::Unsupported(fmt::format(
        "the image's CPU state uses xsave features {:#x} that this CPU lacks (it has {:#x})",
        head.manifest.xfeatures(), own));
  }
  return kinds::vdso::CheckCompatible(head.manifest, head.procs[0]);
}

// Once the kinds' finishers ran (every socket is out of repair mode), lifts
// each network lock the image's connections name, once, in the restorer's
// namespace, where the dump's keeper listens (an isolated session's lock
// is its link: link_up lifts it). Then what must reach the outside peers:
// the nudges first, before anything sent acknowledges new data.
Status LiftFlowLocks(std::vector<kinds::RestoreContext::AfterUnlock>& after_unlock,
                     const std::function<Status()>& link_up, const std::function<void()>& link_down,
                     Logger& log) {
  std::set<std::string> lifted;
  for (const auto& step : after_unlock) {
    if (!lifted.insert(step.lock).second) continue;
    std::string done = STASIS_TRY(net::ReleaseFlowLock(step.lock));
    if (!done.empty()) log.Info(done);
  }
  STASIS_TRY(link_up());
  for (auto& step : after_unlock) {
    if (step.nudge) net::NudgePeer(*step.nudge, log);
    Status done = step.run();
    if (!done.ok()) link_down();
    STASIS_TRY(std::move(done));
  }
  return Ok();
}

// Once every file exists and the kinds' finishers ran (sockets left repair
// mode), the network locks are lifted and link_up brings an isolated
// session's link up, before what must reach the outside peers is sent.
// link_down takes it down again when a step after it fails, before the
// sockets close.
Result<LocalFiles> CreateFiles(const std::vector<image::File>& files, bool shell_job,
                               const std::function<Status()>& link_up,
                               const std::function<void()>& link_down, Logger& log) {
  kinds::RestoreContext ctx;
  ctx.shell_job = shell_job;
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
  for (auto& finish : ctx.finishers) STASIS_TRY(finish());
  STASIS_TRY(LiftFlowLocks(ctx.after_unlock, link_up, link_down, log));
  return out;
}

// Pages the image carried, named (kept) or announced (deferred): what the
// trailer counts.
struct PageCounts {
  uint64_t pages = 0;
  uint64_t kept = 0;
  uint64_t deferred = 0;
};

// Where a process's kept and deferred records send their ranges.
struct PageInputs {
  mem::HeldPages* held = nullptr;
  bool deferred_allowed = false;
};

// A kept record: its pages move from the held pre-copy into the store; a
// deferred record: its ranges are declared, to come after the image.
Status TakeRanges(const image::Record& rec, mem::PageStore& store, const PageInputs& in,
                  const image::PageRanges& ranges, PageCounts* counts) {
  bool kept = rec.type == image::RecordType::kKept;
  for (const image::PageRange& r : ranges.ranges()) {
    uint64_t end = r.addr() + r.npages() * image::kPageSize;
    std::string what = fmt::format("pid {}: {} pages {:#x}-{:#x} (record {})", ranges.pid(),
                                   image::RecordTypeName(rec.type), r.addr(), end, rec.index);
    if (r.npages() == 0 || end < r.addr()) return Error::Corrupt(what + ": not a page range");
    if (kept && in.held == nullptr) {
      return Error::Corrupt(what + ": held from a pre-copy, but this restore holds none");
    }
    if (!kept && !in.deferred_allowed) {
      return Error::Corrupt(what + ": to come after the image, but this restore expects none");
    }
    if (kept) {
      STASIS_TRY_CTX(in.held->Give(ranges.pid(), r.addr(), r.npages(), store), what);
      counts->kept += r.npages();
    } else {
      STASIS_TRY_CTX(store.Declare(static_cast<int>(ranges.pid()), r.addr(), end), what);
      counts->deferred += r.npages();
    }
  }
  return Ok();
}

// Hands this process's page records (they are consecutive in the image,
// with its kept and deferred records) to the page store, which writes them
// into its puppet.
Status FeedPages(Records& records, mem::PageStore& store, const image::Process& proc,
                 const std::shared_ptr<const void>& image, const PageInputs& in,
                 PageCounts* counts) {
  for (;; records.Consume()) {
    image::Record* rec = STASIS_TRY(records.Peek());
    if (rec->type == image::RecordType::kKept || rec->type == image::RecordType::kDeferred) {
      image::PageRanges ranges;
      STASIS_TRY(image::ParseMessage(*rec, &ranges));
      if (static_cast<int>(ranges.pid()) != proc.pid()) return Ok();
      STASIS_TRY(TakeRanges(*rec, store, in, ranges, counts));
      continue;
    }
    if (rec->type != image::RecordType::kPages) return Ok();
    image::PageRun run = STASIS_TRY(image::ParsePageRun(*rec));
    if (static_cast<int>(run.pid) != proc.pid()) return Ok();
    STASIS_TRY(store.Add(run, image));
    counts->pages += run.npages;
  }
}

// Late records (written at the dump's point of no return): applied once
// every process holds its fds, before any of them runs.
Status ApplyLate(Records& records, const ImageHead& head, const LocalFiles& files) {
  kinds::LateRestore ctx{&head.files, &files};
  for (;; records.Consume()) {
    image::Record* rec = STASIS_TRY(records.Peek());
    if (rec->type != image::RecordType::kLate) return Ok();
    image::LateRecord late;
    STASIS_TRY(image::ParseMessage(*rec, &late));
    const kinds::FdKind* kind = kinds::FindFdKind(late.kind());
    if (kind == nullptr || kind->apply_late == nullptr) {
      return Error::Corrupt(
          fmt::format("late record {} of kind '{}', which has none", rec->index, late.kind()));
    }
    STASIS_TRY_CTX(kind->apply_late(ctx, late), "restore " + late.kind() + " (late record)");
  }
}

// The trailer must be the last record and agree with what came before it.
Status ReadTrailer(Records& records, const PageCounts& counts) {
  image::Record* rec = STASIS_TRY(records.Peek());
  if (rec->type != image::RecordType::kTrailer) {
    return Error::Corrupt(fmt::format(
        "unexpected {} record (page records of pid {}?) where the "
        "trailer should be",
        image::RecordTypeName(rec->type),
        rec->type == image::RecordType::kPages ? STASIS_TRY(image::ParsePageRun(*rec)).pid : 0));
  }
  image::Trailer trailer;
  STASIS_TRY(image::ParseMessage(*rec, &trailer));
  records.Consume();
  if (trailer.pages() != counts.pages) {
    return Error::Corrupt(
        fmt::format("trailer counts {} pages, image holds {}", trailer.pages(), counts.pages));
  }
  if (trailer.kept_pages() != counts.kept || trailer.deferred_pages() != counts.deferred) {
    return Error::Corrupt(
        fmt::format("trailer counts {} kept and {} deferred pages, image names {} and {}",
                    trailer.kept_pages(), trailer.deferred_pages(), counts.kept, counts.deferred));
  }
  if (!STASIS_TRY(records.AtEnd())) return Error::Corrupt("records after the trailer");
  return Ok();
}

// Kills the tree unless the restore completed, after before_kill. As their
// tracer we must also reap every task: the namespace init, when killed
// next, waits for every task of the namespace to be reaped, and a traced
// zombie waits for its tracer.
class TreeGuard {
 public:
  TreeGuard(std::vector<TreeProcess>* tree, std::function<void()> before_kill)
      : tree_(tree), before_kill_(std::move(before_kill)) {}
  ~TreeGuard() {
    if (tree_ == nullptr) return;
    before_kill_();
    for (TreeProcess& t : *tree_) {
      t.build.reset();  // its Injector would touch the task: stop using it first
      if (t.leader) kill(t.host_pid, SIGKILL);
    }
    for (TreeProcess& t : *tree_) {
      for (sys::Tracee& thread : t.threads) Reap(thread.tid());
      if (t.leader) Reap(t.host_pid);
    }
  }
  void Release() { tree_ = nullptr; }

 private:
  static void Reap(pid_t tid) {
    while (waitpid(tid, nullptr, __WALL) < 0 && errno == EINTR) {
    }
  }
  std::vector<TreeProcess>* tree_;
  std::function<void()> before_kill_;
};

// FdKind::after_tree, once per File, in the first live process holding it.
Status RunAfterTree(std::vector<TreeProcess>& tree) {
  std::set<uint64_t> done;
  for (TreeProcess& t : tree) {
    if (!t.build) continue;
    std::vector<uint64_t> ids;
    for (const image::Fd& fd : t.proc->fds()) {
      if (done.insert(fd.file_id()).second) ids.push_back(fd.file_id());
    }
    STASIS_TRY(t.build->RunAfterTree(ids));
  }
  return Ok();
}

struct TreeRestore {
  const sys::Env& env;
  const ImageHead& head;
  const LocalFiles& files;
  Records& records;
  std::vector<TreeProcess>& tree;
  const std::map<uint64_t, const image::File*>& image_files;
  mem::PageStore& store;
  mem::LazyPager* lazy;
  // Keeps the page records' bytes valid, when they are read in place from
  // an image mapped whole: held pages then need no copy.
  std::shared_ptr<const void> image;
  PageInputs inputs;
  PageCounts counts;

  // Phase 1 of tree[i], then its children (depth first, the image's order:
  // they consume their page records in turn), then its phase 2.
  Status BuildSubtree(size_t i) {
    TreeProcess& t = tree[i];
    if (t.proc->zombie()) return Ok();
    PuppetPlan plan = {&head.manifest, t.proc, &files, t.pidfd_slot, &image_files, &env.log, lazy};
    t.build =
        i == 0 ? STASIS_TRY(TaskBuild::StartFresh(*t.leader, t.host_pid, plan, store))
               : STASIS_TRY(TaskBuild::StartForked(*t.leader, t.host_pid, plan, t.origin, store));
    STASIS_TRY(FeedPages(records, store, *t.proc, image, inputs, &counts));
    env.Report("pages", store.pages_received() * image::kPageSize);
    STASIS_TRY(t.build->FinishMemory());
    for (const image::Process& c : head.procs) {
      if (&c == head.procs.data() || c.ppid() != t.proc->pid()) continue;
      STASIS_TRY(tree[i].build->CompleteInherited(c));
      size_t j = STASIS_TRY(ForkInto(tree[i], c, {&files, &image_files}, &tree));
      STASIS_TRY_CTX(BuildSubtree(j), fmt::format("restore pid {}", c.pid()));
    }
    return tree[i].build->RestoreAttributes(&tree[i].threads);
  }
};

// Runs SessionNetRestore::DownUnlessCommitted when it goes: declared after
// what holds the session's sockets, it runs before they close.
struct SessionLinkGuard {
  net::SessionNetRestore& net;
  ~SessionLinkGuard() { net.DownUnlessCommitted(); }
};

// What every restore needs from the kernel (sys/features.cc names them).
Status CheckFeatures(const sys::KernelFeatures& features, const RestoreOptions& options) {
  STASIS_TRY(features.Require({"CAP_SYS_PTRACE", "CAP_CHECKPOINT_RESTORE", "pidfd_open",
                               "pidfd_getfd", "clone3", "PR_SET_MM_MAP", "yama ptrace_scope"},
                              "restore"));
  if (options.new_pid_ns) STASIS_TRY(features.Require({"CAP_SYS_ADMIN"}, "restore"));
  return Ok();
}

// A stream, read to its end first (restore.h says why).
Result<std::shared_ptr<image::MappedFileSource>> Spool(const sys::Env& env,
                                                       const RestoreOptions& options,
                                                       image::Source& source) {
  if (source.IsWhole()) return std::shared_ptr<image::MappedFileSource>();
  env.Report("read");
  return std::shared_ptr<image::MappedFileSource>(STASIS_TRY(image::SpoolImage(
      source, options.spool_dir, [&env](uint64_t bytes) { env.Report("read", bytes); })));
}

}  // namespace

Result<RestoreResult> Restore(const sys::Env& env, const RestoreOptions& options,
                              image::Source& source) {
  // Not shared: what a lazy restore holds past its return is copied.
  return Restore(env, options, std::shared_ptr<image::Source>(std::shared_ptr<void>(), &source));
}

Result<RestoreResult> Restore(const sys::Env& env, const RestoreOptions& options,
                              std::shared_ptr<image::Source> source) {
  auto start = std::chrono::steady_clock::now();
  STASIS_TRY(CheckFeatures(env.features, options));
  if (options.deferred_allowed && !options.lazy) {
    return Error::Invalid("restore: deferred pages (post-copy) need a lazy restore");
  }
  std::shared_ptr<image::MappedFileSource> spooled = STASIS_TRY(Spool(env, options, *source));
  env.Report("read");
  image::Reader reader(spooled ? *spooled : *source);
  STASIS_TRY(reader.Begin());
  Records records(reader);
  ImageHead head = STASIS_TRY(ReadFiles(records));
  STASIS_TRY(CheckShellJob(head, options));
  net::SessionNetRestore net =
      STASIS_TRY(net::SessionNetRestore::Build(head.manifest, options.new_pid_ns, env.log));
  env.Report("files");
  // An isolated session's sockets are made inside its namespace.
  LocalFiles files = STASIS_TRY(net.Inside([&] {
    return CreateFiles(
        head.files, options.shell_job, [&net] { return net.LinkUp(); },
        [&net] { net.DownUnlessCommitted(); }, env.log);
  }));
  SessionLinkGuard link_guard{net};
  STASIS_TRY(FillShmem(records, files));
  STASIS_TRY(ReadProcesses(records, &head));
  STASIS_TRY(CheckHost(env.features, head));
  auto fd_of = [&files](uint64_t id) -> Result<int> {
    auto it = files.find(id);
    if (it == files.end()) return Error::Corrupt(fmt::format("no file {} to seal", id));
    return it->second.get();
  };
  STASIS_TRY_CTX(
      kinds::shmem::AddSeals(head.files, head.procs, fd_of, kinds::shmem::SealTime::kBeforeMapping),
      "restore memfd seals");

  env.Report("tree");
  RestoreResult result;
  result.pid = head.procs[0].pid();
  // The init of an isolated session's tree is made inside its namespace:
  // every process of the tree inherits it from there.
  sys::UniqueFd time_ns =
      STASIS_TRY(TimeNamespaceFor(env.features, head.manifest.clocks(), env.log));
  Spawner spawner = STASIS_TRY(
      net.Inside([&] { return Spawner::Start(options.new_pid_ns, std::move(time_ns)); }));
  // Before the tree: a failed restore kills the tree, then stops the pager.
  auto store = std::make_unique<mem::PageStore>();
  for (const image::Process& p : head.procs) store->Expect(p);
  std::shared_ptr<mem::LazyPager> lazy;
  if (options.lazy) lazy = std::make_shared<mem::LazyPager>(std::move(store));
  mem::PageStore& pages = lazy ? lazy->store() : *store;
  std::vector<TreeProcess> tree;
  TreeGuard guard(&tree, [&net] { net.DownUnlessCommitted(); });
  std::map<uint64_t, const image::File*> image_files;
  for (const image::File& f : head.files) image_files[f.id()] = &f;
  TreeFiles tree_files = {&files, &image_files};
  STASIS_TRY_CTX(CreateRoot(spawner, head.procs, tree_files, &tree), "restore tree");
  result.host_pid = tree[0].host_pid;
  // Page records read in place are held by a lazy restore past its return:
  // only a source this restore shares in keeps them valid.
  std::shared_ptr<const void> image = spooled;
  if (!image && source.use_count() > 0 && dynamic_cast<image::MappedFileSource*>(source.get())) {
    image = source;
  }
  TreeRestore builder{
      env,         head,  files,      records, tree,
      image_files, pages, lazy.get(), image,   {options.held.get(), options.deferred_allowed},
      {}};
  STASIS_TRY_CTX(builder.BuildSubtree(0), fmt::format("restore pid {}", result.pid));
  STASIS_TRY(ApplyLate(records, head, files));
  STASIS_TRY(ReadTrailer(records, builder.counts));
  // Deferred pages are still to come: the caller closes the store.
  if (builder.counts.deferred == 0) pages.Close(Ok());
  result.pages = pages.pages_received();
  env.Report("pages", result.pages * image::kPageSize, result.pages * image::kPageSize);
  // A shell job joins the restorer's group, the job the shell knows.
  bool job = options.shell_job && head.manifest.shell_job().has_ctty() &&
             head.procs[0].sid() != head.procs[0].pid();
  STASIS_TRY_CTX(MakeGroups(head.procs, &tree, job), "restore process groups");
  STASIS_TRY_CTX(EndZombies(&tree), "restore zombies");
  STASIS_TRY(RunAfterTree(tree));
  STASIS_TRY_CTX(
      kinds::shmem::AddSeals(head.files, head.procs, fd_of, kinds::shmem::SealTime::kAfterMapping),
      "restore memfd seals");
  for (TreeProcess& t : tree) {
    if (t.build) STASIS_TRY_CTX(t.build->Finish(), fmt::format("restore pid {}", t.proc->pid()));
  }
  result.shell_job = job;
  result.init_host_pid = spawner.init_host_pid();
  result.session_name = head.manifest.session_name();
  result.session_command.assign(head.manifest.session_command().begin(),
                                head.manifest.session_command().end());
  result.net = net.config();
  // A lazily restored tree must die with its pager rather than fault in
  // zero pages: the namespace init holds its userfaultfds (spawn.h).
  if (lazy) {
    for (int uffd : lazy->uffds()) STASIS_TRY(spawner.Hold(uffd));
  }
  if (options.before_release) STASIS_TRY(options.before_release(result));
  env.Report("release");
  // The restorer's references must be gone before the tree runs: a reader
  // waits for EOF until every write end of its pipe is closed.
  files.clear();
  for (TreeProcess& t : tree) {
    t.build.reset();
    for (sys::Tracee& thread : t.threads) STASIS_TRY(thread.Detach());
    if (t.leader) STASIS_TRY(t.leader->Detach());
  }
  guard.Release();
  result.page_guard = STASIS_TRY(spawner.Commit(result.pid, lazy != nullptr));
  net.Commit();
  if (lazy) lazy->Release();
  result.pager = std::move(lazy);
  result.processes = tree.size();
  result.total_ms =
      std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
  return result;
}

}  // namespace stasis::restore
