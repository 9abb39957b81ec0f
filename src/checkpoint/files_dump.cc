#include "checkpoint/files_dump.h"

#include <fcntl.h>
#include <fmt/format.h>
#include <sys/stat.h>

#include <algorithm>
#include <map>
#include <memory>

#include "kinds/registry.h"
#include "net/netlock.h"
#include "sys/pidfds.h"

namespace stasis::checkpoint {
namespace {

struct FdEntry {
  kinds::FdDumpInput in;
  image::Process* proc = nullptr;
  uint64_t file_id = 0;
};

Status OpenFds(pid_t pid, image::Process* proc, std::vector<FdEntry>* out) {
  sys::UniqueFd pidfd = STASIS_TRY(sys::PidfdOpen(pid));
  for (int fd : STASIS_TRY(sys::proc::ListFds(pid))) {
    FdEntry e;
    e.proc = proc;
    e.in.pid = pid;
    e.in.fd = fd;
    e.in.link = STASIS_TRY(sys::proc::ReadLink(fmt::format("/proc/{}/fd/{}", pid, fd)));
    std::string info = STASIS_TRY(sys::proc::ReadFile(fmt::format("/proc/{}/fdinfo/{}", pid, fd)));
    e.in.info = STASIS_TRY_CTX(sys::proc::ParseFdInfo(info), fmt::format("pid {} fd {}", pid, fd));
    e.in.local = STASIS_TRY(sys::PidfdGetfd(pidfd.get(), pid, fd));
    if (fstat(e.in.local.get(), &e.in.st) < 0) {
      return Error::Errno(kinds::DescribeFd(pid, fd, e.in.link) + ": fstat");
    }
    out->push_back(std::move(e));
  }
  return Ok();
}

// Gives each open file description an id: fds that kcmp says are one
// description (dup, fork, SCM_RIGHTS) share it. Only fds on the same inode
// can be one description, so kcmp runs within those groups.
Status AssignFileIds(std::vector<FdEntry>& fds) {
  std::map<std::pair<dev_t, ino_t>, std::vector<size_t>> by_inode;
  uint64_t next_id = 0;
  for (size_t i = 0; i < fds.size(); ++i) {
    FdEntry& e = fds[i];
    std::vector<size_t>& same_inode = by_inode[{e.in.st.st_dev, e.in.st.st_ino}];
    for (size_t j : same_inode) {
      const FdEntry& o = fds[j];
      if (STASIS_TRY(sys::SameFile(o.in.pid, o.in.fd, e.in.pid, e.in.fd))) {
        e.file_id = o.file_id;
        break;
      }
    }
    if (e.file_id == 0) {
      e.file_id = ++next_id;
      same_inode.push_back(i);
    }
  }
  return Ok();
}

Result<const kinds::FdKind*> KindOf(const kinds::FdDumpInput& in) {
  for (const kinds::FdKind* k : kinds::FdKinds()) {
    if (k->matches(in)) return k;
  }
  return kinds::UnsupportedFd(in);
}

// The network lock of the tree's connections to outside peers: taken at
// once for every flow the kinds declared, before any socket is put in
// repair mode, or on the first flow asked for when none was (a handshake
// the kernel finished meanwhile).
class TreeFlowLock {
 public:
  TreeFlowLock(kinds::DumpContext& ctx, const FlowLocking& locking)
      : ctx_(ctx), locking_(locking) {}

  Status Take(const std::vector<sys::TcpFlow>& flows) {
    lock_ = locking_.covered_by_link ? net::FlowLock::CoveredByLink(flows)
                                     : STASIS_TRY(net::FlowLock::Take(flows, locking_.log));
    // Registered before any socket's way out of repair mode, so it runs
    // after them all (undo runs last change first).
    ctx_.undo_if_kept.push_back([lock = lock_, &log = locking_.log] {
      Result<std::string> released = lock->Release();
      if (!released.ok()) {
        log.Warn(released.error().ToString());
      } else if (!released->empty()) {
        log.Debug(*released);
      }
    });
    return Ok();
  }

  Result<std::string> Hold(const sys::TcpFlow& flow) {
    if (!lock_) STASIS_TRY(Take({}));
    if (!lock_->Covers(flow)) STASIS_TRY(lock_->Add(flow));
    return lock_->table();
  }

 private:
  kinds::DumpContext& ctx_;
  const FlowLocking& locking_;
  std::shared_ptr<net::FlowLock> lock_;
};

// The flows the kinds of the tree's descriptions declare, each once (one
// socket may be behind several descriptions' fds).
Result<std::vector<sys::TcpFlow>> DeclaredFlows(kinds::DumpContext& ctx,
                                                const std::vector<FdEntry>& fds,
                                                const std::vector<const kinds::FdKind*>& kind_of) {
  std::vector<sys::TcpFlow> flows;
  for (size_t i = 0; i < fds.size(); ++i) {
    if (kind_of[i] == nullptr || kind_of[i]->flows == nullptr) continue;
    for (sys::TcpFlow& f : STASIS_TRY(kind_of[i]->flows(ctx, fds[i].in))) {
      if (std::find(flows.begin(), flows.end(), f) == flows.end()) flows.push_back(std::move(f));
    }
  }
  return flows;
}

}  // namespace

Status CollectTreeFiles(const std::vector<TreeFdsInput>& tasks, std::vector<image::File>* files,
                        std::vector<kinds::ContentSource>* contents,
                        std::vector<std::function<void()>>* undo,
                        std::vector<kinds::LateStep>* late, const kinds::DumpPolicy& policy,
                        const FlowLocking& locking) {
  std::vector<FdEntry> fds;
  for (const TreeFdsInput& t : tasks) STASIS_TRY(OpenFds(t.host_pid, t.proc, &fds));
  STASIS_TRY(AssignFileIds(fds));
  kinds::DumpContext ctx;
  ctx.policy = policy;
  // An isolated session takes its address along: its outside peers reach it
  // on the new machine.
  ctx.policy.moving_host = policy.moving_host && !locking.covered_by_link;
  // Whatever happens below, what kinds changed is handed to the caller.
  struct HandOver {
    kinds::DumpContext& ctx;
    std::vector<std::function<void()>>* undo;
    ~HandOver() { *undo = std::move(ctx.undo_if_kept); }
  } hand_over{ctx, undo};
  for (const FdEntry& e : fds) ctx.inputs.push_back(&e.in);
  // file_of_fd is per process: kinds that use it (epoll) look at their own task.
  std::map<pid_t, std::map<int, uint64_t>> file_of_fd;
  for (const FdEntry& e : fds) {
    ctx.fd_index.push_back({e.in.pid, e.in.fd, e.in.link, e.in.info.flags});
    file_of_fd[e.in.pid][e.in.fd] = e.file_id;
  }
  // The kind of each description, at its first fd.
  std::vector<const kinds::FdKind*> kind_of(fds.size(), nullptr);
  uint64_t seen = 0;
  for (size_t i = 0; i < fds.size(); ++i) {
    if (fds[i].file_id <= seen) continue;
    seen = fds[i].file_id;
    kind_of[i] = STASIS_TRY(KindOf(fds[i].in));
  }
  TreeFlowLock lock(ctx, locking);
  std::vector<sys::TcpFlow> flows = STASIS_TRY(DeclaredFlows(ctx, fds, kind_of));
  if (!flows.empty()) STASIS_TRY(lock.Take(flows));
  ctx.hold_flow = [&lock](const sys::TcpFlow& flow) { return lock.Hold(flow); };
  pid_t current = 0;
  for (size_t i = 0; i < fds.size(); ++i) {
    FdEntry& e = fds[i];
    if (kind_of[i] != nullptr) {  // the first fd of this description
      if (e.in.pid != current) {
        current = e.in.pid;
        ctx.file_of_fd = file_of_fd[current];
      }
      const kinds::FdKind* kind = kind_of[i];
      image::File file;
      file.set_id(e.file_id);
      file.set_kind(kind->name);
      STASIS_TRY(kind->dump(ctx, e.in, &file));
      files->push_back(std::move(file));
    }
    image::Fd* fd = e.proc->add_fds();
    fd->set_fd(e.in.fd);
    fd->set_file_id(e.file_id);
    fd->set_cloexec((e.in.info.flags & O_CLOEXEC) != 0);
  }
  *contents = std::move(ctx.content_sources);
  *late = std::move(ctx.late);
  return Ok();
}

}  // namespace stasis::checkpoint
