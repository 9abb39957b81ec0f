// The image's SessionNet (process.proto) to and from net::NetConfig.
#pragma once

#include <vector>

#include "net/isolated_net.h"
#include "process.pb.h"
#include "sys/result.h"

namespace stasis::net {

void NetToProto(const NetConfig& net, image::SessionNet* out);
Result<NetConfig> NetFromProto(const image::SessionNet& in);
// The session's neighbour cache (entries CarriedNeighbour accepts).
void NeighboursToProto(const std::vector<sys::Neighbour>& in, image::SessionNet* out);
Result<std::vector<sys::Neighbour>> NeighboursFromProto(const image::SessionNet& in);

}  // namespace stasis::net
