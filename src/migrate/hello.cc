#include "migrate/hello.h"

#include <fmt/format.h>
#include <net/if.h>
#include <sys/utsname.h>

#include "kinds/vdso.h"
#include "migrate/protocol.h"
#include "net/isolated_net.h"

namespace stasis::migrate {

namespace {
uint64_t OwnXcr0() {
  uint32_t lo, hi;
  asm volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
  return (uint64_t{hi} << 32) | lo;
}
}  // namespace

Result<HostFacts> ThisHost() {
  HostFacts h;
  h.xfeatures = OwnXcr0();
  h.vdso = STASIS_TRY(kinds::vdso::HostSignature());
  struct utsname u;
  if (uname(&u) == 0) {
    h.kernel_release = u.release;
    h.hostname = u.nodename;
  }
  return h;
}

Status CheckHello(const Hello& hello, const HostFacts& here) {
  if (hello.version() != kProtocolVersion) {
    return Error::Unsupported(fmt::format(
        "the source speaks migration protocol {}, this destination {}: run the same Stasis "
        "version on both",
        hello.version(), kProtocolVersion));
  }
  uint64_t lacking = hello.xfeatures() & ~here.xfeatures;
  if (lacking != 0) {
    return Error::Unsupported(fmt::format(
        "the source's CPU uses xsave features {:#x} that this CPU lacks (source {:#x}, here "
        "{:#x}): the tree's registers could not be restored here",
        lacking, hello.xfeatures(), here.xfeatures));
  }
  if (hello.vdso() != here.vdso) {
    return Error::Unsupported(fmt::format(
        "the source's kernel ({}) has another vdso than this one ({}): source '{}', here '{}'",
        hello.kernel_release(), here.kernel_release, hello.vdso(), here.vdso));
  }
  return Ok();
}

Status CheckAddressFree(const Hello& hello) {
  if (hello.net_address() == 0) return Ok();
  if (if_nametoindex(hello.host_link().c_str()) != 0) {
    return Error::Invalid(
        fmt::format("the session's address {} is already in use on this node (its link {} exists)",
                    net::FormatIp4(hello.net_address()), hello.host_link()));
  }
  return Ok();
}

}  // namespace stasis::migrate
