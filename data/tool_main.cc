// kiln_data_tool: a standalone front end to the data layer's commands, for testing without the kiln
// binary: kiln_data_tool prepare-data ... | kiln_data_tool tokenizer ...
#include <cstdio>
#include <cstring>

#include "data/cli.h"

int main(int argc, char** argv) {
  if (argc >= 2 && std::strcmp(argv[1], "prepare-data") == 0) {
    return kiln::data::prepare_data_main(argc - 1, argv + 1);
  }
  if (argc >= 2 && std::strcmp(argv[1], "tokenizer") == 0) {
    return kiln::data::tokenizer_main(argc - 1, argv + 1);
  }
  std::fprintf(stderr, "usage: %s (prepare-data|tokenizer) [--help] ...\n", argv[0]);
  return 2;
}
