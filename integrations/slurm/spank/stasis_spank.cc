// stasis.so: the Slurm SPANK plugin behind `#SBATCH --stasis[=every:30m]`.
//
// A job submitted with --stasis has its batch script run under stasis-job
// (integrations/slurm/stasis-job) without a line of the script changed: the
// first run starts the script as a stasis session, the checkpoint signal
// (--signal=B:USR1@T, preemption, `scancel --signal=USR2 --batch`) dumps it,
// the requeued run restores it. See integrations/slurm/README.md.
//
// How the task comes to run under stasis-job. SPANK in Slurm 22.05 has no
// spank_prepend_task_argv (added after 22.05, in 23.x), and S_JOB_ARGV's array
// may not be grown. slurm_spank_task_init runs in the forked task, just before
// slurmstepd's execve(task->argv[0], task->argv, job->env): the plugin puts
// the absolute path of stasis-job in argv[0] (execve takes its path from
// there) and the script's own path in STASIS_SPANK_ARGV0 of the task's
// environment; stasis-job then runs STASIS_SPANK_ARGV0 with argv[1..] (the
// script's arguments) and removes the STASIS_SPANK_* variables before it
// starts the script. The process slurmstepd started is stasis-job itself, so
// Slurm's batch signals (B:USR1, `scancel --batch`) reach it, as with `exec
// stasis-job` in a script.
//
// Only the batch step is wrapped: a step that srun starts runs in another
// slurmstepd, outside the batch session, and would need a session (and a
// checkpoint) of its own.
//
// Jobs of ordinary users are refused, at submission (sbatch) and again in
// slurmstepd: `stasis` needs root (clone3 with new PID and mount namespaces),
// and a root restore takes the processes' credentials from the image and
// reopens their files by path as root, which an image or a path the user
// controls turns into root's. See "Jobs of ordinary users" in the README.
//
// plugstack.conf:
//   required /usr/local/lib/slurm/stasis.so [stasis_job=PATH] [stasis=PATH]
// stasis_job: the stasis-job to run (default: the one installed next to
// stasis); stasis: passed to it as $STASIS (default: stasis-job's own lookup).
//
// The state below is global because SPANK's callbacks carry no user data: one
// plugin instance per process (sbatch, slurmstepd), set by init and the option
// callback, read by the later callbacks of the same process.

#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <optional>
#include <string>
#include <string_view>

// spank.h declares the callbacks (slurm_spank_init...) outside its extern "C"
// block: included in one, they have the C names slurmstepd looks up.
extern "C" {
#include <slurm/slurm.h>
#include <slurm/spank.h>
}

extern "C" {
extern const char plugin_name[] = "stasis";
extern const char plugin_type[] = "spank";
extern const unsigned int plugin_version = SLURM_VERSION_NUMBER;
extern const unsigned int spank_plugin_version = 1;
}

namespace {

#ifndef STASIS_JOB_DEFAULT
#define STASIS_JOB_DEFAULT "/usr/local/bin/stasis-job"
#endif

struct PluginState {
  bool requested = false;  // --stasis was given
  std::string every;       // its every:INTERVAL, "" for none
  std::string stasis_job = STASIS_JOB_DEFAULT;
  std::string stasis;  // plugstack.conf's stasis=, "" for stasis-job's lookup
};

PluginState g_state;

// "30m", "2h", "45s", "90", "1.5h": what stasis-job's --every takes.
bool IsInterval(std::string_view s) {
  if (!s.empty() && std::strchr("smhd", s.back()) != nullptr) s.remove_suffix(1);
  bool digits = false, dot = false;
  for (char c : s) {
    if (c >= '0' && c <= '9') {
      digits = true;
    } else if (c == '.' && digits && !dot) {
      dot = true;
    } else {
      return false;
    }
  }
  return digits && s.back() != '.';
}

// The option's argument: none, or "every:INTERVAL". Returns the interval
// ("" for none), or nothing when the argument is not understood.
//
// "(null)" is none too: sbatch 22.05 exports an option given without its
// optional argument to the job as SLURM_SPANK__SLURM_SPANK_OPTION_stasis_stasis
// =(null) (a NULL printed with %s), and every srun in the job script reads
// the option back from there (measured: without this, srun fails with
// "Invalid argument ((null)) for environment variable").
std::optional<std::string> ParseOptionArg(const char* arg) {
  if (arg == nullptr || *arg == '\0' || std::string_view(arg) == "(null)") {
    return std::string();
  }
  std::string_view a(arg);
  constexpr std::string_view kEvery = "every:";
  if (a.substr(0, kEvery.size()) != kEvery) return std::nullopt;
  a.remove_prefix(kEvery.size());
  if (!IsInterval(a)) return std::nullopt;
  return std::string(a);
}

int OnStasisOption(int /*val*/, const char* optarg, int /*remote*/) {
  std::optional<std::string> every = ParseOptionArg(optarg);
  if (!every) {
    slurm_error("stasis: --stasis=%s: not understood (--stasis or --stasis=every:30m)",
                optarg);
    return -1;
  }
  g_state.requested = true;
  g_state.every = *every;
  return 0;
}

struct spank_option g_option = {
    const_cast<char*>("stasis"),
    const_cast<char*>("every:INTERVAL"),
    const_cast<char*>("run the batch script under stasis-job: checkpointed on the job's "
                      "--signal, at preemption and on `scancel --signal=USR2 --batch`, "
                      "restored when requeued; every:30m also checkpoints periodically"),
    2,  // the argument is optional
    0,
    OnStasisOption,
};

constexpr const char kUserRefused[] =
    "stasis: --stasis: jobs of ordinary users are not supported yet (stasis needs root; "
    "see integrations/slurm/README.md, \"Jobs of ordinary users\")";

}  // namespace

extern "C" {

int slurm_spank_init(spank_t sp, int ac, char** av) {
  for (int i = 0; i < ac; ++i) {
    std::string_view a(av[i]);
    if (a.substr(0, 11) == "stasis_job=") {
      g_state.stasis_job = std::string(a.substr(11));
    } else if (a.substr(0, 7) == "stasis=") {
      g_state.stasis = std::string(a.substr(7));
    } else {
      slurm_error("stasis: unknown plugstack.conf argument %s (stasis_job=PATH, stasis=PATH)",
                  av[i]);
      return -1;
    }
  }
  // Registered in every context (sbatch, srun, slurmstepd), as SPANK asks.
  if (spank_option_register(sp, &g_option) != ESPANK_SUCCESS) {
    slurm_error("stasis: cannot register --stasis");
    return -1;
  }
  return 0;
}

// sbatch/salloc/srun: refuse a job that slurmstepd would refuse, at once.
int slurm_spank_init_post_opt(spank_t sp, int /*ac*/, char** /*av*/) {
  if (!g_state.requested || spank_remote(sp) == 1) return 0;
  if (getuid() != 0) {
    slurm_error("%s", kUserRefused);
    return -1;
  }
  return 0;
}

// In the forked task, as the job's user, just before its execve.
int slurm_spank_task_init(spank_t sp, int /*ac*/, char** /*av*/) {
  if (!g_state.requested || spank_remote(sp) != 1) return 0;
  uint32_t step = 0;
  if (spank_get_item(sp, S_JOB_STEPID, &step) != ESPANK_SUCCESS) {
    slurm_error("stasis: cannot read the step id");
    return -1;
  }
  if (step != SLURM_BATCH_SCRIPT) return 0;
  uid_t uid = 0;
  if (spank_get_item(sp, S_JOB_UID, &uid) != ESPANK_SUCCESS || uid != 0) {
    // In the task slurm_error also writes to the job's error file.
    slurm_error("%s", kUserRefused);
    return -1;
  }
  int argc = 0;
  char** argv = nullptr;
  if (spank_get_item(sp, S_JOB_ARGV, &argc, &argv) != ESPANK_SUCCESS || argc < 1 ||
      argv[0] == nullptr) {
    slurm_error("stasis: the batch step has no command line");
    return -1;
  }
  if (access(g_state.stasis_job.c_str(), X_OK) != 0) {
    slurm_error("stasis: --stasis: cannot run %s: %s", g_state.stasis_job.c_str(),
                std::strerror(errno));
    return -1;
  }
  if (spank_setenv(sp, "STASIS_SPANK_ARGV0", argv[0], 1) != ESPANK_SUCCESS ||
      spank_setenv(sp, "STASIS_SPANK_EVERY", g_state.every.c_str(), 1) != ESPANK_SUCCESS ||
      (!g_state.stasis.empty() &&
       spank_setenv(sp, "STASIS", g_state.stasis.c_str(), 1) != ESPANK_SUCCESS)) {
    slurm_error("stasis: cannot set the task's environment");
    return -1;
  }
  // This process execs argv[0] next and nothing else reads the old pointer:
  // the copy is never freed, deliberately.
  char* path = strdup(g_state.stasis_job.c_str());
  if (path == nullptr) {
    slurm_error("stasis: strdup: out of memory");
    return -1;
  }
  argv[0] = path;
  return 0;
}

}  // extern "C"
