// peft: the command-line face of peft.cpp. One file per verb (inspect, logits, merge, generate,
// train, init). Errors print one line "error: ..." and exit 2 for usage / configuration errors, 1
// otherwise.

#include <c10/util/Exception.h>

#include <iostream>

#include "common.h"
#include "peft/error.h"

int main(int argc, char** argv) {
  CLI::App app{"peft: Hugging Face PEFT's LoRA in C++ (peft.cpp)", "peft"};
  app.require_subcommand(1);
  app.set_help_all_flag("--help-all", "help for every verb");
  peft::cli::register_inspect(app);
  peft::cli::register_logits(app);
  peft::cli::register_merge(app);
  peft::cli::register_generate(app);
  peft::cli::register_train(app);
  peft::cli::register_init(app);
  peft::cli::register_combine(app);
  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForAllHelp& e) {
    return app.exit(e);
  } catch (const CLI::ParseError& e) {
    std::cerr << "error: " << e.what() << " (run `peft --help`)\n";
    return 2;
  } catch (const peft::ConfigError& e) {
    std::cerr << "error: " << e.what() << "\n";
    return 2;
  } catch (const peft::Error& e) {
    std::cerr << "error: " << e.what() << "\n";
    return 1;
  } catch (const c10::Error& e) {
    std::cerr << "error: " << e.what_without_backtrace() << "\n";
    return 1;
  } catch (const std::exception& e) {
    std::cerr << "error: " << e.what() << "\n";
    return 1;
  }
  return 0;
}
