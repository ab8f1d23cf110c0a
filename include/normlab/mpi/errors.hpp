#pragma once
// Exceptions of the distributed layers. Every one is thrown on every rank of the communicator
// (never on one rank while the others wait), so a job stops instead of hanging.

#include <stdexcept>
#include <string>

#include "normlab/errors.hpp"

namespace normlab::mpi {

// An MPI call returned an error code (the communicator's handler is MPI_ERRORS_RETURN); the
// message names the call and carries MPI's own description.
struct MpiError : std::runtime_error {
    using std::runtime_error::runtime_error;
};

// The ranks disagree about something that must be the same everywhere: channel counts, trailing
// shape, parameter shapes, parameter values (replicas diverged), or which collective is next.
struct RankMismatchError : ShapeError {
    using ShapeError::ShapeError;
};

// Another rank failed locally (bad input, non-finite statistics) and said so in the agreement
// step; that rank throws its own, more specific error.
struct RemoteRankError : std::runtime_error {
    using std::runtime_error::runtime_error;
};

}  // namespace normlab::mpi
