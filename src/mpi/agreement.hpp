#pragma once
// The cheap collective that runs before every data all-reduce: the ranks compare a few integers
// (channel counts, shapes, which operation is next) and whether they failed locally. The data
// all-reduce that follows needs identical buffer sizes on every rank; without this check a
// mismatch would hang the job or corrupt memory, and one rank's exception would leave the others
// waiting forever.

#include <cstdint>
#include <exception>
#include <string>
#include <vector>

#include "normlab/mpi/communicator.hpp"

namespace normlab::mpi {

struct AgreementField {
    std::string what;    // "number of channels": how a mismatch is reported
    std::int64_t value;  // |value| < 2^62
};

// One all-reduce of 2·(fields + 1) int64 values (MAX over each value and its negation gives every
// rank the range). Then, on every rank: if some rank failed, that rank rethrows local_failure
// and the others throw RemoteRankError naming it; otherwise if a field differs, every rank
// throws RankMismatchError naming the field, this rank's value and the range. `who` names the
// layer and pass, e.g. "sync_batch_norm(8) forward".
void agree(const Communicator& comm, const std::string& who,
           const std::vector<AgreementField>& fields, std::exception_ptr local_failure);

// 62-bit FNV-1a of bytes, for fingerprints of shapes and parameter values.
std::int64_t fingerprint(const void* data, std::size_t bytes,
                         std::int64_t seed = 0x2545F4914F6CDD1D);

}  // namespace normlab::mpi
