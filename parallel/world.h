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

// Reads the world from the environment. Slurm's task variables count only inside a job step
// (srun sets SLURM_STEP_ID; a batch script has SLURM_PROCID / SLURM_NTASKS of the whole job but
// is one process): the size is the step's (SLURM_STEP_NUM_TASKS), the local size this node's
// entry of SLURM_STEP_TASKS_PER_NODE ("4(x2),3": 4 on nodes 0-1, 3 on node 2).
World detect_world();

// The GPU a rank uses: its local rank modulo the devices it sees (`visible` > 0), so that
// one-GPU-per-task launches (srun --gpus-per-task=1: each task sees only its GPU, as device 0)
// and all-GPUs-visible launches both work.
int local_device(const World& world, int visible);

// One line for the start-up banner: world size, launcher, this rank, communicator, device.
std::string describe_world(const World& world, const std::string& communicator,
                           const std::string& device);

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
