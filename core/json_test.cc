// Tests for the JSON reader and writer (core/json.h): nesting, escapes and surrogate pairs, exact
// integers and floats, member order, duplicate keys, the depth limit, errors with byte offsets for
// invalid and truncated input, the string escaper's round trip, and json_string_field.
#include "core/json.h"

#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <random>
#include <string>
#include <vector>

namespace kiln {
namespace {

std::string message(const absl::StatusOr<JsonValue>& v) {
  return v.ok() ? "ok" : std::string(v.status().message());
}

// The error for `text`, which must be InvalidArgument.
std::string error_of(std::string_view text, const JsonOptions& options = {}) {
  absl::StatusOr<JsonValue> v = parse_json(text, options);
  EXPECT_FALSE(v.ok()) << text;
  if (v.ok()) return "";
  EXPECT_EQ(v.status().code(), absl::StatusCode::kInvalidArgument) << text;
  return std::string(v.status().message());
}

JsonValue parse_ok(std::string_view text, const JsonOptions& options = {}) {
  absl::StatusOr<JsonValue> v = parse_json(text, options);
  EXPECT_TRUE(v.ok()) << text << ": " << message(v);
  return v.ok() ? *std::move(v) : JsonValue();
}

// The string value of the JSON literal `text`.
std::string parse_string(std::string_view text, const JsonOptions& options = {}) {
  JsonValue v = parse_ok(text, options);
  EXPECT_TRUE(v.is_string()) << text;
  return v.str;
}

TEST(Json, ParsesAndRejects) {  // moved from launch/export_test.cc with the reader
  absl::StatusOr<JsonValue> v = parse_json(
      R"({"a": [1, -2.5e3, true, null], "s": "x\"\u00e9\ud83d\ude00\n", "big": 18446744073709551615})");
  ASSERT_TRUE(v.ok()) << v.status().message();
  ASSERT_TRUE(v->is_object());
  EXPECT_EQ(v->find("a")->array.size(), 4u);
  EXPECT_EQ(v->find("a")->array[1].number, -2500);
  EXPECT_EQ(v->find("s")->str, "x\"\xc3\xa9\xf0\x9f\x98\x80\n");
  uint64_t big = 0;
  EXPECT_TRUE(v->find("big")->as_uint64(&big));
  EXPECT_EQ(big, 18446744073709551615ull);
  int64_t i = 0;
  EXPECT_FALSE(v->find("a")->array[1].as_int64(&i));  // not an integer literal
  for (const char* bad : {"", "{", "[1,]", "{\"a\":1,\"a\":2}", "01", "\"\\ud800\"", "tru",
                          "{\"a\" 1}", "1 2", "\"\x01\"", "[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[["})
    EXPECT_FALSE(parse_json(bad, {.max_depth = 32}).ok()) << bad;
  EXPECT_EQ(json_quote("a\"b\\\n\x01"), "\"a\\\"b\\\\\\n\\u0001\"");
}

TEST(Json, NestedObjectsAndArrays) {
  JsonValue v = parse_ok(
      " {\"a\": {\"b\": [1, [2, [3, {}]], []], \"c\": {\"d\": null}}, \"e\": [true, false]} \n");
  ASSERT_TRUE(v.is_object());
  const JsonValue* a = v.find("a");
  ASSERT_TRUE(a && a->is_object());
  const JsonValue* b = a->find("b");
  ASSERT_TRUE(b && b->is_array());
  ASSERT_EQ(b->array.size(), 3u);
  EXPECT_EQ(b->array[0].number, 1);
  ASSERT_TRUE(b->array[1].is_array());
  EXPECT_EQ(b->array[1].array[0].number, 2);
  const JsonValue& inner = b->array[1].array[1];
  ASSERT_EQ(inner.array.size(), 2u);
  EXPECT_EQ(inner.array[0].number, 3);
  EXPECT_TRUE(inner.array[1].is_object());
  EXPECT_TRUE(inner.array[1].object.empty());
  EXPECT_TRUE(b->array[2].is_array());
  EXPECT_TRUE(b->array[2].array.empty());
  ASSERT_NE(a->find("c"), nullptr);
  EXPECT_TRUE(a->find("c")->find("d")->is_null());
  const JsonValue* e = v.find("e");
  ASSERT_TRUE(e && e->array.size() == 2);
  EXPECT_TRUE(e->array[0].is_bool() && e->array[0].boolean);
  EXPECT_TRUE(e->array[1].is_bool() && !e->array[1].boolean);
  // find() looks at direct members only, and is null on non-objects.
  EXPECT_EQ(v.find("b"), nullptr);
  EXPECT_EQ(b->find("b"), nullptr);
  // Scalars and empty containers stand alone; whitespace is space, tab, CR and LF only.
  EXPECT_TRUE(parse_ok("null").is_null());
  EXPECT_TRUE(parse_ok("\t\r\n \"x\" ").is_string());
  EXPECT_TRUE(parse_ok("[ ]").is_array());
  EXPECT_TRUE(parse_ok("{ }").is_object());
  error_of("\f1");
  error_of("1\v");
}

TEST(Json, StringEscapesAndSurrogatePairs) {
  EXPECT_EQ(parse_string(R"("\"\\\/\b\f\n\r\t")"), "\"\\/\b\f\n\r\t");
  EXPECT_EQ(parse_string(R"("\u0041\u00e9\u20AC\u0000")"),
            std::string("A\xc3\xa9\xe2\x82\xac\0", 7));
  // U+1F600 and U+10FFFF as surrogate pairs (either case of hex digit).
  EXPECT_EQ(parse_string(R"("\ud83d\ude00\uDBFF\uDFFF")"), "\xf0\x9f\x98\x80\xf4\x8f\xbf\xbf");
  // Raw bytes are copied through, invalid UTF-8 included.
  EXPECT_EQ(parse_string("\"caf\xc3\xa9 \xff\xfe\""), "caf\xc3\xa9 \xff\xfe");
  // Keys are unescaped the same way.
  EXPECT_NE(parse_ok(R"({"\u00e9": 1})").find("\xc3\xa9"), nullptr);

  // Unpaired surrogates: errors by default, U+FFFD when asked.
  for (const char* lone : {R"("\ud800")", R"("\udc00")", R"("\ud800x")", R"("\ud800\u0041")",
                           R"("\ude00\ud83d")", R"("\ud800\ud800")"}) {
    EXPECT_NE(error_of(lone).find("unpaired UTF-16 surrogate"), std::string::npos) << lone;
  }
  const JsonOptions lenient{.replace_lone_surrogates = true};
  EXPECT_EQ(parse_string(R"("\ud800")", lenient), "\xef\xbf\xbd");
  EXPECT_EQ(parse_string(R"("\ud800x")", lenient), "\xef\xbf\xbdx");
  EXPECT_EQ(parse_string(R"("\ud800\u0041")", lenient),
            "\xef\xbf\xbd"
            "A");
  EXPECT_EQ(parse_string(R"("\ud800\ud83d\ude00")", lenient), "\xef\xbf\xbd\xf0\x9f\x98\x80");
  EXPECT_EQ(parse_string(R"("\udc00\ud800")", lenient), "\xef\xbf\xbd\xef\xbf\xbd");
  EXPECT_EQ(parse_string(R"("\ud83d\ude00")", lenient), "\xf0\x9f\x98\x80");
  // A malformed escape after a high surrogate is still an error.
  error_of(R"("\ud800\u12")", lenient);
}

TEST(Json, NumbersExactIntegersAndFloats) {
  JsonValue v = parse_ok(
      "[9007199254740993, -9223372036854775808, 9223372036854775807, 9223372036854775808, "
      "18446744073709551615, 18446744073709551616, -1, -0, 0, 1.0, 1e3, 3.25, -2.5E-3, 1e400, "
      "-1e400, 123456789012345678901234567890]");
  ASSERT_EQ(v.array.size(), 16u);
  const std::vector<JsonValue>& n = v.array;
  int64_t i = 0;
  uint64_t u = 0;
  // 2^53 + 1: the double rounds it, as_int64 reads the literal exactly.
  ASSERT_TRUE(n[0].as_int64(&i));
  EXPECT_EQ(i, 9007199254740993);
  EXPECT_EQ(n[0].number, 9007199254740992.0);
  EXPECT_EQ(n[0].str, "9007199254740993");
  ASSERT_TRUE(n[1].as_int64(&i));
  EXPECT_EQ(i, std::numeric_limits<int64_t>::min());
  EXPECT_FALSE(n[1].as_uint64(&u));
  ASSERT_TRUE(n[2].as_int64(&i));
  EXPECT_EQ(i, std::numeric_limits<int64_t>::max());
  EXPECT_FALSE(n[3].as_int64(&i));  // 2^63 overflows int64 ...
  ASSERT_TRUE(n[3].as_uint64(&u));  // ... not uint64
  EXPECT_EQ(u, uint64_t{1} << 63);
  ASSERT_TRUE(n[4].as_uint64(&u));
  EXPECT_EQ(u, std::numeric_limits<uint64_t>::max());
  EXPECT_FALSE(n[5].as_uint64(&u));  // 2^64
  EXPECT_FALSE(n[5].as_int64(&i));
  EXPECT_FALSE(n[6].as_uint64(&u));  // negative
  ASSERT_TRUE(n[6].as_int64(&i));
  EXPECT_EQ(i, -1);
  ASSERT_TRUE(n[7].as_int64(&i));
  EXPECT_EQ(i, 0);
  ASSERT_TRUE(n[8].as_uint64(&u));
  EXPECT_EQ(u, 0u);
  // A fraction or an exponent is not an integer literal, even when the value is whole.
  EXPECT_FALSE(n[9].as_int64(&i));
  EXPECT_EQ(n[9].number, 1.0);
  EXPECT_FALSE(n[10].as_int64(&i));
  EXPECT_FALSE(n[10].as_uint64(&u));
  EXPECT_EQ(n[10].number, 1000.0);
  EXPECT_EQ(n[11].number, 3.25);
  EXPECT_EQ(n[12].number, -2.5e-3);
  EXPECT_EQ(n[12].str, "-2.5E-3");
  EXPECT_TRUE(std::isinf(n[13].number) && n[13].number > 0);
  EXPECT_TRUE(std::isinf(n[14].number) && n[14].number < 0);
  EXPECT_FALSE(n[15].as_int64(&i));
  EXPECT_DOUBLE_EQ(n[15].number, 1.2345678901234568e29);
  // Only numbers convert.
  EXPECT_FALSE(parse_ok("\"5\"").as_int64(&i));
  EXPECT_FALSE(parse_ok("true").as_uint64(&u));
  // The RFC grammar, nothing more.
  for (const char* bad : {"01", "-01", "00", "1.", ".5", "-", "+1", "1e", "1e+", "1.e3", "0x10",
                          "NaN", "Infinity", "-Infinity", "1_000", "--1", "1.5.2"})
    EXPECT_NE(error_of(bad).find("JSON at byte"), std::string::npos) << bad;
}

TEST(Json, MembersKeepFileOrder) {
  JsonValue v = parse_ok(R"({"z": 1, "a": 2, "m": 3, "": 4, "b": {"y": 5, "x": 6}})");
  std::vector<std::string> keys;
  for (const JsonMember& m : v.object) keys.push_back(m.key);
  EXPECT_EQ(keys, (std::vector<std::string>{"z", "a", "m", "", "b"}));
  EXPECT_EQ(v.object[1].value.number, 2);
  EXPECT_EQ(v.find("")->number, 4);
  const JsonValue* b = v.find("b");
  ASSERT_NE(b, nullptr);
  EXPECT_EQ(b->object[0].key, "y");
  EXPECT_EQ(b->object[1].key, "x");
}

TEST(Json, DuplicateKeysAreErrors) {
  // Rejected (json.h says why), the offset naming the second copy's key.
  EXPECT_EQ(error_of(R"({"a":1,"a":2})"), "JSON at byte 7: duplicate key \"a\"");
  // Keys compare after unescaping.
  EXPECT_NE(error_of(R"({"a":1, "\u0061":2})").find("byte 8: duplicate key \"a\""),
            std::string::npos);
  EXPECT_NE(error_of(R"({"x":{"k":[], "k":{}}})").find("duplicate key \"k\""), std::string::npos);
  // The same key in different objects is fine, and so are equal values.
  JsonValue v = parse_ok(R"({"a": {"a": 1}, "b": [{"a": 2}, {"a": 3}], "c": 1, "d": 1})");
  EXPECT_EQ(v.find("a")->find("a")->number, 1);
  EXPECT_EQ(v.find("b")->array[1].find("a")->number, 3);
}

TEST(Json, DepthLimit) {
  auto arrays = [](int n) { return std::string(n, '[') + std::string(n, ']'); };
  // The top-level value is at depth 0: max_depth + 1 nested arrays are the most allowed.
  EXPECT_TRUE(parse_json(arrays(4), {.max_depth = 3}).ok());
  EXPECT_EQ(error_of(arrays(5), {.max_depth = 3}), "JSON at byte 4: nested deeper than 3");
  EXPECT_FALSE(parse_json("[[[[1]]]]", {.max_depth = 3}).ok());
  EXPECT_TRUE(parse_json("[[[1]]]", {.max_depth = 3}).ok());
  EXPECT_TRUE(parse_json(R"({"a":{"b":{"c":1}}})", {.max_depth = 3}).ok());
  EXPECT_FALSE(parse_json(R"({"a":{"b":{"c":{"d":1}}}})", {.max_depth = 3}).ok());
  // The default (64) is what untrusted headers get.
  EXPECT_TRUE(parse_json(arrays(65)).ok());
  EXPECT_NE(error_of(arrays(66)).find("nested deeper than 64"), std::string::npos);
  // Far deeper input fails cleanly instead of exhausting the stack.
  EXPECT_FALSE(parse_json(std::string(1000000, '[')).ok());
  std::string objects;
  for (int k = 0; k < 200000; ++k) objects += "{\"a\":";
  EXPECT_FALSE(parse_json(objects, {.max_depth = 512}).ok());
}

TEST(Json, ErrorsGiveByteOffsets) {
  struct Case {
    const char* text;
    const char* error;
  };
  const Case cases[] = {
      {"", "JSON at byte 0: unexpected end of input"},
      {"   ", "JSON at byte 3: unexpected end of input"},
      {"{", "JSON at byte 1: unexpected end of input"},
      {"{\"a\":", "JSON at byte 5: unexpected end of input"},
      {"{\"a\":1", "JSON at byte 6: expected ',' or '}'"},
      {"{\"a\":1,}", "JSON at byte 7: expected a string key"},
      {"{\"a\" 1}", "JSON at byte 5: expected ':'"},
      {"{1:2}", "JSON at byte 1: expected a string key"},
      {"[1,]", "JSON at byte 3: expected a value, found byte 0x5d"},
      {"[1 2]", "JSON at byte 3: expected ',' or ']'"},
      {"[1", "JSON at byte 2: expected ',' or ']'"},
      {"\"abc", "JSON at byte 4: unterminated string"},
      {"\"ab\\", "JSON at byte 4: unterminated string"},
      {"\"a\x01\"", "JSON at byte 2: control character in a string (escape it)"},
      {"\"a\nb\"", "JSON at byte 2: control character in a string (escape it)"},
      {"[\"\\q\"]", "JSON at byte 2: bad escape"},
      {"\"\\u12\"", "JSON at byte 1: bad \\u escape (expected 4 hex digits)"},
      {"\"\\u12g4\"", "JSON at byte 1: bad \\u escape"},
      {"\"xy\\udc00\"", "JSON at byte 3: unpaired UTF-16 surrogate"},
      {"tru", "JSON at byte 0: expected a value, found byte 0x74"},
      {"[nul]", "JSON at byte 1: expected a value, found byte 0x6e"},
      {"\xff", "JSON at byte 0: expected a value, found byte 0xff"},
      {"01", "JSON at byte 1: bad number (leading zero)"},
      {"[1.]", "JSON at byte 3: bad number (expected a digit after '.')"},
      {"-", "JSON at byte 1: bad number (expected a digit)"},
      {"2e+", "JSON at byte 3: bad number (expected exponent digits)"},
      {"1 2", "JSON at byte 2: unexpected data after the JSON value"},
      {"{\"a\":1}}", "JSON at byte 7: unexpected data after the JSON value"},
      {"{} x", "JSON at byte 3: unexpected data after the JSON value"},
  };
  for (const Case& c : cases) {
    const std::string got = error_of(c.text);
    EXPECT_EQ(got.substr(0, std::string_view(c.error).size()), c.error) << "input: " << c.text;
  }
}

TEST(Json, TruncatedInputFailsAtOrBeforeTheCut) {
  // Every proper prefix of an object is invalid; the error points inside the prefix.
  const std::string doc =
      R"({"name": "w\u00e9\ud83d\ude00", "shape": [2, -3.5e2, {"k": [true, null]}], "z": false})";
  ASSERT_TRUE(parse_json(doc).ok());
  for (size_t n = 0; n < doc.size(); ++n) {
    const std::string got = error_of(std::string_view(doc).substr(0, n));
    const size_t at = got.find("JSON at byte ");
    ASSERT_EQ(at, 0u) << n << ": " << got;
    const size_t offset = std::stoul(got.substr(13));
    EXPECT_LE(offset, n) << got;
  }
}

TEST(Json, QuoteEscapesAndRoundTrips) {
  EXPECT_EQ(json_quote(""), "\"\"");
  EXPECT_EQ(json_quote("plain caf\xc3\xa9"), "\"plain caf\xc3\xa9\"");
  EXPECT_EQ(json_quote(std::string("\"\\/\b\f\n\r\t\x7f\0\x1f", 11)),
            "\"\\\"\\\\/\\u0008\\u000c\\n\\r\\t\\u007f\\u0000\\u001f\"");
  std::string out = "x";
  append_json_string("y", &out);
  EXPECT_EQ(out, "x\"y\"");
  // Every byte value, and random byte strings, read back unchanged.
  std::string all;
  for (int b = 0; b < 256; ++b) all.push_back(static_cast<char>(b));
  EXPECT_EQ(parse_string(json_quote(all)), all);
  std::mt19937 rng(7);
  for (int t = 0; t < 200; ++t) {
    std::string s(rng() % 40, '\0');
    for (char& c : s) c = static_cast<char>(rng() & 0xFF);
    EXPECT_EQ(parse_string(json_quote(s)), s);
  }
  // The escaped text of valid UTF-8 holds no raw control bytes.
  for (char c : json_quote(all.substr(0, 128))) EXPECT_GE(static_cast<unsigned char>(c), 0x20);
}

TEST(Json, StringField) {
  const std::string rec = R"({"id": 7, "meta": {"text": "inner"}, "text": "top\n", "n": 1})";
  absl::StatusOr<std::string> s = json_string_field(rec, "text");
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_EQ(*s, "top\n");
  s = json_string_field(rec, "body");
  EXPECT_EQ(s.status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(s.status().message(), "no field \"body\"");
  s = json_string_field(rec, "id");
  EXPECT_EQ(s.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(s.status().message(), "field \"id\" is not a string");
  s = json_string_field("[\"text\"]", "text");
  EXPECT_EQ(s.status().message(), "expected a JSON object");
  // The whole record is validated, past the member too.
  s = json_string_field(R"({"text": "a", "b": tru})", "text");
  EXPECT_EQ(s.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(s.status().message().find("JSON at byte 19"), std::string::npos) << s.status();
  s = json_string_field(R"({"text": "a", "text": "b"})", "text");
  EXPECT_NE(s.status().message().find("duplicate key"), std::string::npos) << s.status();
  // Options pass through.
  EXPECT_FALSE(json_string_field(R"({"text": "\udc00"})", "text").ok());
  s = json_string_field(R"({"text": "\udc00"})", "text", {.replace_lone_surrogates = true});
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_EQ(*s, "\xef\xbf\xbd");
}

}  // namespace
}  // namespace kiln
