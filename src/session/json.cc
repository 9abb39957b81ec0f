#include "session/json.h"

#include <fmt/format.h>

#include <ctime>
#include <nlohmann/json.hpp>
#include <tuple>

#include "net/isolated_net.h"

namespace stasis::session {
namespace {

using nlohmann::json;

Error Bad(const std::string& path, const std::string& what) {
  return Error::Corrupt(fmt::format("session file {}: {}", path, what));
}

template <typename T>
Status GetInt(const json& j, const char* key, const std::string& path, T* out) {
  auto it = j.find(key);
  if (it == j.end() || !it->is_number_integer()) {
    return Bad(path, fmt::format("'{}' is missing or not an integer", key));
  }
  *out = it->get<T>();
  return Ok();
}

Status GetString(const json& j, const char* key, const std::string& path, std::string* out) {
  auto it = j.find(key);
  if (it == j.end()) return Ok();  // optional: keeps the default
  if (!it->is_string()) return Bad(path, fmt::format("'{}' is not a string", key));
  *out = it->get<std::string>();
  return Ok();
}

}  // namespace

std::string FormatUtc(int64_t unix_seconds) {
  time_t t = static_cast<time_t>(unix_seconds);
  struct tm tm = {};
  gmtime_r(&t, &tm);
  char buf[32];
  strftime(buf, sizeof(buf), "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buf;
}

static Result<net::NetConfig> NetFromJson(const json& j, const std::string& path) {
  if (!j.is_object()) return Bad(path, "'net' is not an object");
  std::string address, gateway, mac, host_mac;
  net::NetConfig n;
  STASIS_TRY(GetString(j, "address", path, &address));
  STASIS_TRY(GetString(j, "gateway", path, &gateway));
  STASIS_TRY(GetString(j, "bridge", path, &n.bridge));
  STASIS_TRY(GetString(j, "mac", path, &mac));
  STASIS_TRY(GetString(j, "host_mac", path, &host_mac));
  STASIS_TRY(GetString(j, "host_link", path, &n.host_link));
  std::tie(n.address, n.prefix) = STASIS_TRY_CTX(net::ParseCidr(address), path);
  if (!gateway.empty()) n.gateway = STASIS_TRY_CTX(net::ParseIp4(gateway), path);
  n.mac = STASIS_TRY_CTX(net::ParseMac(mac), path);
  n.host_mac = STASIS_TRY_CTX(net::ParseMac(host_mac), path);
  return n;
}

std::string SessionToJson(const SessionInfo& info) {
  json j = {
      {"version", kMetadataVersion},
      {"name", info.name},
      {"state", "running"},
      {"init_pid", info.init_pid},
      {"init_start_time", info.init_start_time},
      {"root_pid", info.root_pid},
      {"cgroup", info.cgroup},
      {"command", info.command},
      {"created", FormatUtc(info.created_unix)},
      {"created_unix", info.created_unix},
      {"origin", info.origin},
      {"image", info.image},
  };
  if (info.net) {
    const net::NetConfig& n = *info.net;
    j["net"] = {{"address", net::FormatCidr(n.address, n.prefix)},
                {"gateway", n.gateway == 0 ? "" : net::FormatIp4(n.gateway)},
                {"bridge", n.bridge},
                {"mac", net::FormatMac(n.mac)},
                {"host_mac", net::FormatMac(n.host_mac)},
                {"host_link", n.host_link}};
  }
  // Replace, not throw, on invalid UTF-8 in a command line.
  return j.dump(2, ' ', false, json::error_handler_t::replace) + "\n";
}

Result<SessionInfo> SessionFromJson(std::string_view text, const std::string& path) {
  json j = json::parse(text.begin(), text.end(), nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object()) return Bad(path, "not a JSON object");
  int version = 0;
  STASIS_TRY(GetInt(j, "version", path, &version));
  if (version != kMetadataVersion) {
    return Bad(path, fmt::format("version {} (this stasis reads {})", version, kMetadataVersion));
  }
  SessionInfo info;
  STASIS_TRY(GetString(j, "name", path, &info.name));
  if (info.name.empty()) return Bad(path, "no 'name'");
  STASIS_TRY(GetInt(j, "init_pid", path, &info.init_pid));
  STASIS_TRY(GetInt(j, "root_pid", path, &info.root_pid));
  if (j.contains("init_start_time")) {
    STASIS_TRY(GetInt(j, "init_start_time", path, &info.init_start_time));
  }
  if (j.contains("created_unix")) STASIS_TRY(GetInt(j, "created_unix", path, &info.created_unix));
  STASIS_TRY(GetString(j, "cgroup", path, &info.cgroup));
  STASIS_TRY(GetString(j, "origin", path, &info.origin));
  STASIS_TRY(GetString(j, "image", path, &info.image));
  if (j.contains("net")) info.net = STASIS_TRY(NetFromJson(j["net"], path));
  auto command = j.find("command");
  if (command != j.end()) {
    if (!command->is_array()) return Bad(path, "'command' is not an array");
    for (const json& arg : *command) {
      if (!arg.is_string()) return Bad(path, "'command' holds a non-string");
      info.command.push_back(arg.get<std::string>());
    }
  }
  return info;
}

}  // namespace stasis::session
