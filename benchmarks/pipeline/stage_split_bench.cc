// The pieces of ZB-H1's theory on a real model: one process times, for the first and the last
// pipeline stage of the GPT-2 of gpt2_pp2.textproto (4 blocks of width 512, pp = 2, micro-batches
// of 1 x 128 tokens, fp32, one thread), the forward f, the whole backward b, the split backward's
// input pass bi and weight pass w (autograd's backward_input_only / run_weights), medians of
// --reps runs. Prints them and the step-time ratio ZB-H1 / 1F1B that schedule.h's theory gives
// with the last stage's times: (m (f + b) + (p - 1)(f + bi - w)) / ((m + p - 1)(f + b)).
// Run: KILN_NUM_THREADS=1 stage_split_bench [--reps N] [--m M].
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <vector>

#include "benchmarks/pipeline/bench_model.h"
#include "core/autograd.h"
#include "launch/pipeline_stage.h"
#include "models/model.h"
#include "models/presets.h"

namespace kiln {
namespace {

double ms_of(const std::function<void()>& fn) {
  const auto t0 = std::chrono::steady_clock::now();
  fn();
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

struct Times {
  double f, b, bi, w;
};

// Medians over `reps` of the stage's forward, whole backward, and split passes.
Times time_stage(models::LanguageModel& m, const Tensor& ids, int reps) {
  const int64_t c = m.spec().d_model;
  std::vector<double> f, b, bi, w;
  for (int r = 0; r < reps + 1; ++r) {  // the first run warms up
    for (int split = 0; split < 2; ++split) {
      Tensor x = Tensor::full({1, ids.size(1), c}, 0.01).set_requires_grad(true);
      Tensor out;
      const double tf = ms_of([&] {
        Tensor h = m.stage().embedding ? m.embed(ids) : x;
        for (int i = 0; i < m.num_blocks(); ++i) h = m.run_block(i, h);
        out = m.stage().head ? m.head_loss(h, ids) : h;
      });
      const Tensor g = m.stage().head ? Tensor() : Tensor::full(out.shape(), 1e-3);
      // As ModelStageWork: the stage's input and GPT-2's tied classifier copy in the input pass.
      std::vector<Tensor> inputs;
      if (!m.stage().embedding) inputs.push_back(x);
      if (Tensor tied = launch::tied_copy(m); tied.defined()) inputs.push_back(tied);
      if (split) {
        DeferredWeights d;
        const double ti = ms_of([&] { d = backward_input_only({out}, {g}, inputs); });
        const double tw = ms_of([&] { run_weights(std::move(d)); });
        if (r > 0) bi.push_back(ti), w.push_back(tw);
      } else {
        const double tb = ms_of([&] { backward({out}, {g}); });
        if (r > 0) f.push_back(tf), b.push_back(tb);
      }
      for (const nn::Parameter& p : m.parameters()) Tensor(p.tensor).set_grad(Tensor());
    }
  }
  return {median(f), median(b), median(bi), median(w)};
}

}  // namespace
}  // namespace kiln

int main(int argc, char** argv) {
  using namespace kiln;
  int reps = 10, m = 8;
  for (int i = 1; i + 1 < argc; i += 2) {
    if (!std::strcmp(argv[i], "--reps")) reps = std::atoi(argv[i + 1]);
    if (!std::strcmp(argv[i], "--m")) m = std::atoi(argv[i + 1]);
  }
  const models::ModelSpec spec = bench::pipeline_bench_spec();
  std::vector<int64_t> v(128);
  for (size_t i = 0; i < v.size(); ++i) v[i] = static_cast<int64_t>((i * 37) % 512);
  const Tensor ids = Tensor::from_ints(v, {1, 128});
  const int p = 2;
  Times last{};
  for (int vs = 0; vs < p; ++vs) {
    auto stage = models::build_stage(spec, 1337, {vs == 0, vs * 2, vs * 2 + 2, vs == p - 1});
    const Times t = time_stage(*stage, ids, reps);
    std::printf("stage %d: f %.1f ms, b %.1f ms, split: bi %.1f ms + w %.1f ms\n", vs, t.f, t.b,
                t.bi, t.w);
    last = t;
  }
  const double zb = m * (last.f + last.b) + (p - 1) * (last.f + last.bi - last.w);
  const double one = (m + p - 1) * (last.f + last.b);
  std::printf(
      "theory with the last stage's times, m = %d: 1F1B %.0f ms, ZB-H1 %.0f ms, ratio %.3f\n", m,
      one, zb, zb / one);
  return 0;
}
