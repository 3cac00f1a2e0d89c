// DataLoader (see loader.h): shards as one token stream, a per-epoch Feistel permutation of sample
// indices, rank slices of each global batch, and a background thread that prepares the next batches
// for the last (B, T) asked for.
#include "data/loader.h"

#include <condition_variable>
#include <deque>
#include <mutex>
#include <thread>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "core/check.h"
#include "core/random.h"
#include "data/absl_compat.h"
#include "data/io.h"
#include "data/shard.h"

namespace kiln::data {
namespace {

constexpr int kFeistelRounds = 6;

struct Job {
  uint64_t cursor = 0;  // stream position of the global batch's first sample
  int64_t B = 0, T = 0;
  bool operator==(const Job&) const = default;
};

}  // namespace

struct DataLoader::Impl {
  LoaderOptions opts;
  std::vector<std::string> paths;
  std::vector<Shard> shards;
  std::vector<int64_t> starts;  // starts[k] = first global token of shard k; back() = total
  int64_t num_samples = 0;
  int half_bits = 1;
  uint64_t half_mask = 1;

  // Serving state and the prefetcher, under mu.
  std::mutex mu;
  std::condition_variable cv;
  uint64_t consumed = 0;
  std::deque<std::pair<Job, Batch>> ready;  // consecutive jobs of one (B, T) from `consumed` on
  Job plan;                                 // (B, T) to prefetch; plan.B == 0: nothing yet
  bool busy = false;                        // the worker is building `in_flight`
  Job in_flight;
  uint64_t generation = 0;  // bumped when the plan changes; stale work is dropped
  int64_t hits = 0;
  bool stop = false;
  std::thread worker;

  uint64_t global_batch(int64_t B) const { return static_cast<uint64_t>(B) * opts.world_size; }

  uint64_t feistel(uint64_t x, uint64_t key) const {
    uint64_t l = x >> half_bits, r = x & half_mask;
    for (int round = 0; round < kFeistelRounds; ++round) {
      uint64_t f = rng_bits(key + round, r) & half_mask;
      uint64_t nl = r;
      r = l ^ f;
      l = nl;
    }
    return (l << half_bits) | r;
  }

  int64_t sample_at(uint64_t p) const {
    const uint64_t s = static_cast<uint64_t>(num_samples);
    const uint64_t epoch = p / s;
    uint64_t x = p % s;
    if (!opts.shuffle) return static_cast<int64_t>(x);
    // A bijection of [0, 2^(2*half_bits)) restricted to [0, s) by cycle walking.
    const uint64_t key = rng_bits(opts.seed, epoch);
    do {
      x = feistel(x, key);
    } while (x >= s);
    return static_cast<int64_t>(x);
  }

  void read_tokens(int64_t start, int64_t n, int32_t* out) const {
    size_t k = std::upper_bound(starts.begin(), starts.end(), start) - starts.begin() - 1;
    while (n > 0) {
      int64_t off = start - starts[k];
      int64_t take = std::min(n, shards[k].num_tokens() - off);
      shards[k].read(off, take, out);
      out += take;
      start += take;
      n -= take;
      ++k;
    }
  }

  Batch build(const Job& job) const {
    Batch b;
    b.inputs = Tensor::empty({job.B, job.T}, DType::kI32);
    b.targets = Tensor::empty({job.B, job.T}, DType::kI32);
    int32_t* in = b.inputs.data<int32_t>();
    int32_t* tg = b.targets.data<int32_t>();
    std::vector<int32_t> buf(job.T + 1);
    const uint64_t first = job.cursor + static_cast<uint64_t>(opts.rank) * job.B;
    for (int64_t i = 0; i < job.B; ++i) {
      int64_t s = sample_at(first + i);
      b.samples.push_back(s);
      read_tokens(s * opts.max_seq_len, job.T + 1, buf.data());
      std::copy(buf.begin(), buf.end() - 1, in + i * job.T);
      std::copy(buf.begin() + 1, buf.end(), tg + i * job.T);
    }
    return b;
  }

  // The job after the last prepared one, under mu.
  Job next_job() const {
    Job j = plan;
    j.cursor = ready.empty() ? consumed : ready.back().first.cursor + global_batch(plan.B);
    return j;
  }

  void prefetch_loop() {
    std::unique_lock<std::mutex> lock(mu);
    for (;;) {
      cv.wait(lock, [&] {
        return stop || (plan.B > 0 && static_cast<int>(ready.size()) < opts.prefetch);
      });
      if (stop) return;
      Job job = next_job();
      uint64_t gen = generation;
      busy = true;
      in_flight = job;
      lock.unlock();
      Batch batch;
      bool failed = false;
      try {
        batch = build(job);
      } catch (const Error&) {  // a shard that changed under us: Next() builds it again and throws
        failed = true;
      }
      lock.lock();
      busy = false;
      if (failed) {
        cv.notify_all();
        return;  // no more prefetching; Next() builds every batch itself from now on
      }
      if (gen == generation) ready.emplace_back(job, std::move(batch));
      cv.notify_all();
    }
  }
};

std::string LoaderPosition::Serialize() const {
  return absl::StrCat("kiln-loader v1 consumed=", consumed, " seed=", seed, " window=", window,
                      " samples=", num_samples, " shuffle=", shuffle ? 1 : 0);
}

absl::StatusOr<LoaderPosition> LoaderPosition::Parse(std::string_view text) {
  std::vector<absl::string_view> parts = absl::StrSplit(av(text), ' ', absl::SkipEmpty());
  auto bad = [&](absl::string_view why) {
    return absl::InvalidArgumentError(absl::StrCat("bad loader position '", av(text), "': ", why));
  };
  if (parts.size() != 7 || parts[0] != "kiln-loader" || parts[1] != "v1") {
    return bad("expected 'kiln-loader v1 consumed=.. seed=.. window=.. samples=.. shuffle=..'");
  }
  LoaderPosition p;
  const char* keys[] = {"consumed", "seed", "window", "samples", "shuffle"};
  for (int i = 0; i < 5; ++i) {
    std::pair<absl::string_view, absl::string_view> kv = absl::StrSplit(parts[i + 2], '=');
    if (kv.first != keys[i]) return bad(absl::StrCat("expected field ", keys[i]));
    uint64_t v;
    if (!absl::SimpleAtoi(kv.second, &v)) return bad(absl::StrCat("bad number for ", keys[i]));
    switch (i) {
      case 0:
        p.consumed = v;
        break;
      case 1:
        p.seed = v;
        break;
      case 2:
        p.window = static_cast<int64_t>(v);
        break;
      case 3:
        p.num_samples = static_cast<int64_t>(v);
        break;
      default:
        if (v > 1) return bad("shuffle must be 0 or 1");
        p.shuffle = v == 1;
    }
  }
  return p;
}

DataLoader::DataLoader(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

DataLoader::~DataLoader() {
  {
    std::lock_guard<std::mutex> lock(impl_->mu);
    impl_->stop = true;
  }
  impl_->cv.notify_all();
  if (impl_->worker.joinable()) impl_->worker.join();
}

absl::StatusOr<std::unique_ptr<DataLoader>> DataLoader::Open(const LoaderOptions& o) {
  if (o.shards.empty()) return absl::InvalidArgumentError("data loader: no shards given");
  if (o.max_seq_len < 1) return absl::InvalidArgumentError("data loader: max_seq_len must be >= 1");
  if (o.world_size < 1 || o.rank < 0 || o.rank >= o.world_size) {
    return absl::InvalidArgumentError(absl::StrCat(
        "data loader: rank ", o.rank, " is not in [0, world_size=", o.world_size, ")"));
  }
  if (o.prefetch < 0) return absl::InvalidArgumentError("data loader: prefetch must be >= 0");
  auto paths = expand_globs(o.shards);
  if (!paths.ok()) return paths.status();
  auto impl = std::make_unique<Impl>();
  impl->opts = o;
  impl->paths = *paths;
  impl->starts.push_back(0);
  for (const std::string& p : impl->paths) {
    auto shard = Shard::Open(p, o.vocab_size);
    if (!shard.ok()) return shard.status();
    impl->starts.push_back(impl->starts.back() + shard->num_tokens());
    impl->shards.push_back(*std::move(shard));
  }
  const int64_t total = impl->starts.back();
  impl->num_samples = (total - 1) / o.max_seq_len;
  if (impl->num_samples < 1) {
    return absl::InvalidArgumentError(absl::StrCat(
        "data loader: ", impl->paths.size(), " shard(s) starting with ", impl->paths[0], " hold ",
        total, " tokens, fewer than one window of max_seq_len + 1 = ", o.max_seq_len + 1));
  }
  int bits = 2;
  while ((uint64_t{1} << bits) < static_cast<uint64_t>(impl->num_samples)) bits += 2;
  impl->half_bits = bits / 2;
  impl->half_mask = (uint64_t{1} << impl->half_bits) - 1;
  std::unique_ptr<DataLoader> loader(new DataLoader(std::move(impl)));
  if (o.prefetch > 0) {
    Impl* raw = loader->impl_.get();
    raw->worker = std::thread([raw] { raw->prefetch_loop(); });
  }
  return loader;
}

Batch DataLoader::Next(int64_t B, int64_t T) {
  Impl& m = *impl_;
  KILN_CHECK(B >= 1) << "batch size " << B;
  KILN_CHECK(T >= 1 && T <= m.opts.max_seq_len)
      << "sequence length " << T << " not in [1, max_seq_len=" << m.opts.max_seq_len << "]";
  std::unique_lock<std::mutex> lock(m.mu);
  const Job want{m.consumed, B, T};
  Batch out;
  bool have = false;
  if (m.opts.prefetch > 0) {
    // The worker may be building exactly this batch: wait for it rather than build it twice.
    m.cv.wait(lock, [&] { return !(m.busy && m.in_flight == want && m.ready.empty()); });
    if (!m.ready.empty() && m.ready.front().first == want) {
      out = std::move(m.ready.front().second);
      m.ready.pop_front();
      have = true;
      ++m.hits;
    }
  }
  if (!have) {
    m.ready.clear();
    ++m.generation;
    lock.unlock();
    out = m.build(want);
    lock.lock();
  }
  m.consumed += m.global_batch(B);
  if (!(m.plan.B == B && m.plan.T == T)) {
    m.ready.clear();
    ++m.generation;
    m.plan = Job{0, B, T};
  }
  m.cv.notify_all();
  return out;
}

LoaderPosition DataLoader::Position() const {
  std::lock_guard<std::mutex> lock(impl_->mu);
  LoaderPosition p;
  p.consumed = impl_->consumed;
  p.seed = impl_->opts.seed;
  p.window = impl_->opts.max_seq_len;
  p.num_samples = impl_->num_samples;
  p.shuffle = impl_->opts.shuffle;
  return p;
}

absl::Status DataLoader::Restore(const LoaderPosition& pos) {
  Impl& m = *impl_;
  auto mismatch = [&](absl::string_view what, auto ours, auto theirs) {
    return absl::FailedPreconditionError(absl::StrCat(
        "loader position is for another sample space: ", what, " ", theirs, " in the position, ",
        ours, " here (shards ", m.paths[0], ", ... ", m.paths.size(), " files)"));
  };
  if (pos.num_samples != m.num_samples) return mismatch("samples", m.num_samples, pos.num_samples);
  if (pos.window != m.opts.max_seq_len) return mismatch("window", m.opts.max_seq_len, pos.window);
  if (pos.seed != m.opts.seed) return mismatch("seed", m.opts.seed, pos.seed);
  if (pos.shuffle != m.opts.shuffle) return mismatch("shuffle", m.opts.shuffle, pos.shuffle);
  std::lock_guard<std::mutex> lock(m.mu);
  m.consumed = pos.consumed;
  m.ready.clear();
  ++m.generation;
  m.cv.notify_all();
  return absl::OkStatus();
}

int64_t DataLoader::num_samples() const { return impl_->num_samples; }
int64_t DataLoader::num_tokens() const { return impl_->starts.back(); }
int64_t DataLoader::epoch() const {
  std::lock_guard<std::mutex> lock(impl_->mu);
  return static_cast<int64_t>(impl_->consumed / static_cast<uint64_t>(impl_->num_samples));
}
const std::vector<std::string>& DataLoader::shard_paths() const { return impl_->paths; }
int64_t DataLoader::prefetch_hits() const {
  std::lock_guard<std::mutex> lock(impl_->mu);
  return impl_->hits;
}
int64_t DataLoader::SampleAt(uint64_t p) const { return impl_->sample_at(p); }
void DataLoader::ReadSample(int64_t s, int64_t n, int32_t* out) const {
  KILN_CHECK(s >= 0 && s < impl_->num_samples) << "sample " << s;
  KILN_CHECK(n >= 0 && n <= impl_->opts.max_seq_len + 1) << "length " << n;
  impl_->read_tokens(s * impl_->opts.max_seq_len, n, out);
}

}  // namespace kiln::data
