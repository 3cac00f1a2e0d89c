// Loss-curve plots: a tiny PNG rasteriser (lines, axes, 5x7 digits) and an SVG writer.
#include "launch/plot.h"

#include <zlib.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <map>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "core/check.h"

namespace kiln::launch {
namespace {

uint32_t crc32(const uint8_t* p, size_t n, uint32_t c = 0) {
  static uint32_t table[256];
  static bool init = [] {
    for (uint32_t i = 0; i < 256; ++i) {
      uint32_t c = i;
      for (int k = 0; k < 8; ++k) c = (c & 1) ? 0xEDB88320u ^ (c >> 1) : c >> 1;
      table[i] = c;
    }
    return true;
  }();
  (void)init;
  c ^= 0xFFFFFFFFu;
  for (size_t i = 0; i < n; ++i) c = table[(c ^ p[i]) & 0xFF] ^ (c >> 8);
  return c ^ 0xFFFFFFFFu;
}

void put32(std::string& s, uint32_t v) {
  for (int i = 3; i >= 0; --i) s.push_back(static_cast<char>((v >> (8 * i)) & 0xFF));
}

void chunk(std::string& out, const char* type, const std::string& data) {
  put32(out, static_cast<uint32_t>(data.size()));
  std::string td = std::string(type, 4) + data;
  out += td;
  put32(out, crc32(reinterpret_cast<const uint8_t*>(td.data()), td.size()));
}

// 5x7 glyphs: digits, lower-case letters (upper case is drawn as lower case) and the punctuation
// of tick labels, titles and paths; each row is 5 bits, MSB left. Other characters are blank.
const uint8_t* glyph(char c) {
  static const uint8_t digits[10][7] = {{14, 17, 19, 21, 25, 17, 14}, {4, 12, 4, 4, 4, 4, 14},
                                        {14, 17, 1, 2, 4, 8, 31},     {31, 2, 4, 2, 1, 17, 14},
                                        {2, 6, 10, 18, 31, 2, 2},     {31, 16, 30, 1, 1, 17, 14},
                                        {6, 8, 16, 30, 17, 17, 14},   {31, 1, 2, 4, 8, 8, 8},
                                        {14, 17, 17, 14, 17, 17, 14}, {14, 17, 17, 15, 1, 2, 12}};
  static const uint8_t letters[26][7] = {
      {0, 0, 14, 1, 15, 17, 15},  {16, 16, 22, 25, 17, 17, 30}, {0, 0, 14, 16, 16, 17, 14},
      {1, 1, 13, 19, 17, 17, 15}, {0, 0, 14, 17, 31, 16, 14},   {6, 9, 8, 28, 8, 8, 8},
      {0, 15, 17, 17, 15, 1, 14}, {16, 16, 22, 25, 17, 17, 17}, {4, 0, 12, 4, 4, 4, 14},
      {2, 0, 6, 2, 2, 18, 12},    {16, 16, 18, 20, 24, 20, 18}, {12, 4, 4, 4, 4, 4, 14},
      {0, 0, 26, 21, 21, 17, 17}, {0, 0, 22, 25, 17, 17, 17},   {0, 0, 14, 17, 17, 17, 14},
      {0, 0, 30, 17, 30, 16, 16}, {0, 0, 13, 19, 15, 1, 1},     {0, 0, 22, 25, 16, 16, 16},
      {0, 0, 15, 16, 14, 1, 30},  {8, 8, 28, 8, 8, 9, 6},       {0, 0, 17, 17, 17, 19, 13},
      {0, 0, 17, 17, 17, 10, 4},  {0, 0, 17, 17, 21, 21, 10},   {0, 0, 17, 10, 4, 10, 17},
      {0, 0, 17, 17, 15, 1, 14},  {0, 0, 31, 2, 4, 8, 31}};
  static const uint8_t dot[7] = {0, 0, 0, 0, 0, 12, 12}, minus[7] = {0, 0, 0, 31, 0, 0, 0};
  static const uint8_t colon[7] = {0, 12, 12, 0, 12, 12, 0}, slash[7] = {1, 1, 2, 4, 8, 16, 16};
  static const uint8_t under[7] = {0, 0, 0, 0, 0, 0, 31};
  if (c >= '0' && c <= '9') return digits[c - '0'];
  if (c >= 'a' && c <= 'z') return letters[c - 'a'];
  if (c >= 'A' && c <= 'Z') return letters[c - 'A'];
  switch (c) {
    case '.':
      return dot;
    case '-':
      return minus;
    case ':':
      return colon;
    case '/':
      return slash;
    case '_':
      return under;
    default:
      return nullptr;
  }
}

class Canvas {
 public:
  Canvas(int w, int h) : w_(w), h_(h), px_(3 * w * h, 255) {}
  void set(int x, int y, uint32_t rgb) {
    if (x < 0 || y < 0 || x >= w_ || y >= h_) return;
    uint8_t* p = &px_[3 * (y * w_ + x)];
    p[0] = rgb >> 16;
    p[1] = (rgb >> 8) & 0xFF;
    p[2] = rgb & 0xFF;
  }
  void line(double x0, double y0, double x1, double y1, uint32_t rgb, int thick = 1) {
    const int steps = static_cast<int>(std::max(std::fabs(x1 - x0), std::fabs(y1 - y0))) + 1;
    for (int i = 0; i <= steps; ++i) {
      const double t = static_cast<double>(i) / steps;
      const int x = static_cast<int>(std::lround(x0 + t * (x1 - x0)));
      const int y = static_cast<int>(std::lround(y0 + t * (y1 - y0)));
      for (int dx = 0; dx < thick; ++dx)
        for (int dy = 0; dy < thick; ++dy) set(x + dx, y + dy, rgb);
    }
  }
  void text(int x, int y, const std::string& s, uint32_t rgb) {
    for (char c : s) {
      if (const uint8_t* g = glyph(c))
        for (int r = 0; r < 7; ++r)
          for (int b = 0; b < 5; ++b)
            if (g[r] & (16 >> b)) set(x + b, y + r, rgb);
      x += 6;
    }
  }
  // Text read bottom to top (rotated a quarter turn counter-clockwise), starting at (x, y).
  void vtext(int x, int y, const std::string& s, uint32_t rgb) {
    for (char c : s) {
      if (const uint8_t* g = glyph(c))
        for (int r = 0; r < 7; ++r)
          for (int b = 0; b < 5; ++b)
            if (g[r] & (16 >> b)) set(x + r, y - b, rgb);
      y -= 6;
    }
  }
  const std::vector<uint8_t>& pixels() const { return px_; }

 private:
  int w_, h_;
  std::vector<uint8_t> px_;
};

std::vector<double> nice_ticks(double lo, double hi, int target) {
  const double span = std::max(hi - lo, 1e-12);
  const double raw = span / target, mag = std::pow(10.0, std::floor(std::log10(raw)));
  double step = mag;
  for (double m : {1.0, 2.0, 5.0, 10.0})
    if (raw <= m * mag) {
      step = m * mag;
      break;
    }
  std::vector<double> t;
  for (double v = std::ceil(lo / step) * step; v <= hi + 1e-9 * span; v += step) t.push_back(v);
  return t;
}

std::string tick_label(double v) {
  if (std::fabs(v) >= 10000) return absl::StrFormat("%.0fk", v / 1000);
  if (std::fabs(v - std::round(v)) < 1e-9) return absl::StrFormat("%.0f", v);
  return absl::StrFormat("%.2f", v);
}

struct Frame {
  double xmin = 0, xmax = 1, ymin = 0, ymax = 1;
  int left = 60, right = 20, top = 30, bottom = 40, w, h;
  double px(double x) const { return left + (x - xmin) / (xmax - xmin) * (w - left - right); }
  double py(double y) const { return h - bottom - (y - ymin) / (ymax - ymin) * (h - top - bottom); }
};

Frame make_frame(const std::vector<Series>& series, int w, int h) {
  Frame f;
  f.w = w;
  f.h = h;
  bool any = false;
  for (const Series& s : series)
    for (auto [x, y] : s.points) {
      if (!std::isfinite(y)) continue;
      if (!any) f.xmin = f.xmax = x, f.ymin = f.ymax = y, any = true;
      f.xmin = std::min(f.xmin, x), f.xmax = std::max(f.xmax, x);
      f.ymin = std::min(f.ymin, y), f.ymax = std::max(f.ymax, y);
    }
  if (f.xmax <= f.xmin) f.xmax = f.xmin + 1;
  if (f.ymax <= f.ymin) f.ymax = f.ymin + 1;
  const double pad = 0.05 * (f.ymax - f.ymin);
  f.ymin -= pad;
  f.ymax += pad;
  return f;
}

}  // namespace

std::string encode_png(const std::vector<uint8_t>& rgb, int w, int h) {
  std::string raw;
  for (int y = 0; y < h; ++y) {
    raw.push_back(0);  // filter: none
    raw.append(reinterpret_cast<const char*>(&rgb[3 * y * w]), 3 * w);
  }
  uLongf n = compressBound(raw.size());
  std::string z(n, '\0');
  const int rc = compress2(reinterpret_cast<Bytef*>(z.data()), &n,
                           reinterpret_cast<const Bytef*>(raw.data()), raw.size(), 9);
  KILN_CHECK(rc == Z_OK) << "zlib compress2 failed: " << rc;
  z.resize(n);
  std::string out = "\x89PNG\r\n\x1a\n";
  std::string ihdr;
  put32(ihdr, w);
  put32(ihdr, h);
  ihdr += std::string("\x08\x02\x00\x00\x00", 5);
  chunk(out, "IHDR", ihdr);
  chunk(out, "IDAT", z);
  chunk(out, "IEND", "");
  return out;
}

std::string render_png(const std::vector<Series>& series, int w, int h, const std::string& title) {
  Canvas c(w, h);
  Frame f = make_frame(series, w, h);
  c.text(w / 2 - 3 * static_cast<int>(title.size()), 10, title, 0x000000);
  c.vtext(4, h / 2 + 12, "loss", 0x333333);
  for (double t : nice_ticks(f.ymin, f.ymax, 6)) {
    c.line(f.left, f.py(t), w - f.right, f.py(t), 0xE0E0E0);
    std::string l = tick_label(t);
    c.text(f.left - 6 * static_cast<int>(l.size()) - 4, static_cast<int>(f.py(t)) - 3, l, 0x333333);
  }
  for (double t : nice_ticks(f.xmin, f.xmax, 8)) {
    c.line(f.px(t), f.top, f.px(t), h - f.bottom, 0xE0E0E0);
    std::string l = tick_label(t);
    c.text(static_cast<int>(f.px(t)) - 3 * static_cast<int>(l.size()), h - f.bottom + 6, l,
           0x333333);
  }
  c.text(w / 2 - 12, h - 14, "step", 0x333333);
  c.line(f.left, f.top, f.left, h - f.bottom, 0x000000);
  c.line(f.left, h - f.bottom, w - f.right, h - f.bottom, 0x000000);
  int legend_y = f.top;
  for (const Series& s : series) {
    for (size_t i = 1; i < s.points.size(); ++i)
      c.line(f.px(s.points[i - 1].first), f.py(s.points[i - 1].second), f.px(s.points[i].first),
             f.py(s.points[i].second), s.rgb, 2);
    if (s.points.size() == 1)
      c.line(f.px(s.points[0].first), f.py(s.points[0].second), f.px(s.points[0].first) + 2,
             f.py(s.points[0].second), s.rgb, 3);
    c.line(w - f.right - 130, legend_y, w - f.right - 100, legend_y, s.rgb, 3);
    c.text(w - f.right - 92, legend_y - 3, s.label, 0x333333);
    legend_y += 12;
  }
  return encode_png(c.pixels(), w, h);
}

std::string render_svg(const std::vector<Series>& series, int w, int h, const std::string& title) {
  Frame f = make_frame(series, w, h);
  std::ostringstream o;
  o << "<svg xmlns='http://www.w3.org/2000/svg' width='" << w << "' height='" << h
    << "' font-family='sans-serif' font-size='11'>\n<rect width='100%' height='100%' "
       "fill='white'/>\n";
  o << "<text x='" << w / 2 << "' y='18' text-anchor='middle' font-size='14'>" << title
    << "</text>\n";
  for (double t : nice_ticks(f.ymin, f.ymax, 6))
    o << absl::StrFormat(
        "<line x1='%d' y1='%.1f' x2='%d' y2='%.1f' stroke='#e0e0e0'/><text x='%d' y='%.1f' "
        "text-anchor='end'>%s</text>\n",
        f.left, f.py(t), w - f.right, f.py(t), f.left - 4, f.py(t) + 4, tick_label(t));
  for (double t : nice_ticks(f.xmin, f.xmax, 8))
    o << absl::StrFormat(
        "<line x1='%.1f' y1='%d' x2='%.1f' y2='%d' stroke='#e0e0e0'/><text x='%.1f' y='%d' "
        "text-anchor='middle'>%s</text>\n",
        f.px(t), f.top, f.px(t), h - f.bottom, f.px(t), h - f.bottom + 14, tick_label(t));
  o << absl::StrFormat("<text x='%d' y='%d' text-anchor='middle'>step</text>\n", w / 2, h - 6);
  o << absl::StrFormat(
      "<text x='12' y='%d' text-anchor='middle' transform='rotate(-90 12 %d)'>loss</text>\n", h / 2,
      h / 2);
  int ly = f.top + 10;
  for (const Series& s : series) {
    o << absl::StrFormat("<polyline fill='none' stroke='#%06x' stroke-width='2' points='", s.rgb);
    for (auto [x, y] : s.points) o << absl::StrFormat("%.1f,%.1f ", f.px(x), f.py(y));
    o << "'/>\n";
    o << absl::StrFormat(
        "<line x1='%d' y1='%d' x2='%d' y2='%d' stroke='#%06x' stroke-width='3'/><text x='%d' "
        "y='%d'>%s</text>\n",
        w - f.right - 130, ly, w - f.right - 105, ly, s.rgb, w - f.right - 100, ly + 4, s.label);
    ly += 16;
  }
  o << "</svg>\n";
  return o.str();
}

absl::StatusOr<std::vector<Series>> read_loss_series(const std::string& path) {
  std::ifstream in(path);
  if (!in) return absl::NotFoundError("cannot open " + path);
  Series train{"train loss", 0x1f77b4, {}}, val{"val loss", 0xff7f0e, {}};
  // The last record of each step wins: a resumed run logs again the steps after its checkpoint.
  std::map<double, double> train_at, val_at;
  std::string line;
  int lineno = 0;
  auto number_after = [](const std::string& l, const std::string& key, double* v) {
    size_t p = l.find("\"" + key + "\":");
    if (p == std::string::npos) return false;
    p += key.size() + 3;
    char* end = nullptr;
    *v = std::strtod(l.c_str() + p, &end);
    return end != l.c_str() + p;
  };
  while (std::getline(in, line)) {
    ++lineno;
    if (line.empty()) continue;
    double step, loss;
    if (!number_after(line, "step", &step)) continue;
    const bool is_train = line.find("\"kind\":\"train\"") != std::string::npos;
    const bool is_val = line.find("\"kind\":\"val\"") != std::string::npos;
    if ((is_train || is_val) && number_after(line, "loss", &loss))
      (is_train ? train_at : val_at)[step] = loss;
  }
  train.points.assign(train_at.begin(), train_at.end());
  val.points.assign(val_at.begin(), val_at.end());
  if (train.points.empty() && val.points.empty())
    return absl::FailedPreconditionError(path + " holds no train or val loss records");
  std::vector<Series> out;
  if (!train.points.empty()) out.push_back(train);
  if (!val.points.empty()) out.push_back(val);
  return out;
}

int plot_main(int argc, char** argv) {
  if (argc < 2 || std::string(argv[1]) == "--help" || std::string(argv[1]) == "-h") {
    std::printf(
        "usage: kiln plot RUN_DIR\n\nReads RUN_DIR/metrics.jsonl and writes the train and "
        "validation loss curves to\nRUN_DIR/loss.png and RUN_DIR/loss.svg.\n");
    return argc < 2 ? 2 : 0;
  }
  if (argc > 2) {
    std::fprintf(stderr, "kiln plot: one RUN_DIR, got %d arguments (see kiln plot --help)\n",
                 argc - 1);
    return 2;
  }
  const std::string dir = argv[1];
  auto series = read_loss_series(dir + "/metrics.jsonl");
  if (!series.ok()) {
    std::fprintf(stderr, "kiln plot: %s\n", std::string(series.status().message()).c_str());
    return 1;
  }
  const std::string png = render_png(*series, 900, 500, "loss: " + dir),
                    svg = render_svg(*series, 900, 500, "loss: " + dir);
  for (auto [name, bytes] :
       {std::pair{dir + "/loss.png", png}, std::pair{dir + "/loss.svg", svg}}) {
    std::ofstream out(name, std::ios::binary);
    out << bytes;
    if (!out) {
      std::fprintf(stderr, "kiln plot: cannot write %s\n", name.c_str());
      return 1;
    }
    std::printf("wrote %s\n", name.c_str());
  }
  return 0;
}

}  // namespace kiln::launch
