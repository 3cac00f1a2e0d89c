// Shard format tests: llm.c-compatible round trips (uint16 and uint32) and one clear, file-naming
// error per kind of bad input, at open, from Shard and from DataLoader.
#include "data/shard.h"

#include <cstring>

#include "data/loader.h"
#include "data/test_util.h"
#include "gtest/gtest.h"

namespace kiln::data {
namespace {

using testing::TempDir;

// A shard built byte by byte the way llm.c's writer does it (no kiln code involved).
std::string raw_shard(int32_t magic, int32_t version, int32_t count,
                      const std::vector<uint16_t>& toks) {
  std::vector<int32_t> header(256, 0);
  header[0] = magic;
  header[1] = version;
  header[2] = count;
  std::string s(reinterpret_cast<const char*>(header.data()), 1024);
  s.append(reinterpret_cast<const char*>(toks.data()), toks.size() * 2);
  return s;
}

// Expects Open to fail with a message naming the file and containing `what`.
void expect_error(const std::string& path, int64_t vocab, const std::string& what) {
  auto s = Shard::Open(path, vocab);
  ASSERT_FALSE(s.ok()) << path << " opened";
  std::string msg(s.status().message());
  EXPECT_NE(msg.find(path), std::string::npos) << msg;
  EXPECT_NE(msg.find(what), std::string::npos) << msg;
}

TEST(ShardTest, ReadsLlmcShards) {
  TempDir dir;
  std::string p = dir.file("llmc.bin");
  testing::write_file(p, raw_shard(20240520, 1, 5, {50256, 1, 2, 65535, 7}));
  auto s = Shard::Open(p, 0);
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_EQ(s->num_tokens(), 5);
  EXPECT_EQ(s->token_bytes(), 2);
  std::vector<int32_t> out(5);
  s->read(0, 5, out.data());
  EXPECT_EQ(out, (std::vector<int32_t>{50256, 1, 2, 65535, 7}));
}

TEST(ShardTest, WriterRoundTripsBothWidths) {
  TempDir dir;
  std::vector<int32_t> small = {0, 1, 50256, 65535, 42};
  ASSERT_TRUE(write_shard(dir.file("a.bin"), small, 2).ok());
  std::string bytes = testing::read_file(dir.file("a.bin"));
  ASSERT_EQ(bytes.size(), 1024u + 2 * small.size());
  int32_t header[3];
  std::memcpy(header, bytes.data(), 12);
  EXPECT_EQ(header[0], kShardMagicU16);
  EXPECT_EQ(header[1], kShardVersionU16);
  EXPECT_EQ(header[2], 5);
  auto a = Shard::Open(dir.file("a.bin"), 65536);
  ASSERT_TRUE(a.ok()) << a.status();
  std::vector<int32_t> got(5);
  a->read(0, 5, got.data());
  EXPECT_EQ(got, small);

  std::vector<int32_t> big = {0, 65536, 128255, 7};
  ASSERT_TRUE(write_shard(dir.file("b.bin"), big, 4).ok());
  auto b = Shard::Open(dir.file("b.bin"), 128256);
  ASSERT_TRUE(b.ok()) << b.status();
  EXPECT_EQ(b->token_bytes(), 4);
  got.resize(4);
  b->read(0, 4, got.data());
  EXPECT_EQ(got, big);
  bytes = testing::read_file(dir.file("b.bin"));
  std::memcpy(header, bytes.data(), 12);
  EXPECT_EQ(header[0], kShardMagicU32);
  EXPECT_EQ(header[1], kShardVersionU32);
  EXPECT_EQ(shard_token_bytes(50257), 2);
  EXPECT_EQ(shard_token_bytes(65536), 2);
  EXPECT_EQ(shard_token_bytes(65537), 4);
}

TEST(ShardTest, UnreadablePath) {
  TempDir dir;
  expect_error(dir.file("does_not_exist.bin"), 0, "unreadable");
  expect_error(dir.path(), 0, "unreadable");  // a directory
}

TEST(ShardTest, EmptyFile) {
  TempDir dir;
  testing::write_file(dir.file("empty.bin"), "");
  expect_error(dir.file("empty.bin"), 0, "empty file");
  testing::write_file(dir.file("zero.bin"), raw_shard(20240520, 1, 0, {}));
  expect_error(dir.file("zero.bin"), 0, "no tokens");
}

TEST(ShardTest, WrongMagic) {
  TempDir dir;
  testing::write_file(dir.file("m.bin"), raw_shard(12345, 1, 2, {1, 2}));
  expect_error(dir.file("m.bin"), 0, "bad magic 12345");
}

TEST(ShardTest, WrongVersion) {
  TempDir dir;
  testing::write_file(dir.file("v.bin"), raw_shard(20240520, 2, 2, {1, 2}));
  expect_error(dir.file("v.bin"), 0, "unsupported version 2");
  testing::write_file(dir.file("v32.bin"), raw_shard(20240801, 1, 1, {1, 2}));
  expect_error(dir.file("v32.bin"), 0, "unsupported version 1");
}

TEST(ShardTest, TruncatedFile) {
  TempDir dir;
  testing::write_file(dir.file("h.bin"), raw_shard(20240520, 1, 2, {1, 2}).substr(0, 100));
  expect_error(dir.file("h.bin"), 0, "truncated: 100 bytes");
  testing::write_file(dir.file("t.bin"), raw_shard(20240520, 1, 10, {1, 2, 3}));
  expect_error(dir.file("t.bin"), 0, "truncated: header says 10 tokens");
  testing::write_file(dir.file("odd.bin"), raw_shard(20240520, 1, 2, {1, 2}) + "x");
  expect_error(dir.file("odd.bin"), 0, "truncated");
}

TEST(ShardTest, HeaderCountDoesNotMatchFileSize) {
  TempDir dir;
  testing::write_file(dir.file("c.bin"), raw_shard(20240520, 1, 2, {1, 2, 3, 4}));
  expect_error(dir.file("c.bin"), 0, "header token count 2 does not match the file size");
  testing::write_file(dir.file("n.bin"), raw_shard(20240520, 1, -5, {1}));
  expect_error(dir.file("n.bin"), 0, "negative token count");
}

TEST(ShardTest, TokenAtOrOverVocabSize) {
  TempDir dir;
  testing::write_file(dir.file("big.bin"), raw_shard(20240520, 1, 5, {1, 2, 3, 50257, 4}));
  expect_error(dir.file("big.bin"), 50257,
               "token 50257 at index 3 is >= the vocabulary size 50257");
  EXPECT_TRUE(Shard::Open(dir.file("big.bin"), 50258).ok());
  EXPECT_TRUE(Shard::Open(dir.file("big.bin"), 0).ok());  // no vocabulary: not checked
  std::vector<int32_t> toks = {5, 100000, 6};
  ASSERT_TRUE(write_shard(dir.file("u32.bin"), toks, 4).ok());
  expect_error(dir.file("u32.bin"), 100000, "token 100000 at index 1");
}

TEST(ShardTest, LoaderReportsBadShardsAtOpen) {
  TempDir dir;
  std::vector<int32_t> toks(100, 1);
  ASSERT_TRUE(write_shard(dir.file("d_000.bin"), toks, 2).ok());
  testing::write_file(dir.file("d_001.bin"), raw_shard(20240520, 1, 3, {1, 2, 60000}));
  LoaderOptions o;
  o.shards = {dir.file("d_*.bin")};
  o.vocab_size = 50257;
  o.max_seq_len = 8;
  auto l = DataLoader::Open(o);
  ASSERT_FALSE(l.ok());
  EXPECT_NE(l.status().message().find(dir.file("d_001.bin")), std::string::npos) << l.status();
  EXPECT_NE(l.status().message().find("token 60000"), std::string::npos) << l.status();

  o.shards = {dir.file("nothing_*.bin")};
  l = DataLoader::Open(o);
  ASSERT_FALSE(l.ok());
  EXPECT_NE(l.status().message().find("nothing_*.bin"), std::string::npos) << l.status();

  o.shards = {};
  l = DataLoader::Open(o);
  ASSERT_FALSE(l.ok());
  EXPECT_NE(l.status().message().find("no shards"), std::string::npos) << l.status();

  o.shards = {dir.file("d_000.bin")};
  o.max_seq_len = 100;  // 100 tokens hold no window of 101
  l = DataLoader::Open(o);
  ASSERT_FALSE(l.ok());
  EXPECT_NE(l.status().message().find(dir.file("d_000.bin")), std::string::npos) << l.status();
  EXPECT_NE(l.status().message().find("fewer than one window"), std::string::npos) << l.status();
  o.max_seq_len = 99;
  EXPECT_TRUE(DataLoader::Open(o).ok());
}

}  // namespace
}  // namespace kiln::data
