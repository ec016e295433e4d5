// GoogleTest main for every suite: death tests fork and re-execute, which is
// safe with the OpenMP threads our kernels start.
#include <gtest/gtest.h>

int main(int argc, char** argv) {
  ::testing::InitGoogleTest(&argc, argv);
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  return RUN_ALL_TESTS();
}
