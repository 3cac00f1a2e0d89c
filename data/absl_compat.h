// Debian's Abseil is built with its own absl::string_view (ABSL_OPTION_USE_STD_STRING_VIEW 0),
// which does not convert from std::string_view: av() bridges the two at absl call sites.
#pragma once

#include <string_view>

#include "absl/strings/string_view.h"

namespace kiln::data {

inline absl::string_view av(std::string_view s) { return absl::string_view(s.data(), s.size()); }

}  // namespace kiln::data
