#include "net/packet_keeper.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <fmt/format.h>
#include <linux/if_ether.h>
#include <linux/if_packet.h>
#include <net/if.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>

#include "net/isolated_net.h"
#include "net/nft.h"
#include "sys/proc.h"
#include "sys/unique_fd.h"

extern char** environ;

namespace stasis::net {
namespace {

constexpr int kReadyFd = 3;

sockaddr_un ControlAddress(const std::string& table, socklen_t* len) {
  sockaddr_un a = {};
  a.sun_family = AF_UNIX;
  std::string name = "stasis-netlock/" + table;  // abstract: after a NUL byte
  size_t n = std::min(name.size(), sizeof(a.sun_path) - 1);
  std::memcpy(a.sun_path + 1, name.data(), n);
  *len = static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + 1 + n);
  return a;
}

struct Kept {
  std::string packet;
  int ifindex;  // where it came in: the scope of an IPv6 link-local address
};

std::string LinkName(const std::string& host_link) { return "link/" + host_link; }

class Keeper {
 public:
  // A table's keeper (name: the table) or, with `link`, a link's.
  void Prepare(std::string name, std::vector<sys::TcpFlow> flows,
               std::optional<LinkKeeperSpec> link) {
    name_ = std::move(name);
    flows_ = std::move(flows);
    link_ = std::move(link);
  }
  Status Open();
  int Run();

 private:
  Status AttachFilter();
  void Capture();
  // Answers one request; true when the keeper is done.
  bool Serve(int conn);
  std::string Release();
  size_t Replay();
  Result<size_t> ReplayIntoLink();

  std::string name_;
  std::vector<sys::TcpFlow> flows_;
  std::optional<LinkKeeperSpec> link_;
  int bridge_index_ = 0;
  sys::UniqueFd capture_, control_;
  std::vector<Kept> kept_;
  size_t kept_bytes_ = 0;
  uint64_t lost_ = 0;
};

Status Keeper::AttachFilter() {
  std::vector<sock_filter> prog = link_ ? LinkCaptureFilter(link_->address) : CaptureFilter(flows_);
  sock_fprog fprog = {static_cast<unsigned short>(prog.size()), prog.data()};
  if (setsockopt(capture_.get(), SOL_SOCKET, SO_ATTACH_FILTER, &fprog, sizeof(fprog)) < 0) {
    return Error::Errno("attach the capture filter");
  }
  return Ok();
}

Status Keeper::Open() {
  if (link_) bridge_index_ = static_cast<int>(if_nametoindex(link_->bridge.c_str()));
  // Protocol 0 until the filter is on: nothing unfiltered is queued.
  capture_.reset(socket(AF_PACKET, SOCK_DGRAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
  if (!capture_.valid()) return Error::Errno("socket(AF_PACKET)");
  STASIS_TRY(AttachFilter());
  int rcvbuf = 32 << 20;
  setsockopt(capture_.get(), SOL_SOCKET, SO_RCVBUFFORCE, &rcvbuf, sizeof(rcvbuf));
  sockaddr_ll ll = {};
  ll.sll_family = AF_PACKET;
  ll.sll_protocol = htons(ETH_P_ALL);
  if (bind(capture_.get(), reinterpret_cast<sockaddr*>(&ll), sizeof(ll)) < 0) {
    return Error::Errno("bind the capture socket");
  }
  control_.reset(socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0));
  socklen_t len;
  sockaddr_un addr = ControlAddress(name_, &len);
  if (!control_.valid() || bind(control_.get(), reinterpret_cast<sockaddr*>(&addr), len) < 0 ||
      listen(control_.get(), 8) < 0) {
    return Error::Errno("control socket of the packet keeper of " + name_);
  }
  return Ok();
}

void Keeper::Capture() {
  alignas(8) static char buf[1 << 18];
  for (;;) {
    sockaddr_ll from = {};
    socklen_t from_len = sizeof(from);
    ssize_t n = recvfrom(capture_.get(), buf, sizeof(buf), MSG_TRUNC | MSG_DONTWAIT,
                         reinterpret_cast<sockaddr*>(&from), &from_len);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return;
    if (static_cast<size_t>(n) > sizeof(buf) || kept_bytes_ + n > kKeepBytes) {
      lost_++;
      continue;
    }
    std::string packet(buf, static_cast<size_t>(n));
    bool ours = link_ ? from.sll_ifindex != bridge_index_ && ToAddress(packet, link_->address)
                      : FromPeer(packet, flows_);
    if (!ours) continue;
    kept_bytes_ += packet.size();
    kept_.push_back({std::move(packet), from.sll_ifindex});
  }
}

size_t Keeper::Replay() {
  sys::UniqueFd raw4(socket(AF_INET, SOCK_RAW | SOCK_CLOEXEC, IPPROTO_RAW));
  sys::UniqueFd raw6(socket(AF_INET6, SOCK_RAW | SOCK_CLOEXEC, IPPROTO_RAW));
  size_t sent = 0;
  for (Kept& k : kept_) {
    if (!FixTcpChecksum(&k.packet)) continue;
    const char* p = k.packet.data();
    ssize_t n = -1;
    if ((p[0] >> 4) == 4) {
      sockaddr_in to = {};
      to.sin_family = AF_INET;
      std::memcpy(&to.sin_addr, p + 16, 4);
      n = sendto(raw4.get(), p, k.packet.size(), 0, reinterpret_cast<sockaddr*>(&to), sizeof(to));
    } else {
      sockaddr_in6 to = {};
      to.sin6_family = AF_INET6;
      std::memcpy(&to.sin6_addr, p + 24, 16);
      if (IN6_IS_ADDR_LINKLOCAL(&to.sin6_addr)) to.sin6_scope_id = static_cast<uint32_t>(k.ifindex);
      n = sendto(raw6.get(), p, k.packet.size(), 0, reinterpret_cast<sockaddr*>(&to), sizeof(to));
    }
    if (n == static_cast<ssize_t>(k.packet.size())) sent++;
  }
  return sent;
}

Result<size_t> Keeper::ReplayIntoLink() {
  int index = static_cast<int>(if_nametoindex(link_->host_link.c_str()));
  if (index == 0) return Error::Errno("no link " + link_->host_link);
  sys::UniqueFd out(socket(AF_PACKET, SOCK_DGRAM | SOCK_CLOEXEC, 0));
  if (!out.valid()) return Error::Errno("socket(AF_PACKET)");
  ifreq ifr = {};
  std::snprintf(ifr.ifr_name, sizeof(ifr.ifr_name), "%s", link_->host_link.c_str());
  size_t mtu = ioctl(out.get(), SIOCGIFMTU, &ifr) == 0 ? static_cast<size_t>(ifr.ifr_mtu) : 1500;
  sockaddr_ll to = {};
  to.sll_family = AF_PACKET;
  to.sll_protocol = htons(ETH_P_IP);
  to.sll_ifindex = index;
  to.sll_halen = ETH_ALEN;
  std::memcpy(to.sll_addr, link_->mac.data(), ETH_ALEN);
  size_t sent = 0;
  for (const Kept& k : kept_) {
    bool whole = true;
    for (std::string& seg : SegmentTcp4(k.packet, mtu)) {
      whole = whole && FixTcpChecksum(&seg) &&
              sendto(out.get(), seg.data(), seg.size(), 0, reinterpret_cast<sockaddr*>(&to),
                     sizeof(to)) == static_cast<ssize_t>(seg.size());
    }
    if (whole) sent++;
  }
  return sent;
}

std::string Keeper::Release() {
  size_t sent = 0;
  if (link_) {
    Capture();
    capture_.reset();
    Result<size_t> replayed = ReplayIntoLink();
    if (!replayed.ok()) return "error: " + replayed.error().ToString();
    sent = *replayed;
  } else {
    // The table goes first: what is sent again must get through.
    Status lifted = DeleteNftTable(name_);
    if (!lifted.ok()) return "error: lift the network lock: " + lifted.error().ToString();
    Capture();
    capture_.reset();
    sent = Replay();
  }
  return fmt::format(
      "ok: {} packets the peers sent meanwhile handed to the restored sockets{}", sent,
      lost_ + (kept_.size() - sent) == 0 ? ""
                                         : fmt::format(" ({} lost)", lost_ + kept_.size() - sent));
}

bool Keeper::Serve(int conn) {
  ucred cred = {};
  socklen_t len = sizeof(cred);
  auto reply = [conn](const std::string& text) { send(conn, text.data(), text.size(), 0); };
  if (getsockopt(conn, SOL_SOCKET, SO_PEERCRED, &cred, &len) < 0 ||
      (cred.uid != 0 && cred.uid != geteuid())) {
    reply("error: not allowed");
    return false;
  }
  timeval tv = {2, 0};
  setsockopt(conn, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  char buf[4096];
  ssize_t n = recv(conn, buf, sizeof(buf), 0);
  if (n <= 0) return false;
  std::string request(buf, static_cast<size_t>(n));
  if (request == "release") {
    std::string answer = Release();
    reply(answer);
    return answer.rfind("ok", 0) == 0;
  }
  if (request == "quit") {
    reply("ok");
    return true;
  }
  if (request.rfind("add ", 0) == 0) {
    Result<sys::TcpFlow> flow = DecodeFlow(request.substr(4));
    if (!flow.ok()) {
      reply("error: " + flow.error().ToString());
      return false;
    }
    flows_.push_back(*flow);
    Status attached = AttachFilter();
    reply(attached.ok() ? "ok" : "error: " + attached.error().ToString());
    return false;
  }
  reply("error: unknown request");
  return false;
}

int Keeper::Run() {
  auto deadline = std::chrono::steady_clock::now() + kKeepFor;
  for (;;) {
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
        deadline - std::chrono::steady_clock::now());
    // Giving up drops what is kept; the table keeps dropping until lifted.
    if (left.count() <= 0) return 0;
    pollfd fds[2] = {{capture_.get(), POLLIN, 0}, {control_.get(), POLLIN, 0}};
    int n = poll(fds, 2, static_cast<int>(left.count()));
    if (n < 0 && errno != EINTR) return 1;
    if (n <= 0) continue;
    if (fds[0].revents & POLLIN) Capture();
    if (fds[1].revents & POLLIN) {
      sys::UniqueFd conn(accept4(control_.get(), nullptr, nullptr, SOCK_CLOEXEC));
      if (conn.valid() && Serve(conn.get())) return 0;
    }
  }
}

void Ready(const std::string& message) {
  (void)!write(kReadyFd, message.data(), message.size());
  close(kReadyFd);
}

// argv: stasis-netkeeper NAME table FLOW...
//       stasis-netkeeper NAME link HOST_LINK BRIDGE MAC ADDRESS
Result<Keeper> ParseKeeper(int argc, char** argv) {
  if (argc < 3) return Error::Invalid("usage: stasis-netkeeper NAME table|link ...");
  std::string name = argv[1], mode = argv[2];
  std::vector<sys::TcpFlow> flows;
  std::optional<LinkKeeperSpec> link;
  if (mode == "table") {
    for (int i = 3; i < argc; i++) flows.push_back(STASIS_TRY(DecodeFlow(argv[i])));
  } else if (mode == "link" && argc == 7) {
    link.emplace();
    link->host_link = argv[3];
    link->bridge = argv[4];
    link->mac = STASIS_TRY(ParseMac(argv[5]));
    link->address = STASIS_TRY(ParseIp4(argv[6]));
  } else {
    return Error::Invalid("stasis-netkeeper: bad mode " + mode);
  }
  Keeper keeper;
  keeper.Prepare(std::move(name), std::move(flows), std::move(link));
  return keeper;
}

}  // namespace

int KeeperMain(int argc, char** argv) {
  signal(SIGPIPE, SIG_IGN);
  Result<Keeper> keeper = ParseKeeper(argc, argv);
  if (!keeper.ok()) {
    Ready("E" + keeper.error().ToString());
    return 2;
  }
  // Detached: the starter waits for this first process only, and the
  // keeper outlives the dump.
  pid_t child = fork();
  if (child < 0) {
    Ready("E" + Error::Errno("fork").ToString());
    return 1;
  }
  if (child > 0) _exit(0);
  setsid();
  prctl(PR_SET_NAME, "stasis-netlock");
  Status opened = keeper->Open();
  if (!opened.ok()) {
    Ready("E" + opened.error().ToString());
    return 1;
  }
  Ready("R");
  return keeper->Run();
}

namespace {

// The keeper's program: beside the running one (stasis, an agent, a test
// binary, in the build tree or installed), else where `cmake --install`
// put it (a stasis copied elsewhere on its own).
Result<std::string> KeeperPath() {
  std::string self = STASIS_TRY(sys::proc::ReadLink("/proc/self/exe"));
  std::string beside = self.substr(0, self.rfind('/') + 1) + kKeeperProgram;
  if (access(beside.c_str(), X_OK) == 0) return beside;
  if (access(STASIS_KEEPER_INSTALLED, X_OK) == 0) return std::string(STASIS_KEEPER_INSTALLED);
  return Error::NotFound(fmt::format(
      "the packet keeper {} is missing (looked beside {} and at {}; `cmake --install` puts it "
      "beside stasis)",
      kKeeperProgram, self, STASIS_KEEPER_INSTALLED));
}

Status Spawn(std::vector<std::string> args) {
  std::string program = STASIS_TRY(KeeperPath());
  // An earlier keeper of the same lock (a dump never restored here) gives
  // way to this one.
  (void)TellKeeper(args[1], "quit");
  int ends[2];
  if (pipe2(ends, O_CLOEXEC) < 0) return Error::Errno("pipe");
  // Above kReadyFd, so that dup2 onto it really dups (and drops CLOEXEC).
  sys::UniqueFd read_end(fcntl(ends[0], F_DUPFD_CLOEXEC, 10));
  sys::UniqueFd write_end(fcntl(ends[1], F_DUPFD_CLOEXEC, 10));
  close(ends[0]);
  close(ends[1]);
  std::vector<char*> argv;
  for (std::string& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0);
  posix_spawn_file_actions_addopen(&actions, 1, "/dev/null", O_WRONLY, 0);
  posix_spawn_file_actions_addopen(&actions, 2, "/dev/null", O_WRONLY, 0);
  posix_spawn_file_actions_adddup2(&actions, write_end.get(), kReadyFd);
  pid_t pid = 0;
  int err = posix_spawn(&pid, program.c_str(), &actions, nullptr, argv.data(), environ);
  posix_spawn_file_actions_destroy(&actions);
  if (err != 0) return Error::FromErrno("start the packet keeper", err);
  write_end.reset();
  int status = 0;
  while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  pollfd pfd = {read_end.get(), POLLIN, 0};
  char buf[1024];
  ssize_t n = poll(&pfd, 1, 5000) == 1 ? read(read_end.get(), buf, sizeof(buf)) : -1;
  if (n == 1 && buf[0] == 'R') return Ok();
  if (n > 1 && buf[0] == 'E') {
    return Error(ErrorCode::kFailed, "packet keeper: " + std::string(buf + 1, n - 1));
  }
  return Error(ErrorCode::kFailed, "the packet keeper did not start");
}

}  // namespace

Status StartKeeper(const std::string& table, const std::vector<sys::TcpFlow>& flows) {
  std::vector<std::string> args = {kKeeperProgram, table, "table"};
  for (const sys::TcpFlow& f : flows) args.push_back(EncodeFlow(f));
  return Spawn(std::move(args));
}

Status StartLinkKeeper(const LinkKeeperSpec& spec) {
  return Spawn({kKeeperProgram, LinkName(spec.host_link), "link", spec.host_link, spec.bridge,
                FormatMac(spec.mac), FormatIp4(spec.address)});
}

void QuitLinkKeeper(const std::string& host_link) { (void)TellKeeper(LinkName(host_link), "quit"); }

Result<std::string> ReleaseLinkKeeper(const std::string& host_link) {
  Result<std::optional<std::string>> kept = TellKeeper(LinkName(host_link), "release");
  if (!kept.ok()) return std::move(kept).error();
  if (!kept->has_value()) return std::string();
  return fmt::format("session link {}: {}", host_link, kept->value().substr(4));
}

Result<std::optional<std::string>> TellKeeper(const std::string& table,
                                              const std::string& request) {
  sys::UniqueFd s(socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0));
  if (!s.valid()) return Error::Errno("socket(AF_UNIX)");
  socklen_t len;
  sockaddr_un addr = ControlAddress(table, &len);
  if (connect(s.get(), reinterpret_cast<sockaddr*>(&addr), len) < 0) {
    if (errno == ECONNREFUSED || errno == ENOENT) return std::optional<std::string>();
    return Error::Errno("connect to the packet keeper of " + table);
  }
  timeval tv = {10, 0};
  setsockopt(s.get(), SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  if (send(s.get(), request.data(), request.size(), MSG_NOSIGNAL) < 0) {
    return Error::Errno("packet keeper of " + table + ": send");
  }
  char buf[4096];
  ssize_t n = recv(s.get(), buf, sizeof(buf), 0);
  if (n < 0) return Error::Errno("packet keeper of " + table + ": no answer");
  std::string answer(buf, static_cast<size_t>(n));
  if (answer.rfind("ok", 0) != 0) {
    return Error(ErrorCode::kFailed, "packet keeper of " + table + ": " + answer);
  }
  return std::optional<std::string>(answer);
}

}  // namespace stasis::net
