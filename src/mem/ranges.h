// Sets of address ranges: what a page store has received, what a source
// declared it will send.
#pragma once

#include <cstdint>
#include <map>
#include <vector>

namespace stasis::mem {

struct Range {
  uint64_t start;
  uint64_t end;  // exclusive
  bool operator==(const Range&) const = default;
};

// Disjoint half-open ranges; adjacent ones are merged.
class RangeSet {
 public:
  void Add(uint64_t start, uint64_t end);
  void Remove(uint64_t start, uint64_t end);
  bool Covers(uint64_t start, uint64_t end) const;
  // The parts of [start, end) in the set, in order.
  std::vector<Range> Within(uint64_t start, uint64_t end) const;
  // The parts of [start, end) not in the set, in order.
  std::vector<Range> Gaps(uint64_t start, uint64_t end) const;
  std::vector<Range> All() const;
  bool empty() const { return ranges_.empty(); }
  uint64_t bytes() const;

 private:
  std::map<uint64_t, uint64_t> ranges_;  // start -> end
};

}  // namespace stasis::mem
