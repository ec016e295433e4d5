// Fatal checks for programming errors and violated preconditions.
//
//   MOE_CHECK(x.ndim() == 2) << "Linear: input must be [tokens, in], got " << x.ShapeString();
//
// A failed check prints the file, line, condition and message to stderr and
// aborts. Errors a user can cause (bad files, bad flags) are returned as
// absl::Status instead, so that callers can report them before any compute.
#ifndef MOE_CORE_CHECK_H_
#define MOE_CORE_CHECK_H_

#include <sstream>
#include <string>

namespace moe::internal {

// Collects the message; its destructor reports and aborts.
class CheckFailure {
 public:
  CheckFailure(const char* file, int line, const char* condition);
  [[noreturn]] ~CheckFailure();
  CheckFailure(const CheckFailure&) = delete;
  CheckFailure& operator=(const CheckFailure&) = delete;

  template <typename T>
  CheckFailure& operator<<(const T& value) {
    stream_ << value;
    return *this;
  }

 private:
  std::ostringstream stream_;
};

// Lets MOE_CHECK be used as an expression statement followed by `<<`.
struct Voidify {
  void operator&(CheckFailure&) {}
};

}  // namespace moe::internal

#define MOE_CHECK(condition) \
  (condition)                \
      ? (void)0              \
      : ::moe::internal::Voidify() & ::moe::internal::CheckFailure(__FILE__, __LINE__, #condition)

#define MOE_CHECK_EQ(a, b) MOE_CHECK((a) == (b)) << "(" << (a) << " vs " << (b) << ") "

#endif  // MOE_CORE_CHECK_H_
