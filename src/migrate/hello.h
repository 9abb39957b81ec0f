// What a destination checks before the source freezes anything: that it
// speaks the same protocol, that its CPU has every xsave feature the
// source's (the tree's registers use them), that its kernel's vdso is the
// same code at the same layout (glibc keeps pointers into it), and that the
// session's address is free here. The restore checks the image again;
// this makes the refusal come while the tree still runs on the source.
#pragma once

#include "migrate.pb.h"
#include "sys/result.h"

namespace stasis::migrate {

struct HostFacts {
  uint64_t xfeatures = 0;
  std::string vdso;
  std::string kernel_release;
  std::string hostname;
};
Result<HostFacts> ThisHost();

// Pure: what the destination (`here`) says of the source's Hello, but the
// address check (CheckAddressFree).
Status CheckHello(const Hello& hello, const HostFacts& here);
// The session's host link must not exist in this network namespace.
Status CheckAddressFree(const Hello& hello);

}  // namespace stasis::migrate
