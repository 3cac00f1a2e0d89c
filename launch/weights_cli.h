// The `kiln` sub-commands that work on a model's saved weights without training: export (a
// checkpoint to Hugging Face safetensors), logits (a debugging forward pass) and checkpoint (info,
// verify, hash).
#pragma once

namespace kiln::launch {

int export_main(int argc, char** argv);
int logits_main(int argc, char** argv);
int checkpoint_main(int argc, char** argv);

}  // namespace kiln::launch
