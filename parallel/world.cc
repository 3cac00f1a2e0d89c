// World detection from launcher environment variables.
#include "parallel/world.h"

#include <cstdlib>

#include "absl/strings/str_cat.h"

namespace kiln::parallel {
namespace {

bool env_int(const char* name, int* out) {
  const char* v = std::getenv(name);
  if (!v || !*v) return false;
  *out = std::atoi(v);
  return true;
}

}  // namespace

World detect_world() {
  World w;
  if (env_int("KILN_WORLD_SIZE", &w.size) && env_int("KILN_RANK", &w.rank)) {
    // An explicit launch (a script, or any launcher without MPI): wins over the launchers'
    // variables; the ranks meet through KILN_RENDEZVOUS (parallel/file_comm.h).
    env_int("KILN_LOCAL_RANK", &w.local_rank);
    if (!env_int("KILN_LOCAL_WORLD_SIZE", &w.local_size)) w.local_size = w.size;
    w.launcher = "env";
  } else if (env_int("OMPI_COMM_WORLD_SIZE", &w.size)) {
    env_int("OMPI_COMM_WORLD_RANK", &w.rank);
    env_int("OMPI_COMM_WORLD_LOCAL_RANK", &w.local_rank);
    env_int("OMPI_COMM_WORLD_LOCAL_SIZE", &w.local_size);
    w.launcher = "mpi";
  } else if (env_int("SLURM_NTASKS", &w.size) && env_int("SLURM_PROCID", &w.rank)) {
    env_int("SLURM_LOCALID", &w.local_rank);
    if (!env_int("SLURM_NTASKS_PER_NODE", &w.local_size)) w.local_size = w.size;
    w.launcher = "slurm";
  }
  return w;
}

absl::StatusOr<ParallelDims> make_dims(int dp, int tp, int pp, const World& world) {
  if (dp < 1 || tp < 1 || pp < 1)
    return absl::InvalidArgumentError(
        absl::StrCat("parallel: dp, tp and pp must be >= 1 (got ", dp, ", ", tp, ", ", pp, ")"));
  if (dp * tp * pp != world.size)
    return absl::InvalidArgumentError(
        absl::StrCat("parallel.dp * parallel.tp * parallel.pp = ", dp * tp * pp,
                     " but the world has ", world.size, " ranks"));
  return ParallelDims{dp, tp, pp};
}

}  // namespace kiln::parallel
