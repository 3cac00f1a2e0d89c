// GPT-2 pre-tokenisation (see pretokenize.h): character classes from generated range tables and a
// hand-written matcher equivalent to the regex, ASCII on a fast path.
#include "data/pretokenize.h"

#include <algorithm>
#include <array>
#include <vector>

namespace kiln::data {
namespace {

struct Range {
  uint32_t lo, hi;
  CharClass cls;
};

constexpr Range kRanges[] = {
#include "data/unicode_tables.inc"
};

CharClass lookup_ranges(uint32_t cp) {
  const Range* end = kRanges + sizeof(kRanges) / sizeof(kRanges[0]);
  const Range* r = std::upper_bound(kRanges, end, cp,
                                    [](uint32_t c, const Range& range) { return c < range.lo; });
  if (r == kRanges) return CharClass::kOther;
  --r;
  return cp <= r->hi ? r->cls : CharClass::kOther;
}

// The Basic Multilingual Plane as a flat table (64 KiB), built once; higher planes use the ranges.
const std::vector<CharClass>& bmp_table() {
  static const std::vector<CharClass> table = [] {
    std::vector<CharClass> t(0x10000, CharClass::kOther);
    for (const Range& r : kRanges) {
      if (r.lo > 0xFFFF) break;
      for (uint32_t c = r.lo; c <= std::min<uint32_t>(r.hi, 0xFFFF); ++c) t[c] = r.cls;
    }
    return t;
  }();
  return table;
}

constexpr std::array<CharClass, 128> kAscii = [] {
  std::array<CharClass, 128> t{};
  for (int c = 0; c < 128; ++c) {
    if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z')) {
      t[c] = CharClass::kLetter;
    } else if (c >= '0' && c <= '9') {
      t[c] = CharClass::kNumber;
    } else if (c == ' ' || (c >= 0x09 && c <= 0x0D)) {
      t[c] = CharClass::kSpace;
    } else {
      t[c] = CharClass::kOther;
    }
  }
  return t;
}();

// Class and byte length of the code point at s[i].
inline CharClass class_at(std::string_view s, size_t i, int* len) {
  unsigned char c = static_cast<unsigned char>(s[i]);
  if (c < 0x80) {
    *len = 1;
    return kAscii[c];
  }
  uint32_t cp;
  *len = decode_utf8(s, i, &cp);
  if (cp == kInvalidCodePoint) return CharClass::kOther;
  return char_class(cp);
}

// End of the run of code points of class `cls` starting at byte i.
inline size_t run_end(std::string_view s, size_t i, CharClass cls) {
  while (i < s.size()) {
    unsigned char c = static_cast<unsigned char>(s[i]);
    if (c < 0x80) {
      if (kAscii[c] != cls) break;
      ++i;
      continue;
    }
    int len;
    if (class_at(s, i, &len) != cls) break;
    i += len;
  }
  return i;
}

// Length of a contraction ('s 't 're 've 'm 'll 'd) starting at s[i] == '\'', or 0.
inline size_t contraction(std::string_view s, size_t i) {
  if (i + 1 >= s.size()) return 0;
  char a = s[i + 1];
  if (a == 's' || a == 't' || a == 'm' || a == 'd') return 2;
  if (i + 2 >= s.size()) return 0;
  char b = s[i + 2];
  if ((a == 'r' && b == 'e') || (a == 'v' && b == 'e') || (a == 'l' && b == 'l')) return 3;
  return 0;
}

}  // namespace

CharClass char_class(uint32_t cp) {
  if (cp < 0x80) return kAscii[cp];
  if (cp < 0x10000) return bmp_table()[cp];
  return lookup_ranges(cp);
}

int decode_utf8(std::string_view s, size_t i, uint32_t* cp) {
  const auto* p = reinterpret_cast<const unsigned char*>(s.data()) + i;
  size_t avail = s.size() - i;
  unsigned char c = p[0];
  *cp = kInvalidCodePoint;
  if (c < 0x80) {
    *cp = c;
    return 1;
  }
  int len;
  uint32_t v, min;
  if (c >= 0xC2 && c <= 0xDF) {
    len = 2, v = c & 0x1F, min = 0x80;
  } else if (c >= 0xE0 && c <= 0xEF) {
    len = 3, v = c & 0x0F, min = 0x800;
  } else if (c >= 0xF0 && c <= 0xF4) {
    len = 4, v = c & 0x07, min = 0x10000;
  } else {
    return 1;  // continuation byte, C0/C1 overlong lead or F5..FF
  }
  if (avail < static_cast<size_t>(len)) return 1;
  for (int k = 1; k < len; ++k) {
    if ((p[k] & 0xC0) != 0x80) return 1;
    v = (v << 6) | (p[k] & 0x3F);
  }
  if (v < min || v > 0x10FFFF || (v >= 0xD800 && v <= 0xDFFF)) return 1;
  *cp = v;
  return len;
}

bool Pretokenizer::next(std::string_view* piece) {
  const std::string_view s = text_;
  const size_t i = pos_;
  if (i >= s.size()) return false;
  size_t end;
  const char c0 = s[i];
  size_t clen = c0 == '\'' ? contraction(s, i) : 0;
  if (clen) {
    end = i + clen;  // 's|'t|'re|'ve|'m|'ll|'d
  } else {
    int len0;
    CharClass cls0 = class_at(s, i, &len0);
    CharClass cls1 = CharClass::kSpace;
    int len1 = 0;
    if (c0 == ' ' && i + 1 < s.size()) cls1 = class_at(s, i + 1, &len1);
    if (cls1 != CharClass::kSpace) {
      end = run_end(s, i + 1 + len1, cls1);  // ' ' then \p{L}+ | \p{N}+ | [^\s\p{L}\p{N}]+
    } else if (cls0 != CharClass::kSpace) {
      end = run_end(s, i + len0, cls0);  // \p{L}+ | \p{N}+ | [^\s\p{L}\p{N}]+
    } else {
      // \s+(?!\S) | \s+ : the whole run if it ends the text; else all but its last code point
      // (which then starts the next piece, e.g. " word"), or the single code point when that is
      // all.
      size_t last = i;
      end = i + len0;
      while (end < s.size()) {
        int len;
        if (class_at(s, end, &len) != CharClass::kSpace) break;
        last = end;
        end += len;
      }
      if (end < s.size() && last > i) end = last;
    }
  }
  *piece = s.substr(i, end - i);
  pos_ = end;
  return true;
}

}  // namespace kiln::data
