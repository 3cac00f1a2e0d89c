// What a rank of a tp x dp (ZeRO) layout stores in a checkpoint and fills from one: its pieces of
// the fp32 parameters and optimizer state, in GLOBAL coordinates. Under tensor parallelism a rank
// holds local tensors (a parameter split by its TpEntry holds parallel::tp_slice of the full one:
// its tp_boxes concatenated along entry.dim), and ZeRO shards flat ranges of those local tensors;
// here each such range becomes the boxes of the global tensor it covers
// (parallel::place_concat_range), so the files never depend on the layout that wrote them and any
// layout reads them back (launch/checkpoint.h intersects boxes).
#pragma once

#include <string>
#include <utility>
#include <vector>

#include "core/nn/module.h"
#include "parallel/data_parallel.h"
#include "parallel/tp_plan.h"

namespace kiln::launch {

// This rank's place in tensor parallelism. With tp == 1 (or no plan) nothing is split and every
// function below returns its pieces unchanged (so dp-only checkpoints stay format_version 1).
struct TpCoords {
  const parallel::TpPlan* plan = nullptr;
  int tp = 1;
  int rank = 0;  // in the tp group
  // The entry of parameter `param` when tensor parallelism splits it, else nullptr.
  const parallel::TpEntry* split_entry(const std::string& param) const;
};

// The global shape of parameter `name` of which this rank holds `local`.
Shape tp_global_shape(const TpCoords& tp, const std::string& name, const Shape& local);
// Every parameter's name and global shape (check_model_shapes takes these).
std::vector<std::pair<std::string, Shape>> tp_global_shapes(const TpCoords& tp,
                                                            const std::vector<nn::Parameter>& ps);

// Pieces of local tensors (flat ranges; named by a parameter, or "<state>/<parameter>" for the
// optimizer's; global_shape the local shape) as pieces of the global tensors: unchanged when the
// parameter is not split (its local tensor is the global one), else one box piece per global box
// the range covers, whose `local` is a view of the original piece's elements (loading into it
// fills the original). With drop_replicated, pieces of parameters not split are left out.
std::vector<parallel::Piece> tp_global_pieces(const std::vector<parallel::Piece>& local,
                                              const TpCoords& tp, bool drop_replicated);

// What this rank writes: its pieces of the fp32 master parameters and of the optimizer state
// (named "optim.<state>.<parameter>"), global. Every element is written by exactly one rank:
// ZeRO 0 replicates everything over dp, so only dp rank 0 writes; a parameter not split over tp
// (and its optimizer state) is written by tp rank 0 only (the other tp ranks hold the same bits).
std::vector<parallel::Piece> checkpoint_pieces_to_save(parallel::DataParallel& dp, int dp_rank,
                                                       const TpCoords& tp);
// What this rank fills from a checkpoint, global: ZeRO 0-2 whole local parameters (views of the
// flat buffers the fp32 masters live in: filling them fills the masters and the working copy at
// once), ZeRO 3 its master shards; and its optimizer state. `params` are the model's parameters.
std::vector<parallel::Piece> checkpoint_pieces_to_load(parallel::DataParallel& dp,
                                                       const std::vector<nn::Parameter>& params,
                                                       const TpCoords& tp);

}  // namespace kiln::launch
