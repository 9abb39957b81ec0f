#include "net/netlock.h"

#include <arpa/inet.h>
#include <fmt/format.h>
#include <netinet/in.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>

#include "net/nft.h"
#include "net/packet_keeper.h"

namespace stasis::net {
namespace {

// The address as nft writes it.
Result<std::pair<std::string, int>> ParseEndpoint(const std::string& raw, bool* v4) {
  sys::FlowEnd e = STASIS_TRY(sys::ParseFlowEnd(raw));
  char host[INET6_ADDRSTRLEN];
  inet_ntop(e.v4 ? AF_INET : AF_INET6, e.addr.data(), host, sizeof(host));
  *v4 = e.v4;
  return std::make_pair(std::string(host), static_cast<int>(e.port));
}

// A set element: local address . local port . peer address . peer port.
struct Element {
  bool v4;
  std::string text;
};

Result<Element> FlowElement(const sys::TcpFlow& flow) {
  bool local_v4, peer_v4;
  auto [local, local_port] = STASIS_TRY(ParseEndpoint(flow.local, &local_v4));
  auto [peer, peer_port] = STASIS_TRY(ParseEndpoint(flow.peer, &peer_v4));
  if (local_v4 != peer_v4) return Error::Invalid("network lock: flow between IPv4 and IPv6");
  return Element{local_v4, fmt::format("{} . {} . {} . {}", local, local_port, peer, peer_port)};
}

std::string SetDecl(const char* name, const char* addr_type, const std::vector<std::string>& els) {
  std::string decl = fmt::format("  set {} {{ type {} . inet_service . {} . inet_service;", name,
                                 addr_type, addr_type);
  if (!els.empty()) decl += fmt::format(" elements = {{ {} }};", fmt::join(els, ", "));
  return decl + " }\n";
}

}  // namespace

Result<std::string> LockRuleset(const std::string& table, const std::vector<sys::TcpFlow>& flows) {
  std::vector<std::string> v4, v6;
  for (const sys::TcpFlow& f : flows) {
    Element e = STASIS_TRY(FlowElement(f));
    (e.v4 ? v4 : v6).push_back(e.text);
  }
  // Priority raw: before conntrack and any other filter can answer.
  return fmt::format(
      "table inet {} {{\n{}{}"
      "  chain in {{ type filter hook input priority raw; policy accept;\n"
      "    ip daddr . tcp dport . ip saddr . tcp sport @flows4 drop;\n"
      "    ip6 daddr . tcp dport . ip6 saddr . tcp sport @flows6 drop; }}\n"
      "  chain out {{ type filter hook output priority raw; policy accept;\n"
      "    ip saddr . tcp sport . ip daddr . tcp dport @flows4 drop;\n"
      "    ip6 saddr . tcp sport . ip6 daddr . tcp dport @flows6 drop; }}\n"
      "}}\n",
      table, SetDecl("flows4", "ipv4_addr", v4), SetDecl("flows6", "ipv6_addr", v6));
}

Result<std::string> AddFlowCommand(const std::string& table, const sys::TcpFlow& flow) {
  Element e = STASIS_TRY(FlowElement(flow));
  return fmt::format("add element inet {} {} {{ {} }}\n", table, e.v4 ? "flows4" : "flows6",
                     e.text);
}

std::unique_ptr<FlowLock> FlowLock::CoveredByLink(const std::vector<sys::TcpFlow>& flows) {
  return std::unique_ptr<FlowLock>(new FlowLock(kLinkLock, flows));
}

Result<std::unique_ptr<FlowLock>> FlowLock::Take(const std::vector<sys::TcpFlow>& flows,
                                                 Logger& log) {
  // Unique among the locks of every operation of this process (an agent
  // runs several) without a counter shared between them: the taking
  // thread and the time.
  timespec now = {};
  clock_gettime(CLOCK_MONOTONIC, &now);
  std::string table =
      fmt::format("stasis_lock_{}_{}_{}{:09}", getpid(), gettid(), now.tv_sec, now.tv_nsec);
  std::string rules = STASIS_TRY(LockRuleset(table, flows));
  // The keeper captures before the table drops, so nothing is dropped
  // unseen. Without one the lock still holds; the peers resend later.
  Status keeper = StartKeeper(table, flows);
  if (!keeper.ok()) {
    log.Warn(
        fmt::format("network lock without a packet keeper ({}): peers will resend what they send "
                    "meanwhile on their own timers",
                    keeper.error().ToString()));
  }
  Status locked = RunNft({"-f", "-"}, rules);
  if (!locked.ok()) {
    if (keeper.ok()) (void)TellKeeper(table, "quit");
    return std::move(locked).error().Context("network lock");
  }
  return std::unique_ptr<FlowLock>(new FlowLock(table, flows));
}

bool FlowLock::Covers(const sys::TcpFlow& flow) const {
  return std::find(flows_.begin(), flows_.end(), flow) != flows_.end();
}

Status FlowLock::Add(const sys::TcpFlow& flow) {
  if (table_ != kLinkLock) {
    std::string command = STASIS_TRY(AddFlowCommand(table_, flow));
    (void)TellKeeper(table_, "add " + EncodeFlow(flow));
    STASIS_TRY_CTX(RunNft({"-f", "-"}, command), "network lock");
  }
  flows_.push_back(flow);
  return Ok();
}

Result<std::string> FlowLock::Release() {
  if (released_) return std::string();
  released_ = true;
  return ReleaseFlowLock(table_);
}

Result<std::string> ReleaseFlowLock(const std::string& table) {
  if (table.empty() || table == kLinkLock) return std::string();
  Result<std::optional<std::string>> kept = TellKeeper(table, "release");
  if (kept.ok() && kept->has_value()) {
    return fmt::format("network lock {} lifted: {}", table, kept->value().substr(4));
  }
  std::string why = kept.ok() ? "its packet keeper is gone" : kept.error().ToString();
  STASIS_TRY_CTX(DeleteNftTable(table), "lift the network lock " + table);
  return fmt::format("network lock {} lifted ({}: the peers resend on their own)", table, why);
}

}  // namespace stasis::net
