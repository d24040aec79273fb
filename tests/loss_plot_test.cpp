// Loss-curve SVG (well-formed, escaped, robust to odd data, written atomically) and the progress
// display.
#include "peft/train/loss_plot.h"

#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <limits>
#include <sstream>
#include <string>
#include <vector>

#include "peft/error.h"
#include "peft/train/progress.h"
#include "test_util.h"

namespace {

using peft::train::LossPlotData;
using peft::train::LossPoint;
using peft::train::render_loss_plot_svg;

// Empty when `svg` is well-formed for what the renderer emits: balanced tags, even quotes inside
// each tag, every '&' starting one of the five XML entities, <svg> as the single root. Otherwise
// what is wrong.
std::string check_well_formed(const std::string& svg) {
  std::vector<std::string> stack;
  int roots = 0;
  for (size_t i = 0; i < svg.size(); ++i) {
    if (svg[i] == '&') {
      bool ok = false;
      for (const char* e : {"&amp;", "&lt;", "&gt;", "&quot;", "&apos;"})
        ok |= svg.compare(i, std::strlen(e), e) == 0;
      if (!ok) return "bare '&' at " + std::to_string(i);
      continue;
    }
    if (svg[i] == '>') return "stray '>' at " + std::to_string(i);
    if (svg[i] != '<') continue;
    const size_t end = svg.find('>', i);
    if (end == std::string::npos) return "unterminated tag at " + std::to_string(i);
    const std::string tag = svg.substr(i + 1, end - i - 1);
    if (std::count(tag.begin(), tag.end(), '"') % 2 != 0) return "odd quotes in <" + tag + ">";
    if (tag.find('<') != std::string::npos) return "'<' inside tag <" + tag + ">";
    i = end;
    if (tag.empty()) return "empty tag";
    if (tag[0] == '/') {
      if (stack.empty() || stack.back() != tag.substr(1))
        return "unbalanced </" + tag.substr(1) + ">";
      stack.pop_back();
      continue;
    }
    const std::string name = tag.substr(0, tag.find_first_of(" \n/"));
    if (stack.empty() && ++roots > 1) return "second root <" + name + ">";
    if (tag.back() != '/') stack.push_back(name);
  }
  if (!stack.empty()) return "unclosed <" + stack.back() + ">";
  return roots == 1 ? "" : "no root element";
}

// The points of the polyline with this id, each checked to lie on the canvas; -1 when there is
// none.
int polyline_points(const std::string& svg, const std::string& id) {
  const size_t at = svg.find("<polyline id=\"" + id + "\"");
  if (at == std::string::npos) return -1;
  const size_t begin = svg.find("points=\"", at) + 8;
  std::istringstream is(svg.substr(begin, svg.find('"', begin) - begin));
  std::string pair;
  int n = 0;
  while (is >> pair) {
    const size_t comma = pair.find(',');
    const double x = std::stod(pair.substr(0, comma)), y = std::stod(pair.substr(comma + 1));
    EXPECT_TRUE(x >= 0 && x <= 800 && y >= 0 && y <= 480) << pair;
    ++n;
  }
  return n;
}

// True when a NaN or infinity leaked into a coordinate or label (the note about skipped values
// aside).
bool has_non_finite_number(std::string svg) {
  if (const size_t at = svg.find("id=\"note-skipped\""); at != std::string::npos) {
    svg.erase(at, svg.find("</text>", at) - at);
  }
  return svg.find("nan") != std::string::npos || svg.find("inf") != std::string::npos;
}

size_t count(const std::string& s, const std::string& needle) {
  size_t n = 0;
  for (size_t at = s.find(needle); at != std::string::npos; at = s.find(needle, at + 1)) ++n;
  return n;
}

LossPlotData decaying(int n) {
  LossPlotData d{.title = "run"};
  for (int i = 1; i <= n; ++i) d.train.push_back({i, 3.0 / (1.0 + 0.05 * i) + 0.1 * std::sin(i)});
  return d;
}

TEST(LossPlot, SvgIsWellFormedWithOnePolylinePointPerStep) {
  LossPlotData d = decaying(50);
  for (int s = 10; s <= 50; s += 10) d.eval.push_back({s, 2.0 - 0.01 * s});
  const std::string svg = render_loss_plot_svg(d);
  EXPECT_EQ(svg.rfind("<svg", 0), 0u);
  EXPECT_EQ(check_well_formed(svg), "");
  EXPECT_EQ(polyline_points(svg, "train"), 50);
  EXPECT_EQ(polyline_points(svg, "train-ema"), 50);
  EXPECT_EQ(polyline_points(svg, "eval"), 5);
  EXPECT_EQ(count(svg, "<title>step "), 5u);
  EXPECT_NE(svg.find(">step</text>"), std::string::npos);
  EXPECT_NE(svg.find(">loss</text>"), std::string::npos);
  EXPECT_NE(svg.find(">eval loss</text>"), std::string::npos);
  EXPECT_NE(svg.find(">train loss (EMA)</text>"), std::string::npos);
  EXPECT_EQ(svg, render_loss_plot_svg(d));  // deterministic
}

TEST(LossPlot, EscapesXmlInTitle) {
  LossPlotData d = decaying(3);
  d.title = "LoRA <r=8> & \"q,v\" 'x'\x01";
  const std::string svg = render_loss_plot_svg(d);
  EXPECT_EQ(check_well_formed(svg), "");
  EXPECT_NE(svg.find("LoRA &lt;r=8&gt; &amp; &quot;q,v&quot; &apos;x&apos; </text>"),
            std::string::npos);
  EXPECT_EQ(svg.find('\x01'), std::string::npos);
}

TEST(LossPlot, SkipsNonFiniteLossesWithANote) {
  LossPlotData d = decaying(10);
  d.train[3].loss = std::numeric_limits<double>::quiet_NaN();
  d.train[7].loss = std::numeric_limits<double>::infinity();
  d.eval = {{5, 1.0}, {10, -std::numeric_limits<double>::infinity()}};
  const std::string svg = render_loss_plot_svg(d);
  EXPECT_EQ(check_well_formed(svg), "");
  EXPECT_EQ(polyline_points(svg, "train"), 8);
  EXPECT_EQ(polyline_points(svg, "eval"), -1);  // one finite eval point: a marker, no line
  EXPECT_EQ(count(svg, "<title>step "), 1u);
  EXPECT_NE(svg.find("2 train losses, 1 eval loss</text>"), std::string::npos);
  EXPECT_FALSE(has_non_finite_number(svg));
}

TEST(LossPlot, EmptyAndAllNonFiniteDataRenderANote) {
  for (const LossPlotData& d :
       {LossPlotData{}, LossPlotData{.train = {{1, std::nan("")}, {2, std::nan("")}}}}) {
    const std::string svg = render_loss_plot_svg(d);
    EXPECT_EQ(check_well_formed(svg), "");
    EXPECT_NE(svg.find("no finite loss values to plot"), std::string::npos);
    EXPECT_EQ(svg.find("<polyline"), std::string::npos);
    EXPECT_EQ(svg.find("id=\"legend\""), std::string::npos);
  }
}

TEST(LossPlot, SinglePointBecomesAMarker) {
  const std::string svg = render_loss_plot_svg({.train = {{7, 2.5}}});
  EXPECT_EQ(check_well_formed(svg), "");
  EXPECT_EQ(svg.find("<polyline"), std::string::npos);
  EXPECT_NE(svg.find("<circle id=\"train-point\""), std::string::npos);
}

TEST(LossPlot, ConstantLossIsDrawnInsideThePlot) {
  LossPlotData d;
  for (int i = 0; i < 20; ++i) d.train.push_back({i, 1.5});
  const std::string svg = render_loss_plot_svg(d);
  EXPECT_EQ(check_well_formed(svg), "");
  EXPECT_EQ(polyline_points(svg, "train"), 20);
  const size_t begin = svg.find("points=\"", svg.find("<polyline id=\"train\"")) + 8;
  const std::string first = svg.substr(begin, svg.find(' ', begin) - begin);
  const double y = std::stod(first.substr(first.find(',') + 1));
  EXPECT_GT(y, 60.0);  // strictly between the top (50) and the bottom (400) of the plot area
  EXPECT_LT(y, 390.0);
}

TEST(LossPlot, HandlesHugeStepsAndExtremeLosses) {
  const int64_t big = std::numeric_limits<int64_t>::max();
  const std::vector<LossPlotData> cases = {
      {.train = {{1'000'000'000'000, 2.0}, {2'000'000'000'000, 1.0}, {3'000'000'000'000, 0.5}}},
      {.train = {{big - 2, 2.0}, {big - 1, 1.5}, {big, 1.0}}},
      {.train = {{0, 1e308}, {1, -1e308}, {2, 0.0}}},
      {.train = {{-5, 1e-300}, {5, 1e300}}},
  };
  for (const LossPlotData& d : cases) {
    const std::string svg = render_loss_plot_svg(d);
    EXPECT_EQ(check_well_formed(svg), "");
    EXPECT_EQ(polyline_points(svg, "train"), static_cast<int>(d.train.size()));
    EXPECT_FALSE(has_non_finite_number(svg));
    EXPECT_EQ(svg.find('?'), std::string::npos);
  }
}

TEST(LossPlot, UsesLogScaleOnlyForWideRanges) {
  LossPlotData wide;
  for (int i = 1; i <= 100; ++i) wide.train.push_back({i, 100.0 / i});
  EXPECT_NE(render_loss_plot_svg(wide).find(">loss (log scale)</text>"), std::string::npos);
  EXPECT_EQ(render_loss_plot_svg(decaying(100)).find("log scale"), std::string::npos);
  wide.train.push_back({101, -1.0});  // a negative loss cannot go on a log axis
  EXPECT_EQ(render_loss_plot_svg(wide).find("log scale"), std::string::npos);
}

TEST(LossPlot, ThinsVeryLongRunsPerPixelColumn) {
  const std::string svg = render_loss_plot_svg(decaying(200'000));
  EXPECT_EQ(check_well_formed(svg), "");
  const int n = polyline_points(svg, "train");
  EXPECT_GT(n, 700);
  EXPECT_LE(n, 4 * 701);
  EXPECT_LT(svg.size(), 200'000u);
}

TEST(LossPlot, WriteIsAtomicAndLeavesNoTemporaryFiles) {
  peft::test::TempDir dir;
  const LossPlotData d = decaying(30);
  peft::train::write_loss_plot(dir.str("loss.svg"), d);
  peft::train::write_loss_plot(dir.str("loss.svg"), d);  // replaces the existing picture
  EXPECT_EQ(peft::test::read_file(dir.str("loss.svg")), render_loss_plot_svg(d));
  std::vector<std::string> names;
  for (const auto& e : std::filesystem::directory_iterator(dir.path())) {
    names.push_back(e.path().filename().string());
  }
  EXPECT_EQ(names, std::vector<std::string>{"loss.svg"});
}

void expect_write_error(const std::string& path) {
  try {
    peft::train::write_loss_plot(path, decaying(3));
    ADD_FAILURE() << "no error for " << path;
  } catch (const peft::Error& e) {
    EXPECT_EQ(e.component(), "loss_plot");
    EXPECT_NE(std::string(e.what()).find("\"" + path + "\""), std::string::npos) << e.what();
  }
}

TEST(LossPlot, UnwritableDestinationThrowsErrorNamingThePath) {
  peft::test::TempDir dir;
  expect_write_error(dir.str("missing/loss.svg"));
  peft::test::write_file(dir.str("file"), "x");
  expect_write_error(dir.str("file/loss.svg"));  // parent is a regular file
  std::filesystem::create_directories(dir.str("a_dir"));
  expect_write_error(dir.str("a_dir"));  // target is a directory: rename fails
  EXPECT_TRUE(std::filesystem::is_directory(dir.str("a_dir")));
  if (::geteuid() != 0) {  // root writes anywhere
    std::filesystem::create_directories(dir.str("ro"));
    ::chmod(dir.str("ro").c_str(), 0500);
    expect_write_error(dir.str("ro/loss.svg"));
    ::chmod(dir.str("ro").c_str(), 0700);
  }
  std::vector<std::string> names;
  for (const auto& e : std::filesystem::recursive_directory_iterator(dir.path())) {
    names.push_back(e.path().filename().string());
  }
  std::sort(names.begin(), names.end());
  EXPECT_EQ(names, (std::vector<std::string>{"a_dir", "file"}));
}

// ---------------------------------------------------------------------------------------------------

using peft::train::ProgressReporter;
using peft::train::ProgressUpdate;

ProgressUpdate at(int64_t step, int64_t total = 300) {
  return {.step = step,
          .total_steps = total,
          .loss = 2.34123,
          .lr = 2e-4,
          .tokens_per_second = 1234.4,
          .elapsed_seconds = static_cast<double>(step),
          .grad_norm = std::nullopt,
          .epoch_index = 0};
}

TEST(Progress, FormatsAllFields) {
  EXPECT_EQ(
      peft::train::format_progress_line(at(12)),
      "step 12/300 [>                   ] loss 2.3412 lr 2.00e-04 1234 tok/s ETA 4m48s epoch 1");
  ProgressUpdate u = at(150);
  u.grad_norm = 0.5321;
  u.epoch_index = 2;
  EXPECT_EQ(peft::train::format_progress_line(u),
            "step 150/300 [==========>         ] loss 2.3412 lr 2.00e-04 gnorm 0.532 1234 tok/s "
            "ETA 2m30s "
            "epoch 3");
  EXPECT_EQ(
      peft::train::format_progress_line(at(300)),
      "step 300/300 [====================] loss 2.3412 lr 2.00e-04 1234 tok/s ETA 0s epoch 1");
  u = at(0);
  u.tokens_per_second = std::nan("");
  EXPECT_EQ(peft::train::format_progress_line(u),
            "step 0/300 [                    ] loss 2.3412 lr 2.00e-04 ETA ? epoch 1");
  EXPECT_EQ(peft::train::format_progress_line(at(7, 0)),
            "step 7 loss 2.3412 lr 2.00e-04 1234 tok/s epoch 1");
}

TEST(Progress, PlainModePrintsEveryNthStepPlusFirstAndLast) {
  std::ostringstream os;
  ProgressReporter p(os, /*live=*/false, 10);
  for (int64_t s = 1; s <= 25; ++s) p.update(at(s, 25));
  p.finish();
  const std::string out = os.str();
  EXPECT_EQ(out.find('\r'), std::string::npos);
  EXPECT_EQ(out, peft::train::format_progress_line(at(1, 25)) + "\n" +
                     peft::train::format_progress_line(at(10, 25)) + "\n" +
                     peft::train::format_progress_line(at(20, 25)) + "\n" +
                     peft::train::format_progress_line(at(25, 25)) + "\n");
}

TEST(Progress, PlainFinishPrintsTheLastUnprintedUpdateOnce) {
  std::ostringstream os;
  ProgressReporter p(os, /*live=*/false, 10);
  for (int64_t s = 1; s <= 13; ++s) p.update(at(s));
  p.message("stopped early");
  p.finish();
  p.finish();
  EXPECT_EQ(os.str(), peft::train::format_progress_line(at(1)) + "\n" +
                          peft::train::format_progress_line(at(10)) + "\nstopped early\n" +
                          peft::train::format_progress_line(at(13)) + "\n");
}

TEST(Progress, LiveModeRewritesOneLinePaddedToClearLeftovers) {
  std::ostringstream os;
  ProgressUpdate longer = at(10);
  longer.grad_norm = 1.0;
  const std::string l1 = peft::train::format_progress_line(longer);
  const std::string l2 = peft::train::format_progress_line(at(11));
  ASSERT_GT(l1.size(), l2.size());
  {
    ProgressReporter p(os, /*live=*/true);
    p.update(longer);
    p.update(at(11));
    EXPECT_EQ(os.str(), "\r" + l1 + "\r" + l2 + std::string(l1.size() - l2.size(), ' '));
  }  // the destructor ends the line
  const std::string out = os.str();
  EXPECT_EQ(out.back(), '\n');
  EXPECT_EQ(std::count(out.begin(), out.end(), '\n'), 1);
}

TEST(Progress, MessageClearsTheLiveLineAndTheNextUpdateRedraws) {
  std::ostringstream os;
  ProgressReporter p(os, /*live=*/true);
  const std::string l1 = peft::train::format_progress_line(at(100));
  const std::string l2 = peft::train::format_progress_line(at(101));
  p.update(at(100));
  p.message("eval loss 2.31 at step 100");
  p.update(at(101));
  p.finish();
  p.finish();
  EXPECT_EQ(os.str(), "\r" + l1 + "\r" + std::string(l1.size(), ' ') +
                          "\reval loss 2.31 at step 100\n\r" + l2 + "\n");
}

TEST(Progress, RejectsEveryBelowOne) {
  std::ostringstream os;
  EXPECT_THROW(ProgressReporter(os, false, 0), peft::Error);
}

TEST(Progress, FormatDuration) {
  using peft::train::format_duration;
  EXPECT_EQ(format_duration(0), "0s");
  EXPECT_EQ(format_duration(45), "45s");
  EXPECT_EQ(format_duration(59.6), "1m00s");
  EXPECT_EQ(format_duration(83), "1m23s");
  EXPECT_EQ(format_duration(3600), "1h00m");
  EXPECT_EQ(format_duration(2 * 3600 + 5 * 60 + 59), "2h05m");
  EXPECT_EQ(format_duration(250 * 3600), "250h00m");
  EXPECT_EQ(format_duration(-1), "?");
  EXPECT_EQ(format_duration(std::nan("")), "?");
  EXPECT_EQ(format_duration(std::numeric_limits<double>::infinity()), "?");
}

}  // namespace
