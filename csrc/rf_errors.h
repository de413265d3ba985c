// How rankforge's native extensions return errors across the C boundary: nothing is thrown
// into Rust; a call returns nullptr, or a heap copy of the C++ exception's message that the
// caller frees with the library's free function (which calls rf::free_message).
#pragma once

#include <c10/util/Exception.h>

#include <cstdlib>
#include <cstring>
#include <exception>

namespace rf {

// Returned when even the copy of a message cannot be allocated (never freed).
inline char out_of_memory[] = "out of memory while reporting a libtorch error";

inline char *copy_message(const char *msg) {
  char *out = static_cast<char *>(std::malloc(std::strlen(msg) + 1));
  if (out == nullptr) {
    return out_of_memory;
  }
  std::strcpy(out, msg);
  return out;
}

// Runs `f`: nullptr, or the message of what it threw (`unknown` for a non-std exception).
template <typename F>
char *guarded(F &&f, const char *unknown) {
  try {
    f();
    return nullptr;
  } catch (const c10::Error &e) {
    return copy_message(e.what_without_backtrace());
  } catch (const std::exception &e) {
    return copy_message(e.what());
  } catch (...) {
    return copy_message(unknown);
  }
}

inline void free_message(char *msg) {
  if (msg != out_of_memory) {
    std::free(msg);
  }
}

}  // namespace rf
