// The `nft` command (Debian's nftables), run with a ruleset on its stdin.
#pragma once

#include <string>
#include <vector>

#include "sys/result.h"

namespace stasis::net {

// Runs `nft ARGS...` with `input` on stdin; kNotFound when there is no nft.
Status RunNft(const std::vector<std::string>& args, const std::string& input);
// Deletes the inet table `table`; one that is gone already is fine.
Status DeleteNftTable(const std::string& table);

}  // namespace stasis::net
