// make_nccl when kiln is built without CUDA.
#include "absl/strings/str_cat.h"
#include "parallel/communicator.h"

namespace kiln::parallel {

#if !KILN_WITH_CUDA
absl::StatusOr<std::unique_ptr<Communicator>> make_nccl(Communicator&, int) {
  return absl::FailedPreconditionError("parallel.backend NCCL: kiln was built without CUDA");
}
#endif

}  // namespace kiln::parallel
