// Exceptions thrown by the core. bindings.cpp maps each to a Python exception:
//   FormatError           -> pygpt.ModelFormatError (a ValueError)
//   FileNotFound          -> FileNotFoundError
//   std::invalid_argument -> ValueError
//   OutOfMemory           -> MemoryError (with its message; std::bad_alloc is one without)
//   Interrupted           -> KeyboardInterrupt (the pending Python signal is re-raised)
// Nothing in the core aborts the process on user input: every check throws one of these.
#pragma once
#include <stdexcept>
#include <string>

namespace pygpt {

struct FormatError : std::runtime_error {
    using std::runtime_error::runtime_error;
};

struct FileNotFound : std::runtime_error {
    using std::runtime_error::runtime_error;
};

struct OutOfMemory : std::runtime_error {
    using std::runtime_error::runtime_error;
};

struct Interrupted : std::runtime_error {
    Interrupted() : std::runtime_error("interrupted") {}
};

}  // namespace pygpt
