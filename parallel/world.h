// The process world and the parallel layout. World comes from the launcher's environment (kiln's
// own KILN_RANK / KILN_WORLD_SIZE / KILN_LOCAL_RANK, Open
// MPI's OMPI_COMM_WORLD_*, Slurm's SLURM_PROCID / SLURM_NTASKS / SLURM_LOCALID, or a single
// process); ParallelDims is the validated dp x tp x pp grid built once from the config and the
// world and passed down explicitly (no globals). Rank layout: tp fastest, then dp, then pp
// (Megatron's order). parallel/mesh.h adds the communicator of each group.
#pragma once

#include <string>

#include "absl/status/statusor.h"

namespace kiln::parallel {

struct World {
  int rank = 0, size = 1;
  int local_rank = 0, local_size = 1;
  std::string launcher = "single";  // "env", "mpi", "slurm" or "single"
};

// Reads the world from the environment.
World detect_world();

struct ParallelDims {
  int dp = 1, tp = 1, pp = 1;
  int world_size() const { return dp * tp * pp; }
  // Coordinates of `rank` in the grid.
  int tp_rank(int rank) const { return rank % tp; }
  int dp_rank(int rank) const { return (rank / tp) % dp; }
  int pp_rank(int rank) const { return rank / (tp * dp); }
};

// REQUIRES nothing; returns InvalidArgument naming the parallel.* field when dp*tp*pp !=
// world.size.
absl::StatusOr<ParallelDims> make_dims(int dp, int tp, int pp, const World& world);

}  // namespace kiln::parallel
