// Hugging Face interchange tests: safetensors writing/reading and header validation, the GPT-2 /
// Llama name mapping, and export -> import giving bit-identical logits (in process and through
// `kiln export` / `kiln logits` / `kiln train --init-from`). The JSON reader: core/json_test.cc.
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <sys/wait.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>

#include "core/autograd.h"
#include "core/backend.h"
#include "core/check.h"
#include "core/json.h"
#include "launch/config.h"
#include "launch/hf_mapping.h"
#include "launch/pipeline_stage.h"
#include "launch/safetensors.h"
#include "launch/testing/files.h"
#include "launch/trainer.h"
#include "models/model.h"
#include "models/presets.h"

namespace kiln::launch {
namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;

std::string fresh_dir(const std::string& name) {
  return kiln::testing::fresh_dir("export_" + name);
}
using kiln::testing::run_kiln;

std::string header_file(const std::string& json, size_t data_bytes) {
  std::string s(8, '\0');
  for (int k = 0; k < 8; ++k) s[k] = static_cast<char>((json.size() >> (8 * k)) & 0xFF);
  return s + json + std::string(data_bytes, '\0');
}

TEST(Safetensors, WritesReadsAndValidates) {
  const std::string dir = fresh_dir("st");
  std::vector<float> a = {1, 2, 3, 4, 5, 6};
  std::vector<int64_t> b = {7, 8};
  ASSERT_TRUE(write_safetensors(dir + "/x.safetensors",
                                {{"a", "F32", {2, 3}, {reinterpret_cast<char*>(a.data()), 24}},
                                 {"b.c", "I64", {2}, {reinterpret_cast<char*>(b.data()), 16}}},
                                {{"format", "pt"}})
                  .ok());
  auto r = SafetensorsReader::open(dir + "/x.safetensors");
  ASSERT_TRUE(r.ok()) << r.status().message();
  EXPECT_EQ((*r)->header().data_start % 8, 0u);
  EXPECT_EQ((*r)->header().metadata.at(0).second, "pt");
  const SafetensorsEntry* e = (*r)->header().find("a");
  ASSERT_NE(e, nullptr);
  EXPECT_EQ(e->shape, (std::vector<int64_t>{2, 3}));
  std::vector<float> back(6);
  ASSERT_TRUE((*r)->read(*e, back.data()).ok());
  EXPECT_EQ(back, a);
  struct Case {
    std::string file;
    std::string expect;
  };
  const std::string ok = R"({"t":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})";
  EXPECT_TRUE(parse_safetensors_header(header_file(ok, 8), 8 + ok.size() + 8).ok());
  const std::vector<Case> cases = {
      {header_file(ok, 4), "data section has 4"},
      {header_file(ok, 12), "data section has 12"},
      {header_file(R"({"t":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})", 8), "expected 12"},
      {header_file(R"({"t":{"dtype":"Q4","shape":[2],"data_offsets":[0,8]}})", 8), "unknown dtype"},
      {header_file(R"({"t":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                   R"("u":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})",
                   8),
       "overlap"},
      {header_file(R"({"t":{"dtype":"F32","shape":[-1],"data_offsets":[0,8]}})", 8), "shape"},
      {header_file(R"({"t":{"dtype":"F32","shape":[2],"data_offsets":[8,0]}})", 8), "end before"},
      {header_file(R"([1])", 0), "must start with '{'"},
      {header_file(R"({"t":1})", 0), "tensor 't' is not an object"},
      {header_file(R"({"__metadata__":{"a":1}})", 0), "not a string"},
      {header_file("{\"t\":", 0), "JSON"},
      {std::string("\xff\xff\xff\xff\x00\x00\x00\x00", 8), "exceeds the 100 MB limit"},
      {std::string("\x40\x00\x00\x00\x00\x00\x00\x00{}", 10), "runs past the end"},
      {"abc", "no 8-byte header length"},
  };
  for (const Case& c : cases) {
    auto h = parse_safetensors_header(c.file, c.file.size());
    EXPECT_FALSE(h.ok()) << c.expect;
    EXPECT_THAT(std::string(h.status().message()), HasSubstr(c.expect));
  }
}

TEST(HfNames, Gpt2AndLlamaMapping) {
  ModelConfig g;
  g.set_preset("gpt2-124m");
  ASSERT_TRUE(resolve_model_config(&g).ok());
  std::vector<HfTensor> t = hf_tensors(g);
  EXPECT_EQ(t.size(), 2u + 12 * 12 + 2);  // 124M: wte, wpe, 12 per block, ln_f
  int64_t n = 0;
  for (const HfTensor& x : t) n += shape_numel(Shape(x.hf_shape.begin(), x.hf_shape.end()));
  EXPECT_EQ(n, 124439808);  // the published GPT-2 small parameter count
  EXPECT_EQ(t[4].hf_name, "transformer.h.0.attn.c_attn.weight");
  EXPECT_TRUE(t[4].transpose);
  EXPECT_EQ(t[4].hf_shape, (std::vector<int64_t>{768, 2304}));
  ModelConfig l;
  l.set_preset("llama-1b");
  ASSERT_TRUE(resolve_model_config(&l).ok());
  t = hf_tensors(l);
  EXPECT_EQ(t.front().hf_name, "model.embed_tokens.weight");
  EXPECT_EQ(t.back().hf_name, "lm_head.weight");
  EXPECT_EQ(t[3].hf_name, "model.layers.0.self_attn.k_proj.weight");
  EXPECT_EQ(t[3].hf_shape, (std::vector<int64_t>{256, 2048}));  // 4 kv heads of 64
  n = 0;
  for (const HfTensor& x : t) n += shape_numel(Shape(x.hf_shape.begin(), x.hf_shape.end()));
  EXPECT_EQ(n, 1100048384);  // TinyLlama-1.1B
  for (const ModelConfig* m : {&g, &l}) {
    absl::StatusOr<JsonValue> j = parse_json(hf_config_json(*m));
    ASSERT_TRUE(j.ok()) << j.status().message();
    EXPECT_TRUE(j->find("vocab_size") && j->find("torch_dtype"));
  }
}

TrainConfig model_config(const std::string& run_dir, const std::string& model) {
  auto c = parse_config(model + R"pb(
                          data { synthetic: true seq_len: 16 }
                          training { global_batch_size: 4 max_steps: 3 seed: 4 }
                          optimizer { lr: 1e-2 }
                          eval { batches: 1 sample_tokens: 0 }
                          logging { tensorboard: false jsonl: false }
                          device: CPU
                        )pb",
                        "export");
  KILN_CHECK(c.ok()) << c.status().message();
  c->mutable_logging()->set_run_dir(run_dir);
  KILN_CHECK(resolve_config(&*c).ok());
  KILN_CHECK(resolve_world(1, &*c).ok());
  absl::Status s = validate_config(*c);
  KILN_CHECK(s.ok()) << s.message();
  return *c;
}

const char* kGpt2 = R"pb(model {
                           preset: "gpt2-tiny"
                           vocab_size: 96
                           max_seq_len: 32
                           n_layer: 2
                           n_head: 2
                           d_model: 32
                           vocab_pad_multiple: 64
                         })pb";
const char* kLlama = R"pb(model {
                            preset: "llama-tiny"
                            vocab_size: 96
                            max_seq_len: 32
                            n_layer: 2
                            n_head: 4
                            n_kv_head: 2
                            d_model: 32
                            d_ff: 64
                            vocab_pad_multiple: 64
                            rope_theta: 500000
                            norm_eps: 1e-6
                          })pb";

// (B, T, vocab_size) logits, vocabulary padding dropped.
Tensor logits_of(models::LanguageModel& m, const Tensor& ids) {
  NoGradGuard ng;
  m.set_training(false);
  Tensor l = m.forward(ids);
  return raw::contiguous(l.narrow(2, 0, m.spec().vocab_size));
}

// Each stage of a pp = 2 split (training.init_from at pp > 1) imports its own tensors of the whole
// model's file, equal to the whole model's; the same import without `stage` refuses the file.
void expect_stages_import(const std::string& hf, const ModelConfig& mc,
                          models::LanguageModel& whole) {
  std::map<std::string, Tensor> want;
  for (const nn::Parameter& p : whole.parameters()) want[p.name] = p.tensor;
  for (int rank = 0; rank < 2; ++rank) {
    auto stage = models::build_stage(models::spec_from_config(mc), /*seed=*/99,
                                     stage_spec(mc.n_layer(), rank, 2));
    EXPECT_FALSE(import_safetensors(hf, mc, stage->parameters()).ok());
    absl::Status s = import_safetensors(hf, mc, stage->parameters(), /*stage=*/true);
    ASSERT_TRUE(s.ok()) << s.message();
    for (const nn::Parameter& p : stage->parameters()) {
      ASSERT_TRUE(want.count(p.name)) << p.name;
      EXPECT_EQ(std::memcmp(p.tensor.raw(), want[p.name].raw(), p.tensor.nbytes()), 0) << p.name;
    }
  }
}

void expect_export_import_identical(const std::string& name, const char* model) {
  const std::string dir = fresh_dir(name);
  TrainConfig cfg = model_config(dir + "/run", model);
  Trainer t(cfg, parallel::World{});
  t.set_quiet(true);
  ASSERT_TRUE(t.init().ok());
  absl::StatusOr<TrainSummary> r = t.run();
  ASSERT_TRUE(r.ok());
  const Tensor ids = Tensor::from_ints({1, 5, 9, 95, 3, 3, 0, 40, 2, 7, 11, 13, 17, 19, 23, 29},
                                       {2, 8}, DType::kI32);
  const Tensor ref = logits_of(t.model(), ids);
  ASSERT_TRUE(export_safetensors(r->checkpoint, dir + "/hf").ok());
  std::unique_ptr<models::LanguageModel> fresh =
      models::build_model(models::spec_from_config(cfg.model()), /*seed=*/12345);
  absl::Status s = import_safetensors(dir + "/hf", cfg.model(), fresh->parameters());
  ASSERT_TRUE(s.ok()) << s.message();
  const Tensor got = logits_of(*fresh, ids);
  ASSERT_EQ(got.shape(), (Shape{2, 8, 96}));
  EXPECT_EQ(std::memcmp(got.raw(), ref.raw(), ref.nbytes()), 0) << name << ": logits differ";
  expect_stages_import(dir + "/hf", cfg.model(), *fresh);
  // The file holds what transformers expects: vocabulary rows sliced, GPT-2 Conv1D transposed.
  auto st = SafetensorsReader::open(dir + "/hf/model.safetensors");
  ASSERT_TRUE(st.ok());
  const bool gpt2 = cfg.model().family() == ModelConfig::GPT2;
  const SafetensorsEntry* emb =
      (*st)->header().find(gpt2 ? "transformer.wte.weight" : "model.embed_tokens.weight");
  ASSERT_NE(emb, nullptr);
  EXPECT_EQ(emb->shape, (std::vector<int64_t>{96, 32}));
  if (gpt2) {
    const SafetensorsEntry* w = (*st)->header().find("transformer.h.1.mlp.c_fc.weight");
    ASSERT_NE(w, nullptr);
    EXPECT_EQ(w->shape, (std::vector<int64_t>{32, 128}));
    std::vector<float> v(32 * 128);
    ASSERT_TRUE((*st)->read(*w, v.data()).ok());
    Tensor kiln_w;
    for (const nn::Parameter& p : t.model().parameters())
      if (p.name == "h.1.mlp.c_fc.weight") kiln_w = p.tensor;  // (128, 32)
    const std::vector<double> k = kiln_w.to_vector();
    EXPECT_EQ(v[5 * 128 + 7], static_cast<float>(k[7 * 32 + 5]));
  } else {
    EXPECT_NE((*st)->header().find("lm_head.weight"), nullptr);
  }
}

TEST(ExportImport, Gpt2LogitsBitIdentical) { expect_export_import_identical("gpt2", kGpt2); }
TEST(ExportImport, LlamaLogitsBitIdentical) { expect_export_import_identical("llama", kLlama); }

TEST(ExportImport, ImportErrorsNameTheTensorOrField) {
  const std::string dir = fresh_dir("errors");
  TrainConfig cfg = model_config(dir + "/run", kGpt2);
  {
    Trainer t(cfg, parallel::World{});
    t.set_quiet(true);
    ASSERT_TRUE(t.init().ok());
    ASSERT_TRUE(t.run().ok());
  }
  ASSERT_TRUE(export_safetensors(dir + "/run/checkpoints/step_00000003", dir + "/hf").ok());
  const std::string file = dir + "/hf/model.safetensors";
  auto import_into = [&](const std::string& path, const std::string& overrides) {
    TrainConfig c = cfg;
    if (!overrides.empty()) KILN_CHECK(apply_override(overrides, &c).ok());
    KILN_CHECK(resolve_config(&c).ok());
    auto m = models::build_model(models::spec_from_config(c.model()), 1);
    return std::string(import_safetensors(path, c.model(), m->parameters()).message());
  };
  EXPECT_EQ(import_into(dir + "/hf", ""), "");
  EXPECT_THAT(import_into(dir + "/hf", "model.d_ff=64"),
              HasSubstr("n_inner is 128 but model.d_ff is 64"));
  EXPECT_THAT(import_into(file, "model.d_ff=64"),
              HasSubstr("tensor 'transformer.h.0.mlp.c_fc.weight' is [32, 128] but this model "
                        "needs [32, 64]"));
  EXPECT_THAT(import_into(file, "model.n_layer=3"),
              HasSubstr("has no tensor 'transformer.h.2.ln_1.weight'"));
  EXPECT_THAT(import_into(file, "model.n_layer=1"),
              HasSubstr("tensor 'transformer.h.1.ln_1.weight' has no place in this model"));
  EXPECT_THAT(import_into(dir + "/nowhere", ""), HasSubstr("cannot open"));
}

TEST(ExportImport, ThroughTheCli) {
  const std::string dir = fresh_dir("cli");
  const std::string cfg = dir + "/cfg.textproto";
  std::ofstream(cfg) << kLlama << R"pb(
    data { synthetic: true seq_len: 16 }
    training { global_batch_size: 4 max_steps: 3 }
    eval { batches: 1 sample_tokens: 0 }
    logging { tensorboard: false }
    device: CPU)pb";
  const std::string run = " --set logging.run_dir=" + dir + "/run";
  auto [rc, out] = run_kiln("train --config " + cfg + run);
  ASSERT_EQ(rc, 0) << out;
  std::tie(rc, out) = run_kiln("export --format safetensors --checkpoint " + dir +
                               "/run/checkpoints --out " + dir + "/hf");
  ASSERT_EQ(rc, 0) << out;
  const std::string tokens = " --tokens '3 1 4 1 5 9 2 6, 5 3 5 8 9 7 9 3'";
  std::tie(rc, out) = run_kiln("logits --checkpoint " + dir + "/run/checkpoints/step_00000003" +
                               tokens + " --out " + dir + "/a.safetensors");
  ASSERT_EQ(rc, 0) << out;
  std::tie(rc, out) = run_kiln("logits --config " + cfg + " --init-from " + dir + "/hf" + tokens +
                               " --out " + dir + "/b.safetensors");
  ASSERT_EQ(rc, 0) << out;
  auto a = SafetensorsReader::open(dir + "/a.safetensors");
  auto b = SafetensorsReader::open(dir + "/b.safetensors");
  ASSERT_TRUE(a.ok() && b.ok());
  const SafetensorsEntry* la = (*a)->header().find("logits");
  const SafetensorsEntry* lb = (*b)->header().find("logits");
  ASSERT_TRUE(la && lb);
  EXPECT_EQ(la->shape, (std::vector<int64_t>{2, 8, 96}));
  std::string xa(la->end - la->begin, '\0'), xb(lb->end - lb->begin, '\0');
  ASSERT_TRUE((*a)->read(*la, xa.data()).ok() && (*b)->read(*lb, xb.data()).ok());
  EXPECT_TRUE(xa == xb) << "logits from the checkpoint and from the exported weights differ";
  // Continued pre-training from the exported weights (a new run directory, nothing to resume).
  std::tie(rc, out) = run_kiln("train --config " + cfg + " --set logging.run_dir=" + dir +
                               "/cont --init-from " + dir + "/hf");
  EXPECT_EQ(rc, 0) << out;
  EXPECT_THAT(out, HasSubstr("initialised the model from " + dir + "/hf"));
  std::tie(rc, out) = run_kiln("train --config " + cfg + " --set logging.run_dir=" + dir +
                               "/bad --init-from " + dir + "/hf --set model.n_kv_head=4");
  EXPECT_EQ(rc, 1) << out;
  EXPECT_THAT(out, HasSubstr("training.init_from: " + dir +
                             "/hf/config.json: num_key_value_heads is 2 but model.n_kv_head is 4"));
  for (const char* cmd : {"export", "logits", "checkpoint"}) {
    std::tie(rc, out) = run_kiln(std::string(cmd) + " --help");
    EXPECT_EQ(rc, 0) << cmd;
    EXPECT_THAT(out, HasSubstr("usage: kiln " + std::string(cmd)));
  }
}

}  // namespace
}  // namespace kiln::launch
