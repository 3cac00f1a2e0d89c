// kiln train / eval / sample / info: argument parsing, config loading and the Trainer.
#include "launch/train_cli.h"

#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "core/backend.h"
#include "core/thread_pool.h"
#include "data/tokenizer.h"
#include "launch/checkpoint.h"
#include "launch/checkpoint_manifest.h"
#include "launch/config.h"
#include "launch/run_folder.h"
#include "launch/signals.h"
#include "launch/tokenizer_files.h"
#include "launch/trainer.h"
#include "launch/weights_cli.h"
#include "models/presets.h"
#include "parallel/world.h"

namespace kiln::launch {
namespace {

// `kiln train`'s status when the non-finite guard stopped the run (training.max_non_finite_steps).
constexpr int kExitNonFinite = 4;

struct Args {
  std::string config, checkpoint, init_from;
  std::vector<std::string> sets;
  bool print_config = false;
  bool help = false;
  bool quiet = false;
  bool overwrite = false;
  std::string error;
};

// `reading`: eval / sample (--checkpoint, no --resume / --overwrite); else train.
Args parse_args(int argc, char** argv, bool reading) {
  Args a;
  for (int i = 1; i < argc && a.error.empty(); ++i) {
    const std::string s = argv[i];
    auto is = [&](const char* f) { return s == f || s.rfind(std::string(f) + "=", 0) == 0; };
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
    } else if (is("--config")) {
      a.config = value("--config");
    } else if (is("--set")) {
      a.sets.push_back(value("--set"));
    } else if (is("--init-from")) {
      a.init_from = value("--init-from");
    } else if (!reading && is("--resume")) {
      a.sets.push_back("checkpoint.resume=" + value("--resume"));
    } else if (!reading && s == "--overwrite") {
      a.overwrite = true;
    } else if (reading && is("--checkpoint")) {
      a.checkpoint = value("--checkpoint");
    } else {
      a.error = "unknown argument '" + s + "'";
    }
  }
  if (a.help || !a.error.empty()) return a;
  if (a.config.empty() && a.checkpoint.empty())
    a.error = reading ? "give --config FILE or --checkpoint PATH" : "--config FILE is required";
  else if (!a.checkpoint.empty() && !a.init_from.empty())
    a.error = "give one of --checkpoint and --init-from (the weights to use)";
  return a;
}

void print_usage(const char* cmd, const char* what) {
  std::printf(
      "usage: kiln %s --config FILE [--set path.to.field=VALUE ...] [--print-config] [--quiet]\n"
      "       [--resume auto|never|PATH] [--init-from DIR] [--overwrite]\n\n"
      "%s\n\n"
      "  --config FILE      a TrainConfig textproto (see configs/ and proto/config.proto)\n"
      "  --set a.b=VALUE    override one field (repeatable); e.g. --set optimizer.lr=3e-4\n"
      "                     --set model={n_layer: 2} sets a whole section; on a list field\n"
      "                     a=X or a=[X, Y] replaces the list, a+=X appends one element\n"
      "  --resume auto|never|PATH   where to resume from (checkpoint.resume): auto = the\n"
      "                     checkpoint <checkpoint.dir>/latest names, if any\n"
      "  --init-from DIR    start from Hugging Face-named weights (DIR/model.safetensors, as\n"
      "                     kiln export writes them) (training.init_from). A checkpoint to\n"
      "                     resume wins (so a requeued job resumes), and kiln says so.\n"
      "  --overwrite        with --resume never: delete an earlier run's checkpoints and\n"
      "                     metrics in the run folder first (without it kiln refuses to start)\n"
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

void print_reading_usage(const char* cmd, const char* what) {
  std::printf(
      "usage: kiln %s (--config FILE [--init-from DIR] | --checkpoint PATH [--config FILE])\n"
      "       [--set path.to.field=VALUE ...] [--print-config]\n\n"
      "%s\n\n"
      "Weights: --checkpoint PATH (a step_NNNNNNNN directory or a checkpoint root, whose\n"
      "`latest` is used; its stored config is used unless --config is given), else\n"
      "--init-from DIR (Hugging Face-named weights, as kiln export writes them), else the\n"
      "checkpoint the config's checkpoint.dir holds (latest), else the seeded initialisation\n"
      "(with a warning). The line 'weights: ...' names the source. Never writes into the run\n"
      "folder (no metrics, TensorBoard or checkpoint files).\n",
      cmd, what);
}

// The config of a reading command whose weights are a checkpoint and no --config is given: the
// checkpoint's own, with --set applied, for this world (parallel.dp comes from it).
absl::StatusOr<TrainConfig> config_from_checkpoint(const std::string& path,
                                                   const std::vector<std::string>& sets) {
  absl::StatusOr<Manifest> m = read_checkpoint_manifest(path);
  if (!m.ok()) return m.status();
  TrainConfig c = m->config();
  c.mutable_parallel()->clear_dp();
  absl::Status s = apply_overrides(sets, &c);
  if (s.ok()) s = resolve_config(&c);
  if (s.ok()) s = validate_config(c);
  if (!s.ok())
    return absl::Status(s.code(), "the config in " + path + ": " + std::string(s.message()));
  return c;
}

// The config of `a`: --config (with --set) or the checkpoint's at `ckpt` (--checkpoint resolved);
// for reading commands the weights source (--checkpoint, --init-from) is set in it.
absl::StatusOr<TrainConfig> read_config(const Args& a, const std::string& ckpt, bool reading) {
  std::vector<std::string> sets = a.sets;
  if (!a.init_from.empty()) {
    sets.push_back("training.init_from=" + a.init_from);
    if (reading) sets.push_back("checkpoint.resume=never");  // the weights asked for
  }
  if (ckpt.empty()) return load_config(a.config, sets);
  sets.push_back("checkpoint.resume=" + ckpt);
  if (!a.config.empty()) return load_config(a.config, sets);
  return config_from_checkpoint(ckpt, sets);
}

// The run's tokenizer (tokenizer_files.h) as the sample codec; empty when there is none.
absl::StatusOr<TextCodec> make_codec(const TrainConfig& cfg, bool say) {
  TextCodec c;
  absl::StatusOr<std::shared_ptr<data::Tokenizer>> tok = load_run_tokenizer(cfg, say);
  if (!tok.ok()) return tok.status();
  if (*tok == nullptr) return c;
  std::shared_ptr<data::Tokenizer> shared = *tok;
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
int load(int argc, char** argv, const char* cmd, const char* what, bool reading, TrainConfig* cfg,
         parallel::World* world, Args* args) {
  Args a = parse_args(argc, argv, reading);
  if (a.help) {
    reading ? print_reading_usage(cmd, what) : print_usage(cmd, what);
    return 0;
  }
  if (!a.error.empty()) {
    std::fprintf(stderr, "kiln %s: %s (see kiln %s --help)\n", cmd, a.error.c_str(), cmd);
    return 2;
  }
  *world = parallel::detect_world();
  absl::StatusOr<std::string> ckpt =
      a.checkpoint.empty() ? "" : resolve_checkpoint(a.checkpoint, "--checkpoint: ");
  if (!ckpt.ok()) {  // not a config error: the path given on the command line
    std::fprintf(stderr, "kiln %s: %s\n", cmd, std::string(ckpt.status().message()).c_str());
    return 1;
  }
  absl::StatusOr<TrainConfig> c = read_config(a, *ckpt, reading);
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
  *args = std::move(a);
  return -1;
}

// eval / sample: a read-only Trainer on the weights the config names; prints where they came from.
// Returns nullptr after printing the error.
std::unique_ptr<Trainer> reading_trainer(const char* cmd, const TrainConfig& cfg,
                                         const parallel::World& world) {
  auto t = std::make_unique<Trainer>(cfg, world);
  t->set_quiet(true);
  t->set_read_only(true);
  absl::StatusOr<TextCodec> codec = make_codec(cfg, world.rank == 0);
  absl::Status s = codec.status();
  if (s.ok()) {
    t->set_codec(std::move(*codec));
    s = t->init();
  }
  if (!s.ok()) {
    std::fprintf(stderr, "kiln %s: %s\n", cmd, std::string(s.message()).c_str());
    return nullptr;
  }
  if (world.rank != 0) return t;
  if (!t->resumed_from().empty()) {
    std::printf("kiln %s: weights: %s (checkpoint, step %lld)\n", cmd, t->resumed_from().c_str(),
                static_cast<long long>(t->steps_done()));
  } else if (!cfg.training().init_from().empty()) {
    std::printf("kiln %s: weights: %s (--init-from)\n", cmd, cfg.training().init_from().c_str());
  } else {
    std::printf("kiln %s: weights: the seeded initialisation (warning: no checkpoint in %s)\n", cmd,
                cfg.checkpoint().dir().c_str());
  }
  return t;
}

}  // namespace

int train_main(int argc, char** argv) {
  TrainConfig cfg;
  parallel::World world;
  Args a;
  if (int rc = load(argc, argv, "train", "Trains the model a config describes.", false, &cfg,
                    &world, &a);
      rc >= 0)
    return rc;
  if (absl::Status s = prepare_run_folder(cfg, a.overwrite, world.rank); !s.ok()) {
    std::fprintf(stderr, "kiln train: %s\n", std::string(s.message()).c_str());
    return 1;
  }
  Trainer t(cfg, world);
  t.set_quiet(a.quiet);
  t.set_exclusive(true);
  absl::StatusOr<TextCodec> codec = make_codec(cfg, world.rank == 0);
  absl::Status s = codec.status();
  if (s.ok()) {
    t.set_codec(std::move(*codec));
    s = t.init();
  }
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
  Args a;
  if (int rc = load(argc, argv, "eval", "Prints the validation loss of a model.", true, &cfg,
                    &world, &a);
      rc >= 0)
    return rc;
  std::unique_ptr<Trainer> t = reading_trainer("eval", cfg, world);
  if (!t) return 1;
  std::printf("val loss %.4f\n", t->evaluate());
  return 0;
}

int sample_main(int argc, char** argv) {
  TrainConfig cfg;
  parallel::World world;
  Args a;
  if (int rc = load(argc, argv, "sample",
                    "Generates text from a model (eval.sample_prompt, eval.sample_tokens).", true,
                    &cfg, &world, &a);
      rc >= 0)
    return rc;
  std::unique_ptr<Trainer> t = reading_trainer("sample", cfg, world);
  if (!t) return 1;
  std::printf("%s\n", t->sample(0).c_str());
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
