// GPT-2 pre-tokenisation, by hand: splits text into the pieces that the pattern
//   's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
// matches (as a JavaScript /u regex, i.e. as gpt-3-encoder's Encoder.js runs it), each piece then
// being BPE-encoded on its own. Input is bytes: UTF-8 is decoded strictly, and every byte that is
// not part of a valid UTF-8 sequence counts as one code point of the "other" class
// ([^\s\p{L}\p{N}]), so any byte string splits into pieces that concatenate back to it.
#pragma once

#include <cstdint>
#include <string_view>

namespace kiln::data {

enum class CharClass : uint8_t { kOther = 0, kLetter = 1, kNumber = 2, kSpace = 3 };

// \p{L} -> kLetter, \p{N} -> kNumber, \s -> kSpace, anything else (surrogates, unassigned,
// out of range) -> kOther; tables generated from node (data/unicode_tables.inc).
CharClass char_class(uint32_t cp);

// Decodes the code point starting at s[i] (REQUIRES: i < s.size()). Returns its length in bytes and
// stores it in *cp; an invalid or truncated sequence, an overlong form, a surrogate or a value over
// U+10FFFF gives length 1 and *cp = kInvalidCodePoint.
inline constexpr uint32_t kInvalidCodePoint = 0xFFFFFFFFu;
int decode_utf8(std::string_view s, size_t i, uint32_t* cp);

// Iterates over the pieces of `text` in order: while (p.next(&piece)) ...
class Pretokenizer {
 public:
  explicit Pretokenizer(std::string_view text) : text_(text) {}
  bool next(std::string_view* piece);

 private:
  std::string_view text_;
  size_t pos_ = 0;
};

}  // namespace kiln::data
