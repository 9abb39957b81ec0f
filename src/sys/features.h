// KernelFeatures: what this kernel offers the engine, probed once at start.
// `stasis check` prints it; nothing reads a global.
#pragma once

#include <string>
#include <vector>

namespace stasis::sys {

struct Feature {
  std::string name;
  bool present;
  bool required;       // the engine cannot dump or restore without it
  std::string detail;  // how it was probed, or why it is missing
};

class KernelFeatures {
 public:
  static KernelFeatures Probe();
  const std::vector<Feature>& all() const { return features_; }
  bool AllRequiredPresent() const;

 private:
  std::vector<Feature> features_;
};

}  // namespace stasis::sys
