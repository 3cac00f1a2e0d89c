// Mesh construction: the world, NCCL on GPUs, and the dp / tp / pp groups by split.
#include "parallel/mesh.h"

#include "absl/strings/str_cat.h"
#include "parallel/file_comm.h"

namespace kiln::parallel {
namespace {

absl::Status check_dims(const ParallelDims& dims, int world_size) {
  if (dims.dp < 1 || dims.tp < 1 || dims.pp < 1 || dims.world_size() != world_size)
    return absl::InvalidArgumentError(absl::StrCat("mesh: dp ", dims.dp, " x tp ", dims.tp,
                                                   " x pp ", dims.pp, " does not cover a world of ",
                                                   world_size, " ranks"));
  return absl::OkStatus();
}

}  // namespace

Mesh::~Mesh() = default;

std::string Mesh::backends() const {
  return owned_device_ ? world_->backend() + " + " + owned_device_->backend() : world_->backend();
}

absl::StatusOr<std::unique_ptr<Mesh>> Mesh::create(const ParallelDims& dims, const World& world,
                                                   const MeshOptions& opts) {
  absl::Status s = check_dims(dims, world.size);
  if (!s.ok()) return s;
  absl::StatusOr<std::unique_ptr<Communicator>> w = make_world_comm(world);
  if (!w.ok()) return w.status();
  std::unique_ptr<Mesh> mesh(new Mesh(dims, world.rank));
  mesh->owned_world_ = std::move(*w);
  mesh->world_ = mesh->owned_world_.get();
  if (opts.timeout_s > 0) set_collective_timeout(opts.timeout_s);
  Communicator* base = mesh->world_;
  if (opts.gpu && world.size > 1) {
    absl::StatusOr<std::unique_ptr<Communicator>> nccl =
        make_nccl(*mesh->world_, opts.device_index);
    if (!nccl.ok()) return nccl.status();
    mesh->owned_device_ = std::move(*nccl);
    base = mesh->owned_device_.get();
  }
  mesh->make_groups(*base);
  return mesh;
}

absl::StatusOr<std::unique_ptr<Mesh>> Mesh::over(const ParallelDims& dims, Communicator& world) {
  absl::Status s = check_dims(dims, world.size());
  if (!s.ok()) return s;
  std::unique_ptr<Mesh> mesh(new Mesh(dims, world.rank()));
  mesh->world_ = &world;
  mesh->make_groups(world);
  return mesh;
}

void Mesh::make_groups(Communicator& base) {
  const int tp = dims_.tp, dp = dims_.dp;
  // A group's colour numbers the other two coordinates; its key is its own coordinate.
  tp_ = group(base, tp, pp_rank() * dp + dp_rank(), tp_rank());
  dp_ = group(base, dp, pp_rank() * tp + tp_rank(), dp_rank());
  pp_ = group(base, dims_.pp, dp_rank() * tp + tp_rank(), pp_rank());
}

Communicator* Mesh::group(Communicator& base, int size, int color, int key) {
  if (size == base.size()) return &base;  // the whole world: no split (as before the mesh)
  // Every rank takes part in every split that any rank makes, so all ranks agree on the sequence;
  // sizes are equal on all ranks, so either all split or none does.
  owned_groups_.push_back(size == 1 ? make_single() : base.split(color, key));
  return owned_groups_.back().get();
}

double Mesh::sum_over_model_parallel(double local) const {
  double sum = local;
  if (dims_.tp > 1) sum = tp_->all_reduce_scalar(sum);
  if (dims_.pp > 1) sum = pp_->all_reduce_scalar(sum);
  return sum;
}

}  // namespace kiln::parallel
