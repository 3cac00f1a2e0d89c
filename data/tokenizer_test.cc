// Tokenizer tests: tokens identical to gpt-3-encoder's Encoder.js (run with node) on the whole
// Brown corpus and on adversarial text, byte-exact round trips of arbitrary byte strings, the
// pre-tokeniser's splits, end-of-text, and errors for malformed tokenizer files.
#include "data/tokenizer.h"

#include <cstdio>
#include <random>
#include <thread>

#include "absl/strings/str_cat.h"
#include "core/json.h"
#include "data/pretokenize.h"
#include "data/test_util.h"
#include "gtest/gtest.h"

namespace kiln::data {
namespace {

using testing::TempDir;

const Tokenizer& gpt2() {
  static const Tokenizer* tok = [] {
    auto t = Tokenizer::LoadDir(testing::gpt2_dir());
    if (!t.ok()) {
      ADD_FAILURE() << t.status();
      return static_cast<Tokenizer*>(nullptr);
    }
    return new Tokenizer(*std::move(t));
  }();
  return *tok;
}

// Runs data/tools/gpt2_reference.js; returns its exit status.
int run_reference(const std::string& mode, const std::string& in, const std::string& out) {
  std::string cmd =
      absl::StrCat("'", testing::node_binary(), "' '", KILN_DATA_TOOLS_DIR, "/gpt2_reference.js' '",
                   testing::gpt2_dir(), "' ", mode, " '", in, "' '", out, "'");
  return std::system(cmd.c_str());
}

std::string show(std::string_view s) {
  std::string out;
  append_json_string(s.substr(0, 80), &out);
  return out;
}

std::vector<std::string> pieces(std::string_view text) {
  std::vector<std::string> out;
  Pretokenizer p(text);
  std::string_view piece;
  while (p.next(&piece)) out.emplace_back(piece);
  return out;
}

class Gpt2Test : public ::testing::Test {
 protected:
  void SetUp() override {
    KILN_REQUIRE_FILE(testing::gpt2_dir() + "/encoder.json");
    KILN_REQUIRE_FILE(testing::gpt2_dir() + "/vocab.bpe");
    KILN_REQUIRE_FILE(testing::gpt2_dir() + "/Encoder.js");
    ASSERT_NE(&gpt2(), nullptr);
  }
};

TEST_F(Gpt2Test, KnownTokens) {
  const Tokenizer& tok = gpt2();
  EXPECT_EQ(tok.vocab_size(), 50257);
  EXPECT_EQ(tok.eot(), kGpt2EndOfText);
  EXPECT_EQ(tok.encode("Hello world"), (std::vector<int32_t>{15496, 995}));
  EXPECT_EQ(tok.decode(std::vector<int32_t>{kGpt2EndOfText}), "<|endoftext|>");
  // Special-token text in the input is plain text, never the special token.
  std::vector<int32_t> ids = tok.encode("<|endoftext|>");
  EXPECT_GT(ids.size(), 1u);
  EXPECT_EQ(std::count(ids.begin(), ids.end(), kGpt2EndOfText), 0);
  EXPECT_TRUE(tok.encode("").empty());
}

TEST_F(Gpt2Test, MatchesReferenceOnWholeBrownCorpus) {
  KILN_REQUIRE_FILE(testing::brown_path());
  TempDir dir;
  std::string ref_path = dir.file("brown_ref.bin");
  ASSERT_EQ(run_reference("file", testing::brown_path(), ref_path), 0)
      << "node reference failed (node: " << testing::node_binary() << ")";
  std::string ref_bytes = testing::read_file(ref_path);
  std::vector<int32_t> ref(ref_bytes.size() / 4);
  std::memcpy(ref.data(), ref_bytes.data(), ref.size() * 4);

  std::string text = testing::read_file(testing::brown_path());
  ASSERT_GT(text.size(), 5u << 20) << "the default corpus looks truncated";
  std::vector<int32_t> ours = gpt2().encode(text);
  ASSERT_GT(ref.size(), 1000000u);
  size_t mismatch = 0;
  while (mismatch < ours.size() && mismatch < ref.size() && ours[mismatch] == ref[mismatch]) {
    ++mismatch;
  }
  EXPECT_EQ(ours.size(), ref.size());
  if (mismatch < std::min(ours.size(), ref.size())) {
    size_t lo = mismatch > 5 ? mismatch - 5 : 0;
    std::vector<int32_t> ctx(ref.begin() + lo, ref.begin() + std::min(ref.size(), mismatch + 5));
    ADD_FAILURE() << "first mismatch at token " << mismatch << ": ours " << ours[mismatch]
                  << ", reference " << ref[mismatch] << " near " << show(gpt2().decode(ctx));
  }
  EXPECT_EQ(gpt2().decode(ours), text);
}

std::string repeat(std::string_view s, int n) {
  std::string out;
  for (int i = 0; i < n; ++i) out += s;
  return out;
}

// Random valid UTF-8 from a mix of ASCII, whitespace, Latin, BMP and astral code points (assigned
// or not): exercises every class table against node's regex engine.
std::string random_unicode(std::mt19937_64& rng, int n) {
  static const char32_t kSpaces[] = {' ',    '\t',   '\n',   '\r',   0x0B,   0x0C,
                                     0xA0,   0x1680, 0x2000, 0x200A, 0x2028, 0x2029,
                                     0x202F, 0x205F, 0x3000, 0xFEFF, 0x85,   0x180E};
  std::string s;
  for (int i = 0; i < n; ++i) {
    uint32_t cp;
    switch (rng() % 6) {
      case 0:
        cp = 0x20 + rng() % 0x5F;
        break;
      case 1:
        cp = kSpaces[rng() % std::size(kSpaces)];
        break;
      case 2:
        cp = 0x80 + rng() % 0x780;
        break;
      case 3:
        cp = 0x800 + rng() % (0x10000 - 0x800);
        break;
      case 4:
        cp = 0x10000 + rng() % 0x30000;
        break;
      default:
        cp = 0x10000 + rng() % 0x100000;
        break;
    }
    if (cp >= 0xD800 && cp <= 0xDFFF) cp = 'x';
    append_utf8(cp, &s);
  }
  return s;
}

std::vector<std::string> adversarial_cases() {
  std::vector<std::string> c = {
      "",
      " ",
      "  ",
      "\n",
      "\n\n\n",
      "   leading",
      "trailing   ",
      "a  b   c    d",
      "\t\tTabs\t",
      "\r\nwindows\r\n line\r\n",
      " \n \n  x",
      "x \n\n y  \n",
      "  \t \n",
      "end with space ",
      // contractions
      "I'm you're he's they've we'll she'd don't",
      "'S 'T 'Re 'LL",
      "''s",
      "'''",
      "rock'n'roll",
      " 's",
      "'ll've'd'm't",
      "O'Neil's dog's bone'",
      "it’s curly’s",
      "' s",
      "x'",
      "'",
      // unicode letters and numbers
      "naïve café Ünïcödé façade",
      "Ελληνικά Русский язык עברית العربية हिन्दी ภาษาไทย",
      "日本語のテキスト 中文字符 한국어",
      "123 4567 ٣٤٥ ½ ⅓ Ⅻ ① ²³",
      "x²+y³=z⁴",
      "𝐀𝐁𝐂 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 𐍈𐌰 𝟘𝟙𝟚",
      // emoji, joiners, flags, variation selectors
      "emoji 😀😃🎉 👨‍👩‍👧‍👦 🇺🇸🇯🇵 ❤️ ✌🏽",
      "a\u200bb\u200dc\u2060d",
      "\ufeffBOM",
      // combining marks
      "e\u0301 a\u0308 \u0301\u0301\u0301 x\u20dd",
      "Z̴̡̢͓͎a̸l̷g̵o̶ ţ̷̧e̴x̵t̶",
      "ﬁﬂ ǅ ᾈ",
      // other whitespace
      "a\u00a0b \u2003\u3000x\u2028y\u2029z\u0085w",
      "\u00a0 \u00a0",
      " \u00a0x",
      "\u3000\u3000日本",
      // code, markup, json
      "{\"a\": [1, 2], \"b\": \"c\"},\"]",
      "\",\"\",\"",
      "'],[',']",
      "int main() { return 0; }\n",
      "https://example.com/path?q=1&x=y#frag",
      "<|endoftext|> <|endoftext|>",
      "$100 €50 £3 ¥",
      "∑∫√∞ ≠ ≤",
      "-- --- ... ?!?! ** __ ~~",
      "\t\tif (x) {\n\t\t\treturn;\n\t\t}\n",
      // very long words and runs
      repeat("a", 5000),
      repeat("ab", 3000),
      repeat("supercalifragilistic", 300),
      repeat("1234567890", 500),
      repeat("!?", 2000),
      repeat(" ", 3000) + "x",
      repeat("\n", 2000),
      repeat("漢字", 1000),
      repeat("😀", 500),
      repeat("aé", 2000),
      repeat(" the", 2000),
      repeat("Ġ", 300),
      repeat("'s", 500),
      repeat("\r\n", 500) + "x",
  };
  std::mt19937_64 rng(1234);
  for (int i = 0; i < 150; ++i) c.push_back(random_unicode(rng, 1 + static_cast<int>(rng() % 60)));
  return c;
}

TEST_F(Gpt2Test, MatchesReferenceOnAdversarialText) {
  std::vector<std::string> cases = adversarial_cases();
  TempDir dir;
  std::string in = "[";
  for (size_t i = 0; i < cases.size(); ++i) {
    if (i) in += ",";
    append_json_string(cases[i], &in);
  }
  in += "]";
  testing::write_file(dir.file("cases.json"), in);
  ASSERT_EQ(run_reference("cases", dir.file("cases.json"), dir.file("out.json")), 0)
      << "node reference failed (node: " << testing::node_binary() << ")";
  auto ref = parse_json(testing::read_file(dir.file("out.json")));
  ASSERT_TRUE(ref.ok()) << ref.status();
  ASSERT_EQ(ref->array.size(), cases.size());
  for (size_t i = 0; i < cases.size(); ++i) {
    std::vector<int32_t> want;
    for (const JsonValue& v : ref->array[i].array) want.push_back(static_cast<int32_t>(v.number));
    std::vector<int32_t> got = gpt2().encode(cases[i]);
    EXPECT_EQ(got, want) << "case " << i << ": " << show(cases[i]);
    EXPECT_EQ(gpt2().decode(got), cases[i]) << "case " << i;
  }
}

TEST_F(Gpt2Test, RoundTripsRandomBytes) {
  std::mt19937_64 rng(7);
  const Tokenizer& tok = gpt2();
  for (int i = 0; i < 300; ++i) {
    std::string s(rng() % 400, '\0');
    const int mode = i % 3;
    for (char& ch : s) {
      uint64_t r = rng();
      if (mode == 0) {
        ch = static_cast<char>(r);  // uniform bytes: mostly invalid UTF-8
      } else if (mode == 1) {
        ch = r % 8 ? static_cast<char>(0x20 + r % 95) : static_cast<char>(0x80 + (r >> 8) % 128);
      } else {
        static const char kSet[] = {' ', ' ',    '\n',   'a',    'b',    '\'',   's',    '1',
                                    '.', '\xc3', '\xa9', '\xe2', '\x80', '\xf0', '\x9f', '\xff'};
        ch = kSet[r % sizeof(kSet)];
      }
    }
    std::vector<int32_t> ids = tok.encode(s);
    ASSERT_EQ(tok.decode(ids), s) << "case " << i;
    for (int32_t id : ids) ASSERT_TRUE(id >= 0 && id < tok.vocab_size());
  }
}

TEST_F(Gpt2Test, InvalidUtf8IsByteLevel) {
  const Tokenizer& tok = gpt2();
  // Each invalid byte is one code point of the "other" class: it splits from letters and joins
  // punctuation runs, like the U+FFFD that a lossy decoder would put there.
  EXPECT_EQ(pieces("a\xff"
                   "b"),
            (std::vector<std::string>{"a", "\xff", "b"}));
  EXPECT_EQ(pieces("hi \xff\xfe!! x"), (std::vector<std::string>{"hi", " \xff\xfe!!", " x"}));
  EXPECT_EQ(pieces("\xe2\x82 \xf0\x9f\x98"),
            (std::vector<std::string>{"\xe2\x82", " \xf0\x9f\x98"}));
  EXPECT_EQ(pieces("\xc0\xaf\xed\xa0\x80z"),  // overlong '/', UTF-16 surrogate
            (std::vector<std::string>{"\xc0\xaf\xed\xa0\x80", "z"}));
  for (std::string s : {"\xff", "\x80\x80", "caf\xe9", "\xf4\x90\x80\x80", "a\xc3"}) {
    EXPECT_EQ(tok.decode(tok.encode(s)), s);
  }
  // A lone invalid byte is its own single-byte token.
  EXPECT_EQ(tok.encode("\xff").size(), 1u);
}

TEST(PretokenizeTest, SplitsLikeGpt2) {
  EXPECT_EQ(pieces("Hello world"), (std::vector<std::string>{"Hello", " world"}));
  EXPECT_EQ(pieces("I'm here"), (std::vector<std::string>{"I", "'m", " here"}));
  EXPECT_EQ(pieces("a   b"), (std::vector<std::string>{"a", "  ", " b"}));
  EXPECT_EQ(pieces("a\n\nb"), (std::vector<std::string>{"a", "\n", "\n", "b"}));
  EXPECT_EQ(pieces("x  \n"), (std::vector<std::string>{"x", "  \n"}));
  EXPECT_EQ(pieces("''s"), (std::vector<std::string>{"''", "s"}));
  EXPECT_EQ(pieces(" 's"), (std::vector<std::string>{" '", "s"}));
  EXPECT_EQ(pieces("abc123 45!?"), (std::vector<std::string>{"abc", "123", " 45", "!?"}));
  EXPECT_EQ(pieces("\u00a0x"), (std::vector<std::string>{"\u00a0", "x"}));  // NBSP is \s
  EXPECT_EQ(pieces(""), std::vector<std::string>{});
  EXPECT_EQ(char_class(0x85), CharClass::kOther);  // NEL is not \s in JavaScript
  EXPECT_EQ(char_class(0x3000), CharClass::kSpace);
  EXPECT_EQ(char_class(0x4E2D), CharClass::kLetter);
  EXPECT_EQ(char_class(0x0663), CharClass::kNumber);
  EXPECT_EQ(char_class(0x1D400), CharClass::kLetter);
  EXPECT_EQ(char_class(0x1F600), CharClass::kOther);
}

TEST_F(Gpt2Test, EncodesTheSameFromManyThreads) {
  std::string text = repeat("The quick brown fox's 12 jumps — naïve 😀 over the lazy dog.\n", 300);
  std::vector<int32_t> want = gpt2().encode(text);
  std::vector<std::vector<int32_t>> got(4);
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) threads.emplace_back([&, t] { got[t] = gpt2().encode(text); });
  for (auto& th : threads) th.join();
  for (const auto& g : got) EXPECT_EQ(g, want);
}

TEST(TokenizerLoadTest, ErrorsNameTheFile) {
  TempDir dir;
  auto missing = Tokenizer::LoadDir(dir.path());
  ASSERT_FALSE(missing.ok());
  EXPECT_NE(missing.status().message().find(dir.file("encoder.json")), std::string::npos)
      << missing.status();

  testing::write_file(dir.file("vocab.bpe"), "#version: 0.2\n");
  testing::write_file(dir.file("encoder.json"), "{\"a\": 0,");
  auto bad_json = Tokenizer::LoadDir(dir.path());
  ASSERT_FALSE(bad_json.ok());
  EXPECT_NE(bad_json.status().message().find("encoder.json"), std::string::npos)
      << bad_json.status();

  testing::write_file(dir.file("encoder.json"), "{\"a\": 0, \"b\": 1}");
  auto no_bytes = Tokenizer::LoadDir(dir.path());
  ASSERT_FALSE(no_bytes.ok());
  EXPECT_NE(no_bytes.status().message().find("single-byte"), std::string::npos)
      << no_bytes.status();

  // All 256 bytes, then a merge line that is malformed, then one whose result is not a token.
  std::string enc = "{";
  for (int id = 0; id < 256; ++id) {
    if (id) enc += ", ";
    append_json_string(bytes_to_printable(std::string(1, static_cast<char>(byte_order()[id]))),
                       &enc);
    enc += absl::StrCat(": ", id);
  }
  enc += "}";
  testing::write_file(dir.file("encoder.json"), enc);
  testing::write_file(dir.file("vocab.bpe"), "#version: 0.2\na b c\n");
  auto bad_line = Tokenizer::LoadDir(dir.path());
  ASSERT_FALSE(bad_line.ok());
  EXPECT_NE(bad_line.status().message().find("vocab.bpe: line 2"), std::string::npos)
      << bad_line.status();
  testing::write_file(dir.file("vocab.bpe"), "#version: 0.2\na b\n");
  auto no_result = Tokenizer::LoadDir(dir.path());
  ASSERT_FALSE(no_result.ok());
  EXPECT_NE(no_result.status().message().find("not a token"), std::string::npos)
      << no_result.status();
  // Without merges the bytes alone load, and every byte string still round-trips.
  testing::write_file(dir.file("vocab.bpe"), "#version: 0.2\n");
  auto bytes_only = Tokenizer::LoadDir(dir.path());
  ASSERT_TRUE(bytes_only.ok()) << bytes_only.status();
  EXPECT_EQ(bytes_only->encode("héllo").size(), 6u);
  EXPECT_EQ(bytes_only->eot(), -1);
}

}  // namespace
}  // namespace kiln::data
