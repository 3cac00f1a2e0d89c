// EnvSwitch (core/env_switch.h): "1" turns a switch on and "0" off whatever its default; unset or
// any other value leaves the default; the value is read once; a forced value wins until released.
#include "core/env_switch.h"

#include <gtest/gtest.h>
#include <stdlib.h>

namespace kiln {
namespace {

TEST(EnvSwitch, OneAndZeroOverrideEitherDefault) {
  struct Case {
    const char* value;  // nullptr: unset
    bool default_on, want;
  };
  const Case cases[] = {{nullptr, false, false}, {nullptr, true, true}, {"1", false, true},
                        {"1", true, true},       {"0", false, false},   {"0", true, false},
                        {"", true, true},        {"yes", false, false}, {"yes", true, true}};
  for (const Case& c : cases) {
    SCOPED_TRACE(::testing::Message()
                 << "value " << (c.value ? c.value : "(unset)") << " default " << c.default_on);
    if (c.value)
      setenv("KILN_ENV_SWITCH_TEST", c.value, 1);
    else
      unsetenv("KILN_ENV_SWITCH_TEST");
    EXPECT_EQ(EnvSwitch::env_flag("KILN_ENV_SWITCH_TEST", c.default_on), c.want);
    EnvSwitch s("KILN_ENV_SWITCH_TEST", c.default_on);  // a fresh switch reads the variable
    EXPECT_EQ(s.on(), c.want);
  }
  unsetenv("KILN_ENV_SWITCH_TEST");
}

TEST(EnvSwitch, ReadOnceAndForcedWins) {
  setenv("KILN_ENV_SWITCH_TEST", "0", 1);
  EnvSwitch s("KILN_ENV_SWITCH_TEST", true);
  EXPECT_FALSE(s.on());
  setenv("KILN_ENV_SWITCH_TEST", "1", 1);
  EXPECT_FALSE(s.on()) << "the environment is read once";
  s.force(1);
  EXPECT_TRUE(s.on());
  s.force(0);
  EXPECT_FALSE(s.on());
  s.force(-1);
  EXPECT_FALSE(s.on()) << "released: the value read first";
  unsetenv("KILN_ENV_SWITCH_TEST");
}

}  // namespace
}  // namespace kiln
