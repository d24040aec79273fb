// torch dtype names at the string edge: one parser for --dtype, bnb_4bit_compute_dtype and
// bitsandbytes' quant state.
#include "peft/dtype.h"

#include <gtest/gtest.h>

#include "peft/error.h"

namespace {

TEST(DtypeNames, EverySpellingParsesAndNamesRoundTrip) {
  EXPECT_EQ(peft::parse_dtype("float32"), c10::kFloat);
  EXPECT_EQ(peft::parse_dtype("fp32"), c10::kFloat);
  EXPECT_EQ(peft::parse_dtype("torch.float16"), c10::kHalf);
  EXPECT_EQ(peft::parse_dtype("half"), c10::kHalf);
  EXPECT_EQ(peft::parse_dtype("bf16"), c10::kBFloat16);
  for (auto d : {c10::kFloat, c10::kHalf, c10::kBFloat16}) {
    EXPECT_EQ(peft::parse_dtype(peft::dtype_name(d)), d);
  }
  EXPECT_EQ(peft::dtype_name(c10::kBFloat16), "bfloat16");
  EXPECT_FALSE(peft::find_dtype("int8").has_value());
}

TEST(DtypeNames, AnUnknownNameIsAConfigErrorListingTheSpellings) {
  try {
    peft::parse_dtype("float64", "--dtype");
    FAIL() << "float64 accepted";
  } catch (const peft::ConfigError& e) {
    EXPECT_EQ(e.component(), "--dtype");
    const std::string msg = e.what();
    EXPECT_NE(msg.find("unknown dtype \"float64\""), std::string::npos) << msg;
    EXPECT_NE(msg.find("\"bfloat16\""), std::string::npos) << msg;
  }
}

}  // namespace
