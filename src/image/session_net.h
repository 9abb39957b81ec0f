// The image's SessionNet (process.proto) to and from sys::NetConfig.
#pragma once

#include <vector>

#include "process.pb.h"
#include "sys/isolated_net.h"
#include "sys/result.h"

namespace stasis::image {

void NetToProto(const sys::NetConfig& net, SessionNet* out);
Result<sys::NetConfig> NetFromProto(const SessionNet& in);
// The session's neighbour cache (entries sys::CarriedNeighbour accepts).
void NeighboursToProto(const std::vector<sys::Neighbour>& in, SessionNet* out);
Result<std::vector<sys::Neighbour>> NeighboursFromProto(const SessionNet& in);

}  // namespace stasis::image
