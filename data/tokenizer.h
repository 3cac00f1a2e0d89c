// Byte-level BPE tokenizer in GPT-2's format: loads (and saves) encoder.json + vocab.bpe, encodes
// bytes to token ids exactly as OpenAI's GPT-2 encoder (and gpt-3-encoder's Encoder.js) does,
// decodes ids back to the exact bytes. Any byte string round-trips: decode(encode(x)) == x.
//
// Encoding = pre-tokenisation (data/pretokenize.h) + BPE of each piece, where BPE repeatedly merges
// the adjacent pair of lowest rank (its line in vocab.bpe), all its occurrences left to right,
// until no pair has a rank. Results per piece are cached in a per-thread cache, so encode() is
// const and safe to call from many threads at once.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"

namespace kiln::data {

inline constexpr std::string_view kEndOfText = "<|endoftext|>";
inline constexpr int32_t kGpt2EndOfText = 50256;

// GPT-2's reversible map from bytes to printable code points (bytes_to_unicode in encoder.py):
// byte b -> the code point its character has in encoder.json / vocab.bpe. And the order in which
// GPT-2 lists the 256 single-byte tokens (ids 0..255 of encoder.json): byte_order()[id] = byte.
uint32_t byte_to_unicode(uint8_t b);
const std::vector<uint8_t>& byte_order();
// Raw bytes <-> GPT-2's printable form (UTF-8 of the mapped code points).
std::string bytes_to_printable(std::string_view bytes);
absl::StatusOr<std::string> printable_to_bytes(std::string_view printable);

class Tokenizer {
 public:
  // Reads GPT-2 format files. Errors name the file and the entry: malformed JSON, a token outside
  // the byte alphabet, non-dense ids, a missing single-byte token, a malformed merge line, a merge
  // whose parts or result are not tokens.
  static absl::StatusOr<Tokenizer> Load(const std::string& encoder_json_path,
                                        const std::string& vocab_bpe_path);
  // Load(dir/encoder.json, dir/vocab.bpe).
  static absl::StatusOr<Tokenizer> LoadDir(const std::string& dir);
  // Builds a tokenizer from token byte strings (index = id) and merges (pairs of ids, by rank).
  // Every merge's result must be a token. Special tokens (e.g. "<|endoftext|>") are ordinary
  // entries of `tokens` that no merge produces.
  static absl::StatusOr<Tokenizer> FromTokens(std::vector<std::string> tokens,
                                              std::vector<std::pair<int32_t, int32_t>> merges);

  Tokenizer(Tokenizer&&) noexcept;
  Tokenizer& operator=(Tokenizer&&) noexcept;
  ~Tokenizer();

  // Appends the ids of `text` to *out. Special-token text is encoded as plain text.
  void encode(std::string_view text, std::vector<int32_t>* out) const;
  std::vector<int32_t> encode(std::string_view text) const;
  // The exact bytes of the ids. REQUIRES (KILN_CHECK): 0 <= id < vocab_size().
  std::string decode(std::span<const int32_t> ids) const;

  int64_t vocab_size() const;
  // Id of "<|endoftext|>" (50256 for GPT-2), or -1 when the vocabulary has none.
  int32_t eot() const;
  const std::string& token_bytes(int32_t id) const;
  const std::vector<std::pair<int32_t, int32_t>>& merges() const;  // by rank

  // Writes dir/encoder.json and dir/vocab.bpe in GPT-2's format (creating dir).
  absl::Status Save(const std::string& dir) const;

  // Drops this thread's BPE cache (benchmarks measure cold encoding with it).
  static void ClearThreadCache();

 private:
  struct Impl;
  explicit Tokenizer(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace kiln::data
