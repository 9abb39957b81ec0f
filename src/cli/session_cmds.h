// The session subcommands of `stasis`: run, ps and freeze.
#pragma once

#include <CLI/CLI.hpp>
#include <optional>
#include <string>
#include <vector>

namespace stasis::cli {

class SessionCommands {
 public:
  // Adds the subcommands to `app`.
  explicit SessionCommands(CLI::App& app);
  // After parsing: the exit code of the chosen subcommand if it is one of
  // these, nullopt otherwise.
  std::optional<int> Run() const;

 private:
  CLI::App* run_cmd_ = nullptr;
  CLI::App* ps_cmd_ = nullptr;
  CLI::App* freeze_cmd_ = nullptr;
  std::string state_dir_;
  std::string name_;
  bool detach_ = false;
  std::string net_ = "host";
  std::string address_;
  std::string bridge_;
  std::vector<std::string> command_;
  bool json_ = false;
  double seconds_ = 0;
};

}  // namespace stasis::cli
