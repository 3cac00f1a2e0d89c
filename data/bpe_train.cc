// Byte-level BPE training (see bpe_train.h): parallel piece counting, then incremental pair counts
// with a lazily-updated max-heap and, per pair, the words that contain it.
#include "data/bpe_train.h"

#include <algorithm>
#include <queue>
#include <thread>

#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/strings/str_cat.h"
#include "data/absl_compat.h"
#include "data/pretokenize.h"

namespace kiln::data {
namespace {

using PieceCounts = absl::flat_hash_map<std::string, int64_t>;

inline uint64_t pair_key(int32_t a, int32_t b) {
  return (static_cast<uint64_t>(static_cast<uint32_t>(a)) << 32) | static_cast<uint32_t>(b);
}

void count_pieces(std::string_view text, PieceCounts* counts) {
  Pretokenizer p(text);
  std::string_view piece;
  while (p.next(&piece)) ++(*counts)[av(piece)];
}

struct HeapEntry {
  int64_t count;
  int32_t a, b;
  // Max-heap on count; among equal counts the smallest (a, b) comes first.
  bool operator<(const HeapEntry& o) const {
    if (count != o.count) return count < o.count;
    return std::tie(a, b) > std::tie(o.a, o.b);
  }
};

class Trainer {
 public:
  Trainer(const PieceCounts& counts, const BpeTrainOptions& opt) : opt_(opt) {
    std::vector<std::pair<std::string, int64_t>> sorted(counts.begin(), counts.end());
    std::sort(sorted.begin(), sorted.end());  // deterministic word order
    const std::vector<uint8_t>& order = byte_order();
    int32_t id_of_byte[256];
    for (int id = 0; id < 256; ++id) {
      id_of_byte[order[id]] = id;
      tokens_.emplace_back(1, static_cast<char>(order[id]));
      token_set_.insert(tokens_.back());
    }
    for (auto& [piece, count] : sorted) {
      std::vector<int32_t> syms;
      for (char c : piece) syms.push_back(id_of_byte[static_cast<uint8_t>(c)]);
      const int32_t w = static_cast<int32_t>(words_.size());
      for (size_t i = 0; i + 1 < syms.size(); ++i) {
        uint64_t k = pair_key(syms[i], syms[i + 1]);
        pair_counts_[k] += count;
        pair_words_[k].push_back(w);
      }
      words_.push_back(std::move(syms));
      word_counts_.push_back(count);
    }
    for (const auto& [k, c] : pair_counts_) {
      heap_.push({c, static_cast<int32_t>(k >> 32), static_cast<int32_t>(k & 0xFFFFFFFFu)});
    }
  }

  absl::StatusOr<Tokenizer> Run() {
    const int64_t want_merges = opt_.vocab_size - 256 - 1;
    while (static_cast<int64_t>(merges_.size()) < want_merges && !heap_.empty()) {
      HeapEntry e = heap_.top();
      heap_.pop();
      const uint64_t k = pair_key(e.a, e.b);
      auto it = pair_counts_.find(k);
      const int64_t cur = it == pair_counts_.end() ? 0 : it->second;
      if (cur != e.count) {  // stale entry
        if (cur > 0) heap_.push({cur, e.a, e.b});
        continue;
      }
      if (cur < opt_.min_frequency) break;
      std::string bytes = tokens_[e.a] + tokens_[e.b];
      if (!token_set_.insert(bytes).second) {
        pair_counts_.erase(k);  // these bytes are already a token: never merge this pair
        continue;
      }
      const int32_t id = static_cast<int32_t>(tokens_.size());
      tokens_.push_back(std::move(bytes));
      merges_.emplace_back(e.a, e.b);
      apply(e.a, e.b, id);
    }
    tokens_.emplace_back(kEndOfText);
    return Tokenizer::FromTokens(std::move(tokens_), std::move(merges_));
  }

 private:
  // Merges (a, b) -> id in every word holding it and updates the pair counts.
  void apply(int32_t a, int32_t b, int32_t id) {
    const uint64_t key = pair_key(a, b);
    std::vector<int32_t> ws = std::move(pair_words_[key]);
    pair_words_.erase(key);
    std::sort(ws.begin(), ws.end());
    ws.erase(std::unique(ws.begin(), ws.end()), ws.end());
    absl::flat_hash_set<uint64_t> grown;
    for (int32_t w : ws) {
      std::vector<int32_t>& s = words_[w];
      const int64_t c = word_counts_[w];
      bool has = false;
      for (size_t i = 0; i + 1 < s.size() && !has; ++i) has = s[i] == a && s[i + 1] == b;
      if (!has) continue;  // stale: an earlier merge already consumed it
      for (size_t i = 0; i + 1 < s.size(); ++i) pair_counts_[pair_key(s[i], s[i + 1])] -= c;
      size_t out = 0;
      for (size_t i = 0; i < s.size();) {
        if (i + 1 < s.size() && s[i] == a && s[i + 1] == b) {
          s[out++] = id;
          i += 2;
        } else {
          s[out++] = s[i++];
        }
      }
      s.resize(out);
      for (size_t i = 0; i + 1 < s.size(); ++i) {
        const uint64_t k = pair_key(s[i], s[i + 1]);
        pair_counts_[k] += c;
        if (s[i] == id || s[i + 1] == id) {
          pair_words_[k].push_back(w);
          grown.insert(k);
        }
      }
    }
    pair_counts_.erase(key);
    std::vector<uint64_t> g(grown.begin(), grown.end());
    std::sort(g.begin(), g.end());
    for (uint64_t k : g) {
      heap_.push(
          {pair_counts_[k], static_cast<int32_t>(k >> 32), static_cast<int32_t>(k & 0xFFFFFFFFu)});
    }
  }

  BpeTrainOptions opt_;
  std::vector<std::string> tokens_;
  absl::flat_hash_set<std::string> token_set_;
  std::vector<std::pair<int32_t, int32_t>> merges_;
  std::vector<std::vector<int32_t>> words_;
  std::vector<int64_t> word_counts_;
  absl::flat_hash_map<uint64_t, int64_t> pair_counts_;
  absl::flat_hash_map<uint64_t, std::vector<int32_t>> pair_words_;
  std::priority_queue<HeapEntry> heap_;
};

absl::Status check(const BpeTrainOptions& o) {
  if (o.vocab_size < 257) {
    return absl::InvalidArgumentError(absl::StrCat(
        "vocabulary size must be >= 257 (256 bytes + <|endoftext|>), got ", o.vocab_size));
  }
  if (o.vocab_size > (int64_t{1} << 31) - 1)
    return absl::InvalidArgumentError("vocabulary too large");
  if (o.min_frequency < 1) return absl::InvalidArgumentError("min frequency must be >= 1");
  return absl::OkStatus();
}

// Counts pieces of texts [0, n) on `threads` threads (text(i) gives the i-th), merging in order.
template <typename TextFn>
absl::StatusOr<PieceCounts> count_all(int64_t n, int threads, TextFn text) {
  threads = threads > 0 ? threads : std::max(1u, std::thread::hardware_concurrency());
  std::vector<PieceCounts> partial(threads);
  std::vector<absl::Status> errors(threads);
  std::vector<std::thread> pool;
  for (int t = 0; t < threads; ++t) {
    pool.emplace_back([&, t] {
      std::string storage;
      for (int64_t i = t; i < n; i += threads) {
        auto s = text(i, &storage);
        if (!s.ok()) {
          errors[t] = s.status();
          return;
        }
        count_pieces(*s, &partial[t]);
      }
    });
  }
  for (auto& th : pool) th.join();
  for (const auto& e : errors) {
    if (!e.ok()) return e;
  }
  PieceCounts total = std::move(partial[0]);
  for (int t = 1; t < threads; ++t) {
    for (auto& [k, v] : partial[t]) total[k] += v;
  }
  return total;
}

}  // namespace

absl::StatusOr<Tokenizer> train_bpe(const DocumentSource& source, const BpeTrainOptions& options) {
  if (auto st = check(options); !st.ok()) return st;
  std::vector<RawDocument> docs;
  source.ForEach([&](const RawDocument& d) {
    docs.push_back(d);
    return true;
  });
  if (docs.empty()) return absl::InvalidArgumentError("empty input: no documents to train on");
  auto counts = count_all(
      static_cast<int64_t>(docs.size()), options.threads,
      [&](int64_t i, std::string* storage) { return source.DocumentText(docs[i], storage); });
  if (!counts.ok()) return counts.status();
  return Trainer(*counts, options).Run();
}

absl::StatusOr<Tokenizer> train_bpe(const std::vector<std::string>& texts,
                                    const BpeTrainOptions& options) {
  if (auto st = check(options); !st.ok()) return st;
  auto counts = count_all(static_cast<int64_t>(texts.size()), options.threads,
                          [&](int64_t i, std::string*) -> absl::StatusOr<std::string_view> {
                            return std::string_view(texts[i]);
                          });
  if (!counts.ok()) return counts.status();
  return Trainer(*counts, options).Run();
}

}  // namespace kiln::data
