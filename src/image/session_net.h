// The image's SessionNet (process.proto) to and from sys::NetConfig.
#pragma once

#include "process.pb.h"
#include "sys/isolated_net.h"
#include "sys/result.h"

namespace stasis::image {

void NetToProto(const sys::NetConfig& net, SessionNet* out);
Result<sys::NetConfig> NetFromProto(const SessionNet& in);

}  // namespace stasis::image
