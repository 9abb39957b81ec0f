// KernelFeatures: what this kernel offers the engine, probed once at start.
// `stasis check` prints it; dump and restore consult it through their
// Env (sys/env.h); nothing reads a global.
#pragma once

#include <initializer_list>
#include <string>
#include <string_view>
#include <vector>

#include "sys/result.h"

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
  // Whether the feature of this name (as `stasis check` lists it) is
  // present; false for a name never probed.
  bool Has(std::string_view name) const;
  // Ok when every named feature is present; else kUnsupported naming each
  // missing one and what it is for, so `operation` ("dump") stops before
  // touching anything.
  Status Require(std::initializer_list<std::string_view> names, std::string_view operation) const;
  // A set with exactly these present, for tests of the paths taken without
  // a feature.
  static KernelFeatures With(std::vector<Feature> features);

 private:
  std::vector<Feature> features_;
};

}  // namespace stasis::sys
