#include <fcntl.h>
#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <iterator>

#include "normlab/errors.hpp"
#include "normlab/stress.hpp"

namespace normlab::stress {

ResultStore::ResultStore(std::string path) : path_(std::move(path)) {
    std::ifstream in(path_, std::ios::binary);
    if (!in) return;  // a new grid
    const std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    std::size_t start = 0, number = 0;
    while (start < text.size()) {
        const std::size_t end = text.find('\n', start);
        ++number;
        if (end == std::string::npos) {
            // Only the last line can lack its newline: a write cut short by a crash. It is cut
            // off before the next append, and that run is done again.
            truncate_to_ = start;
            break;
        }
        const std::string line = text.substr(start, end - start);
        start = end + 1;
        if (line.empty()) continue;
        try {
            lines_.push_back(nlohmann::json::parse(line));
        } catch (const nlohmann::json::parse_error&) {
            throw IoError("'" + path_ + "': line " + std::to_string(number) +
                          " is not valid JSON; the results file is damaged");
        }
    }
}

bool ResultStore::contains(const std::string& key) const {
    for (const auto& line : lines_)
        if (line.value("key", "") == key) return true;
    return false;
}

void ResultStore::append(const nlohmann::json& line) {
    if (truncate_to_ && ::truncate(path_.c_str(), off_t(*truncate_to_)) != 0)
        throw IoError("'" + path_ + "': cannot cut off the incomplete last line");
    truncate_to_.reset();
    const std::string text = line.dump() + "\n";
    const int fd = ::open(path_.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
    if (fd < 0) throw IoError("'" + path_ + "': cannot open for appending");
    const bool ok =
        ::write(fd, text.data(), text.size()) == ssize_t(text.size()) && ::fsync(fd) == 0;
    ::close(fd);
    if (!ok) throw IoError("'" + path_ + "': write failed (disk full?)");
    lines_.push_back(line);
}

}  // namespace normlab::stress
