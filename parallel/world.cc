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

// The count for node `node` in Slurm's compressed tasks-per-node list ("4(x2),3"); 0 if absent.
int tasks_on_node(const std::string& list, int node) {
  int first = 0;  // the first node the current entry covers
  size_t pos = 0;
  while (pos < list.size()) {
    size_t end = list.find(',', pos);
    if (end == std::string::npos) end = list.size();
    const std::string entry = list.substr(pos, end - pos);
    const int count = std::atoi(entry.c_str());
    int repeat = 1;
    const size_t x = entry.find("(x");
    if (x != std::string::npos) repeat = std::atoi(entry.c_str() + x + 2);
    if (node < first + repeat) return count;
    first += repeat;
    pos = end + 1;
  }
  return 0;
}

std::string env_str(const char* name) {
  const char* v = std::getenv(name);
  return v ? std::string(v) : std::string();
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
  } else if (int step = 0;
             env_int("SLURM_STEP_ID", &step) &&
             (env_int("SLURM_STEP_NUM_TASKS", &w.size) || env_int("SLURM_NTASKS", &w.size)) &&
             env_int("SLURM_PROCID", &w.rank)) {
    // Inside a job step (srun). A batch script (no SLURM_STEP_ID) is one process.
    env_int("SLURM_LOCALID", &w.local_rank);
    int node = 0;
    env_int("SLURM_NODEID", &node);
    w.local_size = tasks_on_node(env_str("SLURM_STEP_TASKS_PER_NODE"), node);
    if (w.local_size <= 0) w.local_size = tasks_on_node(env_str("SLURM_TASKS_PER_NODE"), node);
    if (w.local_size <= 0) w.local_size = w.size;
    w.launcher = "slurm";
  }
  return w;
}

int local_device(const World& world, int visible) {
  return visible > 0 ? world.local_rank % visible : world.local_rank;
}

std::string describe_world(const World& world, const std::string& communicator,
                           const std::string& device) {
  if (world.size <= 1)
    return absl::StrCat("world 1 process (", world.launcher, "), device ", device);
  return absl::StrCat("world ", world.size, " ranks (launcher ", world.launcher, ", ",
                      world.local_size, " on this node), communicator ", communicator, ", rank ",
                      world.rank, " (local ", world.local_rank, ") on device ", device);
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
