// A communicator for CPU tensors through files in a directory every rank can see: the rendezvous
// for runs launched without MPI (by hand or by a script with KILN_RANK / KILN_WORLD_SIZE, or by
// srun where kiln's MPI is not Slurm-aware), and the way the NCCL unique id travels in that case.
// Small payloads only (the NCCL id, losses, flags, a tiny model's gradients in tests): every
// collective is an exchange of whole files. Deterministic: reductions add in rank order in f64.
#pragma once

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "parallel/communicator.h"
#include "parallel/world.h"

namespace kiln::parallel {

// REQUIRES: 0 <= rank < size; every rank calls this the same number of times in the same order
// (the n-th communicator of each process meets the others' n-th, in base/w<n>). `base` is created
// if missing; it must be private to this run (no files of another run in it), which
// `rendezvous_dir` arranges. Before the first collective the ranks agree on a fresh attempt (a
// handshake of per-process nonces; files an earlier attempt left in `base` are never read).
// Fails when the directory cannot be created or written, or a rank does not arrive within the
// collective timeout.
absl::StatusOr<std::unique_ptr<Communicator>> make_file_comm(const std::string& base, int rank,
                                                             int size);

// The run's rendezvous directory from KILN_RENDEZVOUS=file:DIR: DIR/RUN_ID, with RUN_ID from
// KILN_RUN_ID (plus .r<N> when SLURM_RESTART_COUNT=N > 0) or else Slurm's
// SLURM_JOB_ID.SLURM_STEP_ID.r<SLURM_RESTART_COUNT, 0 when unset>, so a requeued job meets in a
// new directory. (Files of an earlier attempt with the same id are never read either: see
// make_file_comm's handshake.) Returns "" when KILN_RENDEZVOUS is unset; InvalidArgument naming
// the variable when it is malformed or no run id is set.
absl::StatusOr<std::string> rendezvous_dir();

// The CPU world communicator for `world`: single for one rank; the file communicator when
// KILN_RENDEZVOUS is set; MPI otherwise (launchers mpirun and srun). Errors name the variable to
// set: a KILN_RANK launch without KILN_RENDEZVOUS, or an MPI world whose size disagrees with the
// launcher's (an MPI that does not know Slurm starts every rank as a world of one).
absl::StatusOr<std::unique_ptr<Communicator>> make_world_comm(const World& world);

}  // namespace kiln::parallel
