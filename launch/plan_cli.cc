// kiln plan: per-rank memory of a config's layout, term by term (launch/memory_plan.h), the
// layouts of a world that fit a GPU's memory, and the measured mem_peak_mib of a run beside the
// prediction.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "core/json.h"
#include "launch/config.h"
#include "launch/memory_plan.h"
#include "launch/pipeline_stage.h"
#include "launch/train_cli.h"
#include "launch/trainer_log.h"
#include "models/presets.h"

namespace kiln::launch {
namespace {

struct PlanArgs {
  std::string config, run, device;
  std::vector<std::string> sets;
  int world = 1;
  double gpu_mem_gib = 0;
  bool json = false, help = false;
  std::string error;
};

PlanArgs parse_plan_args(int argc, char** argv) {
  PlanArgs a;
  for (int i = 1; i < argc && a.error.empty(); ++i) {
    const std::string s = argv[i];
    auto value = [&](const std::string& f) -> std::string {
      if (s.rfind(f + "=", 0) == 0) return s.substr(f.size() + 1);
      if (i + 1 < argc) return argv[++i];
      a.error = f + " needs a value";
      return "";
    };
    auto is = [&](const std::string& f) { return s == f || s.rfind(f + "=", 0) == 0; };
    if (s == "--help" || s == "-h")
      a.help = true;
    else if (s == "--json")
      a.json = true;
    else if (is("--config"))
      a.config = value("--config");
    else if (is("--set"))
      a.sets.push_back(value("--set"));
    else if (is("--run"))
      a.run = value("--run");
    else if (is("--device"))
      a.device = value("--device");
    else if (is("--world")) {
      const std::string v = value("--world");
      if (a.error.empty() && !absl::SimpleAtoi(v, &a.world))
        a.error = "--world: expected a whole number of ranks, got '" + v + "'";
    } else if (is("--gpu-mem")) {
      const std::string v = value("--gpu-mem");
      if (a.error.empty() && (!absl::SimpleAtod(v, &a.gpu_mem_gib) || !(a.gpu_mem_gib > 0)))
        a.error = "--gpu-mem: expected a GPU memory size in GiB (> 0), got '" + v + "'";
    } else
      a.error = "unknown argument '" + s + "'";
  }
  if (a.error.empty() && !a.help && a.config.empty()) a.error = "--config FILE is required";
  if (a.error.empty() && a.world < 1) a.error = "--world must be >= 1";
  if (a.error.empty() && !a.device.empty() && a.device != "cpu" && a.device != "cuda")
    a.error = "--device must be cpu or cuda";
  return a;
}

void print_plan_usage() {
  std::printf(
      "usage: kiln plan --config FILE [--world N] [--set a.b=c ...] [--gpu-mem GiB]\n"
      "                 [--run RUN_DIR] [--device cpu|cuda] [--json]\n\n"
      "Per-rank memory of a training step for the config's layout (parallel.dp / tp / pp,\n"
      "zero_stage, recompute.policy, micro-batch) on a world of N ranks: parameters, gradients,\n"
      "optimizer state, saved activations, the classifier, backward temporaries, and the peak\n"
      "that `mem_peak_mib` (metrics.jsonl, the device allocator's peak) will report. The\n"
      "config's data files are not read (the plan depends on data.seq_len only).\n\n"
      "  --world N       ranks (default 1); dp = N / (tp x pp) unless parallel.dp is set\n"
      "  --gpu-mem GiB   also list every layout of N ranks (dp x tp x pp, ZeRO 0-3, recompute\n"
      "                  none / selective / full) whose predicted peak fits GiB per GPU\n"
      "  --run DIR       print DIR/metrics.jsonl's last mem_peak_mib (rank 0) beside the\n"
      "                  prediction\n"
      "  --device        cpu or cuda (default: the config's device; AUTO plans for a GPU)\n"
      "  --json          one JSON object: the terms and the peak in bytes\n\n"
      "tp or pp > 1 are predictions from theory (1/tp of the sharded weights and activations;\n"
      "each stage's blocks from parallel.pipeline_layers / pipeline_split; the micro-batches in\n"
      "flight from the schedule: 1F1B pp - stage, GPipe the flush, ZB-H1 pp, interleaved more),\n"
      "not measured against runs. docs/SLURM.md explains the terms.\n");
}

const char* recompute_name(models::Recompute r) {
  return r == models::Recompute::kFull        ? "full"
         : r == models::Recompute::kSelective ? "selective"
                                              : "none";
}

double mib(int64_t b) { return static_cast<double>(b) / (1 << 20); }

// The last mem_peak_mib of a train record in RUN_DIR/metrics.jsonl; NaN when there is none.
double measured_peak(const std::string& run_dir, int64_t* step) {
  std::ifstream f(run_dir + "/metrics.jsonl");
  std::string line;
  double peak = NAN;
  while (std::getline(f, line)) {
    absl::StatusOr<JsonValue> v = parse_json(line);
    if (!v.ok()) continue;
    const JsonValue *kind = v->find("kind"), *p = v->find("mem_peak_mib"), *s = v->find("step");
    if (!kind || kind->str != "train" || !p || !p->is_number()) continue;
    peak = p->number;
    if (s) s->as_int64(step);
  }
  return peak;
}

PlanInput plan_input(const TrainConfig& c, const std::string& device) {
  PlanInput in;
  in.spec = models::spec_from_config(c.model());
  in.seq_len = c.data().seq_len();
  in.cuda = device.empty() ? c.device() != TrainConfig::CPU : device == "cuda";
  const PrecisionConfig::Dtype d = c.precision().dtype();
  in.compute = d == PrecisionConfig::FP32   ? DType::kF32
               : d == PrecisionConfig::FP16 ? DType::kF16
               : d == PrecisionConfig::BF16 ? DType::kBF16
               : in.cuda                    ? DType::kBF16
                                            : DType::kF32;
  in.adamw = c.optimizer().type() != OptimizerConfig::SGD;
  in.bucket_mb = c.parallel().bucket_mb();
  return in;
}

PlanLayout config_layout(const TrainConfig& c) {
  PlanLayout l;
  l.dp = c.parallel().dp();
  l.tp = c.parallel().tp();
  l.pp = c.parallel().pp();
  l.zero = c.parallel().zero_stage();
  const RecomputeConfig::Policy p = c.recompute().policy();
  l.recompute = p == RecomputeConfig::FULL        ? models::Recompute::kFull
                : p == RecomputeConfig::SELECTIVE ? models::Recompute::kSelective
                                                  : models::Recompute::kNone;
  l.micro_batch = c.parallel().micro_batch_size();
  l.accum = grad_accumulation_steps(c);
  if (l.pp > 1) {
    const parallel::pipeline::ScheduleSpec s = schedule_spec(c.parallel(), false);
    l.schedule = s.kind;
    l.v = s.virtual_stages;
    l.layers = pipeline_layers(c.parallel(), c.model());
    l.flush = c.parallel().pipeline_micro_batches();
  }
  return l;
}

void print_json(const MemoryPlan& p, double measured) {
  std::printf(
      "{\"peak_bytes\": %lld, \"peak_mib\": %.4f, \"peak_at\": %s, \"stage\": %d, "
      "\"measured\": %s",
      static_cast<long long>(p.peak), mib(p.peak), json_quote(p.peak_at).c_str(), p.stage,
      p.layout.measured() ? "true" : "false");
  if (std::isfinite(measured)) std::printf(", \"measured_mib\": %.4f", measured);
  std::printf(", \"terms\": {");
  for (size_t i = 0; i < p.terms.size(); ++i)
    std::printf("%s%s: %lld", i ? ", " : "", json_quote(p.terms[i].name).c_str(),
                static_cast<long long>(p.terms[i].bytes));
  std::printf("}}\n");
}

void print_table(const TrainConfig& c, const PlanInput& in, const MemoryPlan& p, int world) {
  const PlanLayout& l = p.layout;
  std::printf(
      "kiln plan: %s, %s params, seq %lld, micro-batch %lld x %lld accumulation, %s on %s\n",
      c.model().preset().c_str(), human_count(static_cast<double>(param_count(c.model()))).c_str(),
      static_cast<long long>(in.seq_len), static_cast<long long>(l.micro_batch),
      static_cast<long long>(l.accum), dtype_name(in.compute), in.cuda ? "cuda" : "cpu");
  std::printf("layout: world %d = dp %d x tp %d x pp %d, ZeRO %d, recompute %s%s\n", world, l.dp,
              l.tp, l.pp, l.zero, recompute_name(l.recompute),
              l.measured() ? "" : "  (tp/pp > 1: a prediction, not yet measured)");
  if (l.pp > 1) {
    std::string split;
    for (const auto& [begin, end] : plan_internal::stage_chunks(in.spec, l, p.stage))
      split += (split.empty() ? "" : ", ") + std::to_string(begin) + "-" + std::to_string(end - 1);
    std::printf("pipeline: %s, %d chunk(s) per stage; stage %d holds blocks %s\n",
                parallel::pipeline::schedule_name(l.schedule).c_str(), l.v, p.stage, split.c_str());
  }
  std::printf("per-rank memory at the peak (%s%s):\n", p.peak_at.c_str(),
              l.pp > 1 ? (", pipeline stage " + std::to_string(p.stage)).c_str() : "");
  for (const MemoryTerm& t : p.terms)
    std::printf("  %-28s %10.2f MiB  %s\n", t.name.c_str(), mib(t.bytes), t.how.c_str());
  std::printf("  %-28s %10.2f MiB  (what mem_peak_mib should report)\n", "predicted peak",
              mib(p.peak));
}

void print_fits(const PlanInput& in, const TrainConfig& c, int world, double gib) {
  const int64_t mb = c.parallel().has_micro_batch_size() ? c.parallel().micro_batch_size() : 0;
  std::vector<MemoryPlan> fit;
  for (const PlanLayout& l : all_layouts(in.spec, world, c.training().global_batch_size(), mb)) {
    MemoryPlan p = plan_memory(in, l);
    if (mib(p.peak) <= gib * 1024) fit.push_back(p);
  }
  std::printf(
      "\nlayouts of %d ranks that fit %.1f GiB per rank (* = tp/pp > 1: predicted, not "
      "yet measured):\n",
      world, gib);
  std::printf("  %4s %4s %4s %5s %-10s %6s %12s\n", "dp", "tp", "pp", "ZeRO", "recompute", "micro",
              "peak MiB");
  for (const MemoryPlan& p : fit) {
    const PlanLayout& l = p.layout;
    std::printf("  %4d %4d %4d %5d %-10s %6lld %12.1f%s\n", l.dp, l.tp, l.pp, l.zero,
                recompute_name(l.recompute), static_cast<long long>(l.micro_batch), mib(p.peak),
                l.measured() ? "" : " *");
  }
  if (fit.empty()) std::printf("  none\n");
}

}  // namespace

int plan_main(int argc, char** argv) {
  PlanArgs a = parse_plan_args(argc, argv);
  if (a.help) {
    print_plan_usage();
    return 0;
  }
  if (!a.error.empty()) {
    std::fprintf(stderr, "kiln plan: %s (see kiln plan --help)\n", a.error.c_str());
    return 2;
  }
  // The data is not read: synthetic tokens stand in, so that the shards need not exist here.
  a.sets.insert(a.sets.begin(), "data.synthetic=true");
  absl::StatusOr<TrainConfig> c = load_config(a.config, a.sets);
  absl::Status s = c.ok() ? resolve_world(a.world, &*c) : c.status();
  if (!s.ok()) {
    std::fprintf(stderr, "kiln plan: %s\n", std::string(s.message()).c_str());
    return 1;
  }
  const PlanInput in = plan_input(*c, a.device);
  const MemoryPlan p = plan_memory(in, config_layout(*c));
  int64_t step = -1;
  const double measured = a.run.empty() ? NAN : measured_peak(a.run, &step);
  if (a.json) {
    print_json(p, measured);
    return 0;
  }
  print_table(*c, in, p, a.world);
  if (!a.run.empty()) {
    if (std::isfinite(measured))
      std::printf(
          "measured mem_peak_mib (%s/metrics.jsonl, rank 0, step %lld): %.2f MiB; the "
          "prediction is %+.1f%% of it\n",
          a.run.c_str(), static_cast<long long>(step), measured,
          100.0 * (mib(p.peak) - measured) / measured);
    else
      std::printf("measured: no train record with mem_peak_mib in %s/metrics.jsonl\n",
                  a.run.c_str());
  }
  if (a.gpu_mem_gib > 0) print_fits(in, *c, a.world, a.gpu_mem_gib);
  return 0;
}

}  // namespace kiln::launch
