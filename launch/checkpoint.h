// Sharded, atomic checkpoints: saving one rank's pieces of every tensor plus a manifest, finding
// the checkpoint to resume from, verifying it, and reading any layout's pieces back (resharding).
//
// On disk (CheckpointConfig.dir, default <run_dir>/checkpoints):
//   step_00000100/rank_00000.bin      raw little-endian f32 bytes of rank 0's pieces, back to back
//   step_00000100/rank_00001.bin      ...
//   step_00000100/manifest.bin        framed binary Manifest (launch/checkpoint_manifest.h)
//   step_00000100/manifest.textproto  the same, human-readable (never read back)
//   latest                            "step_00000100\n"
// A save writes into .tmp_step_00000100/, each rank writes and fsyncs its shard and a small part
// file with its entries, barrier, rank 0 merges the parts into the manifest, fsyncs it and the
// directory, renames the directory to its final name, fsyncs the parent, and only then replaces
// `latest` (latest.tmp, fsync, rename, fsync). A directory named step_* is therefore always
// complete, and `latest` is the commit point: a kill at any moment leaves at worst a .tmp_*
// directory (ignored, removed by the next save) or a step_* directory `latest` does not name yet
// (not resumed from; replaced when that step is saved again). See docs/CHECKPOINTS.md.
//
// Pieces are N-dimensional boxes. A parallel::Piece, and a manifest TensorEntry, is either a box
// (offset and length per dimension, its elements stored row-major within the box: a
// tensor-parallel shard of rows or columns is one piece) or a flat range of the row-major
// tensor (a ZeRO shard, and every entry older kilns wrote), which stands for the at most 2N - 1
// boxes parallel::flat_range_boxes cuts it into; those boxes lie one after another in the range's
// data, so a flat range needs no other storage. Loading turns the wanted pieces and the stored
// entries of a tensor into boxes, intersects every pair, and copies each intersection row by row
// (runs contiguous in both are merged: flat into flat is a few memcpys as before). Manifests
// with only flat entries stay format_version 1, byte for byte what data-parallel / ZeRO runs
// wrote before boxes existed; a box entry makes the manifest format_version 2.
//
// Tensor parallelism (launch/checkpoint_tp.h): every entry is in GLOBAL coordinates (the whole
// tensor's name and shape), whatever layout wrote it. A rank holding a tp-split parameter (its
// tp_boxes concatenated along the split dimension) writes each flat range ZeRO gives it of that
// local tensor as the global boxes the range covers (parallel::place_concat_range: a range
// crossing from one partition of GPT-2's fused c_attn into the next becomes several boxes), and
// asks for the same boxes when loading. Replicated parameters (and their optimizer state) are
// written once, by tp rank 0 (with ZeRO 0 by dp rank 0 only, as before): every element is stored
// by exactly one rank, which the manifest's tiling rule checks. Manifest.layout records world,
// dp, tp, pp and the ZeRO stage. Any tp x dp x ZeRO layout loads any other (2 -> 1, 1 -> 4,
// tp2 x dp2 -> dp4), and `kiln export` / `kiln checkpoint hash` read whole tensors, so they give
// the same bytes for a tp checkpoint as for the tp = 1 one holding the same weights.
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "core/nn/module.h"
#include "parallel/communicator.h"
#include "parallel/data_parallel.h"
#include "proto/checkpoint.pb.h"

namespace kiln::launch {

// One rank's share of a checkpoint.
struct RankContribution {
  std::vector<parallel::Piece> pieces;  // global names; `local` is f32 on any device
  std::vector<RngState> rng;
  std::vector<LoaderState> loader;
  std::vector<Fp8HistoryState> fp8;  // this rank's fp8 delayed-scaling histories
};

// Collective over `world`: every rank passes its contribution; `header` carries the
// rank-independent fields (config, step, tokens_seen, schedule, layout, optimizer_steps). Returns
// the final directory on every rank; a failure on any rank fails the save on all of them (with the
// failing rank's message where it is known). Test hook: KILN_CHECKPOINT_TEST_DELAY_MS=N sleeps N ms
// at each stage of the save, to widen the window in which a kill lands inside it.
absl::StatusOr<std::string> save_checkpoint(const std::string& dir, Manifest header,
                                            const RankContribution& mine,
                                            parallel::Communicator& world);

// Makes every rank agree: OK on all ranks only when `mine` is OK on every rank; a rank whose own
// status is OK but another's is not gets an Aborted error naming `what`. Collective.
absl::Status agree_across_ranks(parallel::Communicator& world, const absl::Status& mine,
                                const char* what);

// Keeps the newest keep_last step_* directories (0: all), those whose step is a multiple of
// keep_every (0: none), and always the one `latest` names; removes the others and any leftover
// temporaries. Returns the directories removed. Call on one rank.
std::vector<std::string> apply_retention(const std::string& dir, int keep_last, int64_t keep_every);

// The checkpoint a run should start from, or "" for none. resume "never": none; "auto": the one
// c.dir()/latest names (the commit point; without a `latest` file, the newest step_* directory,
// complete by construction); otherwise the path given: a checkpoint directory (holding
// manifest.bin) or a checkpoint root (resolved as for "auto"). Errors start with `prefix`, which
// names where that path came from ("checkpoint.resume: ", "--checkpoint: ", or nothing).
absl::StatusOr<std::string> find_resume_checkpoint(
    const CheckpointConfig& c, const std::string& prefix = "checkpoint.resume: ");

// Reads and validates PATH/manifest.bin and (check_files) checks that every shard file it lists
// exists and is long enough for the pieces stored in it. Errors name the file (and the tensor).
absl::StatusOr<Manifest> read_checkpoint_manifest(const std::string& path, bool check_files = true);
absl::Status check_checkpoint_files(const std::string& path, const Manifest& m);

// Fills every wanted piece (global name, global shape, a flat range or a box, local f32 tensor on
// any device) from whichever stored pieces (flat or boxes) intersect it, whatever layout wrote
// them. Verifies the
// CRC32C of every stored piece it reads (each read whole, in chunks). Errors name the tensor and
// file: a missing tensor, a shape that differs, a checksum mismatch, a short read.
absl::Status read_checkpoint_pieces(const std::string& path, const Manifest& m,
                                    const std::vector<parallel::Piece>& want);

// Reads every stored piece and checks its CRC32C.
absl::Status verify_checkpoint(const std::string& path, const Manifest& m);

// Global shape of a stored tensor, or an error naming it when the checkpoint has none.
absl::StatusOr<Shape> stored_shape(const Manifest& m, const std::string& name,
                                   const std::string& path);
// A whole stored tensor (f32, CPU, its global shape), assembled from its pieces.
absl::StatusOr<Tensor> read_full_tensor(const std::string& path, const Manifest& m,
                                        const std::string& name);

// Checks that the checkpoint holds exactly this model's parameters with the same shapes. The
// error names the first tensor that differs and the model config fields that differ. `stage`: the
// params are one pipeline stage's, so the checkpoint may hold other tensors too (other stages').
absl::Status check_model_matches(const Manifest& m, const ModelConfig& model,
                                 const std::vector<nn::Parameter>& params, const std::string& path,
                                 bool stage = false);
// The same from (name, global shape) pairs: a tensor-parallel rank passes its parameters' global
// shapes (launch/checkpoint_tp.h tp_global_shapes).
absl::Status check_model_shapes(const Manifest& m, const ModelConfig& model,
                                const std::vector<std::pair<std::string, Shape>>& params,
                                const std::string& path, bool stage = false);
// Non-shape model fields that differ (norm_eps, rope_theta, ...), as "FIELD: A in the checkpoint,
// B here" lines; for a warning.
std::vector<std::string> model_field_differences(const ModelConfig& stored,
                                                 const ModelConfig& current, bool shape_fields);

// Name of optimizer state "exp_avg/h.0.attn.c_attn.weight" in a checkpoint:
// "optim.exp_avg.h.0.attn.c_attn.weight".
std::string optimizer_tensor_name(const std::string& state_name);

// Generator state <-> the 16 bytes stored in RngState.state (seed, offset; little-endian u64s).
std::string encode_generator_state(uint64_t seed, uint64_t offset);
bool decode_generator_state(const std::string& bytes, uint64_t* seed, uint64_t* offset);

}  // namespace kiln::launch
