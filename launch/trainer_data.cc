// The Trainer's data: the training and validation batch sources (synthetic or token shards, this
// rank's share by its dp coordinate) and the upload of a batch to the training device.
#include <memory>

#include "launch/trainer.h"

namespace kiln::launch {

Tensor Trainer::to_device(const Tensor& host) {
  if (device_.is_cpu()) return host;
#if KILN_WITH_CUDA
  Tensor src = host.is_contiguous() ? host : host.contiguous();
  Tensor dst = Tensor::empty(src.shape(), src.dtype(), device_);
  pinned_.upload(dst.raw(), src.raw(), src.nbytes());
  return dst;
#else
  return host.to(device_);
#endif
}

absl::Status Trainer::make_sources() {
  const int dp = mesh_->dims().dp;
  const int dp_rank = mesh_->dp_rank();
  const uint64_t seed = cfg_.data().seed();
  if (cfg_.data().synthetic()) {
    const int64_t v = cfg_.model().vocab_size();
    train_ = make_synthetic_source(v, seed, dp_rank, dp);
    make_val_ = [v, seed] { return make_synthetic_source(v, seed, 0, 1, uint64_t{1} << 40); };
    return absl::OkStatus();
  }
  return make_shard_sources(cfg_, dp_rank, dp, &train_, &make_val_);
}

void Trainer::set_sources(std::unique_ptr<BatchSource> train, std::unique_ptr<BatchSource> val) {
  train_ = std::move(train);
  auto shared = std::shared_ptr<BatchSource>(std::move(val));
  make_val_ = nullptr;
  val_ = nullptr;
  if (shared) {
    const std::string start = shared->position();
    make_val_ = [shared, start]() -> std::unique_ptr<BatchSource> {
      (void)shared->restore(start);
      struct Borrowed : BatchSource {
        std::shared_ptr<BatchSource> s;
        absl::StatusOr<Batch> next(int64_t b, int64_t t) override { return s->next(b, t); }
        std::string position() const override { return s->position(); }
        absl::Status restore(const std::string& p) override { return s->restore(p); }
      };
      auto b = std::make_unique<Borrowed>();
      b->s = shared;
      return b;
    };
  }
}

}  // namespace kiln::launch
