// Token shards in llm.c's format, so data prepared for llm.c works unchanged and back:
//   header: 256 little-endian int32: [0] magic, [1] version, [2] token count, the rest 0;
//   then `count` tokens, each uint16 (magic 20240520, version 1: GPT-2 and any vocabulary of at
//   most 65536 tokens) or uint32 (magic 20240801, version 7: llm.c's Llama 3 variant, for larger
//   ones).
// ShardWriter writes one (to a temporary name, renamed on Close); Shard maps one read-only and
// validates it when opened.
#pragma once

#include <cstdint>
#include <cstdio>
#include <memory>
#include <span>
#include <string>

#include "absl/status/statusor.h"
#include "data/io.h"

namespace kiln::data {

inline constexpr int32_t kShardMagicU16 = 20240520;
inline constexpr int32_t kShardVersionU16 = 1;
inline constexpr int32_t kShardMagicU32 = 20240801;
inline constexpr int32_t kShardVersionU32 = 7;
inline constexpr int64_t kShardHeaderInts = 256;
inline constexpr int64_t kShardHeaderBytes = kShardHeaderInts * 4;
inline constexpr int64_t kMaxShardTokens = INT32_MAX;  // the header's count is an int32

// Bytes per token for a vocabulary: 2 when every id fits uint16 (vocab_size <= 65536), else 4.
inline int shard_token_bytes(int64_t vocab_size) { return vocab_size <= 65536 ? 2 : 4; }

class ShardWriter {
 public:
  // Opens `path`.tmp.<pid> for writing; Close() renames it to `path`. token_bytes is 2 or 4.
  static absl::StatusOr<std::unique_ptr<ShardWriter>> Create(const std::string& path,
                                                             int token_bytes);
  ~ShardWriter();  // an unclosed writer removes its temporary file
  // REQUIRES: every token fits token_bytes; num_tokens() + tokens.size() <= kMaxShardTokens.
  absl::Status Append(std::span<const int32_t> tokens);
  // Writes the header (with the final count), fsyncs and renames into place.
  absl::Status Close();
  int64_t num_tokens() const { return count_; }
  const std::string& path() const { return path_; }

 private:
  ShardWriter() = default;
  std::string path_, tmp_;
  std::FILE* f_ = nullptr;
  int token_bytes_ = 2;
  int64_t count_ = 0;
  std::vector<char> buf_;
};

// Writes a whole shard in one call.
absl::Status write_shard(const std::string& path, std::span<const int32_t> tokens, int token_bytes);

// A validated, memory-mapped shard.
class Shard {
 public:
  // Maps and validates `path`: readable, non-empty, at least a header long, a known magic with its
  // version, a token count that is positive and matches the file size exactly, and (when
  // vocab_size > 0) every token < vocab_size. Each failure is an error naming the file.
  static absl::StatusOr<Shard> Open(const std::string& path, int64_t vocab_size);

  int64_t num_tokens() const { return count_; }
  int token_bytes() const { return token_bytes_; }
  const std::string& path() const { return file_.path(); }
  int32_t token(int64_t i) const;
  // Copies tokens [start, start + n) into out as int32. REQUIRES: in range.
  void read(int64_t start, int64_t n, int32_t* out) const;

 private:
  MappedFile file_;
  const char* tokens_ = nullptr;
  int64_t count_ = 0;
  int token_bytes_ = 2;
};

}  // namespace kiln::data
