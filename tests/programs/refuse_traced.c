/* A process traced by someone else (here its own child, which seized it)
 * must be refused at dump, naming the tracer, and left running untouched.
 */
// Cases (the format is in CMakeLists.txt):
// Traced by someone else (its own child): refused, naming the tracer.
// stasis-case: program.refuse_traced ${PROGRAM} --expect-dump-failure [=[(?i)traced by pid]=]
#include "common.h"

#include <sys/ptrace.h>
#include <sys/wait.h>

int main(void) {
  install_trigger(0);
  pid_t parent = getpid();
  pid_t tracer = fork();
  if (tracer == 0) {
    SETUP(ptrace(PTRACE_SEIZE, parent, NULL, NULL) == 0, "PTRACE_SEIZE");
    /* A tracer that passes every signal on, as a debugger would. */
    for (;;) {
      int st;
      if (waitpid(parent, &st, __WALL) < 0) _exit(0);
      if (WIFSTOPPED(st)) ptrace(PTRACE_CONT, parent, NULL, (void *)(long)(st >> 16 ? 0 : WSTOPSIG(st)));
    }
  }
  usleep(200000);
  READY();
  wait_for_trigger();
  kill(tracer, SIGKILL);
  waitpid(tracer, NULL, 0);
  return FINISH();
}
