#pragma once
// A thin wrapper around an MPI communicator: rank, size, and the few collectives normlab needs
// (sum and max all-reduce, broadcast), each turning an MPI error code into MpiError.

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>

#include <mpi.h>

#include "normlab/mpi/errors.hpp"

namespace normlab::mpi {

// Throws MpiError("<what>: <MPI's error string>") unless rc is MPI_SUCCESS.
void check(int rc, const std::string& what);

// The MPI datatype of a C++ scalar.
template <class T>
MPI_Datatype datatype();
template <>
MPI_Datatype datatype<float>();
template <>
MPI_Datatype datatype<double>();
template <>
MPI_Datatype datatype<std::int64_t>();

class Communicator {
  public:
    // Does not take ownership of comm. Sets its error handler to MPI_ERRORS_RETURN, so a failed
    // call comes back as MpiError instead of aborting the job without a word. Throws MpiError
    // when MPI is not initialized (create a Session first).
    explicit Communicator(MPI_Comm comm = MPI_COMM_WORLD);

    MPI_Comm handle() const { return comm_; }
    int rank() const { return rank_; }
    int size() const { return size_; }

    // In place, over every rank; every rank receives the same result.
    template <class T>
    void allreduce_sum(std::span<T> data) const;
    template <class T>
    void allreduce_max(std::span<T> data) const;
    // Any datatype and operation (user-defined ones included); count in units of type.
    void allreduce(void* data, std::size_t count, MPI_Datatype type, MPI_Op op,
                   const char* what) const;

    // Copies root's data to every rank; data must have the same size everywhere.
    template <class T>
    void broadcast(std::span<T> data, int root = 0) const;

    void barrier() const;

  private:
    MPI_Comm comm_;
    int rank_ = 0;
    int size_ = 1;
};

// MPI for the lifetime of a program: MPI_Init_thread (MPI_THREAD_FUNNELED: OpenMP threads run
// the kernels, only the main thread talks to MPI) unless MPI is already initialized,
// MPI_Finalize at destruction if this object initialized it. Also registers the synchronized
// normalizers with MPI_COMM_WORLD, so make_normalizer("sync_batch_norm", C) works.
class Session {
  public:
    Session(int& argc, char**& argv);
    ~Session();
    Session(const Session&) = delete;
    Session& operator=(const Session&) = delete;

    Communicator world() const { return Communicator(MPI_COMM_WORLD); }

  private:
    bool owns_mpi_ = false;
};

}  // namespace normlab::mpi
