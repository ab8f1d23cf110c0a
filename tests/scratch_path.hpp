// Temporary file names for tests. ctest runs every test case as its own process and in
// parallel, so a fixed name would be shared by concurrent cases; the process id keeps them apart.
#pragma once

#include <filesystem>
#include <string>

#include <unistd.h>

namespace normlab::testing {

inline std::string scratch_path(const std::string& prefix, const std::string& name) {
    const auto path = std::filesystem::temp_directory_path() /
                      (prefix + std::to_string(::getpid()) + "_" + name);
    std::filesystem::remove_all(path);
    return path.string();
}

}  // namespace normlab::testing
