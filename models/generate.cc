// Sampling loop.
#include "models/generate.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "core/autograd.h"
#include "core/check.h"

namespace kiln::models {

std::vector<int64_t> generate(LanguageModel& model, const std::vector<int64_t>& prompt,
                              const SampleOptions& opts, Generator& gen) {
  KILN_CHECK(!prompt.empty()) << "generate: empty prompt";
  KILN_CHECK(opts.temperature > 0) << "generate: temperature must be > 0";
  NoGradGuard ng;
  const bool was_training = model.training();
  model.set_training(false);
  const ModelSpec& s = model.spec();
  const Device device = model.parameters()[0].tensor.device();
  std::vector<int64_t> ids = prompt;
  for (int64_t step = 0; step < opts.max_new_tokens; ++step) {
    const int64_t n = std::min<int64_t>(static_cast<int64_t>(ids.size()), s.max_seq_len);
    std::vector<int64_t> ctx(ids.end() - n, ids.end());
    Tensor x = Tensor::from_ints(ctx, {1, n}, DType::kI32, device);
    Tensor logits = model.forward(x);  // (1, n, Vp)
    std::vector<double> last = logits.narrow(1, n - 1, 1).to_vector();
    last.resize(s.vocab_size);  // drop padded rows
    const double mx = *std::max_element(last.begin(), last.end());
    std::vector<double> p(last.size());
    for (size_t i = 0; i < p.size(); ++i) p[i] = std::exp((last[i] - mx) / opts.temperature);
    if (opts.top_k > 0 && opts.top_k < static_cast<int64_t>(p.size())) {
      std::vector<double> sorted = p;
      std::nth_element(sorted.begin(), sorted.begin() + (opts.top_k - 1), sorted.end(),
                       std::greater<double>());
      const double kth = sorted[opts.top_k - 1];
      for (double& v : p)
        if (v < kth) v = 0;
    }
    const double total = std::accumulate(p.begin(), p.end(), 0.0);
    double u = rng_uniform(gen.seed(), gen.reserve(1)) * total;
    int64_t pick = static_cast<int64_t>(p.size()) - 1;
    for (size_t i = 0; i < p.size(); ++i) {
      u -= p[i];
      if (u < 0) {
        pick = static_cast<int64_t>(i);
        break;
      }
    }
    ids.push_back(pick);
    if (pick == opts.stop_token) break;
  }
  model.set_training(was_training);
  return ids;
}

}  // namespace kiln::models
