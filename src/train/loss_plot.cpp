#include "peft/train/loss_plot.h"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <limits>
#include <utility>

#include "peft/error.h"
#include "peft/io/atomic_write.h"

namespace peft::train {
namespace {

// Canvas and plot-area corners in pixels.
constexpr double kWidth = 800, kHeight = 480;
constexpr double kLeft = 80, kRight = 780, kTop = 50, kBottom = 400;
constexpr double kEmaWeight = 0.9;       // TensorBoard's default smoothing
constexpr size_t kMaxLinePoints = 5000;  // beyond this a line is thinned per pixel column
constexpr int kMaxTicks = 50;
constexpr const char* kTrainStyle = "stroke=\"#9ecae1\" stroke-width=\"1\"";
constexpr const char* kEmaStyle = "stroke=\"#1f77b4\" stroke-width=\"2\"";
constexpr const char* kEvalStyle =
    "stroke=\"#ff7f0e\" stroke-width=\"1.5\" stroke-dasharray=\"5,3\"";

// Numbers go through to_chars: ostream and printf follow LC_NUMERIC, which would make the bytes
// depend on the caller's locale. 400 characters hold any double in fixed notation with up to 10
// decimals.
std::string fmt(double v, std::chars_format format, int precision) {
  char buf[400];
  auto r = std::to_chars(buf, buf + sizeof buf, v, format, precision);
  if (r.ec != std::errc()) return "?";
  return std::string(buf, r.ptr);
}
std::string px(double v) {
  return fmt(std::clamp(v, -1.0, kWidth + 1.0), std::chars_format::fixed, 2);
}

std::string xml_escape(const std::string& s) {
  std::string out;
  out.reserve(s.size());
  for (char c : s) {
    const char* entity = c == '&'    ? "&amp;"
                         : c == '<'  ? "&lt;"
                         : c == '>'  ? "&gt;"
                         : c == '"'  ? "&quot;"
                         : c == '\'' ? "&apos;"
                                     : nullptr;
    // XML 1.0 forbids control characters other than tab, newline and CR, even escaped.
    if (entity) {
      out += entity;
    } else {
      out += static_cast<unsigned char>(c) < 0x20 && c != '\t' && c != '\n' && c != '\r' ? ' ' : c;
    }
  }
  return out;
}

// Label of a linear tick `v` on an axis whose ticks are `step` apart: as many decimals as the step
// needs, SI suffixes from a million (step 2000000000 reads "2G", short enough not to overlap its
// neighbours), scientific notation beyond them and for tiny magnitudes.
std::string tick_label(double v, double step) {
  const double a = std::abs(v);
  if (a < step * 1e-6) return "0";
  const int step_exp = static_cast<int>(std::floor(std::log10(step)));
  if (a >= 1e6 && a < 1e21) {
    const int unit_exp = 3 * (static_cast<int>(std::floor(std::log10(a))) / 3);
    const char* suffix[] = {"M", "G", "T", "P", "E"};
    return fmt(v / std::pow(10.0, unit_exp), std::chars_format::fixed,
               std::clamp(unit_exp - step_exp, 0, 16)) +
           suffix[std::clamp(unit_exp / 3 - 2, 0, 4)];
  }
  if (a >= 1e21 || a < 1e-4) {
    const int digits = static_cast<int>(std::floor(std::log10(a))) - step_exp;
    return fmt(v, std::chars_format::scientific, std::clamp(digits, 0, 16));
  }
  return fmt(v, std::chars_format::fixed, std::clamp(-step_exp, 0, 10));
}

// An axis in "axis space": the value itself, or log10 of it for a log axis.
struct Axis {
  double lo = 0, hi = 1;
  bool log = false;
  std::vector<std::pair<double, std::string>> ticks;  // position in axis space, label

  // Where axis-space value `a` lies between lo (0) and hi (1). Halved differences cannot overflow
  // even for ranges near the limits of double.
  double fraction_of(double a) const {
    const double t = (a * 0.5 - lo * 0.5) / (hi * 0.5 - lo * 0.5);
    return std::isfinite(t) ? std::clamp(t, 0.0, 1.0) : 0.0;
  }
  double fraction(double v) const { return fraction_of(log ? std::log10(v) : v); }
};

// Heckbert's nice numbers: a tick step of 1, 2 or 5 times a power of ten, about `target` ticks, the
// range widened to whole steps. `integer` axes (steps) never get fractional ticks.
Axis linear_axis(double lo, double hi, int target, bool integer) {
  if (!(hi > lo)) {  // one point, a constant loss, or two steps too large for double to tell apart
    double d = lo != 0 ? std::abs(lo) * 0.1 : 1.0;
    if (integer) d = std::max(d, 1.0);
    lo = std::max(lo - d, -std::numeric_limits<double>::max());
    hi = std::min(hi + d, std::numeric_limits<double>::max());
  }
  Axis axis{.lo = lo, .hi = hi};
  const double raw = (hi * 0.5 - lo * 0.5) / (target * 0.5);
  const double mag = std::pow(10.0, std::floor(std::log10(raw)));
  const double f = raw / mag;
  double step = (f < 1.5 ? 1.0 : f < 3.0 ? 2.0 : f < 7.0 ? 5.0 : 10.0) * mag;
  if (integer) step = std::max(step, 1.0);
  const double nlo = std::floor(lo / step) * step, nhi = std::ceil(hi / step) * step;
  if (std::isfinite(nlo) && std::isfinite(nhi) && nhi > nlo) {
    axis.lo = nlo;
    axis.hi = nhi;
  }
  const double span = axis.hi - axis.lo;
  if (std::isfinite(step) && step > 0 && std::isfinite(span) && span / step <= kMaxTicks) {
    for (int i = 0; i <= kMaxTicks; ++i) {
      const double v = axis.lo + i * step;
      if (v > axis.hi + step * 1e-9) break;
      axis.ticks.emplace_back(v, tick_label(v, step));
    }
  }
  if (axis.ticks.size() < 2) {  // precision ran out: label the ends only
    axis.ticks = {{axis.lo, fmt(axis.lo, std::chars_format::general, 6)},
                  {axis.hi, fmt(axis.hi, std::chars_format::general, 6)}};
  }
  return axis;
}

std::string pow10_label(double mantissa, int exp10) {
  const double v = mantissa * std::pow(10.0, exp10);
  if (exp10 >= -4 && exp10 <= 5) return fmt(v, std::chars_format::fixed, std::max(0, -exp10));
  return fmt(v, std::chars_format::scientific, 0);
}

// Whole decades; 2 and 5 in between when the range spans at most two decades.
Axis log_axis(double lo, double hi) {
  const int a = static_cast<int>(std::floor(std::log10(lo)));
  const int b = std::max(static_cast<int>(std::ceil(std::log10(hi))), a + 1);
  Axis axis{.lo = static_cast<double>(a), .hi = static_cast<double>(b), .log = true};
  const int stride = std::max(1, (b - a + 7) / 8);
  for (int k = a; k <= b; k += stride) {
    axis.ticks.emplace_back(k, pow10_label(1, k));
    if (b - a > 2 || k == b) continue;
    for (double m : {2.0, 5.0}) axis.ticks.emplace_back(k + std::log10(m), pow10_label(m, k));
  }
  return axis;
}

struct Pixel {
  double x, y;
};

// Keeps first, lowest, highest and last point of each run sharing a pixel column, in their original
// order: the drawn envelope stays the same while a million-step run no longer makes a 20 MB
// picture.
std::vector<Pixel> thin(const std::vector<Pixel>& in) {
  if (in.size() <= kMaxLinePoints) return in;
  std::vector<Pixel> out;
  for (size_t begin = 0; begin < in.size();) {
    size_t end = begin;
    const double column = std::floor(in[begin].x);
    size_t lo = begin, hi = begin;
    for (; end < in.size() && std::floor(in[end].x) == column; ++end) {
      if (in[end].y < in[lo].y) lo = end;
      if (in[end].y > in[hi].y) hi = end;
    }
    std::vector<size_t> keep = {begin, lo, hi, end - 1};
    std::sort(keep.begin(), keep.end());
    keep.erase(std::unique(keep.begin(), keep.end()), keep.end());
    for (size_t i : keep) out.push_back(in[i]);
    begin = end;
  }
  return out;
}

std::string line(double x1, double y1, double x2, double y2, const std::string& style = "") {
  return "<line x1=\"" + px(x1) + "\" y1=\"" + px(y1) + "\" x2=\"" + px(x2) + "\" y2=\"" + px(y2) +
         "\"" + (style.empty() ? "" : " " + style) + "/>\n";
}

std::string polyline(const char* id, const char* style, const std::vector<Pixel>& pts) {
  std::string points;
  for (const Pixel& p : pts) {
    if (!points.empty()) points += ' ';
    points += px(p.x) + ',' + px(p.y);
  }
  return std::string("<polyline id=\"") + id + "\" fill=\"none\" " + style + " points=\"" + points +
         "\"/>\n";
}

// Finite points sorted by step (stable, so equal steps keep their order); counts the skipped ones.
std::vector<LossPoint> finite_sorted(const std::vector<LossPoint>& in, size_t& skipped) {
  std::vector<LossPoint> out;
  for (const LossPoint& p : in) {
    if (std::isfinite(p.loss)) out.push_back(p);
  }
  skipped = in.size() - out.size();
  std::stable_sort(out.begin(), out.end(),
                   [](const LossPoint& a, const LossPoint& b) { return a.step < b.step; });
  return out;
}

std::string plural(size_t n, const char* word) {
  return std::to_string(n) + " " + word + (n == 1 ? "" : "es");
}

}  // namespace

std::string render_loss_plot_svg(const LossPlotData& data) {
  size_t skipped_train = 0, skipped_eval = 0;
  const std::vector<LossPoint> train = finite_sorted(data.train, skipped_train);
  const std::vector<LossPoint> eval = finite_sorted(data.eval, skipped_eval);

  // Debiased EMA as TensorBoard draws it: early values are not pulled towards zero.
  std::vector<double> ema;
  double acc = 0, decay = 1;
  for (const LossPoint& p : train) {
    acc = kEmaWeight * acc + (1 - kEmaWeight) * p.loss;
    decay *= kEmaWeight;
    ema.push_back(acc / (1 - decay));
  }

  bool any = false;
  double xmin = 0, xmax = 1, ymin = 0, ymax = 1;
  for (const auto* series : {&train, &eval}) {
    for (const LossPoint& p : *series) {
      const double x = static_cast<double>(p.step);
      xmin = any ? std::min(xmin, x) : x;
      xmax = any ? std::max(xmax, x) : x;
      ymin = any ? std::min(ymin, p.loss) : p.loss;
      ymax = any ? std::max(ymax, p.loss) : p.loss;
      any = true;
    }
  }
  const Axis xa = linear_axis(xmin, xmax, 7, /*integer=*/true);
  const bool use_log = any && ymin > 0 && ymax / ymin > 20;
  const Axis ya = use_log ? log_axis(ymin, ymax) : linear_axis(ymin, ymax, 6, /*integer=*/false);
  auto to_px = [&](double step, double loss) {
    return Pixel{kLeft + xa.fraction(step) * (kRight - kLeft),
                 kBottom - ya.fraction(loss) * (kBottom - kTop)};
  };

  const std::string W = fmt(kWidth, std::chars_format::fixed, 0);
  const std::string H = fmt(kHeight, std::chars_format::fixed, 0);
  std::string s;
  s += "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"" + W + "\" height=\"" + H +
       "\" viewBox=\"0 0 " + W + " " + H + "\" font-family=\"sans-serif\" font-size=\"12\">\n";
  s += "<rect width=\"" + W + "\" height=\"" + H + "\" fill=\"white\"/>\n";
  if (!data.title.empty()) {
    s += "<text x=\"" + px(kWidth / 2) + "\" y=\"28\" text-anchor=\"middle\" font-size=\"16\">" +
         xml_escape(data.title) + "</text>\n";
  }

  // Grid, axes, tick labels.
  auto x_at = [&](double a) { return kLeft + xa.fraction_of(a) * (kRight - kLeft); };
  auto y_at = [&](double a) { return kBottom - ya.fraction_of(a) * (kBottom - kTop); };
  s += "<g id=\"grid\" stroke=\"#e5e5e5\" stroke-width=\"1\">\n";
  for (const auto& tick : xa.ticks) s += line(x_at(tick.first), kTop, x_at(tick.first), kBottom);
  for (const auto& tick : ya.ticks) s += line(kLeft, y_at(tick.first), kRight, y_at(tick.first));
  s += "</g>\n<g id=\"axes\" stroke=\"#333333\" stroke-width=\"1\">\n" +
       line(kLeft, kBottom, kRight, kBottom) + line(kLeft, kTop, kLeft, kBottom) +
       "</g>\n<g id=\"tick-labels\" fill=\"#333333\">\n";
  for (const auto& [a, label] : xa.ticks) {
    s += "<text x=\"" + px(x_at(a)) + "\" y=\"" + px(kBottom + 18) + "\" text-anchor=\"middle\">" +
         label + "</text>\n";
  }
  for (const auto& [a, label] : ya.ticks) {
    s += "<text x=\"" + px(kLeft - 8) + "\" y=\"" + px(y_at(a) + 4) + "\" text-anchor=\"end\">" +
         label + "</text>\n";
  }
  const std::string ymid = px((kTop + kBottom) / 2);
  s += "</g>\n<text x=\"" + px((kLeft + kRight) / 2) + "\" y=\"" + px(kBottom + 40) +
       "\" text-anchor=\"middle\">step</text>\n";
  s += "<text x=\"20\" y=\"" + ymid + "\" text-anchor=\"middle\" transform=\"rotate(-90 20 " +
       ymid + ")\">" + (use_log ? "loss (log scale)" : "loss") + "</text>\n";

  // Series. A single point cannot make a line, so it becomes a marker.
  std::vector<Pixel> train_px, ema_px, eval_px;
  for (size_t i = 0; i < train.size(); ++i) {
    const double x = static_cast<double>(train[i].step);
    train_px.push_back(to_px(x, train[i].loss));
    ema_px.push_back(to_px(x, ema[i]));
  }
  for (const LossPoint& p : eval) eval_px.push_back(to_px(static_cast<double>(p.step), p.loss));
  if (train_px.size() >= 2) {
    s += polyline("train", kTrainStyle, thin(train_px));
    s += polyline("train-ema", kEmaStyle, thin(ema_px));
  } else if (train_px.size() == 1) {
    s += "<circle id=\"train-point\" cx=\"" + px(train_px[0].x) + "\" cy=\"" + px(train_px[0].y) +
         "\" r=\"3\" fill=\"#1f77b4\"/>\n";
  }
  if (eval_px.size() >= 2) {
    s += polyline("eval", kEvalStyle, eval_px);
  }
  if (!eval_px.empty()) {
    s += "<g id=\"eval-markers\" fill=\"#ff7f0e\">\n";
    for (size_t i = 0; i < eval.size(); ++i) {
      s += "<circle cx=\"" + px(eval_px[i].x) + "\" cy=\"" + px(eval_px[i].y) +
           "\" r=\"3.5\"><title>step " + std::to_string(eval[i].step) + ": eval loss " +
           fmt(eval[i].loss, std::chars_format::general, 6) + "</title></circle>\n";
    }
    s += "</g>\n";
  }

  // Legend, top right inside the plot area.
  std::vector<std::pair<std::string, std::string>> legend;  // label, line style
  if (!train.empty()) legend.emplace_back("train loss", kTrainStyle);
  if (train.size() >= 2) legend.emplace_back("train loss (EMA)", kEmaStyle);
  if (!eval.empty()) legend.emplace_back("eval loss", kEvalStyle);
  if (!legend.empty()) {
    const double x0 = kRight - 150, y0 = kTop + 8;
    s += "<g id=\"legend\">\n<rect x=\"" + px(x0) + "\" y=\"" + px(y0) +
         "\" width=\"140\" height=\"" + px(8 + 18.0 * static_cast<double>(legend.size())) +
         "\" fill=\"white\" fill-opacity=\"0.85\" stroke=\"#cccccc\"/>\n";
    for (size_t i = 0; i < legend.size(); ++i) {
      const double y = y0 + 16 + 18.0 * static_cast<double>(i);
      s += line(x0 + 8, y - 4, x0 + 32, y - 4, legend[i].second);
      s += "<text x=\"" + px(x0 + 40) + "\" y=\"" + px(y) + "\">" + legend[i].first + "</text>\n";
    }
    s += "</g>\n";
  }

  // Notes: nothing to draw, or points that were left out.
  if (!any) {
    s += "<text id=\"note-empty\" x=\"" + px((kLeft + kRight) / 2) + "\" y=\"" + ymid +
         "\" text-anchor=\"middle\" fill=\"#666666\">no finite loss values to plot</text>\n";
  }
  if (skipped_train + skipped_eval > 0) {
    std::string note = "skipped non-finite (NaN/inf) values: ";
    if (skipped_train > 0) note += plural(skipped_train, "train loss");
    if (skipped_train > 0 && skipped_eval > 0) note += ", ";
    if (skipped_eval > 0) note += plural(skipped_eval, "eval loss");
    s += "<text id=\"note-skipped\" x=\"" + px(kLeft) + "\" y=\"" + px(kHeight - 10) +
         "\" fill=\"#b00000\">" + note + "</text>\n";
  }
  s += "</svg>\n";
  return s;
}

void write_loss_plot(const std::string& path, const LossPlotData& data) {
  io::write_file_atomically(path, render_loss_plot_svg(data), "loss_plot");
}

}  // namespace peft::train
