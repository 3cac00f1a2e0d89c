// Pipeline schedules as pure functions: for every stage (pipeline rank) the ordered list of
// actions it runs in one flush of m micro-batches — compute (forward, backward, or backward split
// into input-gradient and weight-gradient passes) and the point-to-point messages between stages
// (activations forward, their gradients backward). A test can read and simulate the lists without
// any communication; the executor (parallel/pipeline/executor.h) runs one stage's list.
//
// Model chunks: with v virtual stages (interleaved 1F1B) the model is cut into p * v pieces;
// virtual stage k = chunk * p + stage runs on `stage` as its local `chunk` (Megatron's layout), so
// every activation crosses to the next rank, the last rank's chunk c feeding rank 0's chunk c + 1.
// Without interleaving v = 1 and chunk is always 0.
//
// Messages are ordered so that no stage can wait forever even when a send blocks until its
// receive is posted (MPI rendezvous, NCCL): all messages of a flush have one global order (by the
// time their producer finishes in a unit-time simulation of the schedule), and every stage's list
// holds its sends and receives in that order. A send comes right after its producer; a receive as
// late as that order allows (right before its reader or the stage's next message).
#pragma once

#include <string>
#include <vector>

#include "absl/status/status.h"

namespace kiln::parallel::pipeline {

enum class ScheduleKind { kGPipe, k1F1B, kInterleaved1F1B, kZBH1 };

enum class Op {
  kForward,         // forward of (micro, chunk); the last virtual stage also computes the loss
  kBackward,        // the whole backward of (micro, chunk): input and weight gradients
  kBackwardInput,   // zero-bubble: the gradient of the chunk's input only (the critical path)
  kBackwardWeight,  // zero-bubble: the weight gradients of (micro, chunk), deferred
  kSendActivation,  // the output of forward (micro, chunk) to `peer`
  kRecvActivation,  // the input of forward (micro, chunk) from `peer`
  kSendGrad,        // the input gradient of (micro, chunk) to `peer`
  kRecvGrad,        // the output gradient for backward (micro, chunk) from `peer`
  kSendTied,        // the tied classifier's gradient (last virtual stage) to the first stage
  kRecvTied,        // ... received by the first stage before its last backward of chunk 0
};

struct Action {
  Op op;
  int micro = 0;  // micro-batch in [0, m)
  int chunk = 0;  // local model chunk in [0, v)
  int peer = -1;  // the other stage of a message (pp rank); -1 for compute
  bool operator==(const Action& o) const {
    return op == o.op && micro == o.micro && chunk == o.chunk && peer == o.peer;
  }
};

struct ScheduleSpec {
  ScheduleKind kind = ScheduleKind::k1F1B;
  int stages = 1;               // p
  int micro_batches = 1;        // m, per flush
  int virtual_stages = 1;       // v (kInterleaved1F1B only; 1 otherwise)
  bool tied_embedding = false;  // add the kSendTied / kRecvTied message (GPT-2 with p > 1)
};

// Why `spec` cannot run, naming the config field: p < 1; v != 1 for a schedule other than
// interleaved; 1F1B, ZB-H1 and interleaved need m >= p (interleaved: m a multiple of p).
absl::Status check_schedule(const ScheduleSpec& spec);

// The actions of `stage` (REQUIRES check_schedule(spec).ok(), 0 <= stage < p).
std::vector<Action> stage_actions(const ScheduleSpec& spec, int stage);
// Every stage's list.
std::vector<std::vector<Action>> schedule(const ScheduleSpec& spec);

// Whether the schedule splits backward (kBackwardInput + kBackwardWeight).
bool splits_backward(ScheduleKind kind);
// The virtual stage (model piece) that chunk `chunk` of `stage` runs.
inline int virtual_stage(const ScheduleSpec& s, int stage, int chunk) {
  return chunk * s.stages + stage;
}

// The theory the tests and benchmark compare with, for unit times per chunk: forward f, backward
// b (= input gradient bi + weight gradient w for ZB-H1). The time of one flush from the first
// action to the last (every stage does v * m * (f + b) of work):
//   GPipe, 1F1B:  (m + p - 1) * (f + b)
//   interleaved:  (v * m + p - 1) * (f + b)            (the bubble divided by v)
//   ZB-H1:        m * (f + bi + w) + (p - 1) * (f + bi - w)
// and the bubble fraction idle / total = 1 - work / makespan.
double theory_makespan(const ScheduleSpec& spec, double f, double bi, double w);
// The most forwards (of chunks) whose backward has not finished, on `stage`: GPipe m, 1F1B p -
// stage, ZB-H1 p (the weight passes are deferred), interleaved min(v * m, 2 (p - stage - 1) +
// (v - 1) p + 1) (all v * m when m == p).
int theory_peak_in_flight(const ScheduleSpec& spec, int stage);

std::string to_string(const Action& a);
std::string schedule_name(ScheduleKind kind);

}  // namespace kiln::parallel::pipeline
