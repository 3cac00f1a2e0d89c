// Byte-level BPE training (`kiln tokenizer train`): learns GPT-2-style merges from a corpus so
// users with other data get their own encoder.json + vocab.bpe, loadable by Tokenizer::Load.
//
// Text is pre-tokenized exactly as for encoding (data/pretokenize.h) and pieces are counted; then,
// repeatedly, the most frequent adjacent pair (ties: smallest left id, then right id) becomes a new
// token, until the vocabulary reaches vocab_size or no pair occurs min_frequency times. A pair
// whose bytes already are a token is skipped, so every merge makes a new token. Ids: 0..255 the
// single bytes in GPT-2's order, then one per merge, then "<|endoftext|>" last. Deterministic for
// the same input whatever the thread count.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "data/documents.h"
#include "data/tokenizer.h"

namespace kiln::data {

struct BpeTrainOptions {
  int64_t vocab_size = 0;  // total, counting the 256 bytes and <|endoftext|>; >= 257
  int64_t min_frequency = 2;
  int threads = 0;  // piece counting; 0: all hardware threads
};

absl::StatusOr<Tokenizer> train_bpe(const DocumentSource& source, const BpeTrainOptions& options);
absl::StatusOr<Tokenizer> train_bpe(const std::vector<std::string>& texts,
                                    const BpeTrainOptions& options);

}  // namespace kiln::data
