// prepare-data: text/JSONL documents -> train and validation token shards (data/shard.h).
//
// Every document becomes <|endoftext|> followed by its tokens (llm.c's convention: the delimiter
// starts each document), so a shard stream is documents joined by end-of-text. Documents are
// tokenized on `threads` threads in units of about `unit_bytes` and written back in input order, so
// the output is byte-identical for the same input whatever the thread count.
//
// Validation documents: exactly n_val of the n documents, spread evenly: document i (0-based, input
// order) is validation iff floor((i+1)*n_val/n) > floor(i*n_val/n), with n_val = val_docs when set,
// else round(val_fraction * n). Shards: <output_dir>/<name>_val_000000.bin, ..._train_000000.bin,
// ..., each holding at most shard_tokens tokens (documents may continue into the next shard, as in
// llm.c).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "data/documents.h"
#include "data/tokenizer.h"

namespace kiln::data {

struct PrepareOptions {
  std::vector<std::string> inputs;  // files or globs
  DocumentOptions documents;
  std::string output_dir;
  std::string name = "data";
  double val_fraction = 0.01;
  int64_t val_docs = -1;  // >= 0: exactly this many validation documents (overrides val_fraction)
  int64_t shard_tokens = 100'000'000;
  int threads = 0;  // 0: all hardware threads
  bool progress = true;
  bool overwrite = false;  // replace existing <name>_{train,val}_*.bin in output_dir
  int64_t unit_bytes = 1 << 20;
};

struct PrepareResult {
  int64_t documents = 0, train_documents = 0, val_documents = 0;
  int64_t train_tokens = 0, val_tokens = 0, bytes = 0;
  std::vector<std::string> train_shards, val_shards;
  double seconds = 0;
};

absl::StatusOr<PrepareResult> prepare_data(const PrepareOptions& options,
                                           const Tokenizer& tokenizer);

// The validation rule above.
bool is_validation_document(int64_t index, int64_t n_val, int64_t n_docs);

// A one-line progress bar on stderr: bytes done of total, tokens, tokens/s and ETA. Redraws in
// place on a terminal (at most 10 times a second), prints a line every few seconds otherwise.
class ProgressBar {
 public:
  ProgressBar(int64_t total_bytes, bool enabled);
  void Update(int64_t bytes, int64_t tokens);
  void Finish(int64_t bytes, int64_t tokens);
  // The line for the given state (exposed for tests).
  static std::string Render(int64_t bytes, int64_t total_bytes, int64_t tokens, double seconds);

 private:
  void Draw(int64_t bytes, int64_t tokens, bool final);
  int64_t total_;
  bool enabled_, tty_;
  double start_, last_draw_ = -1e9;
};

}  // namespace kiln::data
