#include "agreement.hpp"

namespace normlab::mpi {

std::int64_t fingerprint(const void* data, std::size_t bytes, std::int64_t seed) {
    std::uint64_t h = 1469598103934665603ull ^ std::uint64_t(seed);
    const auto* p = static_cast<const unsigned char*>(data);
    for (std::size_t i = 0; i < bytes; ++i) {
        h ^= p[i];
        h *= 1099511628211ull;
    }
    return std::int64_t(h >> 2);
}

void agree(const Communicator& comm, const std::string& who,
           const std::vector<AgreementField>& fields, std::exception_ptr local_failure) {
    // Slot 0 carries rank + 1 of a failing rank (0: none), so the maximum names the last one.
    const std::size_t n = fields.size() + 1;
    std::vector<std::int64_t> range(2 * n);
    const std::int64_t failed = local_failure ? std::int64_t(comm.rank()) + 1 : 0;
    range[0] = failed;
    range[n] = -failed;
    for (std::size_t i = 0; i < fields.size(); ++i) {
        range[i + 1] = fields[i].value;
        range[n + i + 1] = -fields[i].value;
    }
    comm.allreduce_max(std::span<std::int64_t>(range));

    if (local_failure) std::rethrow_exception(local_failure);
    if (range[0] > 0)
        throw RemoteRankError(who + ": rank " + std::to_string(range[0] - 1) + " of " +
                              std::to_string(comm.size()) +
                              " failed (its own error names the cause); rank " +
                              std::to_string(comm.rank()) + " stops too instead of waiting");
    for (std::size_t i = 0; i < fields.size(); ++i) {
        const std::int64_t max = range[i + 1], min = -range[n + i + 1];
        if (min == max) continue;
        throw RankMismatchError(who + ": the " + std::to_string(comm.size()) +
                                " ranks disagree on the " + fields[i].what +
                                ": expected the same "
                                "value on every rank, got " +
                                std::to_string(fields[i].value) + " on rank " +
                                std::to_string(comm.rank()) + " and values from " +
                                std::to_string(min) + " to " + std::to_string(max) +
                                " across ranks");
    }
}

}  // namespace normlab::mpi
