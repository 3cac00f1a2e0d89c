// prepare-data pipeline (see prepare.h): a producer thread cuts documents into units, worker
// threads tokenize units, the calling thread writes results in unit order into train/val shard
// writers.
#include "data/prepare.h"

#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <filesystem>
#include <map>
#include <mutex>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "data/dataset_manifest.h"
#include "data/io.h"
#include "data/shard.h"

namespace kiln::data {
namespace {

// Where prepare-data writes the new shards until they are complete: a crash or a bad input never
// touches the dataset already in output_dir, and a glob never sees a partial one.
std::string stage_dir(const PrepareOptions& o) {
  return absl::StrCat(o.output_dir, "/.prepare-", o.name, ".tmp");
}

double now_seconds() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

std::string human(double v) {
  if (v >= 1e9) return absl::StrFormat("%.2fG", v / 1e9);
  if (v >= 1e6) return absl::StrFormat("%.2fM", v / 1e6);
  if (v >= 1e3) return absl::StrFormat("%.1fk", v / 1e3);
  return absl::StrFormat("%.0f", v);
}

std::string clock_time(double s) {
  int64_t t = static_cast<int64_t>(s + 0.5);
  if (t >= 3600) return absl::StrFormat("%d:%02d:%02d", t / 3600, (t / 60) % 60, t % 60);
  return absl::StrFormat("%d:%02d", t / 60, t % 60);
}

// Writes one split (train or val) into consecutive shards of at most shard_tokens tokens.
class SplitWriter {
 public:
  SplitWriter(std::string prefix, int64_t shard_tokens, int token_bytes)
      : prefix_(std::move(prefix)), shard_tokens_(shard_tokens), token_bytes_(token_bytes) {}

  absl::Status Append(std::span<const int32_t> tokens) {
    while (!tokens.empty()) {
      if (!cur_) {
        std::string path = absl::StrFormat("%s_%06d.bin", prefix_, paths_.size());
        auto w = ShardWriter::Create(path, token_bytes_);
        if (!w.ok()) return w.status();
        cur_ = *std::move(w);
        paths_.push_back(path);
      }
      size_t room = static_cast<size_t>(shard_tokens_ - cur_->num_tokens());
      size_t n = std::min(room, tokens.size());
      if (auto st = cur_->Append(tokens.first(n)); !st.ok()) return st;
      tokens = tokens.subspan(n);
      total_ += static_cast<int64_t>(n);
      if (cur_->num_tokens() == shard_tokens_) {
        if (auto st = Finish(); !st.ok()) return st;
      }
    }
    return absl::OkStatus();
  }
  absl::Status Finish() {
    if (!cur_) return absl::OkStatus();
    absl::Status st = cur_->Close();
    cur_.reset();
    return st;
  }
  // Removes every shard this writer created (after an error).
  void Discard() {
    cur_.reset();
    for (const auto& p : paths_) ::unlink(p.c_str());
  }
  const std::vector<std::string>& paths() const { return paths_; }
  int64_t total() const { return total_; }

 private:
  std::string prefix_;
  int64_t shard_tokens_;
  int token_bytes_;
  std::unique_ptr<ShardWriter> cur_;
  std::vector<std::string> paths_;
  int64_t total_ = 0;
};

struct Unit {
  int64_t seq = 0;
  int64_t first_doc = 0;  // global index of docs[0]
  int64_t bytes = 0;
  std::vector<RawDocument> docs;
};

struct UnitResult {
  std::vector<int32_t> train, val;
  int64_t train_docs = 0, val_docs = 0, bytes = 0;
};

// The pipeline's shared state, all under `mu`.
struct Pipeline {
  std::mutex mu;
  std::condition_variable cv;
  std::deque<Unit> queue;
  std::map<int64_t, UnitResult> results;
  int64_t produced = 0, next_write = 0;
  bool producer_done = false;
  absl::Status error;
  size_t queue_cap = 8;
  int64_t max_inflight = 16;
};

absl::Status tokenize_unit(const Unit& unit, const DocumentSource& src, const Tokenizer& tok,
                           int64_t n_val, int64_t n_docs, UnitResult* out) {
  std::string storage;
  for (size_t k = 0; k < unit.docs.size(); ++k) {
    auto text = src.DocumentText(unit.docs[k], &storage);
    if (!text.ok()) return text.status();
    const bool val =
        is_validation_document(unit.first_doc + static_cast<int64_t>(k), n_val, n_docs);
    std::vector<int32_t>& dst = val ? out->val : out->train;
    dst.push_back(tok.eot());
    tok.encode(*text, &dst);
    ++(val ? out->val_docs : out->train_docs);
  }
  out->bytes = unit.bytes;
  return absl::OkStatus();
}

void producer(Pipeline& p, const DocumentSource& src, int64_t unit_bytes) {
  Unit cur;
  int64_t doc_index = 0;
  auto push = [&]() -> bool {
    std::unique_lock<std::mutex> lock(p.mu);
    p.cv.wait(lock, [&] { return p.queue.size() < p.queue_cap || !p.error.ok(); });
    if (!p.error.ok()) return false;
    cur.seq = p.produced++;
    p.queue.push_back(std::move(cur));
    p.cv.notify_all();
    cur = Unit();
    cur.first_doc = doc_index;
    return true;
  };
  src.ForEach([&](const RawDocument& doc) {
    cur.docs.push_back(doc);
    cur.bytes += static_cast<int64_t>(doc.raw.size());
    ++doc_index;
    if (cur.bytes >= unit_bytes) return push();
    return true;
  });
  if (!cur.docs.empty()) push();
  std::lock_guard<std::mutex> lock(p.mu);
  p.producer_done = true;
  p.cv.notify_all();
}

void worker(Pipeline& p, const DocumentSource& src, const Tokenizer& tok, int64_t n_val,
            int64_t n_docs) {
  for (;;) {
    Unit unit;
    {
      std::unique_lock<std::mutex> lock(p.mu);
      p.cv.wait(lock, [&] {
        return !p.error.ok() || (p.queue.empty() && p.producer_done) ||
               (!p.queue.empty() && p.queue.front().seq < p.next_write + p.max_inflight);
      });
      if (!p.error.ok() || p.queue.empty()) return;
      unit = std::move(p.queue.front());
      p.queue.pop_front();
      p.cv.notify_all();
    }
    UnitResult result;
    absl::Status st = tokenize_unit(unit, src, tok, n_val, n_docs, &result);
    std::lock_guard<std::mutex> lock(p.mu);
    if (!st.ok()) {
      if (p.error.ok()) p.error = st;
    } else {
      p.results.emplace(unit.seq, std::move(result));
    }
    p.cv.notify_all();
  }
}

absl::Status check_options(const PrepareOptions& o) {
  if (o.output_dir.empty()) return absl::InvalidArgumentError("no output directory given");
  if (o.name.empty() || o.name.find('/') != std::string::npos) {
    return absl::InvalidArgumentError(absl::StrCat("invalid shard name '", o.name, "'"));
  }
  if (o.shard_tokens <= 0 || o.shard_tokens > kMaxShardTokens) {
    return absl::InvalidArgumentError(absl::StrCat("shard size must be in [1, ", kMaxShardTokens,
                                                   "] tokens, got ", o.shard_tokens));
  }
  if (!(o.val_fraction >= 0 && o.val_fraction < 1)) {
    return absl::InvalidArgumentError(
        absl::StrCat("validation fraction must be in [0, 1), got ", o.val_fraction));
  }
  if (o.threads < 0) return absl::InvalidArgumentError("threads must be >= 0");
  if (o.unit_bytes <= 0) return absl::InvalidArgumentError("unit_bytes must be > 0");
  return absl::OkStatus();
}

// Existing shards of this name: an error without `overwrite`. Nothing is removed here: the old
// dataset stays whole until the new one is complete (commit_dataset).
absl::Status check_old_shards(const PrepareOptions& o) {
  if (o.overwrite) return absl::OkStatus();
  for (const char* split : {"train", "val"}) {
    auto old = expand_globs({absl::StrCat(o.output_dir, "/", o.name, "_", split, "_*.bin")});
    if (!old.ok()) continue;  // nothing there
    return absl::AlreadyExistsError(
        absl::StrCat((*old)[0], " already exists (", old->size(), " ", split, " shard(s) named '",
                     o.name, "' in ", o.output_dir, "); pass --overwrite to replace them"));
  }
  return absl::OkStatus();
}

// The manifest of the shards written into the staging directory (sizes and CRC32C read back).
absl::StatusOr<DatasetManifest> staged_manifest(const PrepareOptions& o, const Tokenizer& tok,
                                                const PrepareResult& res,
                                                const std::vector<std::string>& val,
                                                const std::vector<std::string>& train) {
  DatasetManifest m;
  m.name = o.name;
  m.vocab_size = tok.vocab_size();
  m.eot = tok.eot();
  m.tokenizer_crc32c = tokenizer_identity(tok);
  m.train_documents = res.train_documents;
  m.val_documents = res.val_documents;
  m.train_tokens = res.train_tokens;
  m.val_tokens = res.val_tokens;
  for (const auto* list : {&val, &train}) {
    for (const std::string& path : *list) {
      absl::StatusOr<Shard> sh = Shard::Open(path, 0);
      if (!sh.ok()) return sh.status();
      absl::StatusOr<uint32_t> crc = file_crc32c(path);
      if (!crc.ok()) return crc.status();
      const std::string base = std::filesystem::path(path).filename().string();
      m.shards.push_back(
          {base, list == &val ? "val" : "train", sh->num_tokens(),
           static_cast<int64_t>(kShardHeaderBytes + sh->num_tokens() * sh->token_bytes()), *crc});
    }
  }
  return m;
}

// Swaps the staged dataset in: the manifest first says `complete: false` (training refuses the
// shards from here on), the old shards go, the new ones are renamed in, and the complete manifest
// is the commit point. Only a kill inside these few renames leaves a dataset training refuses.
absl::Status commit_dataset(const PrepareOptions& o, DatasetManifest m) {
  const std::string final_manifest = manifest_path(o.output_dir, o.name);
  const std::string stage = stage_dir(o);
  m.complete = false;
  if (absl::Status s = write_manifest(final_manifest, m); !s.ok()) return s;
  for (const char* split : {"train", "val"}) {
    auto old = expand_globs({absl::StrCat(o.output_dir, "/", o.name, "_", split, "_*.bin")});
    if (old.ok())
      for (const auto& p : *old) ::unlink(p.c_str());
  }
  for (const ManifestShard& sh : m.shards) {
    const std::string from = stage + "/" + sh.file, to = o.output_dir + "/" + sh.file;
    if (std::rename(from.c_str(), to.c_str()) != 0)
      return absl::UnavailableError(
          absl::StrCat("cannot rename ", from, " to ", to, ": ", std::strerror(errno)));
  }
  m.complete = true;
  if (absl::Status s = write_manifest(final_manifest, m); !s.ok()) return s;
  std::error_code ec;
  std::filesystem::remove_all(stage, ec);
  return absl::OkStatus();
}

}  // namespace

bool is_validation_document(int64_t index, int64_t n_val, int64_t n_docs) {
  if (n_val <= 0 || n_docs <= 0) return false;
  auto floor_div = [&](int64_t i) {
    return static_cast<int64_t>((static_cast<__int128>(i) * n_val) / n_docs);
  };
  return floor_div(index + 1) > floor_div(index);
}

absl::StatusOr<PrepareResult> prepare_data(const PrepareOptions& o, const Tokenizer& tok) {
  const double t0 = now_seconds();
  if (auto st = check_options(o); !st.ok()) return st;
  if (tok.eot() < 0) {
    return absl::InvalidArgumentError(
        "the tokenizer has no <|endoftext|> token to separate documents");
  }
  auto src = DocumentSource::Open(o.inputs, o.documents);
  if (!src.ok()) return src.status();
  const int64_t n_docs = src->CountDocuments();
  if (n_docs == 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "empty input: no documents in ", src->files().size(), " file(s), first ", src->files()[0]));
  }
  const int64_t n_val = o.val_docs >= 0
                            ? std::min(o.val_docs, n_docs)
                            : std::llround(o.val_fraction * static_cast<double>(n_docs));
  if (n_val >= n_docs) {
    return absl::InvalidArgumentError(
        absl::StrCat("all ", n_docs, " documents would be validation; none left to train on"));
  }
  if (auto st = make_dirs(o.output_dir); !st.ok()) return st;
  if (auto st = check_old_shards(o); !st.ok()) return st;
  std::error_code ec;
  std::filesystem::remove_all(stage_dir(o), ec);  // an interrupted run's leftovers
  if (auto st = make_dirs(stage_dir(o)); !st.ok()) return st;

  const int token_bytes = shard_token_bytes(tok.vocab_size());
  const std::string prefix = absl::StrCat(stage_dir(o), "/", o.name);
  SplitWriter train(prefix + "_train", o.shard_tokens, token_bytes);
  SplitWriter val(prefix + "_val", o.shard_tokens, token_bytes);
  const int threads = o.threads > 0 ? o.threads : std::max(1u, std::thread::hardware_concurrency());

  Pipeline p;
  p.queue_cap = 2 * threads + 2;
  p.max_inflight = 4 * threads + 4;
  std::thread prod(producer, std::ref(p), std::cref(*src), o.unit_bytes);
  std::vector<std::thread> workers;
  for (int t = 0; t < threads; ++t) {
    workers.emplace_back(worker, std::ref(p), std::cref(*src), std::cref(tok), n_val, n_docs);
  }

  PrepareResult res;
  res.documents = n_docs;
  ProgressBar bar(src->total_bytes(), o.progress);
  absl::Status status;
  for (;;) {
    UnitResult r;
    {
      std::unique_lock<std::mutex> lock(p.mu);
      p.cv.wait(lock, [&] {
        return !p.error.ok() || p.results.count(p.next_write) ||
               (p.producer_done && p.next_write == p.produced);
      });
      if (!p.error.ok()) {
        status = p.error;
        break;
      }
      auto it = p.results.find(p.next_write);
      if (it == p.results.end()) break;  // all written
      r = std::move(it->second);
      p.results.erase(it);
    }
    status = train.Append(r.train);
    if (status.ok()) status = val.Append(r.val);
    res.train_documents += r.train_docs;
    res.val_documents += r.val_docs;
    res.bytes += r.bytes;
    bar.Update(res.bytes, train.total() + val.total());
    std::lock_guard<std::mutex> lock(p.mu);
    if (!status.ok()) {
      p.error = status;
      p.cv.notify_all();
      break;
    }
    ++p.next_write;
    p.cv.notify_all();
  }
  prod.join();
  for (auto& w : workers) w.join();
  if (status.ok()) status = train.Finish();
  if (status.ok()) status = val.Finish();
  res.train_tokens = train.total();
  res.val_tokens = val.total();
  absl::StatusOr<DatasetManifest> manifest =
      status.ok() ? staged_manifest(o, tok, res, val.paths(), train.paths())
                  : absl::StatusOr<DatasetManifest>(status);
  if (manifest.ok()) {
    // Test hook (tests/safety_process_test.py): a pause with the new dataset staged, to be killed.
    if (const char* d = std::getenv("KILN_PREPARE_TEST_DELAY_MS")) {
      std::fprintf(stderr, "prepare-data: staged, committing in %s ms\n", d);
      std::this_thread::sleep_for(std::chrono::milliseconds(std::atoi(d)));
    }
    status = commit_dataset(o, *manifest);
  }
  if (!manifest.ok() || !status.ok()) {
    train.Discard();
    val.Discard();
    std::filesystem::remove_all(stage_dir(o), ec);
    return manifest.ok() ? status : manifest.status();
  }
  for (const ManifestShard& sh : manifest->shards)
    (sh.split == "val" ? res.val_shards : res.train_shards).push_back(o.output_dir + "/" + sh.file);
  res.seconds = now_seconds() - t0;
  bar.Finish(src->total_bytes(), res.train_tokens + res.val_tokens);
  return res;
}

ProgressBar::ProgressBar(int64_t total_bytes, bool enabled)
    : total_(total_bytes), enabled_(enabled), tty_(::isatty(2)), start_(now_seconds()) {}

std::string ProgressBar::Render(int64_t bytes, int64_t total, int64_t tokens, double seconds) {
  constexpr int kWidth = 30;
  const double frac = total > 0 ? std::min(1.0, static_cast<double>(bytes) / total) : 1.0;
  const int filled = static_cast<int>(frac * kWidth);
  std::string bar(filled, '#');
  bar.append(kWidth - filled, '.');
  const double tok_rate = seconds > 0 ? tokens / seconds : 0;
  const double byte_rate = seconds > 0 ? bytes / seconds : 0;
  std::string eta = frac >= 1.0     ? "done"
                    : byte_rate > 0 ? clock_time((total - bytes) / byte_rate)
                                    : "?";
  return absl::StrFormat("[%s] %5.1f%% %sB/%sB | %s tokens | %s tok/s | ETA %s", bar, 100 * frac,
                         human(static_cast<double>(bytes)), human(static_cast<double>(total)),
                         human(static_cast<double>(tokens)), human(tok_rate), eta);
}

void ProgressBar::Draw(int64_t bytes, int64_t tokens, bool final) {
  const double t = now_seconds();
  if (!final && t - last_draw_ < (tty_ ? 0.1 : 5.0)) return;
  last_draw_ = t;
  std::string line = Render(bytes, total_, tokens, t - start_);
  if (tty_) {
    std::fprintf(stderr, "\r%s\033[K%s", line.c_str(), final ? "\n" : "");
  } else {
    std::fprintf(stderr, "%s\n", line.c_str());
  }
  std::fflush(stderr);
}

void ProgressBar::Update(int64_t bytes, int64_t tokens) {
  if (enabled_) Draw(bytes, tokens, false);
}

void ProgressBar::Finish(int64_t bytes, int64_t tokens) {
  if (enabled_) Draw(bytes, tokens, true);
}

}  // namespace kiln::data
