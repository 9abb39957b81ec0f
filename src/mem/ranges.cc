#include "mem/ranges.h"

#include <algorithm>

namespace stasis::mem {

void RangeSet::Add(uint64_t start, uint64_t end) {
  if (start >= end) return;
  auto it = ranges_.upper_bound(start);
  if (it != ranges_.begin() && std::prev(it)->second >= start) --it;
  while (it != ranges_.end() && it->first <= end) {
    start = std::min(start, it->first);
    end = std::max(end, it->second);
    it = ranges_.erase(it);
  }
  ranges_[start] = end;
}

void RangeSet::Remove(uint64_t start, uint64_t end) {
  if (start >= end) return;
  auto it = ranges_.upper_bound(start);
  if (it != ranges_.begin() && std::prev(it)->second > start) --it;
  while (it != ranges_.end() && it->first < end) {
    uint64_t s = it->first, e = it->second;
    it = ranges_.erase(it);
    if (s < start) ranges_[s] = start;
    if (e > end) {
      ranges_[end] = e;
      break;
    }
  }
}

bool RangeSet::Covers(uint64_t start, uint64_t end) const {
  if (start >= end) return true;
  auto it = ranges_.upper_bound(start);
  if (it == ranges_.begin()) return false;
  --it;
  return it->first <= start && it->second >= end;
}

std::vector<Range> RangeSet::Within(uint64_t start, uint64_t end) const {
  std::vector<Range> out;
  auto it = ranges_.upper_bound(start);
  if (it != ranges_.begin() && std::prev(it)->second > start) --it;
  for (; it != ranges_.end() && it->first < end; ++it) {
    out.push_back({std::max(start, it->first), std::min(end, it->second)});
  }
  return out;
}

std::vector<Range> RangeSet::Gaps(uint64_t start, uint64_t end) const {
  std::vector<Range> out;
  uint64_t at = start;
  for (const Range& r : Within(start, end)) {
    if (r.start > at) out.push_back({at, r.start});
    at = r.end;
  }
  if (at < end) out.push_back({at, end});
  return out;
}

std::vector<Range> RangeSet::All() const {
  std::vector<Range> out;
  for (const auto& [s, e] : ranges_) out.push_back({s, e});
  return out;
}

uint64_t RangeSet::bytes() const {
  uint64_t n = 0;
  for (const auto& [s, e] : ranges_) n += e - s;
  return n;
}

}  // namespace stasis::mem
