// Loading a TrainConfig: parse a textproto file (errors as FILE:LINE:COL naming the field), apply
// `--set a.b=v` overrides through protobuf reflection, resolve (model preset, defaults), and
// validate every value that could make a run fail later, naming the field and the reason. Also
// prints the resolved config back as textproto.
//
// Typical use (launch/main):
//   absl::StatusOr<TrainConfig> cfg = load_config(path, overrides);   // parse + override + resolve
//   + validate_config
//   ... start the world ...
//   absl::Status s = resolve_world(world_size, &*cfg);               // dp from the world; batch
//   divisibility
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "proto/config.pb.h"

namespace kiln {

// Parses textproto `text`; `filename` prefixes error locations ("FILE:LINE:COL: model.n_layer:
// ...", 1-based). Unknown fields (with a "did you mean" suggestion), wrong value types, unknown
// enum names and repeated singular fields are InvalidArgument. Nothing is resolved or validated.
absl::StatusOr<TrainConfig> parse_config(const std::string& text,
                                         const std::string& filename = "<config>");

// Applies one override "a.b.c=value" (the argument of `--set`). The path names nested fields from
// TrainConfig. Values: integers, floats, true/false (or 1/0), strings (optionally quoted), enum
// names (case-insensitive), a message as a textproto body ("model={n_layer: 2 d_model: 128}"). On a
// repeated field "=value" and "=[a, b]" replace the list ("=[]" clears it) and "+=value" appends
// one element.
// Unknown paths and bad values are InvalidArgument naming the path.
absl::Status apply_override(const std::string& assignment, TrainConfig* config);
absl::Status apply_overrides(const std::vector<std::string>& assignments, TrainConfig* config);

// Fills every unset field with its default (proto/config.proto gives them) and resolves the model
// preset (models/presets.h). Idempotent. dp stays unset when not given (it comes from the world,
// see resolve_world).
absl::Status resolve_config(TrainConfig* config);

// Rejects inconsistent or out-of-range values of a resolved config. Every problem found is
// reported, one per line, as "FIELD: reason". Checks that need the world size (dp * tp * pp ==
// world) are in validate_world; when parallel.dp is set, the batch divisibility checks use it here.
absl::Status validate_config(const TrainConfig& config);

// Checks that a validated config fits a world of `world_size` ranks: dp * tp * pp == world_size
// (or, with dp unset, tp * pp dividing the world), and the batch divisibility with the dp that
// results.
absl::Status validate_world(const TrainConfig& config, int world_size);

// validate_world, then sets parallel.dp (when unset) and parallel.micro_batch_size (when unset:
// global_batch_size / dp, no accumulation).
absl::Status resolve_world(int world_size, TrainConfig* config);

// Reads `path`, parse_config, apply_overrides, resolve_config, validate_config. Errors name the
// file or field.
absl::StatusOr<TrainConfig> load_config(const std::string& path,
                                        const std::vector<std::string>& overrides = {});

// The config as textproto (every set field, in field-number order). parse_config(print_config(c))
// == c.
std::string print_config(const TrainConfig& config);

// Micro-steps per optimizer step at the full global batch: global_batch_size / (micro_batch_size *
// dp). REQUIRES: a config resolved for its world (dp and micro_batch_size set) and validated.
int64_t grad_accumulation_steps(const TrainConfig& config);

}  // namespace kiln
