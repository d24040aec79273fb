// Adapting your own LibTorch model: build it from peft::nn layers instead of torch::nn ones, then
// inject LoRA with PEFT's names and rules, train only the adapter, save it in PEFT's format and
// load it back.
//   build/examples/custom_model [OUT_DIR]
#include <torch/torch.h>

#include <iostream>

#include "peft/lora/linear.h"
#include "peft/peft_model.h"
#include "peft/runtime.h"

// A small classifier. The only change from a plain LibTorch model: peft::nn::Linear instead of
// torch::nn::Linear.
struct ClassifierImpl : torch::nn::Module {
  ClassifierImpl() {
    encoder = register_module("encoder", peft::nn::Linear(16, 32));
    head = register_module("head", peft::nn::Linear(32, 4));
  }
  torch::Tensor forward(const torch::Tensor& x) { return head(torch::relu(encoder(x))); }
  peft::nn::Linear encoder{nullptr};
  peft::nn::Linear head{nullptr};
};
TORCH_MODULE(Classifier);

int main(int argc, char** argv) {
  const std::string out_dir = argc > 1 ? argv[1] : "custom_model_adapter";
  peft::set_num_threads();
  torch::manual_seed(0);
  Classifier model;
  auto x = torch::randn({64, 16});
  auto y = torch::randint(0, 4, {64});

  // LoRA on the encoder, the head fully trained and saved (modules_to_save), PEFT's defaults
  // otherwise.
  auto peft_model = peft::get_peft_model(
      model.ptr(), peft::LoraConfig{.r = 4,
                                    .target_modules = std::vector<std::string>{"encoder"},
                                    .lora_alpha = 8,
                                    .modules_to_save = std::vector<std::string>{"head"}});
  peft_model->print_trainable_parameters();

  std::vector<torch::Tensor> trainable;
  for (auto& p : model->parameters()) {
    if (p.requires_grad()) trainable.push_back(p);
  }
  torch::optim::AdamW opt(trainable, torch::optim::AdamWOptions(1e-2));
  for (int step = 0; step < 50; ++step) {
    auto loss = torch::nn::functional::cross_entropy(model->forward(x), y);
    opt.zero_grad();
    loss.backward();
    opt.step();
    if (step % 10 == 0 || step == 49)
      std::cout << "step " << step << " loss " << loss.item<float>() << "\n";
  }

  model->eval();
  torch::NoGradGuard no_grad;
  auto trained = model->forward(x);
  peft_model->save_pretrained(out_dir);
  std::cout << "saved adapter to " << out_dir << "\n";

  // A fresh base model (same seed = same base weights) + the saved adapter gives the same outputs.
  torch::manual_seed(0);
  Classifier fresh;
  auto loaded = peft::PeftModel::from_pretrained(fresh.ptr(), out_dir);
  const double diff = (fresh->forward(x) - trained).abs().max().item<double>();
  std::cout << "reloaded adapter, max |diff| = " << diff << "\n";
  // merge_and_unload gives a plain model with the adapter folded into its weights.
  loaded->merge_and_unload();
  const double merged_diff = (fresh->forward(x) - trained).abs().max().item<double>();
  std::cout << "merged, max |diff| = " << merged_diff << "\n";
  return diff == 0.0 && merged_diff < 1e-5 ? 0 : 1;
}
