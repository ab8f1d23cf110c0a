// Temporary file names for tests. ctest runs every test case as its own process and in
// parallel, so a fixed name would be shared by concurrent cases; the process id keeps them apart.
// Every name handed out is removed when the process exits, so a case that stops at a failed
// ASSERT, or never cleans up on its own, leaves nothing behind in the temporary directory.
#pragma once

#include <filesystem>
#include <string>
#include <system_error>
#include <vector>

#include <unistd.h>

namespace normlab::testing {

class ScratchFiles {
  public:
    ScratchFiles() = default;
    ScratchFiles(const ScratchFiles&) = delete;
    ScratchFiles& operator=(const ScratchFiles&) = delete;
    ~ScratchFiles() {
        for (const auto& path : paths_) {
            std::error_code ignored;
            std::filesystem::remove_all(path, ignored);
        }
    }
    void add(const std::filesystem::path& path) { paths_.push_back(path); }

  private:
    std::vector<std::filesystem::path> paths_;
};

inline ScratchFiles& scratch_files() {
    static ScratchFiles files;
    return files;
}

inline std::string scratch_path(const std::string& prefix, const std::string& name) {
    const auto path =
        std::filesystem::temp_directory_path() / (prefix + std::to_string(::getpid()) + "_" + name);
    std::filesystem::remove_all(path);
    scratch_files().add(path);
    return path.string();
}

}  // namespace normlab::testing
