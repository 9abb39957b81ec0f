#include "kinds/epoll.h"

#include <fcntl.h>
#include <fmt/format.h>
#include <poll.h>
#include <sys/epoll.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <charconv>
#include <compare>
#include <map>
#include <optional>
#include <string_view>
#include <tuple>
#include <vector>

#include "epoll.pb.h"
#include "sys/pidfds.h"
#include "sys/proc.h"

namespace stasis::kinds::epoll {
namespace {

constexpr const char* kEpollLink = "anon_inode:[eventpoll]";
constexpr const char* kEventfdLink = "anon_inode:[eventfd]";
// F_SETFL changes only these; an epoll is always O_RDWR.
constexpr uint32_t kSettableFlags = O_APPEND | O_ASYNC | O_NOATIME | O_NONBLOCK;
// What a one-shot item keeps when it fires (EP_PRIVATE_BITS, fs/eventpoll.c).
constexpr uint32_t kFlagBits = EPOLLWAKEUP | EPOLLONESHOT | EPOLLET | EPOLLEXCLUSIVE;
// EPOLL_CTL_ADD always adds these to the requested events.
constexpr uint32_t kAlwaysBits = EPOLLERR | EPOLLHUP;
constexpr short kAllPollEvents =
    POLLIN | POLLPRI | POLLOUT | POLLRDNORM | POLLRDBAND | POLLWRNORM | POLLWRBAND | POLLRDHUP;

// include/uapi/linux/kcmp.h (Linux 4.13+).
constexpr int kKcmpEpollTfd = 7;
struct KcmpEpollSlot {
  uint32_t efd;   // epoll fd in pid2
  uint32_t tfd;   // the item's fd number
  uint32_t toff;  // which of the items with that number, in the kernel's tree order
};

// One "tfd:" line of an epoll's fdinfo.
struct Item {
  int tfd = -1;
  uint32_t events = 0;
  uint64_t data = 0;
  auto operator<=>(const Item&) const = default;
};

template <typename T>
bool ParseNumber(std::string_view text, int base, T* out) {
  auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), *out, base);
  return ec == std::errc() && end == text.data() + text.size() && !text.empty();
}

std::vector<std::string_view> Words(std::string_view text) {
  std::vector<std::string_view> words;
  size_t i = 0;
  while (i < text.size()) {
    size_t start = text.find_first_not_of(" \t", i);
    if (start == std::string_view::npos) break;
    size_t end = std::min(text.find_first_of(" \t", start), text.size());
    words.push_back(text.substr(start, end - start));
    i = end;
  }
  return words;
}

// "6 events: 90000019 data:                7  pos:0 ino:f495 sdev:f": the fd
// number, then "key: value" or "key:value" (the kernel pads some values).
Result<Item> ParseItem(std::string_view line) {
  auto bad = [&](std::string_view why) {
    return Error::Invalid(fmt::format("epoll fdinfo 'tfd: {}': {}", line, why));
  };
  std::vector<std::string_view> words = Words(line);
  Item item;
  if (words.empty() || !ParseNumber(words[0], 10, &item.tfd)) return bad("no fd number");
  std::map<std::string_view, std::string_view> fields;
  for (size_t i = 1; i < words.size(); ++i) {
    size_t colon = words[i].find(':');
    if (colon == std::string_view::npos) return bad(fmt::format("'{}' is not key:value", words[i]));
    std::string_view key = words[i].substr(0, colon);
    std::string_view value = words[i].substr(colon + 1);
    if (value.empty() && i + 1 < words.size()) value = words[++i];
    fields[key] = value;
  }
  if (!ParseNumber(fields["events"], 16, &item.events)) return bad("bad events");
  if (!ParseNumber(fields["data"], 16, &item.data)) return bad("bad data");
  return item;
}

Result<std::vector<Item>> ItemsOf(const sys::proc::FdInfo& info) {
  std::vector<Item> items;
  for (const auto& [key, value] : info.extra) {
    if (key == "tfd") items.push_back(STASIS_TRY(ParseItem(value)));
  }
  return items;
}

// A one-shot item that fired and was not re-armed (MOD) reports nothing.
bool Fired(uint32_t events) { return (events & EPOLLONESHOT) && (events & ~kFlagBits) == 0; }

// Files whose poll never reports EPOLLERR or EPOLLHUP (an eventfd only at a
// count of 2^64 - 1, which stays refused): an item armed for just those two
// behaves as a fired one-shot item on them.
bool QuietTarget(const std::string& link) { return link == kEpollLink || link == kEventfdLink; }

Result<uint32_t> Readiness(int fd) {
  struct pollfd p = {fd, kAllPollEvents, 0};
  if (poll(&p, 1, 0) < 0) return Error::Errno(fmt::format("poll fd {}", fd));
  if (p.revents & POLLNVAL) return Error::Invalid(fmt::format("poll fd {}: not open", fd));
  return static_cast<uint32_t>(static_cast<unsigned short>(p.revents));
}

// --- dump --------------------------------------------------------------------

// The task fd whose file is the toff-th item added under `tfd`: kcmp
// compares the file of a task fd (idx1) with that item's file. nullopt when
// no fd of the task holds it.
Result<std::optional<int>> FindHolder(const DumpContext& ctx, const FdDumpInput& in, int tfd,
                                      uint32_t toff) {
  KcmpEpollSlot slot = {static_cast<uint32_t>(in.fd), static_cast<uint32_t>(tfd), toff};
  auto holds = [&](int fd) -> Result<bool> {
    long r = syscall(SYS_kcmp, in.pid, in.pid, kKcmpEpollTfd, fd, &slot);
    if (r < 0) {
      return Error::Errno(fmt::format("{}: kcmp(EPOLL_TFD) of fd {} with item tfd {} #{}",
                                      DescribeFd(in.pid, in.fd, in.link), fd, tfd, toff));
    }
    return r == 0;
  };
  // Usually the number it was added under still holds it.
  if (ctx.file_of_fd.contains(tfd) && STASIS_TRY(holds(tfd))) return std::optional<int>(tfd);
  for (const auto& [fd, id] : ctx.file_of_fd) {
    if (fd != tfd && fd != in.fd && STASIS_TRY(holds(fd))) return std::optional<int>(fd);
  }
  return std::optional<int>();
}

std::string LinkOf(const DumpContext& ctx, pid_t pid, int fd) {
  for (const FdIndexEntry& e : ctx.fd_index) {
    if (e.pid == pid && e.fd == fd) return e.link;
  }
  return "";
}

// Restore can disarm a fired one-shot item again only by letting it fire,
// which needs a ready target; it is ready then if it is now.
Status CheckFiredItem(const FdDumpInput& in, int holder, const image::EpollItem& item) {
  if (QuietTarget(item.target_link())) return Ok();
  sys::UniqueFd pidfd = STASIS_TRY(sys::PidfdOpen(in.pid));
  sys::UniqueFd target = STASIS_TRY(sys::PidfdGetfd(pidfd.get(), in.pid, holder));
  if (STASIS_TRY(Readiness(target.get())) != 0) return Ok();
  return Error::Unsupported(fmt::format(
      "{}: one-shot item (tfd {}, data {:#x}) on fd {} ({}) fired and was not re-armed, and its "
      "target is not ready: a restore would arm it for EPOLLERR/EPOLLHUP",
      DescribeFd(in.pid, in.fd, in.link), item.tfd(), item.data(), holder, item.target_link()));
}

Status DumpItem(const DumpContext& ctx, const FdDumpInput& in, const Item& raw, uint32_t toff,
                image::EpollItem* item) {
  std::optional<int> holder = STASIS_TRY(FindHolder(ctx, in, raw.tfd, toff));
  if (!holder) {
    return Error::Unsupported(fmt::format(
        "{}: item (tfd {}, data {:#x}) watches a file that no fd of the task holds (it was closed "
        "after EPOLL_CTL_ADD and is kept open elsewhere)",
        DescribeFd(in.pid, in.fd, in.link), raw.tfd, raw.data));
  }
  item->set_file_id(ctx.file_of_fd.at(*holder));
  item->set_tfd(raw.tfd);
  item->set_events(raw.events);
  item->set_data(raw.data);
  item->set_target_link(LinkOf(ctx, in.pid, *holder));
  if (Fired(raw.events)) STASIS_TRY(CheckFiredItem(in, *holder, *item));
  return Ok();
}

// --- restore -----------------------------------------------------------------

// The restorer fd of an item's target. A watched epoll that comes after its
// watcher in the image is created here, empty, and left in ctx.local_fds:
// its own Restore adopts it (takes ownership) and adds its items.
Result<int> TargetFd(RestoreContext& ctx, const image::EpollItem& item) {
  auto it = ctx.local_fds.find(item.file_id());
  if (it != ctx.local_fds.end()) return it->second;
  if (item.target_link() != kEpollLink) {
    return Error::Corrupt(fmt::format("item tfd {} watches file {} ({}), which is not restored",
                                      item.tfd(), item.file_id(), item.target_link()));
  }
  int fd = epoll_create1(EPOLL_CLOEXEC);
  if (fd < 0) return Error::Errno(fmt::format("epoll_create1 for watched file {}", item.file_id()));
  ctx.local_fds[item.file_id()] = fd;
  return fd;
}

// Adds `target` under fd number `tfd`, the task's: the kernel keys items by
// (file, number), and the task's later ADD/MOD/DEL name that number. The
// restorer's own fd at that number, if any, is put back afterwards.
Status AddUnderNumber(int ep, int tfd, int target, uint32_t events, uint64_t data) {
  std::string what =
      fmt::format("epoll_ctl(ADD, fd {}, events {:#x}, data {:#x})", tfd, events, data);
  epoll_event ev = {};
  ev.events = events;
  ev.data.u64 = data;
  if (target == tfd) {
    if (epoll_ctl(ep, EPOLL_CTL_ADD, tfd, &ev) < 0) return Error::Errno(what);
    return Ok();
  }
  int occupant_flags = fcntl(tfd, F_GETFD);
  sys::UniqueFd saved;
  if (occupant_flags >= 0) {
    saved.reset(fcntl(tfd, F_DUPFD_CLOEXEC, 0));
    if (!saved.valid()) return Error::Errno(fmt::format("{}: set aside fd {}", what, tfd));
  }
  if (dup3(target, tfd, O_CLOEXEC) < 0) {
    // EBADF: the number is past the restorer's RLIMIT_NOFILE.
    return Error::Errno(fmt::format("{}: dup3 of the target to fd {}", what, tfd));
  }
  int added = epoll_ctl(ep, EPOLL_CTL_ADD, tfd, &ev);
  int add_errno = errno;
  int put_back = saved.valid()
                     ? dup3(saved.get(), tfd, (occupant_flags & FD_CLOEXEC) ? O_CLOEXEC : 0)
                     : close(tfd);
  if (added < 0) return Error::FromErrno(what, add_errno);
  if (put_back < 0) return Error::Errno(fmt::format("{}: put fd {} back", what, tfd));
  return Ok();
}

// Moves the epoll off the item numbers, where AddUnderNumber puts targets.
Status KeepOffItemNumbers(sys::UniqueFd& ep, const image::EpollState& state) {
  int highest = -1;
  bool clash = false;
  for (const image::EpollItem& item : state.items()) {
    highest = std::max(highest, item.tfd());
    clash |= item.tfd() == ep.get();
  }
  if (!clash) return Ok();
  int moved = fcntl(ep.get(), F_DUPFD_CLOEXEC, highest + 1);
  if (moved < 0) return Error::Errno(fmt::format("move epoll above fd {}", highest));
  ep.reset(moved);
  return Ok();
}

// ADD arms a fired one-shot item again, so it is armed for what its target
// is ready for and let fire once. This runs before any other item is added,
// so the epoll_wait takes only these. `want` gets what fdinfo must show.
Status AddFiredItems(RestoreContext& ctx, int ep, const image::EpollState& state,
                     std::vector<Item>* want) {
  int firing = 0;
  for (const image::EpollItem& item : state.items()) {
    if (!Fired(item.events())) continue;
    int target = STASIS_TRY(TargetFd(ctx, item));
    uint32_t ready = STASIS_TRY(Readiness(target));
    if (ready == 0 && !QuietTarget(item.target_link())) {
      return Error(ErrorCode::kFailed,
                   fmt::format("fired one-shot item tfd {}: its target ({}) was ready at dump "
                               "but is not after restore",
                               item.tfd(), item.target_link()));
    }
    STASIS_TRY(AddUnderNumber(ep, item.tfd(), target, item.events() | ready, item.data()));
    firing += ready != 0;
    uint32_t shown = ready != 0 ? item.events() : item.events() | kAlwaysBits;
    want->push_back({item.tfd(), shown, item.data()});
  }
  if (firing == 0) return Ok();
  std::vector<epoll_event> events(firing + 1);
  int n = epoll_wait(ep, events.data(), static_cast<int>(events.size()), 0);
  if (n < 0) return Error::Errno("epoll_wait to disarm fired one-shot items");
  if (n != firing) {
    return Error(
        ErrorCode::kFailed,
        fmt::format("{} of {} fired one-shot items fired again to be disarmed", n, firing));
  }
  return Ok();
}

Status AddArmedItems(RestoreContext& ctx, int ep, const image::EpollState& state,
                     std::vector<Item>* want) {
  for (const image::EpollItem& item : state.items()) {
    if (Fired(item.events())) continue;
    int target = STASIS_TRY(TargetFd(ctx, item));
    STASIS_TRY(AddUnderNumber(ep, item.tfd(), target, item.events(), item.data()));
    want->push_back({item.tfd(), item.events() | kAlwaysBits, item.data()});
  }
  return Ok();
}

// The kernel can drop bits without failing (EPOLLWAKEUP without
// CAP_BLOCK_SUSPEND or CONFIG_PM_SLEEP), so the interest list is checked in
// our own fdinfo.
Status VerifyInterestList(int ep, std::vector<Item> want) {
  std::string path = fmt::format("/proc/self/fdinfo/{}", ep);
  sys::proc::FdInfo info =
      STASIS_TRY(sys::proc::ParseFdInfo(STASIS_TRY(sys::proc::ReadFile(path))));
  std::vector<Item> got = STASIS_TRY(ItemsOf(info));
  std::sort(want.begin(), want.end());
  std::sort(got.begin(), got.end());
  if (got == want) return Ok();
  auto mismatch = std::mismatch(want.begin(), want.end(), got.begin(), got.end());
  auto show = [](auto it, auto end) {
    return it == end ? std::string("nothing")
                     : fmt::format("tfd {} events {:#x} data {:#x}", it->tfd, it->events, it->data);
  };
  return Error(ErrorCode::kFailed,
               fmt::format("restored interest list differs: the image has {}, the kernel shows {}",
                           show(mismatch.first, want.end()), show(mismatch.second, got.end())));
}

Result<sys::UniqueFd> CreateOrAdopt(RestoreContext& ctx, uint64_t file_id) {
  auto it = ctx.local_fds.find(file_id);
  if (it != ctx.local_fds.end()) return sys::UniqueFd(it->second);  // see TargetFd
  sys::UniqueFd ep(epoll_create1(EPOLL_CLOEXEC));
  if (!ep.valid()) return Error::Errno("epoll_create1");
  return ep;
}

Status RestoreInto(RestoreContext& ctx, sys::UniqueFd& ep, const image::EpollState& state) {
  for (const image::EpollItem& item : state.items()) {
    if (item.tfd() < 0) return Error::Corrupt(fmt::format("item with fd number {}", item.tfd()));
  }
  STASIS_TRY(KeepOffItemNumbers(ep, state));
  std::vector<Item> want;
  STASIS_TRY(AddFiredItems(ctx, ep.get(), state, &want));
  STASIS_TRY(AddArmedItems(ctx, ep.get(), state, &want));
  if (fcntl(ep.get(), F_SETFL, state.flags() & kSettableFlags) < 0) {
    return Error::Errno(fmt::format("F_SETFL {:#o}", state.flags()));
  }
  return VerifyInterestList(ep.get(), std::move(want));
}

}  // namespace

bool Matches(const FdDumpInput& in) { return in.link == kEpollLink; }

Status Dump(DumpContext& ctx, const FdDumpInput& in, image::File* file) {
  std::string what = DescribeFd(in.pid, in.fd, in.link);
  std::vector<Item> items = STASIS_TRY_CTX(ItemsOf(in.info), what);
  image::EpollState state;
  state.set_flags(in.info.flags & ~O_CLOEXEC);
  std::map<int, uint32_t> seen;  // items met so far per fd number: kcmp's toff
  for (const Item& raw : items) {
    STASIS_TRY(DumpItem(ctx, in, raw, seen[raw.tfd]++, state.add_items()));
  }
  file->mutable_state()->PackFrom(state);
  return Ok();
}

Result<sys::UniqueFd> Restore(RestoreContext& ctx, const image::File& file) {
  image::EpollState state;
  if (!file.state().UnpackTo(&state)) return Error::Corrupt("epoll state does not parse");
  sys::UniqueFd ep = STASIS_TRY(CreateOrAdopt(ctx, file.id()));
  STASIS_TRY_CTX(RestoreInto(ctx, ep, state), fmt::format("epoll (file {})", file.id()));
  return ep;
}

const FdKind kKind = {
    .name = kName,
    .summary = "epoll: interest lists with events, cookies and one-shot state, nested epolls",
    .matches = Matches,
    .dump = Dump,
    .restore = Restore,
    .restore_last = true,
};

}  // namespace stasis::kinds::epoll
