// The manifest `kiln prepare-data` writes beside a dataset's shards, OUT/<name>.manifest.json: it
// marks the dataset complete and says what it holds (the tokenizer's identity, document and token
// counts, every shard's size, token count and CRC32C), so that training can refuse shards that are
// not the complete dataset that was prepared: a shard missing, extra, of another size or with
// other bytes, or a dataset whose prepare-data was interrupted while swapping (`complete: false`).
//
//   {"format": "kiln-dataset", "version": 1, "name": "data", "complete": true,
//    "tokenizer": {"vocab_size": 50257, "eot": 50256, "crc32c": "1a2b3c4d"},
//    "documents": {"train": 99, "val": 1}, "tokens": {"train": 12345, "val": 120},
//    "shards": [{"file": "data_val_000000.bin", "split": "val", "tokens": 120, "bytes": 1264,
//                "crc32c": "89abcdef"}, ...]}
//
// The tokenizer's crc32c is over its tokens' bytes and merges (tokenizer_identity). Shards without
// a manifest (written by kilns before it) are trained on with a warning.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "data/tokenizer.h"

namespace kiln::data {

struct ManifestShard {
  std::string file;   // base name, in the manifest's directory
  std::string split;  // "train" or "val"
  int64_t tokens = 0, bytes = 0;
  uint32_t crc32c = 0;
};

struct DatasetManifest {
  std::string name;
  bool complete = false;
  int64_t vocab_size = 0;
  int64_t eot = -1;
  uint32_t tokenizer_crc32c = 0;
  int64_t train_documents = 0, val_documents = 0, train_tokens = 0, val_tokens = 0;
  std::vector<ManifestShard> shards;
};

// CRC32C (Castagnoli) of `data`, continuing from `crc` (0 to start); SSE4.2 where the CPU has it.
uint32_t crc32c(uint32_t crc, const void* data, size_t n);
// CRC32C of a whole file; an error naming it.
absl::StatusOr<uint32_t> file_crc32c(const std::string& path);
// CRC32C of the tokenizer's tokens (bytes, in id order) and merges.
uint32_t tokenizer_identity(const Tokenizer& tok);

// DIR/NAME.manifest.json.
std::string manifest_path(const std::string& dir, const std::string& name);
std::string manifest_json(const DatasetManifest& m);
absl::StatusOr<DatasetManifest> parse_manifest(const std::string& json, const std::string& path);
// Writes `path` through a temporary file, fsynced, renamed (the directory fsynced after).
absl::Status write_manifest(const std::string& path, const DatasetManifest& m);

// Checks the shard files a run is about to read (globs expanded) against the manifests of their
// datasets: each file named DIR/NAME_{train,val}_NNNNNN.bin belongs to DIR/NAME.manifest.json.
// Refuses (naming the file and what is wrong) a manifest that is incomplete or unreadable, a file
// it does not list, a file of another size, a listed shard missing from the directory, and with
// `checksums` a file whose CRC32C differs. A file whose dataset has no manifest is accepted with
// a line added to *warnings. OK for files not named like prepare-data's shards (with a warning).
absl::Status check_dataset_files(const std::vector<std::string>& files, bool checksums,
                                 std::vector<std::string>* warnings);

}  // namespace kiln::data
