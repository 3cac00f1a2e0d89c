// Checkpoint tests: CRC32C, manifest framing and validation, resharding reads from a hand-written
// multi-rank checkpoint, retention and resume discovery, bit-identical in-process resume (dropout,
// fp16 loss scaler). Corrupt checkpoints through the CLI: launch/checkpoint_cli_test.cc.
// Process-level kill tests: tests/checkpoint_process_test.py.
#include "launch/checkpoint.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <sys/wait.h>

#include <barrier>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <thread>

#include "absl/strings/str_format.h"
#include "core/backend.h"
#include "core/check.h"
#include "launch/checkpoint_manifest.h"
#include "launch/config.h"
#include "launch/metrics.h"
#include "launch/testing/files.h"
#include "launch/testing/tiny_config.h"
#include "launch/trainer.h"

namespace kiln::launch {
namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;

std::string fresh_dir(const std::string& name) { return kiln::testing::fresh_dir("ckpt_" + name); }
using kiln::testing::read_bytes;
using kiln::testing::write_bytes;

TEST(Crc32c, MatchesTheTableVersionAndExtends) {
  std::mt19937 rng(5);
  std::string data(1 << 20, '\0');
  for (char& c : data) c = static_cast<char>(rng());
  for (size_t n : {0, 1, 7, 8, 9, 63, 64, 1000, 1 << 20})
    EXPECT_EQ(crc32c_update(0, data.data(), n), crc32c(data.data(), n)) << n;
  const uint32_t whole = crc32c_update(0, data.data(), data.size());
  uint32_t parts = crc32c_update(0, data.data(), 12345);
  parts = crc32c_update(parts, data.data() + 12345, data.size() - 12345);
  EXPECT_EQ(parts, whole);
  EXPECT_EQ(crc32c_update(0, "123456789", 9), 0xE3069283u);  // the standard check value
}

TEST(StepDirName, RoundTrips) {
  EXPECT_EQ(step_dir_name(100), "step_00000100");
  EXPECT_EQ(parse_step_dir_name("step_00000100"), 100);
  EXPECT_EQ(parse_step_dir_name("step_123456789"), 123456789);
  for (const char* bad : {"step_1", ".tmp_step_00000100", "step_0000010x", "latest", ""})
    EXPECT_EQ(parse_step_dir_name(bad), -1) << bad;
}

// A valid manifest: "w" (5, 7) in three pieces over three ranks, "b" (4) whole on rank 0.
Manifest small_manifest() {
  Manifest m;
  m.set_format_version(kManifestFormatVersion);
  m.set_checksum_algorithm(kChecksumAlgorithm);
  m.set_step(7);
  m.set_tokens_seen(700);
  auto* l = m.mutable_layout();
  l->set_world_size(3);
  l->set_dp(3);
  l->set_tp(1);
  l->set_pp(1);
  l->set_zero_stage(1);
  for (int r = 0; r < 3; ++r) m.add_files(absl::StrFormat("rank_%05d.bin", r));
  auto add = [&](const std::string& name, Shape shape, int64_t off, int64_t len, int rank,
                 int64_t file_off) {
    TensorEntry* e = m.add_tensors();
    e->set_name(name);
    for (int64_t d : shape) e->add_shape(d);
    e->set_dtype(F32);
    e->set_shard_offset(off);
    e->set_shard_length(len);
    e->set_file(absl::StrFormat("rank_%05d.bin", rank));
    e->set_file_offset(file_off);
    e->set_rank(rank);
  };
  add("w", {5, 7}, 0, 10, 0, 0);
  add("b", {4}, 0, 4, 0, 40);
  add("w", {5, 7}, 10, 20, 1, 0);
  add("w", {5, 7}, 30, 5, 2, 0);
  return m;
}

TEST(Manifest, EncodesDecodesAndRejectsDamagedFrames) {
  const Manifest m = small_manifest();
  ASSERT_TRUE(validate_manifest(m).ok()) << validate_manifest(m).message();
  const std::string bytes = encode_manifest(m);
  absl::StatusOr<Manifest> back = decode_manifest(bytes, "M");
  ASSERT_TRUE(back.ok()) << back.status().message();
  EXPECT_EQ(back->SerializeAsString(), m.SerializeAsString());
  auto fails_with = [](const std::string& b, const std::string& what) {
    absl::StatusOr<Manifest> r = decode_manifest(b, "the/manifest.bin");
    ASSERT_FALSE(r.ok()) << what;
    EXPECT_THAT(std::string(r.status().message()), HasSubstr("the/manifest.bin")) << what;
    EXPECT_THAT(std::string(r.status().message()), HasSubstr(what));
  };
  fails_with(bytes.substr(0, 10), "truncated");
  fails_with(bytes.substr(0, bytes.size() - 3), "truncated or appended");
  fails_with("XXXXXXXX" + bytes.substr(8), "bad magic");
  std::string flipped = bytes;
  flipped[bytes.size() / 2] ^= 0x10;
  fails_with(flipped, "checksum mismatch");
}

TEST(Manifest, ValidationNamesTheProblem) {
  struct Case {
    std::function<void(Manifest*)> edit;
    std::string expect;
  };
  const std::vector<Case> cases = {
      {[](Manifest* m) { m->set_format_version(3); }, "format_version 3"},
      {[](Manifest* m) { m->mutable_tensors(2)->set_shard_length(19); }, "tensor 'w': gap"},
      {[](Manifest* m) { m->mutable_tensors(3)->set_shard_offset(29); }, "tensor 'w': overlap"},
      {[](Manifest* m) { m->mutable_tensors(1)->set_shard_length(5); }, "tensor 'b'"},
      {[](Manifest* m) { m->mutable_tensors(1)->set_shape(0, -4); }, "bad shape"},
      {[](Manifest* m) { m->mutable_tensors(2)->set_rank(3); }, "rank 3 outside"},
      {[](Manifest* m) { m->set_files(1, "../rank_00001.bin"); }, "not a plain file name"},
      {[](Manifest* m) { m->mutable_tensors(0)->set_file("other.bin"); }, "not in the manifest"},
      {[](Manifest* m) { m->mutable_tensors(3)->add_shape(1); }, "pieces disagree on the shape"},
      {[](Manifest* m) { m->mutable_layout()->set_dp(2); }, "!= world_size"},
      {[](Manifest* m) { m->mutable_tensors(0)->set_dtype(BF16); }, "only F32"},
      {[](Manifest* m) {
         Fp8HistoryState* f = m->add_fp8();
         f->set_rank(3);
         f->set_name("0/h.0.mlp.c_fc/x");
       },
       "fp8: rank 3 outside"},
      {[](Manifest* m) {
         Fp8HistoryState* f = m->add_fp8();
         f->set_rank(1);
         f->set_name("0/h.0.mlp.c_fc/x");
         f->add_slots(1);
         f->set_uses(2);
       },
       "fp8: history '0/h.0.mlp.c_fc/x' of rank 1 has 1 amaxes"},
  };
  for (const Case& c : cases) {
    Manifest m = small_manifest();
    c.edit(&m);
    absl::Status s = validate_manifest(m);
    EXPECT_FALSE(s.ok()) << c.expect;
    EXPECT_THAT(std::string(s.message()), HasSubstr(c.expect));
  }
}

// Writes small_manifest()'s checkpoint to `dir`: w = 0..34, b = 100..103.
void write_small_checkpoint(const std::string& dir) {
  Manifest m = small_manifest();
  std::vector<std::string> files(3);
  for (TensorEntry& e : *m.mutable_tensors()) {
    std::vector<float> v(e.shard_length());
    for (int64_t i = 0; i < e.shard_length(); ++i)
      v[i] = static_cast<float>((e.name() == "b" ? 100 : 0) + e.shard_offset() + i);
    const std::string bytes(reinterpret_cast<const char*>(v.data()), v.size() * 4);
    e.set_checksum(crc32c_update(0, bytes.data(), bytes.size()));
    files[e.rank()] += bytes;
  }
  for (int r = 0; r < 3; ++r) write_bytes(dir + "/" + m.files(r), files[r]);
  write_bytes(dir + "/manifest.bin", encode_manifest(m));
}

TEST(Reshard, AnyPieceSplitReadsBackTheSameValues) {
  const std::string dir = fresh_dir("reshard");
  write_small_checkpoint(dir);
  absl::StatusOr<Manifest> m = read_checkpoint_manifest(dir);
  ASSERT_TRUE(m.ok()) << m.status().message();
  // One rank (whole), two ranks (split mid-piece), four ranks (ZeRO-style, last one short).
  for (const std::vector<int64_t>& cuts : std::vector<std::vector<int64_t>>{
           {0, 35}, {0, 18, 35}, {0, 9, 18, 27, 35}, {0, 10, 30, 35}, {3, 4}}) {
    std::vector<parallel::Piece> want;
    for (size_t i = 0; i + 1 < cuts.size(); ++i)
      want.push_back({"w", {5, 7}, cuts[i], Tensor::zeros({cuts[i + 1] - cuts[i]})});
    want.push_back({"b", {4}, 0, Tensor::zeros({4})});
    absl::Status s = read_checkpoint_pieces(dir, *m, want);
    ASSERT_TRUE(s.ok()) << s.message();
    for (const parallel::Piece& p : want) {
      const std::vector<double> v = p.local.to_vector();
      for (size_t i = 0; i < v.size(); ++i)
        EXPECT_EQ(v[i], (p.name == "b" ? 100 : 0) + p.offset + static_cast<double>(i)) << p.name;
    }
  }
  absl::StatusOr<Tensor> w = read_full_tensor(dir, *m, "w");
  ASSERT_TRUE(w.ok());
  EXPECT_EQ(w->shape(), (Shape{5, 7}));
  EXPECT_EQ(w->to_vector()[34], 34.0);
  // Errors name the tensor and the file.
  std::vector<parallel::Piece> bad = {{"w", {7, 5}, 0, Tensor::zeros({35})}};
  EXPECT_THAT(std::string(read_checkpoint_pieces(dir, *m, bad).message()),
              HasSubstr("tensor 'w' has shape [5, 7] in the checkpoint but [7, 5] here"));
  bad = {{"nope", {4}, 0, Tensor::zeros({4})}};
  EXPECT_THAT(std::string(read_checkpoint_pieces(dir, *m, bad).message()),
              HasSubstr("has no tensor 'nope'"));
  std::string f1 = read_bytes(dir + "/rank_00001.bin");
  f1[13] ^= 0x01;
  write_bytes(dir + "/rank_00001.bin", f1);
  absl::Status s = read_checkpoint_pieces(dir, *m, {{"w", {5, 7}, 0, Tensor::zeros({35})}});
  EXPECT_THAT(std::string(s.message()), HasSubstr("checksum mismatch in tensor 'w'"));
  EXPECT_THAT(std::string(s.message()), HasSubstr("rank_00001.bin"));
  // A piece whose stored range the wanted one does not touch is not read: rank 1's damage does
  // not matter to "b".
  EXPECT_TRUE(read_checkpoint_pieces(dir, *m, {{"b", {4}, 0, Tensor::zeros({4})}}).ok());
  EXPECT_FALSE(verify_checkpoint(dir, *m).ok());
}

// Four ranks as threads of this process: the scalar all-reduce that save_checkpoint agrees
// through, over a std::barrier; nothing else is needed by the writer.
class ThreadComm : public parallel::Communicator {
 public:
  struct Group {
    explicit Group(int n) : sync(n), values(n) {}
    std::barrier<> sync;
    std::vector<double> values;
  };
  ThreadComm(Group* g, int rank) : g_(g), rank_(rank) {}
  int rank() const override { return rank_; }
  int size() const override { return static_cast<int>(g_->values.size()); }
  std::string backend() const override { return "threads"; }
  std::unique_ptr<parallel::Work> all_reduce_async(const Tensor& t,
                                                   parallel::ReduceOp op) override {
    KILN_CHECK(t.numel() == 1 && t.dtype() == DType::kF64) << "ThreadComm: scalars only";
    g_->values[rank_] = t.item();
    g_->sync.arrive_and_wait();
    double r = op == parallel::ReduceOp::kMax ? g_->values[0] : 0.0;
    for (double v : g_->values) r = op == parallel::ReduceOp::kMax ? std::max(r, v) : r + v;
    if (op == parallel::ReduceOp::kAvg) r /= size();
    g_->sync.arrive_and_wait();
    t.data<double>()[0] = r;
    return std::make_unique<Done>();
  }
  std::unique_ptr<parallel::Work> reduce_scatter_async(const Tensor&, const Tensor&,
                                                       parallel::ReduceOp) override {
    return unused();
  }
  std::unique_ptr<parallel::Work> all_gather_async(const Tensor&, const Tensor&) override {
    return unused();
  }
  void broadcast(const Tensor&, int) override { unused(); }
  void send(const Tensor&, int) override { unused(); }
  void recv(const Tensor&, int) override { unused(); }
  void barrier() override { g_->sync.arrive_and_wait(); }
  std::unique_ptr<parallel::Communicator> split(int, int) override {
    unused();
    return nullptr;
  }

 private:
  struct Done : parallel::Work {
    void wait() override {}
  };
  static std::unique_ptr<parallel::Work> unused() {
    KILN_CHECK(false) << "ThreadComm: only the scalar all-reduce is implemented";
    return nullptr;
  }
  Group* g_;
  int rank_;
};

// Element (i, j) of the (6, 4) test tensor "w", and element i of the (5) vector "b".
float w_value(int64_t i, int64_t j) { return static_cast<float>(10 * i + j); }

// A (rows, cols) block of w starting at (r0, c0), row-major.
Tensor w_block(int64_t r0, int64_t c0, int64_t rows, int64_t cols) {
  Tensor t = Tensor::empty({rows, cols}, DType::kF32);
  for (int64_t i = 0; i < rows; ++i)
    for (int64_t j = 0; j < cols; ++j) t.data<float>()[i * cols + j] = w_value(r0 + i, c0 + j);
  return t;
}

// "w" written by four ranks as a 2 x 2 grid of (3, 2) boxes (a tp x pp style split), "b" as flat
// ZeRO ranges (mid-tensor cuts), through the real save_checkpoint.
// `mirrored`: rank r writes the box rank 3 - r writes otherwise, so the stored entries are read in
// the opposite geometric order (a wrong copy that a later, right one would overwrite in one
// checkpoint is the last word in the other).
absl::StatusOr<std::string> write_box_checkpoint(const std::string& root, bool mirrored = false) {
  ThreadComm::Group group(4);
  std::vector<absl::StatusOr<std::string>> dirs(4);
  std::vector<std::thread> ranks;
  for (int r = 0; r < 4; ++r) {
    ranks.emplace_back([&, r] {
      ThreadComm comm(&group, r);
      RankContribution mine;
      const int q = mirrored ? 3 - r : r;
      const int64_t r0 = 3 * (q / 2), c0 = 2 * (q % 2);
      mine.pieces.push_back(parallel::Piece::boxed("w", {6, 4}, parallel::Box{{r0, c0}, {3, 2}},
                                                   w_block(r0, c0, 3, 2)));
      const int64_t cuts[] = {0, 2, 3, 3, 5};  // rank 2 holds none of b
      const int64_t n = cuts[r + 1] - cuts[r];
      Tensor b = Tensor::empty({n}, DType::kF32);
      for (int64_t i = 0; i < n; ++i) b.data<float>()[i] = 1000.0f + cuts[r] + i;
      if (n > 0) mine.pieces.push_back({"b", {5}, cuts[r], b});
      Manifest h;
      h.set_step(3);
      auto* l = h.mutable_layout();
      l->set_world_size(4);
      l->set_dp(1);
      l->set_tp(2);
      l->set_pp(2);
      dirs[r] = save_checkpoint(root, h, mine, comm);
    });
  }
  for (std::thread& t : ranks) t.join();
  for (const absl::StatusOr<std::string>& d : dirs)
    if (!d.ok()) return d.status();
  return dirs[0];
}

// Each layout: the pieces every rank of it would want (together, the whole tensor "w").
struct BoxLayout {
  std::string name;
  std::vector<parallel::Piece> pieces;
};

std::vector<parallel::Piece> boxes_of(const std::vector<parallel::Box>& bs) {
  std::vector<parallel::Piece> out;
  for (const parallel::Box& b : bs)
    out.push_back(
        parallel::Piece::boxed("w", {6, 4}, b, Tensor::full(b.length, -1.0, DType::kF32)));
  return out;
}

std::vector<BoxLayout> wanted_layouts() {
  std::vector<BoxLayout> layouts;
  layouts.push_back({"whole", boxes_of({{{0, 0}, {6, 4}}})});
  layouts.push_back({"rows / 3", boxes_of({{{0, 0}, {2, 4}}, {{2, 0}, {2, 4}}, {{4, 0}, {2, 4}}})});
  layouts.push_back({"columns / 2", boxes_of({{{0, 0}, {6, 2}}, {{0, 2}, {6, 2}}})});
  layouts.push_back({"3 x 2 grid of (2, 2)", boxes_of({{{0, 0}, {2, 2}},
                                                       {{0, 2}, {2, 2}},
                                                       {{2, 0}, {2, 2}},
                                                       {{2, 2}, {2, 2}},
                                                       {{4, 0}, {2, 2}},
                                                       {{4, 2}, {2, 2}}})});
  layouts.push_back(
      {"odd boxes straddling the stored ones",
       boxes_of({{{0, 0}, {1, 4}}, {{1, 0}, {4, 1}}, {{1, 1}, {4, 3}}, {{5, 0}, {1, 4}}})});
  BoxLayout zero{"flat ZeRO ranges over 5 ranks", {}};
  for (auto [from, to] :
       std::vector<std::pair<int64_t, int64_t>>{{0, 5}, {5, 10}, {10, 15}, {15, 20}, {20, 24}})
    zero.pieces.push_back({"w", {6, 4}, from, Tensor::full({to - from}, -1.0, DType::kF32)});
  layouts.push_back(zero);
  // A wanted piece that is not f32 contiguous CPU (the staging path): f64 columns.
  layouts.push_back({"f64 columns",
                     {parallel::Piece::boxed("w", {6, 4}, parallel::Box{{0, 1}, {6, 3}},
                                             Tensor::zeros({6, 3}, DType::kF64)),
                      parallel::Piece::boxed("w", {6, 4}, parallel::Box{{0, 0}, {6, 1}},
                                             Tensor::zeros({6, 1}, DType::kF64))}});
  return layouts;
}

TEST(Reshard, TwoDBoxesLoadIntoAnyOtherLayoutExactly) {
  absl::StatusOr<std::string> written = write_box_checkpoint(fresh_dir("boxes"));
  ASSERT_TRUE(written.ok()) << written.status().message();
  const std::string dir = *written;
  absl::StatusOr<Manifest> m = read_checkpoint_manifest(dir);
  ASSERT_TRUE(m.ok()) << m.status().message();
  EXPECT_EQ(m->format_version(), kManifestBoxVersion);
  int boxes = 0;
  for (const TensorEntry& e : m->tensors()) boxes += e.box_offset_size() > 0;
  EXPECT_EQ(boxes, 4);
  ASSERT_TRUE(verify_checkpoint(dir, *m).ok());
  std::vector<BoxLayout> layouts = wanted_layouts();
  written = write_box_checkpoint(fresh_dir("boxes_mirrored"), true);
  ASSERT_TRUE(written.ok()) << written.status().message();
  const std::string mirrored = *written;
  absl::StatusOr<Manifest> mm = read_checkpoint_manifest(mirrored);
  ASSERT_TRUE(mm.ok()) << mm.status().message();
  for (int pass = 0; pass < 2 * static_cast<int>(layouts.size()); ++pass) {
    const BoxLayout& layout = layouts[pass / 2];
    const bool mirror = pass % 2 == 1;
    SCOPED_TRACE(layout.name + (mirror ? " (mirrored writer)" : ""));
    for (const parallel::Piece& p : layout.pieces) raw::fill(p.local, -1.0);
    absl::Status s =
        read_checkpoint_pieces(mirror ? mirrored : dir, mirror ? *mm : *m, layout.pieces);
    ASSERT_TRUE(s.ok()) << s.message();
    int64_t seen = 0;
    for (const parallel::Piece& p : layout.pieces) {
      const std::vector<double> v = p.local.to_vector();
      // Element k of the piece is global element (i, j): from the box, or from the flat offset.
      for (int64_t k = 0; k < static_cast<int64_t>(v.size()); ++k) {
        int64_t i, j;
        if (p.is_box()) {
          i = p.box.offset[0] + k / p.box.length[1];
          j = p.box.offset[1] + k % p.box.length[1];
        } else {
          i = (p.offset + k) / 4;
          j = (p.offset + k) % 4;
        }
        ASSERT_EQ(v[k], w_value(i, j)) << "element (" << i << ", " << j << ")";
        ++seen;
      }
    }
    EXPECT_EQ(seen, 24);
  }
  // The flat-written "b" into boxes, and "w" whole.
  parallel::Piece b = parallel::Piece::boxed("b", {5}, parallel::Box{{1}, {3}}, Tensor::zeros({3}));
  ASSERT_TRUE(read_checkpoint_pieces(dir, *m, {b}).ok());
  EXPECT_EQ(b.local.to_vector(), (std::vector<double>{1001, 1002, 1003}));
  absl::StatusOr<Tensor> w = read_full_tensor(dir, *m, "w");
  ASSERT_TRUE(w.ok());
  EXPECT_EQ(w->to_vector()[4 * 5 + 3], 53.0);
  // A damaged box is named by its box.
  const TensorEntry* e1 = nullptr;
  for (const TensorEntry& e : m->tensors())
    if (e.name() == "w" && e.rank() == 1) e1 = &e;
  ASSERT_NE(e1, nullptr);
  std::string f = read_bytes(dir + "/" + e1->file());
  f[e1->file_offset() + 5] ^= 0x01;
  write_bytes(dir + "/" + e1->file(), f);
  absl::Status s = read_checkpoint_pieces(dir, *m, boxes_of({{{0, 3}, {1, 1}}}));
  EXPECT_THAT(std::string(s.message()),
              HasSubstr("checksum mismatch in tensor 'w' (box [0:3, 2:4]"));
  // Rank 1's box is not read for a piece it does not touch.
  EXPECT_TRUE(read_checkpoint_pieces(dir, *m, boxes_of({{{3, 0}, {3, 4}}})).ok());
}

TEST(Manifest, BoxEntriesMustTileTheTensor) {
  Manifest m = small_manifest();
  m.set_format_version(kManifestBoxVersion);
  // "w" (5, 7): rows [0, 2) as a box, elements [14, 35) flat (rows 2-4).
  m.clear_tensors();
  auto add = [&](std::vector<int64_t> off, std::vector<int64_t> len, int64_t flat_off,
                 int64_t flat_len) {
    TensorEntry* e = m.add_tensors();
    e->set_name("w");
    e->add_shape(5);
    e->add_shape(7);
    e->set_dtype(F32);
    e->set_file("rank_00000.bin");
    int64_t n = 1;
    for (size_t d = 0; d < off.size(); ++d) {
      e->add_box_offset(off[d]);
      e->add_box_length(len[d]);
      n *= len[d];
    }
    e->set_shard_offset(off.empty() ? flat_off : 0);
    e->set_shard_length(off.empty() ? flat_len : n);
    return e;
  };
  add({0, 0}, {2, 4}, 0, 0);
  add({0, 4}, {2, 3}, 0, 0);
  add({}, {}, 14, 21);
  ASSERT_TRUE(validate_manifest(m).ok()) << validate_manifest(m).message();
  auto fails = [&](const std::function<void(Manifest*)>& edit, const std::string& what) {
    Manifest bad = m;
    edit(&bad);
    absl::Status s = validate_manifest(bad);
    EXPECT_THAT(std::string(s.message()), HasSubstr(what)) << what;
  };
  fails([](Manifest* b) { b->set_format_version(kManifestFormatVersion); },
        "needs format_version 2");
  fails([](Manifest* b) { b->mutable_tensors(1)->set_box_offset(1, 3); }, "overlap in [0:2, 3:4]");
  fails([](Manifest* b) { b->mutable_tensors(2)->set_shard_offset(13); }, "overlap in [1:2, 6:7]");
  fails(
      [](Manifest* b) {
        b->mutable_tensors(2)->set_shard_offset(15);
        b->mutable_tensors(2)->set_shard_length(20);
      },
      "pieces cover 34 of 35");
  fails([](Manifest* b) { b->mutable_tensors(1)->set_box_length(1, 4); }, "outside its shape");
  fails([](Manifest* b) { b->mutable_tensors(1)->set_shard_length(5); }, "shard_length 6");
}

TEST(Retention, KeepsLastKEveryMthAndLatest) {
  const std::string dir = fresh_dir("retention");
  for (int s = 1; s <= 9; ++s) fs::create_directories(dir + "/" + step_dir_name(s));
  fs::create_directories(dir + "/.tmp_step_00000010");
  write_bytes(dir + "/latest", "step_00000002\n");  // e.g. resumed from an older checkpoint
  apply_retention(dir, 3, 4);
  std::vector<std::string> left;
  for (const auto& e : fs::directory_iterator(dir)) left.push_back(e.path().filename().string());
  std::sort(left.begin(), left.end());
  EXPECT_EQ(left, (std::vector<std::string>{"latest", "step_00000002", "step_00000004",
                                            "step_00000007", "step_00000008", "step_00000009"}));
}

TEST(FindResume, FollowsLatestAndSaysWhatIsWrong) {
  const std::string dir = fresh_dir("find");
  CheckpointConfig c;
  c.set_dir(dir + "/none");
  c.set_resume("auto");
  EXPECT_EQ(*find_resume_checkpoint(c), "");  // no directory yet: start fresh
  c.set_dir(dir);
  EXPECT_EQ(*find_resume_checkpoint(c), "");
  fs::create_directories(dir + "/step_00000004");
  fs::create_directories(dir + "/step_00000008");
  fs::create_directories(dir + "/.tmp_step_00000012");
  EXPECT_EQ(*find_resume_checkpoint(c), dir + "/step_00000008");  // no pointer: newest complete
  write_bytes(dir + "/latest", "step_00000004\n");
  EXPECT_EQ(*find_resume_checkpoint(c), dir + "/step_00000004");  // the commit point
  write_bytes(dir + "/latest", "step_00000006\n");
  EXPECT_THAT(std::string(find_resume_checkpoint(c).status().message()),
              HasSubstr("latest names step_00000006, which does not exist"));
  c.set_resume("never");
  EXPECT_EQ(*find_resume_checkpoint(c), "");
  c.set_resume(dir + "/step_00000008");
  EXPECT_EQ(*find_resume_checkpoint(c), dir + "/step_00000008");  // a directory: taken as given
}

// The shared tiny run (launch/testing/tiny_config.h) with dropout and samples, checkpointing every
// 5 of 12 steps and at the end, resuming as the config says; `extra` (textproto) is merged last.
TrainConfig tiny(const std::string& run_dir, const std::string& extra = "") {
  return testing::tiny_config(
      run_dir, R"pb(
                     model { dropout: 0.1 }
                     training { max_steps: 12 seed: 9 }
                     checkpoint { every_n_steps: 5 keep_last: 0 resume: "auto" save_at_end: true }
                     eval { batches: 1 sample_tokens: 3 sample_every: 4 }
                   )pb" +
                   extra);
}

TrainSummary train(const TrainConfig& cfg) {
  Trainer t(cfg, parallel::World{});
  t.set_quiet(true);
  absl::Status s = t.init();
  KILN_CHECK(s.ok()) << s.message();
  auto r = t.run();
  KILN_CHECK(r.ok()) << r.status().message();
  return *r;
}

// Resumes run A's step-5 checkpoint in run B and checks every later loss and the final state.
void expect_bit_identical_resume(const std::string& name, const std::string& extra) {
  const std::string a = fresh_dir(name + "_a"), b = fresh_dir(name + "_b");
  TrainSummary ra = train(tiny(a, extra));
  ASSERT_EQ(ra.train_losses.size(), 12u);
  EXPECT_EQ(ra.checkpoint, a + "/checkpoints/step_00000012");
  TrainConfig cb = tiny(b, extra);
  cb.mutable_checkpoint()->set_resume(a + "/checkpoints/step_00000005");
  TrainSummary rb = train(cb);
  ASSERT_EQ(rb.first_step, 5);
  ASSERT_EQ(rb.train_losses.size(), 7u);
  for (size_t i = 0; i < 7; ++i)
    EXPECT_EQ(std::memcmp(&rb.train_losses[i], &ra.train_losses[i + 5], sizeof(double)), 0)
        << "step " << i + 5 << ": " << rb.train_losses[i] << " vs " << ra.train_losses[i + 5];
  EXPECT_EQ(rb.sample, ra.sample);
  EXPECT_EQ(read_bytes(a + "/checkpoints/step_00000012/rank_00000.bin"),
            read_bytes(b + "/checkpoints/step_00000012/rank_00000.bin"));
  absl::StatusOr<Manifest> ma = read_checkpoint_manifest(a + "/checkpoints/step_00000012");
  absl::StatusOr<Manifest> mb = read_checkpoint_manifest(b + "/checkpoints/step_00000012");
  ASSERT_TRUE(ma.ok() && mb.ok());
  EXPECT_EQ(ma->schedule().SerializeAsString(), mb->schedule().SerializeAsString());
  EXPECT_EQ(ma->optimizer_steps(), mb->optimizer_steps());
  for (int i = 0; i < ma->rng_size(); ++i) EXPECT_EQ(ma->rng(i).state(), mb->rng(i).state());
}

TEST(Resume, BitIdenticalWithDropoutAndSamples) { expect_bit_identical_resume("resume", ""); }

TEST(Resume, BitIdenticalWithTheFp16LossScaler) {
  // Starts at a scale that overflows, so steps are skipped and the scale moves both ways.
  expect_bit_identical_resume(
      "fp16", "precision { dtype: FP16 loss_scale_init: 1048576 loss_scale_growth_interval: 2 }");
  absl::StatusOr<Manifest> m = read_checkpoint_manifest(
      ::testing::TempDir() + "/kiln_ckpt_fp16_a/checkpoints/step_00000005");
  ASSERT_TRUE(m.ok()) << m.status().message();
  EXPECT_GT(m->schedule().skipped_steps(), 0);
  EXPECT_LT(m->optimizer_steps(), 5);
  EXPECT_LT(m->schedule().loss_scale(), 1048576);
}

}  // namespace
}  // namespace kiln::launch
