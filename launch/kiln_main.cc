// The kiln command line: dispatches to the sub-commands; any kiln::Error that escapes becomes a
// clear message and exit status 1 (never an abort).
#include <cstdio>
#include <cstring>
#include <exception>
#include <string>

#include "core/check.h"
#include "data/cli.h"
#include "launch/plot.h"
#include "launch/train_cli.h"
#include "launch/weights_cli.h"

namespace {

struct Command {
  const char* name;
  int (*fn)(int, char**);
  const char* help;
};

const Command kCommands[] = {
    {"train", kiln::launch::train_main, "train a model from a config (--config FILE)"},
    {"eval", kiln::launch::eval_main, "validation loss of a config's model (or a checkpoint)"},
    {"sample", kiln::launch::sample_main, "generate text from a config's model (or a checkpoint)"},
    {"prepare-data", kiln::data::prepare_data_main, "text / JSONL -> train and val token shards"},
    {"tokenizer", kiln::data::tokenizer_main, "train a BPE vocabulary; encode / decode text"},
    {"plot", kiln::launch::plot_main, "write RUN_DIR/loss.png and loss.svg from metrics.jsonl"},
    {"export", kiln::launch::export_main,
     "checkpoint -> Hugging Face safetensors + config.json (--format safetensors)"},
    {"checkpoint", kiln::launch::checkpoint_main, "info / verify / hash a checkpoint"},
    {"logits", kiln::launch::logits_main, "debug: a model's logits for given tokens"},
    {"plan", kiln::launch::plan_main,
     "per-rank memory of a config's layout; layouts that fit a GPU (--gpu-mem)"},
    {"info", kiln::launch::info_main, "build, devices, threads and model presets"},
};

void usage(FILE* f) {
  std::fprintf(f, "usage: kiln COMMAND [ARGS]   (kiln COMMAND --help for details)\n\ncommands:\n");
  for (const Command& c : kCommands) std::fprintf(f, "  %-13s %s\n", c.name, c.help);
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    usage(stderr);
    return 2;
  }
  const std::string cmd = argv[1];
  if (cmd == "--help" || cmd == "-h" || cmd == "help") {
    usage(stdout);
    return 0;
  }
  for (const Command& c : kCommands) {
    if (cmd != c.name) continue;
    try {
      return c.fn(argc - 1, argv + 1);
    } catch (const kiln::Error& e) {
      std::fprintf(stderr, "kiln %s: error: %s\n", c.name, e.what());
      return 1;
    } catch (const std::exception& e) {
      std::fprintf(stderr, "kiln %s: unexpected error: %s\n", c.name, e.what());
      return 1;
    }
  }
  std::fprintf(stderr, "kiln: unknown command '%s'\n\n", cmd.c_str());
  usage(stderr);
  return 2;
}
