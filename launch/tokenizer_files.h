// The tokenizer of a run: which directory (data.tokenizer_dir, or GPT-2's, the one prepare-data
// uses by default, when the field is unset and the data are shards), how it agrees with
// model.vocab_size, and the Hugging Face tokenizer files `kiln export` writes beside the weights
// (vocab.json, merges.txt, tokenizer_config.json, special_tokens_map.json; generation_config.json).
#pragma once

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "data/tokenizer.h"
#include "proto/config.pb.h"

namespace kiln::launch {

// data.tokenizer_dir when set ("" = none); unset: "" for synthetic data, else GPT-2's directory
// (data::default_tokenizer_dir). `explicit_dir` says whether the config named it.
std::string run_tokenizer_dir(const DataConfig& d, bool* explicit_dir);

// The run's tokenizer, or nullptr when it has none or it cannot be used (a warning on stderr says
// why: samples then print token ids and eval.sample_prompt is not used). A tokenizer with more
// tokens than model.vocab_size is an error when the config named it (its ids would be out of
// range) and a warning when it is the GPT-2 default; fewer tokens is stated on stdout (padding
// rows, e.g. 50304 for GPT-2's 50257, are normal). `say`: print the notes (rank 0).
absl::StatusOr<std::shared_ptr<data::Tokenizer>> load_run_tokenizer(const TrainConfig& cfg,
                                                                    bool say);

// Writes the tokenizer of `dir` (encoder.json + vocab.bpe) as a Hugging Face GPT2Tokenizer into
// out_dir: vocab.json, merges.txt, tokenizer_config.json, special_tokens_map.json. Errors name the
// file; a tokenizer larger than model.vocab_size is refused.
absl::Status write_hf_tokenizer(const std::string& dir, const ModelConfig& model,
                                const std::string& out_dir);

// generation_config.json: bos / eos = `eot` (omitted when < 0) and max_length = model.max_seq_len.
std::string hf_generation_config_json(const ModelConfig& model, int64_t eot);

}  // namespace kiln::launch
