// One throwing check for argument validation at the compiled boundary. The message names the argument;
// file:line helps when a check fires from deep inside. Bindings translate illada::Error to ValueError
// and illada::TypeError to TypeError, so bad input never crashes the interpreter.
#pragma once
#include <sstream>
#include <stdexcept>
#include <string>

namespace illada {

struct Error : std::invalid_argument {
  using std::invalid_argument::invalid_argument;
};
struct TypeError : std::invalid_argument {
  using std::invalid_argument::invalid_argument;
};

namespace detail {
inline std::string where(const char* file, int line) {
  std::string f(file);
  auto slash = f.find_last_of("/\\");
  std::ostringstream os;
  os << " [" << (slash == std::string::npos ? f : f.substr(slash + 1)) << ":" << line << "]";
  return os.str();
}
}  // namespace detail

}  // namespace illada

#define ILLADA_CHECK(cond, msg)                                                        \
  do {                                                                                 \
    if (!(cond)) {                                                                     \
      std::ostringstream illada_os_;                                                   \
      illada_os_ << msg;                                                               \
      throw ::illada::Error(illada_os_.str() + ::illada::detail::where(__FILE__, __LINE__)); \
    }                                                                                  \
  } while (0)

#define ILLADA_CHECK_TYPE(cond, msg)                                                   \
  do {                                                                                 \
    if (!(cond)) {                                                                     \
      std::ostringstream illada_os_;                                                   \
      illada_os_ << msg;                                                               \
      throw ::illada::TypeError(illada_os_.str() + ::illada::detail::where(__FILE__, __LINE__)); \
    }                                                                                  \
  } while (0)
