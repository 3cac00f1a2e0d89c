// kiln plan's memory model: the bytes one rank holds at the peak of a training step, term by term
// (parameters, gradients, optimizer state, working copies, saved activations, the classifier,
// backward temporaries), for a layout dp x tp x pp x ZeRO stage x recompute policy. It is derived
// from what kiln allocates, not from a published formula: the parameter list and DataParallel's
// flat units (parallel/data_parallel.cc), AdamW's per-piece moments (optim/optimizer.cc), the
// tensors each op's autograd node saves in models/transformer.cc's forward (CPU composite ops or
// the fused CUDA ones) and core/recompute.cc's checkpoint, every allocation rounded as the
// device's caching allocator rounds it (core/allocator.h). The prediction is what `mem_peak_mib`
// (the allocator's peak, launch/trainer_log.cc) reports. docs/SLURM.md explains the terms.
//
// tp and pp > 1 are computed from theory (1/tp of the sharded weights and activations; each stage's
// blocks from the layer split, the micro-batches in flight from the schedule's theory,
// parallel/pipeline/schedule.h theory_peak_in_flight): predictions that no run has measured yet.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "models/model.h"
#include "parallel/pipeline/schedule.h"

namespace kiln::launch {

struct PlanLayout {
  int dp = 1, tp = 1, pp = 1;
  int zero = 0;  // ZeRO stage 0-3 over dp
  models::Recompute recompute = models::Recompute::kNone;
  int64_t micro_batch = 1;  // sequences per forward/backward on one rank
  int64_t accum = 1;        // micro-batches per optimizer step
  // Pipeline (pp > 1): the schedule, its model chunks per stage, the layers of each of the pp x v
  // virtual stages (empty: n_layer / pp each, v = 1) and the micro-batches per flush (0: accum).
  parallel::pipeline::ScheduleKind schedule = parallel::pipeline::ScheduleKind::k1F1B;
  int v = 1;
  std::vector<int64_t> layers;
  int64_t flush = 0;
  bool measured() const { return tp == 1 && pp == 1; }  // layouts kiln trains today
};

struct PlanInput {
  models::ModelSpec spec;
  int64_t seq_len = 0;
  bool cuda = false;            // GPU (fused CUDA ops, CUDA allocator) or CPU
  DType compute = DType::kF32;  // compute dtype (bf16 / f16 working copies on GPUs)
  bool adamw = true;            // AdamW: 2 fp32 moments; SGD: 1 momentum buffer
  double bucket_mb = 25.0;      // DDP / ZeRO-1/2 unit size
};

struct MemoryTerm {
  std::string name;
  int64_t bytes = 0;
  std::string how;  // what it is made of
};

struct MemoryPlan {
  PlanLayout layout;
  int stage = 0;                  // the pipeline stage this plan is for (the largest one)
  std::vector<MemoryTerm> terms;  // persistent terms, then those live at the peak
  int64_t peak = 0;               // predicted mem_peak (bytes): the sum of the terms
  std::string peak_at;            // the moment of the peak
};

// The plan of the pipeline stage with the largest peak.
MemoryPlan plan_memory(const PlanInput& in, const PlanLayout& layout);

// Bytes the device allocator hands out for a request of `bytes` (its rounding).
int64_t plan_alloc(const PlanInput& in, int64_t bytes);

// Every layout dp x tp x pp == world the model allows (tp divides the heads, KV heads and d_ff;
// pp divides n_layer), each with ZeRO 0-3 and recompute none / selective / full. The micro-batch
// is `micro_batch` when > 0, else global_batch / dp; layouts whose global batch is not a multiple
// of micro-batch x dp are left out.
std::vector<PlanLayout> all_layouts(const models::ModelSpec& spec, int world, int64_t global_batch,
                                    int64_t micro_batch);

namespace plan_internal {

// One tensor of the model: its parameter shape on this rank and where it lives.
struct ParamInfo {
  std::string name;
  int64_t numel = 0;
  int block = -1;  // global block index, -1 outside the blocks
};

// This stage's parameters in registration order (DataParallel's order), sharded 1/tp: its model
// chunks' blocks, the embedding on virtual stage 0, the final norm and head on the last.
std::vector<ParamInfo> stage_params(const models::ModelSpec& s, const PlanLayout& l, int stage);
// The same for the even split of n_layer over pp stages.
std::vector<ParamInfo> stage_params(const models::ModelSpec& s, int tp, int pp, int stage);
// The blocks [first, end) of each model chunk of `stage`, chunk 0 first.
std::vector<std::pair<int64_t, int64_t>> stage_chunks(const models::ModelSpec& s,
                                                      const PlanLayout& l, int stage);

// Parameters, gradients and optimizer state as DataParallel and the optimizer allocate them.
struct StateBytes {
  int64_t params = 0, grads = 0, optimizer = 0;  // persistent
  int64_t gathered_root = 0;   // ZeRO-3: the root unit, gathered for the whole step
  int64_t gathered_block = 0;  // ZeRO-3: one gathered block unit (the largest)
  int64_t staging = 0;         // ZeRO-2/3: a unit's flat fp32 gradient while it fills
  int64_t in_flight = 0;       // ZeRO-2/3: a launched unit (staging + the received shard)
  int64_t root_staging = 0;    // ZeRO-3: the root unit's staging (filled over the whole backward)
  int units = 0;
  int64_t step_temp = 0;     // optimizer step temporaries (ZeRO-1/2 all-gather input)
  int64_t largest_unit = 0;  // elements of the largest unit
};
StateBytes state_bytes(const PlanInput& in, const PlanLayout& l, int stage);

// What one block saves for backward and what its backward adds at its worst moment.
struct BlockBytes {
  int64_t saved = 0;        // held from forward to backward (block input excluded)
  int64_t input = 0;        // the block input (the previous block's output)
  int64_t weights = 0;      // compute-dtype weight copies its linear nodes save (16-bit compute)
  int64_t bwd_extra = 0;    // extra live bytes at the worst moment of its backward
  int64_t param_grads = 0;  // its parameters' fp32 gradients (full recompute holds them at once)
};
BlockBytes block_bytes(const PlanInput& in, const PlanLayout& l);

// The embedding and the head (final norm, classifier, loss).
struct HeadBytes {
  int64_t embed_fwd = 0;  // transient in the embedding forward
  int64_t saved = 0;      // saved by the head from forward to backward
  int64_t bwd_extra = 0;  // extra at the worst moment of the head's backward
  int64_t held_dw = 0;    // a tied classifier gradient held until the embedding's backward
  int64_t embed_bwd = 0;  // extra at the embedding's backward (dense table gradients)
};
HeadBytes head_bytes(const PlanInput& in, const PlanLayout& l);

}  // namespace plan_internal
}  // namespace kiln::launch
