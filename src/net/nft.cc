#include "net/nft.h"

#include <fcntl.h>
#include <fmt/format.h>
#include <sys/wait.h>
#include <unistd.h>

#include "sys/unique_fd.h"

namespace stasis::net {

Status RunNft(const std::vector<std::string>& args, const std::string& input) {
  int in[2];
  if (pipe2(in, O_CLOEXEC) < 0) return Error::Errno("pipe for nft");
  sys::UniqueFd read_end(in[0]), write_end(in[1]);
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

Status DeleteNftTable(const std::string& table) {
  // Declaring it first makes the deletion of a table already gone a no-op.
  return RunNft({"-f", "-"}, fmt::format("table inet {0} {{}}\ndelete table inet {0}\n", table));
}

}  // namespace stasis::net
