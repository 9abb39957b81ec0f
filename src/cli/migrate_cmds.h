// `stasis migrate` and `stasis receive`: live migration between two
// machines over one TCP connection (src/migrate/).
#pragma once

#include <CLI/CLI.hpp>
#include <optional>
#include <string>

namespace stasis::cli {

class MigrateCommands {
 public:
  explicit MigrateCommands(CLI::App& app);
  // After parsing: the exit code if one of these ran, else nullopt.
  std::optional<int> Run() const;

 private:
  int RunMigrate() const;
  int RunReceive() const;

  CLI::App* migrate_cmd_ = nullptr;
  CLI::App* receive_cmd_ = nullptr;
  // Both.
  std::string token_file_, state_dir_;
  bool insecure_ = false, json_ = false, progress_ = false;
  int recovery_s_ = 300;
  // migrate
  pid_t pid_ = 0;
  std::string session_, to_, postcopy_ = "auto";
  double downtime_ms_ = 300, bandwidth_mbps_ = 0;
  // receive
  std::string listen_;
  bool once_ = false;
};

}  // namespace stasis::cli
