// prepare-data tests: shard contents equal <|endoftext|> + encode(document) for every document in
// order, the validation split rule, JSONL fields and their errors, shard sizes, the uint32 variant,
// identical output with 1, 2 and 4 threads on the whole default corpus, and the loader reading it.
#include "data/prepare.h"

#include <filesystem>

#include "absl/strings/str_cat.h"
#include "core/json.h"
#include "data/cli.h"
#include "data/loader.h"
#include "data/shard.h"
#include "data/test_util.h"
#include "gtest/gtest.h"

namespace kiln::data {
namespace {

using testing::TempDir;

const Tokenizer& gpt2() {
  static const Tokenizer* tok = [] {
    auto t = Tokenizer::LoadDir(testing::gpt2_dir());
    return t.ok() ? new Tokenizer(*std::move(t)) : nullptr;
  }();
  return *tok;
}

std::vector<int32_t> read_all(const std::vector<std::string>& shards) {
  std::vector<int32_t> out;
  for (const auto& p : shards) {
    auto s = Shard::Open(p, 0);
    EXPECT_TRUE(s.ok()) << s.status();
    if (!s.ok()) continue;
    size_t n = out.size();
    out.resize(n + s->num_tokens());
    s->read(0, s->num_tokens(), out.data() + n);
  }
  return out;
}

std::vector<std::string> make_docs(int n) {
  std::vector<std::string> docs;
  for (int i = 0; i < n; ++i) {
    docs.push_back(absl::StrCat("Document ", i, " says: it's ", i * i, " naïve words 😀\n",
                                std::string(i % 7, '!'), " and more text.\n"));
  }
  return docs;
}

class PrepareTest : public ::testing::Test {
 protected:
  void SetUp() override {
    KILN_REQUIRE_FILE(testing::gpt2_dir() + "/encoder.json");
    ASSERT_NE(&gpt2(), nullptr);
  }
  PrepareOptions options(const std::string& input) {
    PrepareOptions o;
    o.inputs = {input};
    o.output_dir = dir_.file("out");
    o.name = "t";
    o.progress = false;
    return o;
  }
  TempDir dir_;
};

TEST_F(PrepareTest, ShardsHoldEndOfTextThenEachDocument) {
  std::vector<std::string> docs = make_docs(40);
  std::string text;
  for (size_t i = 0; i < docs.size(); ++i) text += (i ? "<|endoftext|>" : "") + docs[i];
  text += "<|endoftext|>";  // a trailing separator adds no empty document
  testing::write_file(dir_.file("in.txt"), text);
  PrepareOptions o = options(dir_.file("in.txt"));
  o.val_docs = 4;
  o.shard_tokens = 97;  // many shards, documents split across them
  o.unit_bytes = 100;
  auto r = prepare_data(o, gpt2());
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->documents, 40);
  EXPECT_EQ(r->val_documents, 4);
  EXPECT_EQ(r->train_documents, 36);
  std::vector<int32_t> want_train, want_val;
  for (int i = 0; i < 40; ++i) {
    auto& dst = is_validation_document(i, 4, 40) ? want_val : want_train;
    dst.push_back(kGpt2EndOfText);
    gpt2().encode(docs[i], &dst);
  }
  EXPECT_EQ(read_all(r->train_shards), want_train);
  EXPECT_EQ(read_all(r->val_shards), want_val);
  EXPECT_EQ(r->train_tokens, static_cast<int64_t>(want_train.size()));
  for (const auto& p : r->train_shards) {
    auto s = Shard::Open(p, 50257);
    ASSERT_TRUE(s.ok()) << s.status();
    EXPECT_LE(s->num_tokens(), 97);
  }
  EXPECT_EQ(r->train_shards[0], dir_.file("out/t_train_000000.bin"));
  EXPECT_EQ(r->val_shards[0], dir_.file("out/t_val_000000.bin"));
}

TEST(ValidationSplitTest, PicksExactlyNEvenlySpread) {
  for (int64_t n : {1, 7, 100, 1001}) {
    for (int64_t v : {int64_t{0}, int64_t{1}, n / 3, n - 1}) {
      int64_t count = 0, max_gap = 0, last = -1;
      for (int64_t i = 0; i < n; ++i) {
        if (is_validation_document(i, v, n)) {
          ++count;
          max_gap = std::max(max_gap, i - last);
          last = i;
        }
      }
      EXPECT_EQ(count, v) << n << " " << v;
      if (v > 0) EXPECT_LE(max_gap, n / v + 1) << n << " " << v;
    }
  }
}

TEST_F(PrepareTest, JsonlNamedFieldAndFractionSplit) {
  std::vector<std::string> docs = make_docs(30);
  std::string jsonl;
  for (const auto& d : docs) {
    std::string esc;
    append_json_string(d, &esc);
    jsonl += absl::StrCat("{\"id\": 1, \"meta\": {\"text\": \"no\"}, \"body\": ", esc, "}\n\n");
  }
  testing::write_file(dir_.file("in.jsonl"), jsonl);
  PrepareOptions o = options(dir_.file("*.jsonl"));
  o.documents.jsonl_field = "body";
  o.val_fraction = 0.1;
  auto r = prepare_data(o, gpt2());
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->val_documents, 3);
  std::vector<int32_t> want;
  for (int i = 0; i < 30; ++i) {
    if (is_validation_document(i, 3, 30)) continue;
    want.push_back(kGpt2EndOfText);
    gpt2().encode(docs[i], &want);
  }
  EXPECT_EQ(read_all(r->train_shards), want);

  // A malformed line and a missing field are errors naming file:line.
  testing::write_file(dir_.file("bad.jsonl"), "{\"body\": \"ok\"}\n{\"body\": \"unterminated}\n");
  o = options(dir_.file("bad.jsonl"));
  o.documents.jsonl_field = "body";
  o.overwrite = true;
  auto bad = prepare_data(o, gpt2());
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find(dir_.file("bad.jsonl") + ":2"), std::string::npos)
      << bad.status();
  o.documents.jsonl_field = "text";
  bad = prepare_data(o, gpt2());
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find(":1: no field \"text\""), std::string::npos)
      << bad.status();
  // A failed run (--overwrite included) leaves the earlier dataset as it was and no temporaries.
  EXPECT_EQ(read_all(r->train_shards), want);
  EXPECT_TRUE(std::filesystem::exists(dir_.file("out/t.manifest.json")));
  EXPECT_FALSE(std::filesystem::exists(dir_.file("out/.prepare-t.tmp")));
}

TEST_F(PrepareTest, BadInputsAreClearErrors) {
  testing::write_file(dir_.file("empty.txt"), "");
  auto r = prepare_data(options(dir_.file("empty.txt")), gpt2());
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("empty input"), std::string::npos) << r.status();
  EXPECT_NE(r.status().message().find("empty.txt"), std::string::npos) << r.status();

  r = prepare_data(options(dir_.file("missing.txt")), gpt2());
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("missing.txt"), std::string::npos) << r.status();

  r = prepare_data(options(dir_.file("nomatch_*.txt")), gpt2());
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("nomatch_*.txt"), std::string::npos) << r.status();

  testing::write_file(dir_.file("one.txt"), "just one document");
  PrepareOptions o = options(dir_.file("one.txt"));
  o.val_docs = 1;
  r = prepare_data(o, gpt2());
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("none left to train on"), std::string::npos) << r.status();

  // Existing shards are kept unless --overwrite, which also removes stale extra shards.
  o.val_docs = 0;
  o.shard_tokens = 2;
  ASSERT_TRUE(prepare_data(o, gpt2()).ok());
  ASSERT_TRUE(std::filesystem::exists(dir_.file("out/t_train_000001.bin")));
  o.shard_tokens = 1000;
  r = prepare_data(o, gpt2());
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("--overwrite"), std::string::npos) << r.status();
  o.overwrite = true;
  r = prepare_data(o, gpt2());
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->train_shards.size(), 1u);
  EXPECT_FALSE(std::filesystem::exists(dir_.file("out/t_train_000001.bin")));
}

TEST_F(PrepareTest, SameOutputWithOneTwoAndFourThreadsOnTheDefaultCorpus) {
  KILN_REQUIRE_FILE(testing::brown_path());
  std::vector<std::string> reference;
  for (int threads : {1, 2, 4}) {
    PrepareOptions o = options(testing::brown_path());
    o.output_dir = dir_.file("t" + std::to_string(threads));
    o.threads = threads;
    o.unit_bytes = 64 << 10;   // ~100 units, finished out of order by the workers
    o.shard_tokens = 300'000;  // several shards
    o.val_fraction = 0.02;
    auto r = prepare_data(o, gpt2());
    ASSERT_TRUE(r.ok()) << r.status();
    EXPECT_EQ(r->documents, 500);
    EXPECT_EQ(r->val_documents, 10);
    std::vector<std::string> contents;
    for (const auto& p : r->val_shards) contents.push_back(testing::read_file(p));
    for (const auto& p : r->train_shards) contents.push_back(testing::read_file(p));
    EXPECT_GE(contents.size(), 5u);
    if (reference.empty()) {
      reference = contents;
    } else {
      EXPECT_TRUE(contents == reference) << threads << " threads wrote different shards";
    }
  }
}

TEST_F(PrepareTest, LoaderServesDocumentsJoinedByEndOfText) {
  std::vector<std::string> docs = make_docs(20);
  std::string text;
  for (auto& d : docs) d.pop_back();  // no trailing newline: "\n\n" separates paragraphs
  for (size_t i = 0; i < docs.size(); ++i) text += (i ? "\n\n" : "") + docs[i];
  testing::write_file(dir_.file("paras.txt"), text);
  PrepareOptions o = options(dir_.file("paras.txt"));
  o.documents.separator = "\n\n";
  o.val_fraction = 0;
  auto r = prepare_data(o, gpt2());
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->documents, 20);
  LoaderOptions lo;
  lo.shards = {dir_.file("out/t_train_*.bin")};
  lo.vocab_size = gpt2().vocab_size();
  lo.max_seq_len = 16;
  lo.shuffle = false;
  auto l = DataLoader::Open(lo);
  ASSERT_TRUE(l.ok()) << l.status();
  Batch b = (*l)->Next((*l)->num_samples(), 16);
  std::vector<int32_t> stream;
  const int32_t* in = b.inputs.data<int32_t>();
  stream.assign(in, in + b.inputs.numel());
  std::string decoded = gpt2().decode(stream);
  std::string joined;
  for (const auto& d : docs) joined += "<|endoftext|>" + d;
  EXPECT_EQ(decoded, joined.substr(0, decoded.size()));
  EXPECT_GT(decoded.size(), joined.size() * 3 / 4);
}

TEST(PrepareU32Test, LargeVocabulariesUseTheUint32Variant) {
  // 256 bytes + 69743 other tokens + <|endoftext|> = 70000 tokens: ids above 65535.
  std::vector<std::string> tokens;
  for (int b = 0; b < 256; ++b) tokens.emplace_back(1, static_cast<char>(byte_order()[b]));
  for (int i = 0; tokens.size() < 69999; ++i) tokens.push_back(absl::StrCat("\x01tok", i));
  tokens.emplace_back(kEndOfText);
  auto tok = Tokenizer::FromTokens(tokens, {});
  ASSERT_TRUE(tok.ok()) << tok.status();
  ASSERT_EQ(tok->eot(), 69999);
  TempDir dir;
  testing::write_file(dir.file("a.txt"), "one<|endoftext|>two");
  PrepareOptions o;
  o.inputs = {dir.file("a.txt")};
  o.output_dir = dir.path();
  o.val_fraction = 0;
  o.progress = false;
  auto r = prepare_data(o, *tok);
  ASSERT_TRUE(r.ok()) << r.status();
  auto s = Shard::Open(r->train_shards[0], 70000);
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_EQ(s->token_bytes(), 4);
  std::vector<int32_t> got(s->num_tokens());
  s->read(0, s->num_tokens(), got.data());
  std::vector<int32_t> want = {69999};
  tok->encode("one", &want);
  want.push_back(69999);
  tok->encode("two", &want);
  EXPECT_EQ(got, want);
}

int run_prepare(std::vector<std::string> args) {
  std::vector<char*> argv;
  for (auto& a : args) argv.push_back(a.data());
  return prepare_data_main(static_cast<int>(argv.size()), argv.data());
}

TEST_F(PrepareTest, CommandLine) {
  testing::write_file(dir_.file("a.txt"), "first<|endoftext|>second<|endoftext|>third");
  const std::string tok = "--tokenizer=" + testing::gpt2_dir();
  EXPECT_EQ(run_prepare({"prepare-data", "--help"}), 0);
  EXPECT_EQ(run_prepare({"prepare-data", dir_.file("a.txt")}), 2);       // no --out
  EXPECT_EQ(run_prepare({"prepare-data", "--out", dir_.file("o")}), 2);  // no input
  EXPECT_EQ(run_prepare({"prepare-data", "--out", dir_.file("o"), "--val-docs", "x", "a"}), 2);
  EXPECT_EQ(run_prepare({"prepare-data", "--out", dir_.file("o"), "--nope", "a"}), 2);
  EXPECT_EQ(run_prepare({"prepare-data", "--out", dir_.file("o"), "--tokenizer", dir_.file("none"),
                         dir_.file("a.txt")}),
            1);
  EXPECT_EQ(run_prepare({"prepare-data", "--out", dir_.file("o"), tok, dir_.file("missing.txt")}),
            1);
  EXPECT_EQ(run_prepare({"prepare-data", "--out", dir_.file("o"), tok, "--val-docs", "1", "--quiet",
                         "--name", "x", dir_.file("a.txt")}),
            0);
  auto val = Shard::Open(dir_.file("o/x_val_000000.bin"), 50257);
  ASSERT_TRUE(val.ok()) << val.status();
  std::vector<int32_t> got(val->num_tokens());
  val->read(0, val->num_tokens(), got.data());
  EXPECT_EQ(gpt2().decode(got), "<|endoftext|>third");  // the evenly spread pick of 1 in 3
  EXPECT_EQ(run_prepare({"prepare-data", "--out", dir_.file("o"), tok, "--quiet", "--name", "x",
                         dir_.file("a.txt")}),
            1);  // shards exist, no --overwrite
}

TEST(ProgressBarTest, ShowsBytesTokensRateAndEta) {
  std::string line = ProgressBar::Render(50'000'000, 100'000'000, 12'000'000, 10.0);
  EXPECT_NE(line.find(" 50.0%"), std::string::npos) << line;
  EXPECT_NE(line.find("50.00MB/100.00MB"), std::string::npos) << line;
  EXPECT_NE(line.find("12.00M tokens"), std::string::npos) << line;
  EXPECT_NE(line.find("1.20M tok/s"), std::string::npos) << line;
  EXPECT_NE(line.find("ETA 0:10"), std::string::npos) << line;
  EXPECT_NE(ProgressBar::Render(10, 10, 5, 1.0).find("ETA done"), std::string::npos);
}

}  // namespace
}  // namespace kiln::data
