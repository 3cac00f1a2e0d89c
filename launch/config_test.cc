// Tests of the config layer: every validation rule rejects with a message naming the field, parse
// errors carry FILE:LINE:COL and the field, --set overrides reach nested / enum / bool / repeated
// fields, defaults and presets resolve, and print_config round-trips. The shipped
// configs/*.textproto load.
#include "launch/config.h"

#include <gmock/gmock.h>
#include <google/protobuf/util/message_differencer.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <fstream>

#include "launch/pipeline_stage.h"
#include "launch/testing/tiny_config.h"
#include "models/presets.h"

namespace kiln {
namespace {

using ::google::protobuf::util::MessageDifferencer;
using ::testing::HasSubstr;

namespace fs = std::filesystem;

using testing::base_config;
constexpr const char* kBase = testing::kBaseConfig;

std::string message_of(const absl::Status& s) { return std::string(s.message()); }

// Asserts that validate_config rejects `cfg` with a message containing every one of `needles`.
void expect_rejected(const TrainConfig& cfg, std::initializer_list<const char*> needles) {
  absl::Status s = validate_config(cfg);
  ASSERT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << print_config(cfg);
  for (const char* n : needles) EXPECT_THAT(message_of(s), HasSubstr(n));
}

fs::path temp_file(const std::string& name, const std::string& contents) {
  fs::path dir = fs::temp_directory_path() / ("kiln_config_test_" + std::to_string(::getpid()));
  fs::create_directories(dir);
  fs::path p = dir / name;
  std::ofstream(p) << contents;
  return p;
}

TEST(ValidateTest, BaseConfigIsValid) {
  absl::Status s = validate_config(base_config());
  EXPECT_TRUE(s.ok()) << s;
}

TEST(ValidateTest, RejectsNonPositiveLearningRate) {
  TrainConfig c = base_config();
  c.mutable_optimizer()->set_lr(-1e-3);
  expect_rejected(c, {"optimizer.lr", "> 0"});
  c.mutable_optimizer()->set_lr(0);
  expect_rejected(c, {"optimizer.lr"});
}

TEST(ValidateTest, RejectsGlobalBatchNotDivisibleByMicroTimesDp) {
  TrainConfig c = base_config();
  c.mutable_training()->set_global_batch_size(12);
  c.mutable_parallel()->set_micro_batch_size(4);
  c.mutable_parallel()->set_dp(2);  // 12 % 8 != 0
  expect_rejected(c, {"training.global_batch_size", "micro_batch_size (4)", "dp (2)"});
  // With dp from the world: valid alone, rejected for a world of 2.
  c.mutable_parallel()->clear_dp();
  ASSERT_TRUE(validate_config(c).ok());
  absl::Status s = validate_world(c, 2);
  EXPECT_THAT(message_of(s), HasSubstr("training.global_batch_size"));
  EXPECT_TRUE(validate_world(c, 3).ok());  // 12 = 4 * 3
}

TEST(ValidateTest, RejectsTpNotDividingHeads) {
  TrainConfig c = base_config();  // gpt2-tiny: 2 heads
  c.mutable_parallel()->set_tp(4);
  expect_rejected(c, {"parallel.tp", "model.n_head (2)"});

  TrainConfig l = base_config();
  l.mutable_model()->Clear();
  l.mutable_model()->set_preset("llama-tiny");  // 4 heads, 2 kv heads
  ASSERT_TRUE(resolve_config(&l).ok());
  l.mutable_parallel()->set_tp(4);
  l.mutable_training()->set_global_batch_size(8);
  expect_rejected(l, {"parallel.tp", "model.n_kv_head (2)"});
  l.mutable_parallel()->set_tp(2);
  l.mutable_model()->set_vocab_pad_multiple(64);  // 50257 rows do not split over tp = 2
  EXPECT_TRUE(validate_config(l).ok()) << validate_config(l);
}

TEST(ValidateTest, RejectsTpNotDividingDffVocabOrSequence) {
  TrainConfig c = base_config();
  c.mutable_parallel()->set_tp(2);
  c.mutable_model()->set_vocab_pad_multiple(64);
  ASSERT_TRUE(validate_config(c).ok()) << validate_config(c);
  TrainConfig f = c;
  f.mutable_model()->set_d_ff(255);
  expect_rejected(f, {"parallel.tp", "model.d_ff (255)"});
  TrainConfig v = c;  // 50257 padded to a multiple of 1 is odd; padded to 64 it splits
  v.mutable_model()->set_vocab_pad_multiple(1);
  expect_rejected(v, {"parallel.tp", "padded vocabulary (50257"});
  v.mutable_model()->set_vocab_pad_multiple(64);
  EXPECT_TRUE(validate_config(v).ok()) << validate_config(v);
  TrainConfig q = c;
  q.mutable_parallel()->set_sequence_parallel(true);
  q.mutable_data()->set_seq_len(31);
  expect_rejected(q, {"parallel.sequence_parallel", "data.seq_len (31)"});
  q.mutable_data()->set_seq_len(32);
  q.mutable_parallel()->set_pp(2);  // tp x pp runs without sequence parallel (tests/pp3d_test.cc)
  expect_rejected(q, {"parallel.sequence_parallel", "pipeline parallel (pp 2)"});
}

TEST(ValidateTest, RejectsPpNotDividingLayers) {
  TrainConfig c = base_config();  // 2 layers
  c.mutable_parallel()->set_pp(3);
  expect_rejected(c, {"parallel.pp", "model.n_layer (2)"});
  c.mutable_parallel()->set_pp(2);
  c.mutable_parallel()->set_pipeline_schedule(ParallelConfig::INTERLEAVED_1F1B);
  c.mutable_parallel()->set_virtual_stages(2);  // 2 * 2 chunks for 2 layers
  expect_rejected(c, {"parallel.pp", "virtual_stages", "parallel.pipeline_layers"});
}

// parallel.pipeline_layers: one entry per model chunk, each >= 1, summing to n_layer; with it, pp
// need not divide n_layer.
TEST(ValidateTest, PipelineLayers) {
  TrainConfig c = base_config();
  c.mutable_model()->set_n_layer(5);
  c.mutable_parallel()->set_pp(2);
  expect_rejected(c, {"parallel.pp", "must divide model.n_layer (5)"});
  for (int n : {3, 2}) c.mutable_parallel()->add_pipeline_layers(n);
  EXPECT_TRUE(validate_config(c).ok()) << validate_config(c);
  c.mutable_parallel()->set_pipeline_layers(1, 1);
  expect_rejected(c, {"parallel.pipeline_layers", "sum to 4, not model.n_layer (5)"});
  c.mutable_parallel()->set_pipeline_layers(0, 5);
  c.mutable_parallel()->set_pipeline_layers(1, 0);
  expect_rejected(c, {"parallel.pipeline_layers", "entry 1 is 0", "at least 1 layer"});
  c.mutable_parallel()->set_pipeline_layers(0, 3);
  c.mutable_parallel()->set_pipeline_layers(1, 2);
  c.mutable_parallel()->set_pipeline_schedule(ParallelConfig::INTERLEAVED_1F1B);
  c.mutable_parallel()->set_virtual_stages(2);
  expect_rejected(c, {"parallel.pipeline_layers", "pp (2) * virtual_stages (2) = 4, got 2"});
  c.mutable_parallel()->clear_pipeline_layers();
  for (int n : {2, 1, 1, 1}) c.mutable_parallel()->add_pipeline_layers(n);
  EXPECT_TRUE(validate_config(c).ok()) << validate_config(c);
  c.mutable_parallel()->set_pipeline_split(ParallelConfig::SPLIT_BY_PARAMETERS);
  expect_rejected(c, {"parallel.pipeline_split", "set one of the two"});
  c.mutable_parallel()->clear_pipeline_layers();
  EXPECT_TRUE(validate_config(c).ok()) << validate_config(c);  // 4 chunks of 5 layers
  c.mutable_model()->set_n_layer(3);
  expect_rejected(c, {"parallel.pp", "4 model chunks", "model.n_layer is 3"});
}

// SPLIT_BY_PARAMETERS on GPT-2 124M at pp 4: the first stage holds the embeddings (39.4M, over five
// blocks of 7.1M) and the last the tied copy (38.6M), so they keep one block each and the middle
// stages take five; Llama 8B: embedding and head (0.53B each) against blocks of 0.22B.
TEST(ValidateTest, PipelineLayersByParameters) {
  ModelConfig gpt2;
  gpt2.set_preset("gpt2-124m");
  ASSERT_TRUE(resolve_model_config(&gpt2).ok());
  EXPECT_THAT(launch::layers_by_parameters(gpt2, 4), ::testing::ElementsAre(1, 5, 5, 1));
  EXPECT_THAT(launch::layers_by_parameters(gpt2, 1), ::testing::ElementsAre(12));
  EXPECT_THAT(launch::layers_by_parameters(gpt2, 12), ::testing::Each(1));
  ModelConfig llama;
  llama.set_preset("llama-8b");
  ASSERT_TRUE(resolve_model_config(&llama).ok());
  EXPECT_THAT(launch::layers_by_parameters(llama, 4), ::testing::ElementsAre(7, 9, 9, 7));
}

TEST(ValidateTest, RejectsPipelineFlushesTooSmallOrNotDividing) {
  TrainConfig c = base_config();  // global batch 8
  c.mutable_parallel()->set_dp(1);
  c.mutable_parallel()->set_pp(2);
  c.mutable_parallel()->set_micro_batch_size(8);  // one micro-batch per step
  expect_rejected(c, {"parallel.pipeline_micro_batches", "ONE_F_ONE_B", "at least pp (2)"});
  c.mutable_parallel()->set_pipeline_schedule(ParallelConfig::ZB_H1);
  expect_rejected(c, {"parallel.pipeline_micro_batches", "ZB_H1", "got 1"});
  c.mutable_parallel()->set_pipeline_schedule(ParallelConfig::GPIPE);  // runs with any m
  EXPECT_TRUE(validate_config(c).ok()) << validate_config(c);
  c.mutable_parallel()->set_micro_batch_size(2);  // 4 micro-batches per step
  c.mutable_parallel()->set_pipeline_micro_batches(3);
  expect_rejected(c, {"parallel.pipeline_micro_batches", "does not divide the 4"});
}

TEST(ValidateTest, RejectsHeadsNotDividingWidth) {
  TrainConfig c = base_config();
  c.mutable_model()->set_n_head(3);
  c.mutable_model()->set_n_kv_head(3);
  expect_rejected(c, {"model.n_head", "d_model (64)"});
}

TEST(ValidateTest, RejectsKvHeadsNotDividingHeads) {
  TrainConfig c = base_config();
  c.mutable_model()->set_family(ModelConfig::LLAMA);
  c.mutable_model()->set_rope_theta(10000);
  c.mutable_model()->set_n_head(4);
  c.mutable_model()->set_n_kv_head(3);
  expect_rejected(c, {"model.n_kv_head", "n_head (4)"});
}

TEST(ValidateTest, RejectsMissingDataPath) {
  TrainConfig c = base_config();
  c.mutable_data()->set_synthetic(false);
  expect_rejected(c, {"data.train_shards", "no training data"});
  c.mutable_data()->add_train_shards("/nonexistent/kiln/train_*.bin");
  expect_rejected(c, {"data.train_shards", "/nonexistent/kiln/train_*.bin"});

  fs::path shard = temp_file("train_000.bin", "x");
  c.mutable_data()->set_train_shards(0, (shard.parent_path() / "train_*.bin").string());
  EXPECT_TRUE(validate_config(c).ok()) << validate_config(c);
  c.mutable_data()->add_val_shards((shard.parent_path() / "val_*.bin").string());
  expect_rejected(c, {"data.val_shards"});
}

TEST(ValidateTest, RejectsSeqLenOverMaxSeqLen) {
  TrainConfig c = base_config();
  c.mutable_data()->set_seq_len(65);  // gpt2-tiny: max 64
  expect_rejected(c, {"data.seq_len", "model.max_seq_len (64)"});
}

TEST(ValidateTest, RejectsCurriculumMinOverMax) {
  TrainConfig c = base_config();
  SeqLenCurriculum* sl = c.mutable_schedule()->mutable_seq_len();
  sl->set_kind(SeqLenCurriculum::FIXED_LINEAR);
  sl->set_min_len(16);
  sl->set_max_len(32);
  sl->set_steps(5);
  ASSERT_TRUE(resolve_config(&c).ok());  // curriculum defaults (step_multiple 8)
  EXPECT_EQ(sl->step_multiple(), 8);
  EXPECT_TRUE(validate_config(c).ok()) << validate_config(c);
  sl->set_min_len(48);
  sl->set_max_len(40);
  expect_rejected(c, {"schedule.seq_len.min_len", "exceeds max_len (40)"});
  sl->set_min_len(16);
  sl->set_max_len(64);  // over data.seq_len 32
  expect_rejected(c, {"schedule.seq_len.max_len", "data.seq_len"});
  sl->set_max_len(32);
  sl->set_steps(0);
  expect_rejected(c, {"schedule.seq_len.steps"});
}

TEST(ValidateTest, RejectsBadDiscreteCurriculum) {
  TrainConfig c = base_config();
  SeqLenCurriculum* sl = c.mutable_schedule()->mutable_seq_len();
  sl->set_kind(SeqLenCurriculum::FIXED_DISCRETE);
  sl->set_min_len(8);
  sl->add_discrete_lens(8);
  sl->add_discrete_lens(32);
  sl->add_discrete_steps(5);
  ASSERT_TRUE(resolve_config(&c).ok());
  EXPECT_EQ(sl->max_len(), 32);  // data.seq_len
  EXPECT_TRUE(validate_config(c).ok()) << validate_config(c);
  sl->add_discrete_steps(7);
  expect_rejected(c, {"schedule.seq_len.discrete_steps"});
  sl->clear_discrete_steps();
  sl->add_discrete_steps(5);
  sl->set_discrete_lens(1, 4);
  expect_rejected(c, {"schedule.seq_len.discrete_lens", "decrease"});
}

TEST(ValidateTest, RejectsZeroStageOutOfRange) {
  TrainConfig c = base_config();
  for (int stage : {0, 1, 2, 3}) {
    c.mutable_parallel()->set_zero_stage(stage);
    EXPECT_TRUE(validate_config(c).ok()) << stage;
  }
  c.mutable_parallel()->set_zero_stage(4);
  expect_rejected(c, {"parallel.zero_stage", "0, 1, 2 or 3"});
  c.mutable_parallel()->set_zero_stage(-1);
  expect_rejected(c, {"parallel.zero_stage"});
}

TEST(ValidateTest, RejectsZero3WithPipeline) {
  TrainConfig c = base_config();
  c.mutable_parallel()->set_pp(2);
  c.mutable_parallel()->set_zero_stage(3);
  expect_rejected(c, {"parallel.zero_stage", "pp > 1"});
}

TEST(ValidateTest, WorldSizeMustEqualDpTpPp) {
  TrainConfig c = base_config();
  c.mutable_parallel()->set_dp(2);
  c.mutable_parallel()->set_tp(2);
  c.mutable_model()->set_vocab_pad_multiple(64);  // 50257 rows do not split over tp = 2
  ASSERT_TRUE(validate_config(c).ok()) << validate_config(c);
  EXPECT_TRUE(validate_world(c, 4).ok());
  absl::Status s = validate_world(c, 8);
  EXPECT_THAT(message_of(s), HasSubstr("parallel.dp"));
  EXPECT_THAT(message_of(s), HasSubstr("world size (8 ranks)"));
  c.mutable_parallel()->clear_dp();
  EXPECT_THAT(message_of(validate_world(c, 3)), HasSubstr("must divide the world size (3 ranks)"));
}

TEST(ValidateTest, ResolveWorldSetsDpAndMicroBatch) {
  TrainConfig c = base_config();
  c.mutable_parallel()->clear_micro_batch_size();
  ASSERT_TRUE(resolve_world(4, &c).ok());
  EXPECT_EQ(c.parallel().dp(), 4);
  EXPECT_EQ(c.parallel().micro_batch_size(), 2);  // 8 / 4
  EXPECT_EQ(grad_accumulation_steps(c), 1);

  TrainConfig d = base_config();  // micro 2, global 8
  ASSERT_TRUE(resolve_world(2, &d).ok());
  EXPECT_EQ(grad_accumulation_steps(d), 2);
  TrainConfig e = base_config();
  EXPECT_FALSE(resolve_world(3, &e).ok());  // 8 % (2*3)
  EXPECT_FALSE(e.parallel().has_dp());
}

TEST(ValidateTest, Bf16AndFp16OnCpuAreAllowed) {
  TrainConfig c = base_config();
  c.mutable_precision()->set_dtype(PrecisionConfig::BF16);
  EXPECT_TRUE(validate_config(c).ok());
  c.mutable_precision()->set_dtype(PrecisionConfig::FP16);
  ASSERT_TRUE(resolve_config(&c).ok());  // the loss scaler's defaults come with FP16
  EXPECT_DOUBLE_EQ(c.precision().loss_scale_init(), 65536.0);
  EXPECT_TRUE(validate_config(c).ok());
  c.mutable_precision()->set_loss_scale_growth(1.0);
  expect_rejected(c, {"precision.loss_scale_growth"});
  c = base_config();
  c.mutable_precision()->set_fp8_matmul(true);
  expect_rejected(c, {"precision.fp8_matmul"});  // on the CPU
  c.set_device(TrainConfig::CUDA);
  c.mutable_precision()->set_dtype(PrecisionConfig::FP32);
  expect_rejected(c, {"precision.fp8_matmul"});  // outside bf16 training
  c.mutable_precision()->set_dtype(PrecisionConfig::BF16);
  EXPECT_TRUE(validate_config(c).ok());
  c.mutable_precision()->set_dtype(PrecisionConfig::AUTO);  // bf16 on CUDA
  EXPECT_TRUE(validate_config(c).ok());
}

TEST(ValidateTest, RejectsOtherOutOfRangeValues) {
  struct Case {
    void (*mutate)(TrainConfig*);
    const char* field;
  };
  const Case cases[] = {
      {[](TrainConfig* c) { c->mutable_optimizer()->set_beta2(1.0); }, "optimizer.beta2"},
      {[](TrainConfig* c) { c->mutable_optimizer()->set_eps(0); }, "optimizer.eps"},
      {[](TrainConfig* c) { c->mutable_optimizer()->set_weight_decay(-0.1); },
       "optimizer.weight_decay"},
      {[](TrainConfig* c) { c->mutable_optimizer()->set_grad_clip(-1); }, "optimizer.grad_clip"},
      {[](TrainConfig* c) { c->mutable_schedule()->mutable_lr()->set_warmup_steps(11); },
       "schedule.lr.warmup_steps"},
      {[](TrainConfig* c) { c->mutable_schedule()->mutable_lr()->set_min_lr_ratio(1.5); },
       "schedule.lr.min_lr_ratio"},
      {[](TrainConfig* c) { c->mutable_schedule()->mutable_lr()->set_decay_fraction(-0.1); },
       "schedule.lr.decay_fraction"},
      {[](TrainConfig* c) { c->mutable_training()->set_global_batch_size(0); },
       "training.global_batch_size"},
      {[](TrainConfig* c) { c->mutable_training()->set_max_steps(0); }, "training.max_steps"},
      {[](TrainConfig* c) { c->mutable_training()->set_max_non_finite_steps(0); },
       "training.max_non_finite_steps"},
      {[](TrainConfig* c) { c->mutable_parallel()->set_micro_batch_size(0); },
       "parallel.micro_batch_size"},
      {[](TrainConfig* c) { c->mutable_parallel()->set_tp(0); }, "parallel.tp"},
      {[](TrainConfig* c) { c->mutable_parallel()->set_timeout_s(0); }, "parallel.timeout_s"},
      {[](TrainConfig* c) { c->mutable_parallel()->set_backend(ParallelConfig::NCCL); },
       "parallel.backend"},
      {[](TrainConfig* c) { c->mutable_model()->set_dropout(1.0); }, "model.dropout"},
      {[](TrainConfig* c) { c->mutable_model()->set_n_layer(0); }, "model.n_layer"},
      {[](TrainConfig* c) { c->mutable_model()->set_vocab_size(-1); }, "model.vocab_size"},
      {[](TrainConfig* c) { c->mutable_checkpoint()->set_resume("/nonexistent/ckpt"); },
       "checkpoint.resume"},
      {[](TrainConfig* c) { c->mutable_checkpoint()->set_keep_last(-1); }, "checkpoint.keep_last"},
      {[](TrainConfig* c) { c->mutable_logging()->set_log_every(0); }, "logging.log_every"},
      {[](TrainConfig* c) { c->mutable_eval()->set_batches(0); }, "eval.batches"},
      {[](TrainConfig* c) { c->mutable_eval()->set_sample_temperature(0); },
       "eval.sample_temperature"},
      {[](TrainConfig* c) { c->set_name("a/b"); }, "name: 'a/b'"},
  };
  for (const Case& k : cases) {
    TrainConfig c = base_config();
    k.mutate(&c);
    SCOPED_TRACE(k.field);
    expect_rejected(c, {k.field});
  }
}

TEST(ValidateTest, RejectsBadBatchRamp) {
  TrainConfig c = base_config();  // global 8, micro 2
  BatchRamp* r = c.mutable_schedule()->mutable_batch_ramp();
  r->set_start(2);
  r->set_increment(2);
  r->set_ramp_tokens(1000);
  EXPECT_TRUE(validate_config(c).ok()) << validate_config(c);
  r->set_start(16);
  expect_rejected(c, {"schedule.batch_ramp.start", "exceeds training.global_batch_size"});
  r->set_start(3);
  expect_rejected(c, {"schedule.batch_ramp.start", "not divisible"});
  r->set_start(2);
  r->set_increment(4);  // 8 - 2 = 6 is not a multiple of 4
  expect_rejected(c, {"schedule.batch_ramp.increment"});
  r->set_increment(2);
  r->set_ramp_tokens(0);
  expect_rejected(c, {"schedule.batch_ramp.ramp_tokens"});
}

TEST(ValidateTest, ReportsEveryProblemAtOnce) {
  TrainConfig c = base_config();
  c.mutable_optimizer()->set_lr(-1);
  c.mutable_parallel()->set_zero_stage(7);
  absl::Status s = validate_config(c);
  EXPECT_THAT(message_of(s), HasSubstr("optimizer.lr"));
  EXPECT_THAT(message_of(s), HasSubstr("parallel.zero_stage"));
}

// ---- parsing ----

TEST(ParseTest, TypoInFileOnDiskReportsFileLineColumnAndField) {
  fs::path p = temp_file("typo.textproto",
                         "name: \"x\"\n"
                         "model {\n"
                         "  preset: \"gpt2-tiny\"\n"
                         "  n_layers: 4\n"
                         "}\n");
  absl::StatusOr<TrainConfig> cfg = load_config(p.string());
  ASSERT_FALSE(cfg.ok());
  EXPECT_EQ(cfg.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(message_of(cfg.status()), HasSubstr(p.string() + ":4:3: model.n_layers:"));
  EXPECT_THAT(message_of(cfg.status()), HasSubstr("no field named \"n_layers\""));
  EXPECT_THAT(message_of(cfg.status()), HasSubstr("did you mean 'n_layer'?"));
}

TEST(ParseTest, WrongTypeNamesTheField) {
  absl::StatusOr<TrainConfig> cfg =
      parse_config("training {\n  max_steps: 10\n}\noptimizer { lr: \"fast\" }\n", "f.textproto");
  ASSERT_FALSE(cfg.ok());
  EXPECT_THAT(message_of(cfg.status()), HasSubstr("f.textproto:4:"));
  EXPECT_THAT(message_of(cfg.status()), HasSubstr("optimizer.lr:"));

  cfg = parse_config("model { n_layer: 2.5 }", "g");
  ASSERT_FALSE(cfg.ok());
  EXPECT_THAT(message_of(cfg.status()), HasSubstr("g:1:"));
  EXPECT_THAT(message_of(cfg.status()), HasSubstr("model.n_layer:"));
}

TEST(ParseTest, UnknownEnumListsTheChoices) {
  absl::StatusOr<TrainConfig> cfg = parse_config("model {\n\tfamily: GPT3\n}", "e");
  ASSERT_FALSE(cfg.ok());
  EXPECT_THAT(message_of(cfg.status()), HasSubstr("e:2:"));
  EXPECT_THAT(message_of(cfg.status()), HasSubstr("model.family:"));
  EXPECT_THAT(message_of(cfg.status()), HasSubstr("GPT2, LLAMA"));
}

TEST(ParseTest, UnknownTopLevelFieldAndRepeatedScalar) {
  absl::StatusOr<TrainConfig> cfg = parse_config("# comment\noptimiser { lr: 1 }", "u");
  ASSERT_FALSE(cfg.ok());
  EXPECT_THAT(message_of(cfg.status()), HasSubstr("u:2:1: optimiser:"));
  EXPECT_THAT(message_of(cfg.status()), HasSubstr("did you mean 'optimizer'?"));

  cfg = parse_config("optimizer { lr: 1 lr: 2 }", "r");
  ASSERT_FALSE(cfg.ok());
  EXPECT_THAT(message_of(cfg.status()), HasSubstr("\"lr\""));
}

TEST(ParseTest, MissingFileIsNotFound) {
  absl::StatusOr<TrainConfig> cfg = load_config("/nonexistent/kiln.textproto");
  EXPECT_EQ(cfg.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(message_of(cfg.status()), HasSubstr("/nonexistent/kiln.textproto"));
}

TEST(ParseTest, LoadValidatesAndPrefixesTheFile) {
  fs::path p = temp_file("neg.textproto", std::string(kBase) + "optimizer { lr: -0.1 }\n");
  absl::StatusOr<TrainConfig> cfg = load_config(p.string());
  ASSERT_FALSE(cfg.ok());
  EXPECT_THAT(message_of(cfg.status()),
              HasSubstr(p.string() + ": optimizer.lr: learning rate must be > 0"));
  // The same file with a fixing override loads.
  cfg = load_config(p.string(), {"optimizer.lr=3e-4"});
  ASSERT_TRUE(cfg.ok()) << cfg.status();
  EXPECT_DOUBLE_EQ(cfg->optimizer().lr(), 3e-4);
}

TEST(ParseTest, DirectoryIsAnErrorNamingIt) {
  const fs::path dir = temp_file("x.textproto", "").parent_path();
  absl::StatusOr<TrainConfig> cfg = load_config(dir.string());
  ASSERT_FALSE(cfg.ok());
  EXPECT_THAT(message_of(cfg.status()), HasSubstr(dir.string() + "' is a directory"));
}

TEST(ValidateTest, RejectsHugeMaxSeqLen) {
  TrainConfig c = base_config();
  c.mutable_model()->set_max_seq_len(2000000000);
  expect_rejected(c, {"model.max_seq_len", "2000000000", "1048576"});
  c.mutable_model()->set_max_seq_len(1 << 20);  // the bound itself is allowed
  EXPECT_TRUE(validate_config(c).ok()) << validate_config(c);
}

TEST(ResolveTest, FillsDefaultsAndIsIdempotent) {
  TrainConfig c = base_config();
  EXPECT_EQ(c.model().n_layer(), 2);
  EXPECT_EQ(c.model().d_ff(), 256);
  EXPECT_DOUBLE_EQ(c.optimizer().lr(), 6e-4);
  EXPECT_DOUBLE_EQ(c.optimizer().weight_decay(), 0.1);
  EXPECT_EQ(c.optimizer().decay_min_dim(), 2);
  EXPECT_EQ(c.parallel().tp(), 1);
  EXPECT_FALSE(c.parallel().has_dp());
  EXPECT_EQ(c.training().seed(), 1337u);
  EXPECT_EQ(c.data().seed(), 1337u);
  EXPECT_EQ(c.logging().run_dir(), "runs/t");
  EXPECT_EQ(c.checkpoint().dir(), "runs/t/checkpoints");
  EXPECT_EQ(c.checkpoint().resume(), "auto");
  EXPECT_FALSE(c.precision().has_loss_scale_init());         // not FP16
  EXPECT_FALSE(c.schedule().seq_len().has_step_multiple());  // no curriculum
  const std::string text = print_config(c);                  // the defaults in effect are visible
  EXPECT_THAT(text, HasSubstr("type: ADAMW"));
  EXPECT_THAT(text, HasSubstr("kind: COSINE"));
  EXPECT_THAT(text, HasSubstr("zero_stage: 0"));
  EXPECT_THAT(text, HasSubstr("policy: NONE"));
  TrainConfig again = c;
  ASSERT_TRUE(resolve_config(&again).ok());
  EXPECT_TRUE(MessageDifferencer::Equals(c, again));
}

TEST(ResolveTest, UnknownPresetFails) {
  absl::StatusOr<TrainConfig> c = parse_config("model { preset: \"gpt5\" }");
  ASSERT_TRUE(c.ok());
  absl::Status s = resolve_config(&*c);
  EXPECT_THAT(message_of(s), HasSubstr("model.preset"));
}

TEST(PrintTest, RoundTripsResolvedConfig) {
  TrainConfig c = base_config();
  ASSERT_TRUE(
      apply_overrides({"optimizer.no_decay=wte.*", "eval.sample_prompt=\"Once \\\"upon\\\"\"",
                       "optimizer.weight_decay=0", "data.seed=18446744073709551615"},
                      &c)
          .ok());
  const std::string text = print_config(c);
  EXPECT_THAT(text, HasSubstr("preset: \"gpt2-tiny\""));
  EXPECT_THAT(text, HasSubstr("weight_decay: 0"));  // explicit presence prints zeros
  absl::StatusOr<TrainConfig> back = parse_config(text);
  ASSERT_TRUE(back.ok()) << back.status() << "\n" << text;
  EXPECT_TRUE(MessageDifferencer::Equals(c, *back)) << text;
}

// The shipped configs parse, resolve and validate (data replaced by the synthetic stream, since the
// shards are prepared later), and round-trip through print_config.
TEST(ShippedConfigsTest, LoadAndRoundTrip) {
  for (const char* name : {"default", "tiny", "gpt2-124m", "llama-1b"}) {
    SCOPED_TRACE(name);
    const std::string path = std::string(KILN_SOURCE_DIR) + "/configs/" + name + ".textproto";
    absl::StatusOr<TrainConfig> c = load_config(path, {"data.synthetic=true"});
    ASSERT_TRUE(c.ok()) << c.status();
    absl::StatusOr<TrainConfig> back = parse_config(print_config(*c));
    ASSERT_TRUE(back.ok()) << back.status();
    EXPECT_TRUE(MessageDifferencer::Equals(*c, *back));
  }
}

TEST(ShippedConfigsTest, ShapesAreWhatTheCommentsSay) {
  const std::string dir = std::string(KILN_SOURCE_DIR) + "/configs/";
  absl::StatusOr<TrainConfig> gpt =
      load_config(dir + "gpt2-124m.textproto", {"data.synthetic=true"});
  ASSERT_TRUE(gpt.ok()) << gpt.status();
  EXPECT_EQ(padded_vocab_size(gpt->model()), 50304);
  EXPECT_EQ(gpt->training().global_batch_size() * gpt->data().seq_len(), 524288);
  ASSERT_TRUE(resolve_world(8, &*gpt).ok());
  EXPECT_EQ(grad_accumulation_steps(*gpt), 2);  // 512 / (32 * 8)
  absl::StatusOr<TrainConfig> llama =
      load_config(dir + "llama-1b.textproto", {"data.synthetic=true"});
  ASSERT_TRUE(llama.ok()) << llama.status();
  EXPECT_EQ(llama->model().n_kv_head(), 4);
  EXPECT_FALSE(llama->model().tied_embeddings());
}

}  // namespace
}  // namespace kiln
