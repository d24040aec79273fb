// peft: the command-line face of peft.cpp. One file per verb (inspect, logits, merge, generate,
// train, init). Errors print one line "error: ..." and exit 2 for usage / configuration errors, 1
// otherwise.

#include <c10/util/Exception.h>

#include <iostream>
#include <string>
#include <string_view>

#include "common.h"
#include "peft/error.h"

namespace {

// One line of bounded length: a message quoting a hostile input (a megabyte of JSON) is cut in the
// middle, keeping its start (what failed) and its end (the hint).
void print_error(std::string_view message, std::string_view suffix = "") {
  constexpr size_t kHead = 1500, kTail = 500;
  std::string line(message);
  for (char& c : line) {
    if (c == '\n' || c == '\r') c = ' ';
  }
  if (line.size() > kHead + kTail + 100) {
    line = line.substr(0, kHead) + " [... " + std::to_string(line.size() - kHead - kTail) +
           " bytes elided ...] " + line.substr(line.size() - kTail);
  }
  std::cerr << "error: " << line << suffix << "\n";
}

}  // namespace

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
    print_error(e.what(), " (run `peft --help`)");
    return 2;
  } catch (const peft::ConfigError& e) {
    print_error(e.what());
    return 2;
  } catch (const peft::Error& e) {
    print_error(e.what());
    return 1;
  } catch (const c10::Error& e) {
    print_error(e.what_without_backtrace());
    return 1;
  } catch (const std::exception& e) {
    print_error(e.what());
    return 1;
  }
  return 0;
}
