// Loss-curve picture of a training run as a self-contained SVG (no plotting library). PEFT itself
// has no counterpart; transformers' Trainer leaves this to TensorBoard / W&B, which a C++ run
// cannot assume.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace peft::train {

struct LossPoint {
  int64_t step;  // optimizer step (x axis)
  double
      loss;  // loss at that step; NaN/inf values are skipped and counted in a note on the picture
};

struct LossPlotData {
  std::vector<LossPoint> train;  // loss per optimizer step
  std::vector<LossPoint> eval;   // eval loss at some steps (may be empty)
  std::string title;             // e.g. "LoRA fine-tuning: <model>"; XML-escaped when rendered
};

// Renders an SVG line chart: train loss as a thin line, its smoothed EMA (TensorBoard-style
// debiased, weight 0.9) as a thicker line, eval loss as markers joined by a dashed line, axes with
// nice tick values, labels "step" / "loss", a legend and the title. Points are drawn in step order.
// The y axis turns logarithmic when every loss is positive and max/min > 20 (the axis label then
// says "loss (log scale)"). Over 5000 train points are thinned per pixel column
// (first/min/max/last), which leaves the drawn envelope unchanged. Deterministic: the same data
// gives the same bytes, whatever the locale.
std::string render_loss_plot_svg(const LossPlotData& data);

// Writes render_loss_plot_svg(data) to `path` atomically (a temporary file in the same directory,
// then rename). Throws peft::Error naming the path when the directory is missing or not writable.
void write_loss_plot(const std::string& path, const LossPlotData& data);

}  // namespace peft::train
