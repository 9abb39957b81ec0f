/* A task in a network namespace of its own (as under `ip netns exec`) would
 * come back in the host's network, its sockets there: the dump must refuse
 * it, naming the pid and the namespace, and leave it running.
 */
// Cases (the format is in CMakeLists.txt):
// In a network namespace of its own: refused, naming pid and namespace.
// stasis-case: program.refuse_netns ${PROGRAM} --expect-dump-failure [=[(?is)^(?=.*\bpid {pid}\b)(?=.*another net namespace)]=]
#include "common.h"

#include <sched.h>

int main(void) {
  install_trigger(0);
  SETUP(unshare(CLONE_NEWNET) == 0, "unshare(CLONE_NEWNET)");
  char before[64] = {0};
  SETUP(readlink("/proc/self/ns/net", before, sizeof before - 1) > 0, "readlink");
  READY();
  wait_for_trigger();
  char after[64] = {0};
  CHECK(readlink("/proc/self/ns/net", after, sizeof after - 1) > 0 && strcmp(before, after) == 0,
        "network namespace changed: %s -> %s", before, after);
  return FINISH();
}
