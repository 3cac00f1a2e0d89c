// Byte-level BPE tokenizer (see tokenizer.h): GPT-2 file formats, the byte alphabet, BPE merging
// (a simple pass for short pieces, a heap for long ones) and the per-thread piece cache.
#include "data/tokenizer.h"

#include <algorithm>
#include <array>
#include <atomic>
#include <limits>
#include <queue>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "core/check.h"
#include "core/json.h"
#include "data/absl_compat.h"
#include "data/io.h"
#include "data/pretokenize.h"

namespace kiln::data {
namespace {

struct ByteMaps {
  std::array<uint32_t, 256> to_unicode{};
  std::vector<uint8_t> order;  // GPT-2's id order of the single-byte tokens
  absl::flat_hash_map<uint32_t, uint8_t> from_unicode;
};

// bytes_to_unicode() of GPT-2's encoder.py: printable Latin-1 bytes map to themselves, the other 68
// bytes to 256, 257, ... in byte order.
const ByteMaps& byte_maps() {
  static const ByteMaps maps = [] {
    ByteMaps m;
    std::array<bool, 256> printable{};
    for (int b = '!'; b <= '~'; ++b) printable[b] = true;
    for (int b = 0xA1; b <= 0xAC; ++b) printable[b] = true;
    for (int b = 0xAE; b <= 0xFF; ++b) printable[b] = true;
    for (int b = 0; b < 256; ++b) {
      if (printable[b]) {
        m.to_unicode[b] = b;
        m.order.push_back(static_cast<uint8_t>(b));
      }
    }
    uint32_t n = 0;
    for (int b = 0; b < 256; ++b) {
      if (!printable[b]) {
        m.to_unicode[b] = 256 + n++;
        m.order.push_back(static_cast<uint8_t>(b));
      }
    }
    for (int b = 0; b < 256; ++b) m.from_unicode[m.to_unicode[b]] = static_cast<uint8_t>(b);
    return m;
  }();
  return maps;
}

constexpr int32_t kNoRank = std::numeric_limits<int32_t>::max();

struct Merge {
  int32_t rank;
  int32_t result;
};

inline uint64_t pair_key(int32_t a, int32_t b) {
  return (static_cast<uint64_t>(static_cast<uint32_t>(a)) << 32) | static_cast<uint32_t>(b);
}

// Per-thread cache of piece -> ids. `owner` is the uid of the tokenizer that filled it.
struct PieceCache {
  uint64_t owner = 0;
  absl::flat_hash_map<std::string, std::pair<uint32_t, uint32_t>> map;  // (offset, length) in arena
  std::vector<int32_t> arena;
  void clear() {
    map.clear();
    arena.clear();
  }
};
thread_local PieceCache t_cache;
constexpr size_t kMaxCachedPieces = 1 << 20;
constexpr size_t kMaxCachedIds = 16 << 20;
constexpr size_t kMaxCachedPieceBytes = 256;
constexpr size_t kHeapThreshold = 128;  // pieces this long and longer use the heap merger

std::atomic<uint64_t> g_next_uid{1};

}  // namespace

uint32_t byte_to_unicode(uint8_t b) { return byte_maps().to_unicode[b]; }
const std::vector<uint8_t>& byte_order() { return byte_maps().order; }

std::string bytes_to_printable(std::string_view bytes) {
  std::string out;
  out.reserve(bytes.size() * 2);
  for (char c : bytes) append_utf8(byte_maps().to_unicode[static_cast<uint8_t>(c)], &out);
  return out;
}

absl::StatusOr<std::string> printable_to_bytes(std::string_view printable) {
  std::string out;
  const auto& from = byte_maps().from_unicode;
  for (size_t i = 0; i < printable.size();) {
    uint32_t cp;
    int len = decode_utf8(printable, i, &cp);
    auto it = cp == kInvalidCodePoint ? from.end() : from.find(cp);
    if (it == from.end()) {
      return absl::InvalidArgumentError(
          absl::StrCat("character at byte ", i, " is outside GPT-2's byte alphabet"));
    }
    out.push_back(static_cast<char>(it->second));
    i += len;
  }
  return out;
}

struct Tokenizer::Impl {
  uint64_t uid = 0;
  std::vector<std::string> tokens;                  // id -> bytes
  absl::flat_hash_map<std::string, int32_t> ids;    // bytes -> id
  std::array<int32_t, 256> byte_ids{};              // byte -> id of its single-byte token
  absl::flat_hash_map<uint64_t, Merge> merge_map;   // (left id, right id) -> rank, result
  std::vector<std::pair<int32_t, int32_t>> merges;  // by rank
  int32_t eot = -1;

  Merge lookup(int32_t a, int32_t b) const {
    auto it = merge_map.find(pair_key(a, b));
    return it == merge_map.end() ? Merge{kNoRank, -1} : it->second;
  }
  void bpe_short(std::vector<int32_t>* syms) const;
  void bpe_long(std::vector<int32_t>* syms) const;
  void encode_piece(std::string_view piece, std::vector<int32_t>* out, PieceCache* cache) const;
};

// Round-based BPE: find the lowest-rank adjacent pair, merge all its occurrences left to right,
// repeat. ranks[i] holds the rank of (s[i], s[i+1]) and is recomputed only from the first change
// on.
void Tokenizer::Impl::bpe_short(std::vector<int32_t>* syms) const {
  std::vector<int32_t>& s = *syms;
  size_t n = s.size();
  int32_t ranks[kHeapThreshold];
  Merge found[kHeapThreshold];
  for (size_t i = 0; i + 1 < n; ++i) {
    found[i] = lookup(s[i], s[i + 1]);
    ranks[i] = found[i].rank;
  }
  while (n >= 2) {
    size_t best = 0;
    for (size_t i = 1; i + 1 < n; ++i) {
      if (ranks[i] < ranks[best]) best = i;
    }
    if (ranks[best] == kNoRank) break;
    const int32_t a = s[best], b = s[best + 1], res = found[best].result;
    size_t w = best, j = best;
    while (j < n) {
      if (j + 1 < n && s[j] == a && s[j + 1] == b) {
        s[w++] = res;
        j += 2;
      } else {
        s[w++] = s[j++];
      }
    }
    n = w;
    for (size_t i = best > 0 ? best - 1 : 0; i + 1 < n; ++i) {
      found[i] = lookup(s[i], s[i + 1]);
      ranks[i] = found[i].rank;
    }
  }
  s.resize(n);
}

// The same rounds on a linked list with a min-heap of (rank, position): all entries of the lowest
// rank are one pair's occurrences, popped left to right; pairs created by a round enter the heap
// only after it, exactly as the next round of bpe_short would see them. Stale entries are skipped
// by re-checking the current pair's rank.
void Tokenizer::Impl::bpe_long(std::vector<int32_t>* syms) const {
  std::vector<int32_t>& tok = *syms;
  const int32_t n = static_cast<int32_t>(tok.size());
  std::vector<int32_t> prev(n), next(n);
  std::vector<char> alive(n, 1);
  for (int32_t i = 0; i < n; ++i) {
    prev[i] = i - 1;
    next[i] = i + 1 < n ? i + 1 : -1;
  }
  using Entry = std::pair<int32_t, int32_t>;  // (rank, position)
  std::priority_queue<Entry, std::vector<Entry>, std::greater<Entry>> heap;
  for (int32_t i = 0; i + 1 < n; ++i) {
    Merge m = lookup(tok[i], tok[i + 1]);
    if (m.rank != kNoRank) heap.push({m.rank, i});
  }
  std::vector<int32_t> touched;
  while (!heap.empty()) {
    const int32_t round = heap.top().first;
    touched.clear();
    while (!heap.empty() && heap.top().first == round) {
      const int32_t p = heap.top().second;
      heap.pop();
      if (!alive[p] || next[p] < 0) continue;
      const int32_t q = next[p];
      Merge m = lookup(tok[p], tok[q]);
      if (m.rank != round) continue;
      tok[p] = m.result;
      alive[q] = 0;
      next[p] = next[q];
      if (next[q] >= 0) prev[next[q]] = p;
      if (prev[p] >= 0) touched.push_back(prev[p]);
      touched.push_back(p);
    }
    for (int32_t p : touched) {
      if (!alive[p] || next[p] < 0) continue;
      Merge m = lookup(tok[p], tok[next[p]]);
      if (m.rank != kNoRank) heap.push({m.rank, p});
    }
  }
  size_t w = 0;
  for (int32_t i = 0; i >= 0 && i < n; i = next[i]) tok[w++] = tok[i];
  tok.resize(w);
}

void Tokenizer::Impl::encode_piece(std::string_view piece, std::vector<int32_t>* out,
                                   PieceCache* cache) const {
  if (piece.size() == 1) {
    out->push_back(byte_ids[static_cast<uint8_t>(piece[0])]);
    return;
  }
  const bool cacheable = piece.size() <= kMaxCachedPieceBytes;
  if (cacheable) {
    auto it = cache->map.find(av(piece));
    if (it != cache->map.end()) {
      const int32_t* p = cache->arena.data() + it->second.first;
      out->insert(out->end(), p, p + it->second.second);
      return;
    }
  }
  std::vector<int32_t> syms(piece.size());
  for (size_t i = 0; i < piece.size(); ++i) syms[i] = byte_ids[static_cast<uint8_t>(piece[i])];
  if (syms.size() < kHeapThreshold) {
    bpe_short(&syms);
  } else {
    bpe_long(&syms);
  }
  out->insert(out->end(), syms.begin(), syms.end());
  if (!cacheable) return;
  if (cache->map.size() >= kMaxCachedPieces || cache->arena.size() >= kMaxCachedIds) cache->clear();
  cache->map.emplace(std::string(piece), std::make_pair(static_cast<uint32_t>(cache->arena.size()),
                                                        static_cast<uint32_t>(syms.size())));
  cache->arena.insert(cache->arena.end(), syms.begin(), syms.end());
}

Tokenizer::Tokenizer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Tokenizer::Tokenizer(Tokenizer&&) noexcept = default;
Tokenizer& Tokenizer::operator=(Tokenizer&&) noexcept = default;
Tokenizer::~Tokenizer() = default;

absl::StatusOr<Tokenizer> Tokenizer::FromTokens(std::vector<std::string> tokens,
                                                std::vector<std::pair<int32_t, int32_t>> merges) {
  auto impl = std::make_unique<Impl>();
  impl->uid = g_next_uid.fetch_add(1);
  if (tokens.size() > static_cast<size_t>(std::numeric_limits<int32_t>::max())) {
    return absl::InvalidArgumentError("too many tokens");
  }
  impl->byte_ids.fill(-1);
  for (size_t id = 0; id < tokens.size(); ++id) {
    const std::string& t = tokens[id];
    if (t.empty()) return absl::InvalidArgumentError(absl::StrCat("token ", id, " is empty"));
    auto [it, inserted] = impl->ids.emplace(t, static_cast<int32_t>(id));
    if (!inserted) {
      return absl::InvalidArgumentError(absl::StrCat("tokens ", it->second, " and ", id,
                                                     " have the same bytes \"",
                                                     bytes_to_printable(t), "\""));
    }
    if (t.size() == 1) impl->byte_ids[static_cast<uint8_t>(t[0])] = static_cast<int32_t>(id);
    if (t == kEndOfText) impl->eot = static_cast<int32_t>(id);
  }
  for (int b = 0; b < 256; ++b) {
    if (impl->byte_ids[b] < 0) {
      return absl::InvalidArgumentError(absl::StrCat("no single-byte token for byte 0x",
                                                     absl::Hex(b),
                                                     " (a byte-level vocabulary needs all 256)"));
    }
  }
  const int32_t vocab = static_cast<int32_t>(tokens.size());
  for (size_t r = 0; r < merges.size(); ++r) {
    auto [a, b] = merges[r];
    if (a < 0 || a >= vocab || b < 0 || b >= vocab) {
      return absl::InvalidArgumentError(
          absl::StrCat("merge ", r, " refers to a token id out of range"));
    }
    auto it = impl->ids.find(tokens[a] + tokens[b]);
    if (it == impl->ids.end()) {
      return absl::InvalidArgumentError(
          absl::StrCat("merge ", r, " (\"", bytes_to_printable(tokens[a]), "\" \"",
                       bytes_to_printable(tokens[b]), "\") makes \"",
                       bytes_to_printable(tokens[a] + tokens[b]), "\", which is not a token"));
    }
    // A repeated merge keeps its last rank, as GPT-2's dict(zip(merges, range(...))) does.
    impl->merge_map[pair_key(a, b)] = Merge{static_cast<int32_t>(r), it->second};
  }
  impl->tokens = std::move(tokens);
  impl->merges = std::move(merges);
  return Tokenizer(std::move(impl));
}

absl::StatusOr<Tokenizer> Tokenizer::Load(const std::string& encoder_json_path,
                                          const std::string& vocab_bpe_path) {
  auto enc_text = read_file(encoder_json_path);
  if (!enc_text.ok()) return enc_text.status();
  auto bpe_text = read_file(vocab_bpe_path);
  if (!bpe_text.ok()) return bpe_text.status();
  auto fail = [](const std::string& path, absl::string_view what) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": ", what));
  };

  auto json = parse_json(*enc_text);
  if (!json.ok()) return fail(encoder_json_path, json.status().message());
  if (!json->is_object()) return fail(encoder_json_path, "expected a JSON object {token: id}");
  const size_t n = json->object.size();
  std::vector<std::string> tokens(n);
  std::vector<char> seen(n, 0);
  for (const auto& [key, value] : json->object) {
    double v = value.number;
    if (!value.is_number() || v < 0 || v != static_cast<double>(static_cast<int64_t>(v))) {
      return fail(encoder_json_path, absl::StrCat("token \"", key, "\" has no integer id >= 0"));
    }
    if (v >= static_cast<double>(n)) {
      return fail(encoder_json_path,
                  absl::StrCat("token \"", key, "\" has id ", v, " but there are ", n,
                               " tokens (ids must be 0..", n - 1, ")"));
    }
    size_t id = static_cast<size_t>(v);
    if (seen[id]) return fail(encoder_json_path, absl::StrCat("id ", id, " is used twice"));
    seen[id] = 1;
    auto bytes = printable_to_bytes(key);
    if (!bytes.ok()) {
      return fail(encoder_json_path,
                  absl::StrCat("token \"", key, "\": ", bytes.status().message()));
    }
    tokens[id] = *std::move(bytes);
  }

  absl::flat_hash_map<std::string, int32_t> ids;
  for (size_t id = 0; id < n; ++id) ids.emplace(tokens[id], static_cast<int32_t>(id));
  // As GPT-2's encoder.py: the first line is the "#version" header, the last (after the final
  // newline) is dropped.
  std::vector<absl::string_view> lines = absl::StrSplit(*bpe_text, '\n');
  std::vector<std::pair<int32_t, int32_t>> merges;
  if (!lines.empty() && !absl::StartsWith(lines[0], "#version")) {
    return fail(vocab_bpe_path, "line 1: expected the '#version: ...' header");
  }
  for (size_t i = 1; i + 1 < lines.size(); ++i) {
    std::vector<absl::string_view> parts =
        absl::StrSplit(lines[i], absl::ByAnyChar(" \t\r"), absl::SkipEmpty());
    if (parts.size() != 2) {
      return fail(vocab_bpe_path,
                  absl::StrCat("line ", i + 1, ": expected two tokens, got \"", lines[i], "\""));
    }
    int32_t pair[2];
    for (int k = 0; k < 2; ++k) {
      auto bytes = printable_to_bytes(std::string_view(parts[k].data(), parts[k].size()));
      auto it = bytes.ok() ? ids.find(*bytes) : ids.end();
      if (it == ids.end()) {
        return fail(vocab_bpe_path, absl::StrCat("line ", i + 1, ": \"", parts[k],
                                                 "\" is not a token of ", encoder_json_path));
      }
      pair[k] = it->second;
    }
    merges.emplace_back(pair[0], pair[1]);
  }
  auto tok = FromTokens(std::move(tokens), std::move(merges));
  if (!tok.ok()) {
    return fail(absl::StrCat(encoder_json_path, " + ", vocab_bpe_path), tok.status().message());
  }
  return tok;
}

absl::StatusOr<Tokenizer> Tokenizer::LoadDir(const std::string& dir) {
  return Load(dir + "/encoder.json", dir + "/vocab.bpe");
}

void Tokenizer::encode(std::string_view text, std::vector<int32_t>* out) const {
  PieceCache* cache = &t_cache;
  if (cache->owner != impl_->uid) {
    cache->clear();
    cache->owner = impl_->uid;
  }
  Pretokenizer pt(text);
  std::string_view piece;
  while (pt.next(&piece)) impl_->encode_piece(piece, out, cache);
}

std::vector<int32_t> Tokenizer::encode(std::string_view text) const {
  std::vector<int32_t> out;
  out.reserve(text.size() / 3 + 4);
  encode(text, &out);
  return out;
}

std::string Tokenizer::decode(std::span<const int32_t> ids) const {
  std::string out;
  const int64_t v = vocab_size();
  for (int32_t id : ids) {
    KILN_CHECK(id >= 0 && id < v) << "token id " << id << " out of range [0, " << v << ")";
    out += impl_->tokens[id];
  }
  return out;
}

int64_t Tokenizer::vocab_size() const { return static_cast<int64_t>(impl_->tokens.size()); }
int32_t Tokenizer::eot() const { return impl_->eot; }
const std::string& Tokenizer::token_bytes(int32_t id) const {
  KILN_CHECK(id >= 0 && id < vocab_size()) << "token id " << id << " out of range";
  return impl_->tokens[id];
}
const std::vector<std::pair<int32_t, int32_t>>& Tokenizer::merges() const { return impl_->merges; }

absl::Status Tokenizer::Save(const std::string& dir) const {
  if (auto st = make_dirs(dir); !st.ok()) return st;
  std::string enc = "{";
  for (size_t id = 0; id < impl_->tokens.size(); ++id) {
    if (id) enc += ", ";
    append_json_string(bytes_to_printable(impl_->tokens[id]), &enc);
    absl::StrAppend(&enc, ": ", id);
  }
  enc += "}";
  std::string bpe = "#version: 0.2\n";
  for (auto [a, b] : impl_->merges) {
    absl::StrAppend(&bpe, bytes_to_printable(impl_->tokens[a]), " ",
                    bytes_to_printable(impl_->tokens[b]), "\n");
  }
  if (auto st = write_file_atomic(dir + "/encoder.json", enc); !st.ok()) return st;
  return write_file_atomic(dir + "/vocab.bpe", bpe);
}

void Tokenizer::ClearThreadCache() {
  t_cache.clear();
  t_cache.owner = 0;
}

}  // namespace kiln::data
