// make_nccl for a build without CUDA (parallel/CMakeLists.txt compiles this file instead of
// nccl_comm.cc): NCCL cannot exist there, so asking for it is an error naming the field.
#include "parallel/communicator.h"

namespace kiln::parallel {

absl::StatusOr<std::unique_ptr<Communicator>> make_nccl(Communicator&, int) {
  return absl::FailedPreconditionError("parallel.backend NCCL: kiln was built without CUDA");
}

}  // namespace kiln::parallel
