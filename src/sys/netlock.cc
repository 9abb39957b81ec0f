#include "sys/netlock.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <fmt/format.h>
#include <netinet/in.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <vector>

#include "sys/unique_fd.h"

namespace stasis::sys {
namespace {

struct Endpoint {
  bool v4;
  std::string addr;
  int port;
};

// v4-mapped IPv6 addresses travel as IPv4 packets: match them as such.
Result<Endpoint> ParseEndpoint(const std::string& raw) {
  char host[INET6_ADDRSTRLEN];
  const sockaddr* sa = reinterpret_cast<const sockaddr*>(raw.data());
  if (raw.size() >= sizeof(sockaddr_in) && sa->sa_family == AF_INET) {
    auto* in = reinterpret_cast<const sockaddr_in*>(sa);
    inet_ntop(AF_INET, &in->sin_addr, host, sizeof(host));
    return Endpoint{true, host, ntohs(in->sin_port)};
  }
  if (raw.size() >= sizeof(sockaddr_in6) && sa->sa_family == AF_INET6) {
    auto* in6 = reinterpret_cast<const sockaddr_in6*>(sa);
    if (IN6_IS_ADDR_V4MAPPED(&in6->sin6_addr)) {
      inet_ntop(AF_INET, &in6->sin6_addr.s6_addr[12], host, sizeof(host));
      return Endpoint{true, host, ntohs(in6->sin6_port)};
    }
    inet_ntop(AF_INET6, &in6->sin6_addr, host, sizeof(host));
    return Endpoint{false, host, ntohs(in6->sin6_port)};
  }
  return Error::Invalid("network lock: not an IPv4 or IPv6 address");
}

std::string Match(const Endpoint& from, const Endpoint& to) {
  const char* ip = from.v4 ? "ip" : "ip6";
  return fmt::format("{} saddr {} {} daddr {} tcp sport {} tcp dport {} drop", ip, from.addr, ip,
                     to.addr, from.port, to.port);
}

Status RunNft(const std::vector<std::string>& args, const std::string& input) {
  int in[2];
  if (pipe2(in, O_CLOEXEC) < 0) return Error::Errno("pipe for nft");
  UniqueFd read_end(in[0]), write_end(in[1]);
  pid_t pid = fork();
  if (pid < 0) return Error::Errno("fork nft");
  if (pid == 0) {
    dup2(read_end.get(), 0);
    std::vector<char*> argv;
    argv.push_back(const_cast<char*>("nft"));
    for (const std::string& a : args) argv.push_back(const_cast<char*>(a.c_str()));
    argv.push_back(nullptr);
    execvp("nft", argv.data());
    _exit(127);
  }
  read_end.reset();
  size_t done = 0;
  while (done < input.size()) {
    ssize_t n = write(write_end.get(), input.data() + done, input.size() - done);
    if (n <= 0) break;
    done += static_cast<size_t>(n);
  }
  write_end.reset();
  int status = 0;
  while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  if (WIFEXITED(status) && WEXITSTATUS(status) == 127) {
    return Error::NotFound("the network lock needs the `nft` command (Debian package nftables)");
  }
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
    return Error(ErrorCode::kFailed,
                 fmt::format("nft {} failed (status {:#x})", args.empty() ? "" : args[0], status));
  }
  return Ok();
}

}  // namespace

Result<std::string> LockRuleset(const std::string& table, const std::string& local,
                                const std::string& peer) {
  Endpoint l = STASIS_TRY(ParseEndpoint(local));
  Endpoint p = STASIS_TRY(ParseEndpoint(peer));
  // Priority raw: before conntrack and any other filter can answer.
  return fmt::format(
      "table inet {} {{\n"
      "  chain in {{ type filter hook input priority raw; policy accept; {}; }}\n"
      "  chain out {{ type filter hook output priority raw; policy accept; {}; }}\n"
      "}}\n",
      table, Match(p, l), Match(l, p));
}

namespace {
std::atomic<bool> g_covered_by_link{false};
}  // namespace

void SetFlowLocksCoveredByLink(bool covered) { g_covered_by_link = covered; }

Result<std::string> LockTcpFlow(const std::string& local, const std::string& peer) {
  if (g_covered_by_link) return std::string(kLinkLock);
  static std::atomic<int> seq{0};
  std::string table = fmt::format("stasis_lock_{}_{}", getpid(), seq++);
  std::string rules = STASIS_TRY(LockRuleset(table, local, peer));
  STASIS_TRY_CTX(RunNft({"-f", "-"}, rules), "network lock");
  return table;
}

Status UnlockTcpFlow(const std::string& table) {
  if (table.empty() || table == kLinkLock) return Ok();
  return RunNft({"delete", "table", "inet", table}, "");
}

}  // namespace stasis::sys
