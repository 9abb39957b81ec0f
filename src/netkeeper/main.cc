// stasis-netkeeper: the packet keeper of a network lock (net/packet_keeper.h),
// a program of its own so that a dump started from any program (the CLI, an
// agent, a test) can leave it behind to wait for the restore.
#include "net/packet_keeper.h"

int main(int argc, char** argv) { return stasis::net::KeeperMain(argc, argv); }
