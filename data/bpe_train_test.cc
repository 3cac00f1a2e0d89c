// Tokenizer training tests: the first merges of a hand-checked corpus, a trained vocabulary that
// saves to encoder.json + vocab.bpe and loads back encoding identically, determinism across thread
// counts, and the `kiln tokenizer train` command end to end.
#include "data/bpe_train.h"

#include <filesystem>

#include "data/cli.h"
#include "data/test_util.h"
#include "gtest/gtest.h"

namespace kiln::data {
namespace {

using testing::TempDir;

std::string piece(const Tokenizer& t, int32_t id) { return t.token_bytes(id); }

TEST(BpeTrainTest, MergesTheMostFrequentPairFirst) {
  // Pieces: "ab" x1, " ab" x3, " cd" x1 -> (a,b) occurs 4 times, (' ',a) 3 times.
  BpeTrainOptions o;
  o.vocab_size = 256 + 3 + 1;
  o.min_frequency = 2;
  auto t = train_bpe(std::vector<std::string>{"ab ab ab", " ab cd"}, o);
  ASSERT_TRUE(t.ok()) << t.status();
  ASSERT_EQ(t->merges().size(), 2u);  // then no pair occurs twice: training stops early
  EXPECT_EQ(piece(*t, 256), "ab");
  EXPECT_EQ(piece(*t, 257), " ab");
  EXPECT_EQ(t->vocab_size(), 259);
  EXPECT_EQ(t->eot(), 258);
  EXPECT_EQ(piece(*t, 258), "<|endoftext|>");
  std::vector<int32_t> want = {256, 257};
  t->encode(" cd", &want);  // three single bytes: (' ', c) and (c, d) occurred once
  EXPECT_EQ(t->encode("ab ab cd"), want);
  EXPECT_EQ(want.size(), 5u);
}

std::vector<std::string> corpus() {
  std::string text = testing::read_file(testing::brown_path()).substr(0, 400'000);
  std::vector<std::string> docs;
  for (size_t i = 0; i < text.size(); i += 20'000) docs.push_back(text.substr(i, 20'000));
  return docs;
}

TEST(BpeTrainTest, SavesAndLoadsBackIdentically) {
  KILN_REQUIRE_FILE(testing::brown_path());
  std::vector<std::string> docs = corpus();
  BpeTrainOptions o;
  o.vocab_size = 2000;
  o.threads = 2;
  auto t = train_bpe(docs, o);
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_EQ(t->vocab_size(), 2000);
  EXPECT_EQ(t->merges().size(), 2000u - 257);
  EXPECT_EQ(t->eot(), 1999);
  TempDir dir;
  ASSERT_TRUE(t->Save(dir.path()).ok());
  auto loaded = Tokenizer::LoadDir(dir.path());
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  EXPECT_EQ(loaded->vocab_size(), 2000);
  EXPECT_EQ(loaded->merges(), t->merges());
  EXPECT_EQ(loaded->eot(), 1999);
  for (int32_t id = 0; id < 2000; ++id) ASSERT_EQ(loaded->token_bytes(id), t->token_bytes(id));
  std::string sample = docs[3] + " unseen wörds 😀 \xff\xfe";
  std::vector<int32_t> ids = loaded->encode(sample);
  EXPECT_EQ(ids, t->encode(sample));
  EXPECT_EQ(loaded->decode(ids), sample);
  // The learned merges compress English: well under half a token per byte.
  EXPECT_LT(static_cast<double>(loaded->encode(docs[3]).size()), 0.4 * docs[3].size());
  // Same vocabulary with one thread.
  o.threads = 1;
  auto t1 = train_bpe(docs, o);
  ASSERT_TRUE(t1.ok());
  EXPECT_EQ(t1->merges(), t->merges());
}

TEST(BpeTrainTest, RejectsBadOptions) {
  BpeTrainOptions o;
  o.vocab_size = 100;
  auto t = train_bpe(std::vector<std::string>{"abc"}, o);
  ASSERT_FALSE(t.ok());
  EXPECT_NE(t.status().message().find(">= 257"), std::string::npos) << t.status();
}

int run(std::vector<std::string> args) {
  std::vector<char*> argv;
  for (auto& a : args) argv.push_back(a.data());
  return tokenizer_main(static_cast<int>(argv.size()), argv.data());
}

TEST(TokenizerCliTest, TrainWritesLoadableFiles) {
  TempDir dir;
  testing::write_file(dir.file("a.txt"),
                      "the cat sat on the mat<|endoftext|>the dog sat on the log<|endoftext|>"
                      "the cat and the dog");
  EXPECT_EQ(run({"tokenizer", "train", "--vocab-size", "280", "--out", dir.file("tok"),
                 dir.file("a.txt")}),
            0);
  auto t = Tokenizer::LoadDir(dir.file("tok"));
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_GT(t->merges().size(), 5u);
  EXPECT_LT(t->encode("the cat sat").size(), 11u);
  EXPECT_EQ(run({"tokenizer", "train", "--out", dir.file("x"), dir.file("a.txt")}), 2);
  EXPECT_EQ(run({"tokenizer", "train", "--vocab-size", "300", "--out", dir.file("x"),
                 dir.file("missing.txt")}),
            1);
  EXPECT_EQ(run({"tokenizer", "train", "--vocab-size", "many", "--out", dir.file("x"), "a"}), 2);
  EXPECT_EQ(run({"tokenizer", "frobnicate"}), 2);
  EXPECT_EQ(run({"tokenizer", "--help"}), 0);
  EXPECT_FALSE(std::filesystem::exists(dir.file("x")));
}

}  // namespace
}  // namespace kiln::data
