// BatchSource over data::DataLoader (token shards written by `kiln prepare-data`).
#include <cstdio>

#include "absl/strings/str_cat.h"
#include "core/check.h"
#include "data/dataset_manifest.h"
#include "data/io.h"
#include "data/loader.h"
#include "launch/batches.h"

namespace kiln::launch {
namespace {

class ShardSource final : public BatchSource {
 public:
  explicit ShardSource(std::unique_ptr<data::DataLoader> l) : loader_(std::move(l)) {}
  absl::StatusOr<Batch> next(int64_t b, int64_t t) override {
    data::Batch d = loader_->Next(b, t);
    return Batch{d.inputs, d.targets};
  }
  std::string position() const override { return loader_->Position().Serialize(); }
  absl::Status restore(const std::string& pos) override {
    absl::StatusOr<data::LoaderPosition> p = data::LoaderPosition::Parse(pos);
    if (!p.ok()) return p.status();
    return loader_->Restore(*p);
  }

 private:
  std::unique_ptr<data::DataLoader> loader_;
};

// REQUIRES: a resolved config (launch/config.h resolve_config sets the data defaults).
data::LoaderOptions options(const TrainConfig& cfg, bool train, int rank, int world) {
  data::LoaderOptions o;
  const auto& d = cfg.data();
  o.shards.assign(train ? d.train_shards().begin() : d.val_shards().begin(),
                  train ? d.train_shards().end() : d.val_shards().end());
  o.vocab_size = cfg.model().vocab_size();
  o.max_seq_len = d.seq_len();
  o.seed = d.seed();  // resolve_config: training.seed when unset
  o.shuffle = train && d.shuffle();
  o.rank = rank;
  o.world_size = world;
  o.prefetch = train ? d.prefetch() : 0;
  return o;
}

}  // namespace

// The shards against their datasets' manifests (data/dataset_manifest.h); the checksums are read
// by data-parallel rank 0 only, which also prints the warnings.
absl::Status check_manifests(const TrainConfig& cfg, int dp_rank) {
  for (bool train : {true, false}) {
    const auto& globs = train ? cfg.data().train_shards() : cfg.data().val_shards();
    if (globs.empty()) continue;
    absl::StatusOr<std::vector<std::string>> files =
        data::expand_globs(std::vector<std::string>(globs.begin(), globs.end()));
    if (!files.ok()) continue;  // DataLoader::Open reports it
    std::vector<std::string> warnings;
    absl::Status s =
        data::check_dataset_files(*files, cfg.data().verify_checksums() && dp_rank == 0, &warnings);
    const char* field = train ? "data.train_shards" : "data.val_shards";
    if (!s.ok()) return absl::Status(s.code(), absl::StrCat(field, ": ", s.message()));
    if (dp_rank == 0)
      for (const std::string& w : warnings)
        std::fprintf(stderr, "kiln: warning: %s: %s\n", field, w.c_str());
  }
  return absl::OkStatus();
}

absl::Status make_shard_sources(const TrainConfig& cfg, int dp_rank, int dp,
                                std::unique_ptr<BatchSource>* train,
                                std::function<std::unique_ptr<BatchSource>()>* make_val) {
  if (absl::Status s = check_manifests(cfg, dp_rank); !s.ok()) return s;
  auto t = data::DataLoader::Open(options(cfg, true, dp_rank, dp));
  if (!t.ok())
    return absl::Status(t.status().code(),
                        absl::StrCat("data.train_shards: ", t.status().message()));
  *train = std::make_unique<ShardSource>(std::move(*t));
  if (cfg.data().val_shards_size() == 0) {
    *make_val = nullptr;
    return absl::OkStatus();
  }
  // Open once now so a bad validation shard fails at startup, not at the first evaluation.
  const data::LoaderOptions vo = options(cfg, false, 0, 1);
  auto v = data::DataLoader::Open(vo);
  if (!v.ok())
    return absl::Status(v.status().code(), absl::StrCat("data.val_shards: ", v.status().message()));
  *make_val = [vo]() -> std::unique_ptr<BatchSource> {
    auto l = data::DataLoader::Open(vo);
    KILN_CHECK(l.ok()) << l.status().message();
    return std::make_unique<ShardSource>(std::move(*l));
  };
  return absl::OkStatus();
}

}  // namespace kiln::launch
