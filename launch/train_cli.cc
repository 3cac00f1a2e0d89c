// kiln train / eval / sample / info: argument parsing, config loading and the Trainer.
#include "launch/train_cli.h"

#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "core/backend.h"
#include "core/thread_pool.h"
#include "data/tokenizer.h"
#include "launch/config.h"
#include "launch/signals.h"
#include "launch/trainer.h"
#include "models/presets.h"
#include "parallel/world.h"

namespace kiln::launch {
namespace {

// `kiln train`'s status when the non-finite guard stopped the run (training.max_non_finite_steps).
constexpr int kExitNonFinite = 4;

struct Args {
  std::string config;
  std::vector<std::string> sets;
  bool print_config = false;
  bool help = false;
  bool quiet = false;
  std::string error;
};

Args parse_args(int argc, char** argv) {
  Args a;
  for (int i = 1; i < argc; ++i) {
    const std::string s = argv[i];
    auto value = [&](const char* flag) -> std::string {
      const std::string f = flag;
      if (s.rfind(f + "=", 0) == 0) return s.substr(f.size() + 1);
      if (i + 1 < argc) return argv[++i];
      a.error = f + " needs a value";
      return "";
    };
    if (s == "--help" || s == "-h") {
      a.help = true;
    } else if (s == "--print-config") {
      a.print_config = true;
    } else if (s == "--quiet") {
      a.quiet = true;
    } else if (s == "--config" || s.rfind("--config=", 0) == 0) {
      a.config = value("--config");
    } else if (s == "--set" || s.rfind("--set=", 0) == 0) {
      a.sets.push_back(value("--set"));
    } else if (s == "--resume" || s.rfind("--resume=", 0) == 0) {
      a.sets.push_back("checkpoint.resume=" + value("--resume"));
    } else if (s == "--init-from" || s.rfind("--init-from=", 0) == 0) {
      a.sets.push_back("training.init_from=" + value("--init-from"));
    } else {
      a.error = "unknown argument '" + s + "'";
    }
  }
  if (!a.help && a.error.empty() && a.config.empty()) a.error = "--config FILE is required";
  return a;
}

void print_usage(const char* cmd, const char* what) {
  std::printf(
      "usage: kiln %s --config FILE [--set path.to.field=VALUE ...] [--print-config] [--quiet]\n"
      "       [--resume auto|never|PATH] [--init-from DIR]\n\n"
      "%s\n\n"
      "  --config FILE      a TrainConfig textproto (see configs/ and proto/config.proto)\n"
      "  --set a.b=VALUE    override one field (repeatable); e.g. --set optimizer.lr=3e-4\n"
      "                     --set model={n_layer: 2} sets a whole section\n"
      "  --resume auto|never|PATH   where to resume from (checkpoint.resume): auto = the\n"
      "                     checkpoint <checkpoint.dir>/latest names, if any\n"
      "  --init-from DIR    start from Hugging Face-named weights (DIR/model.safetensors, as\n"
      "                     kiln export writes them) unless resuming (training.init_from)\n"
      "  --print-config     print the resolved config and exit\n"
      "  --quiet            no per-step lines (metrics files are still written)\n"
      "Run with mpirun -np N or srun for data parallelism; each rank reads the same config.\n"
      "Exit status: 0 when the run finished; after SIGTERM / SIGINT / SIGUSR1 (checkpoint.\n"
      "save_signal) kiln saves a checkpoint and exits 128 + the signal (143 / 130 / 138);\n"
      "1 on errors (a metrics file that cannot be written, a run folder another kiln train\n"
      "holds, ...), 2 on bad arguments, 4 when training.max_non_finite_steps steps in a row had\n"
      "a NaN / Inf loss or gradient norm (nothing saved).\n",
      cmd, what);
}

// Loads tokenizer_dir (when set) as the sample codec.
TextCodec make_codec(const TrainConfig& cfg) {
  TextCodec c;
  if (cfg.data().tokenizer_dir().empty()) return c;
  auto tok = data::Tokenizer::LoadDir(cfg.data().tokenizer_dir());
  if (!tok.ok()) {
    std::fprintf(stderr, "kiln: warning: data.tokenizer_dir: %s (samples print token ids)\n",
                 std::string(tok.status().message()).c_str());
    return c;
  }
  auto shared = std::make_shared<data::Tokenizer>(std::move(*tok));
  c.eot = shared->eot();
  c.encode = [shared](const std::string& s) {
    std::vector<int32_t> ids = shared->encode(s);
    return std::vector<int64_t>(ids.begin(), ids.end());
  };
  const int64_t v = shared->vocab_size();
  c.decode = [shared, v](const std::vector<int64_t>& ids) {
    std::vector<int32_t> ok;
    for (int64_t id : ids)
      if (id >= 0 && id < v) ok.push_back(static_cast<int32_t>(id));
    return shared->decode(ok);
  };
  return c;
}

// Shared front half of train/eval/sample: args, config, world. Returns an exit code >= 0 to stop.
int load(int argc, char** argv, const char* cmd, const char* what, TrainConfig* cfg,
         parallel::World* world, bool* quiet) {
  Args a = parse_args(argc, argv);
  if (a.help) {
    print_usage(cmd, what);
    return 0;
  }
  if (!a.error.empty()) {
    std::fprintf(stderr, "kiln %s: %s (see kiln %s --help)\n", cmd, a.error.c_str(), cmd);
    return 2;
  }
  *world = parallel::detect_world();
  absl::StatusOr<TrainConfig> c = load_config(a.config, a.sets);
  if (!c.ok()) {
    std::fprintf(stderr, "kiln %s: invalid config:\n%s\n", cmd,
                 std::string(c.status().message()).c_str());
    return 1;
  }
  absl::Status s = resolve_world(world->size, &*c);
  if (s.ok()) s = validate_world(*c, world->size);
  if (!s.ok()) {
    std::fprintf(stderr, "kiln %s: %s\n", cmd, std::string(s.message()).c_str());
    return 1;
  }
  absl::StatusOr<int> save_sig = parse_save_signal(c->checkpoint().save_signal());
  if (!save_sig.ok()) {
    std::fprintf(stderr, "kiln %s: %s\n", cmd, std::string(save_sig.status().message()).c_str());
    return 1;
  }
  set_save_signal(*save_sig);
  if (a.print_config) {
    std::printf("%s", print_config(*c).c_str());
    return 0;
  }
  *cfg = std::move(*c);
  *quiet = a.quiet;
  return -1;
}

}  // namespace

int train_main(int argc, char** argv) {
  TrainConfig cfg;
  parallel::World world;
  bool quiet = false;
  if (int rc =
          load(argc, argv, "train", "Trains the model a config describes.", &cfg, &world, &quiet);
      rc >= 0)
    return rc;
  Trainer t(cfg, world);
  t.set_quiet(quiet);
  t.set_exclusive(true);
  t.set_codec(make_codec(cfg));
  absl::Status s = t.init();
  if (!s.ok()) {
    std::fprintf(stderr, "kiln train: %s\n", std::string(s.message()).c_str());
    return 1;
  }
  absl::StatusOr<TrainSummary> r = t.run();
  if (!r.ok()) {
    std::fprintf(stderr, "kiln train: %s\n", std::string(r.status().message()).c_str());
    return 1;
  }
  // Stopped by a signal after saving: not a finished run (launch/signals.h has the statuses).
  if (r->interrupted) return stop_exit_status(agreed_stop_signal());
  if (r->non_finite_stop) return kExitNonFinite;
  return 0;
}

int eval_main(int argc, char** argv) {
  TrainConfig cfg;
  parallel::World world;
  bool quiet = false;
  if (int rc = load(argc, argv, "eval", "Prints the validation loss of the config's model.", &cfg,
                    &world, &quiet);
      rc >= 0)
    return rc;
  Trainer t(cfg, world);
  t.set_quiet(true);
  absl::Status s = t.init();
  if (!s.ok()) {
    std::fprintf(stderr, "kiln eval: %s\n", std::string(s.message()).c_str());
    return 1;
  }
  std::printf("val loss %.4f\n", t.evaluate());
  return 0;
}

int sample_main(int argc, char** argv) {
  TrainConfig cfg;
  parallel::World world;
  bool quiet = false;
  if (int rc =
          load(argc, argv, "sample", "Generates text (eval.sample_prompt, eval.sample_tokens).",
               &cfg, &world, &quiet);
      rc >= 0)
    return rc;
  Trainer t(cfg, world);
  t.set_quiet(true);
  t.set_codec(make_codec(cfg));
  absl::Status s = t.init();
  if (!s.ok()) {
    std::fprintf(stderr, "kiln sample: %s\n", std::string(s.message()).c_str());
    return 1;
  }
  std::printf("%s\n", t.sample(0).c_str());
  return 0;
}

int info_main(int argc, char** argv) {
  if (argc > 1 && (std::strcmp(argv[1], "--help") == 0 || std::strcmp(argv[1], "-h") == 0)) {
    std::printf(
        "usage: kiln info\n\nPrints the build (CUDA on/off), visible GPUs, CPU threads, "
        "the\nlauncher world and the model presets with their parameter counts.\n");
    return 0;
  }
#if KILN_WITH_CUDA
  const bool built_cuda = true;
#else
  const bool built_cuda = false;
#endif
  std::printf("kiln\n  CUDA backend: %s\n  GPUs visible: %d\n  CPU threads: %d\n",
              built_cuda ? "built" : "not built",
              cuda_available() ? cuda_backend().device_count() : 0, num_threads());
  parallel::World w = parallel::detect_world();
  std::printf("  world: rank %d of %d (%s)\n  presets:\n", w.rank, w.size, w.launcher.c_str());
  for (const std::string& name : preset_names()) {
    absl::StatusOr<ModelConfig> m = get_preset(name);
    if (!m.ok()) continue;
    ModelConfig r = *m;
    if (!resolve_model_config(&r).ok()) continue;
    std::printf("    %-11s %6.1fM params  L=%d H=%d C=%d\n", name.c_str(), param_count(r) / 1e6,
                r.n_layer(), r.n_head(), r.d_model());
  }
  return 0;
}

}  // namespace kiln::launch
