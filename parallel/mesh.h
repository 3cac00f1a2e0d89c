// The device mesh of a run: the dp x tp x pp grid (ParallelDims), this rank's coordinates in it,
// and one communicator per group (world, dp, tp, pp), built once from the config's dims and the
// world and passed down. Nothing else in kiln builds communicators for training.
//
// Rank order (parallel/world.h): tp fastest, then dp, then pp, i.e.
//   rank = pp_rank * (dp * tp) + dp_rank * tp + tp_rank.
// A group is the set of ranks that differ only in its coordinate, ordered by that coordinate:
//   tp group: the tp ranks of one (pp, dp) (consecutive ranks),
//   dp group: the dp ranks of one (pp, tp) (stride tp),
//   pp group: the pp ranks of one (dp, tp) (stride dp * tp).
// The Mesh does not need tensor- or pipeline-parallel layers to exist: it is only the groups.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "parallel/communicator.h"
#include "parallel/world.h"

namespace kiln::parallel {

struct MeshOptions {
  // Groups over NCCL (one GPU per local rank) when the world has more than one rank; else over
  // the CPU world communicator.
  bool gpu = false;
  // parallel.timeout_s: set (set_collective_timeout) once the world communicator exists and
  // before any group is made; <= 0 leaves the current timeout.
  double timeout_s = 0;
  // The CUDA device NCCL uses (parallel::local_device: the local rank modulo the visible GPUs).
  int device_index = 0;
};

class Mesh {
 public:
  // The world communicator from `world` (make_world_comm: MPI, files or single), NCCL over it on
  // GPUs, then the groups by split. REQUIRES dims.world_size() == world.size (make_dims checks).
  static absl::StatusOr<std::unique_ptr<Mesh>> create(const ParallelDims& dims, const World& world,
                                                      const MeshOptions& opts);
  // The groups of `dims` split from an existing communicator (not owned; it must outlive the
  // Mesh), which is also the mesh's world. Tests build many meshes over one MPI world this way.
  static absl::StatusOr<std::unique_ptr<Mesh>> over(const ParallelDims& dims, Communicator& world);
  ~Mesh();
  Mesh(const Mesh&) = delete;
  Mesh& operator=(const Mesh&) = delete;

  const ParallelDims& dims() const { return dims_; }
  int rank() const { return rank_; }  // in the world
  int dp_rank() const { return dims_.dp_rank(rank_); }
  int tp_rank() const { return dims_.tp_rank(rank_); }
  int pp_rank() const { return dims_.pp_rank(rank_); }

  // The CPU world communicator: control (agreeing on a stop, checkpoint files), never tensors of
  // the model on a GPU.
  Communicator& world() const { return *world_; }
  // "mpi", "file", "single" (the world), with " + nccl" when the groups run over NCCL.
  std::string backends() const;
  // The groups, on the training device's backend (NCCL on GPUs). A group of one rank is a
  // single-process communicator; a group of the whole world is the world (or NCCL) itself.
  Communicator& dp() const { return *dp_; }
  Communicator& tp() const { return *tp_; }
  Communicator& pp() const { return *pp_; }

  // The gradient norm's model-parallel part. `local` is this rank's sum of squares over the
  // gradients it counts: its shards of parameters split over tp, and the parameters replicated
  // over the tp group only where counts_replicated() (so that each is counted once); already
  // summed over its dp group where ZeRO shards them. Returns the sum over the tp group, then the pp
  // group: the whole model's sum of squares, equal on every rank. With tp = pp = 1 it returns
  // `local` unchanged (bit for bit) and communicates nothing.
  double sum_over_model_parallel(double local) const;
  // Whether this rank counts the parameters that every rank of its tp group holds whole.
  bool counts_replicated() const { return tp_rank() == 0; }

 private:
  Mesh(const ParallelDims& dims, int rank) : dims_(dims), rank_(rank) {}
  // Splits the three groups from `base` (collective over base; every rank in the same order).
  void make_groups(Communicator& base);
  // The group of ranks sharing `color`, ordered by `key`, of `size` ranks.
  Communicator* group(Communicator& base, int size, int color, int key);

  ParallelDims dims_;
  int rank_ = 0;
  std::unique_ptr<Communicator> owned_world_;   // from create(); null from over()
  std::unique_ptr<Communicator> owned_device_;  // NCCL over the world, on GPUs
  std::vector<std::unique_ptr<Communicator>> owned_groups_;
  Communicator* world_ = nullptr;
  Communicator *dp_ = nullptr, *tp_ = nullptr, *pp_ = nullptr;
};

}  // namespace kiln::parallel
