// The `kiln` sub-commands that work on a model's saved weights without training: export (a
// checkpoint to Hugging Face safetensors), logits (a debugging forward pass) and checkpoint (info,
// verify, hash).
#pragma once

#include <string>

#include "absl/status/statusor.h"

namespace kiln::launch {

// A checkpoint directory as given, or the newest (`latest`) one in a checkpoint root; NotFound
// when there is none. Errors start with `prefix`, which names where PATH came from
// ("--checkpoint: ", or nothing).
absl::StatusOr<std::string> resolve_checkpoint(const std::string& path, const std::string& prefix);

int export_main(int argc, char** argv);
int logits_main(int argc, char** argv);
int checkpoint_main(int argc, char** argv);

}  // namespace kiln::launch
