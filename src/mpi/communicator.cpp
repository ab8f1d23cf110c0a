#include "normlab/mpi/communicator.hpp"

#include <climits>

#include "normlab/mpi/registration.hpp"

namespace normlab::mpi {

void check(int rc, const std::string& what) {
    if (rc == MPI_SUCCESS) return;
    char text[MPI_MAX_ERROR_STRING];
    int length = 0;
    if (MPI_Error_string(rc, text, &length) != MPI_SUCCESS) length = 0;
    throw MpiError(what + " failed: " +
                   (length > 0 ? std::string(text, std::size_t(length))
                               : "MPI error code " + std::to_string(rc)));
}

template <>
MPI_Datatype datatype<float>() {
    return MPI_FLOAT;
}
template <>
MPI_Datatype datatype<double>() {
    return MPI_DOUBLE;
}
template <>
MPI_Datatype datatype<std::int64_t>() {
    return MPI_INT64_T;
}

namespace {

int as_count(std::size_t n, const char* what) {
    if (n > std::size_t(INT_MAX))
        throw MpiError(std::string(what) + ": " + std::to_string(n) +
                       " elements exceed the MPI count limit of " + std::to_string(INT_MAX));
    return int(n);
}

}  // namespace

Communicator::Communicator(MPI_Comm comm) : comm_(comm) {
    int initialized = 0;
    MPI_Initialized(&initialized);
    if (!initialized)
        throw MpiError(
            "normlab::mpi::Communicator: MPI is not initialized; create a normlab::mpi::Session "
            "(or call MPI_Init) before building communicators or synchronized layers");
    check(MPI_Comm_set_errhandler(comm_, MPI_ERRORS_RETURN), "MPI_Comm_set_errhandler");
    check(MPI_Comm_rank(comm_, &rank_), "MPI_Comm_rank");
    check(MPI_Comm_size(comm_, &size_), "MPI_Comm_size");
}

void Communicator::allreduce(void* data, std::size_t count, MPI_Datatype type, MPI_Op op,
                             const char* what) const {
    check(MPI_Allreduce(MPI_IN_PLACE, data, as_count(count, what), type, op, comm_),
          std::string("MPI_Allreduce (") + what + ")");
}

template <class T>
void Communicator::allreduce_sum(std::span<T> data) const {
    allreduce(data.data(), data.size(), datatype<T>(), MPI_SUM, "sum");
}

template <class T>
void Communicator::allreduce_max(std::span<T> data) const {
    allreduce(data.data(), data.size(), datatype<T>(), MPI_MAX, "max");
}

template <class T>
void Communicator::broadcast(std::span<T> data, int root) const {
    check(MPI_Bcast(data.data(), as_count(data.size(), "MPI_Bcast"), datatype<T>(), root, comm_),
          "MPI_Bcast from rank " + std::to_string(root));
}

void Communicator::barrier() const {
    check(MPI_Barrier(comm_), "MPI_Barrier");
}

template void Communicator::allreduce_sum<float>(std::span<float>) const;
template void Communicator::allreduce_sum<double>(std::span<double>) const;
template void Communicator::allreduce_sum<std::int64_t>(std::span<std::int64_t>) const;
template void Communicator::allreduce_max<float>(std::span<float>) const;
template void Communicator::allreduce_max<double>(std::span<double>) const;
template void Communicator::allreduce_max<std::int64_t>(std::span<std::int64_t>) const;
template void Communicator::broadcast<float>(std::span<float>, int) const;
template void Communicator::broadcast<double>(std::span<double>, int) const;
template void Communicator::broadcast<std::int64_t>(std::span<std::int64_t>, int) const;

Session::Session(int& argc, char**& argv) {
    int initialized = 0;
    MPI_Initialized(&initialized);
    if (!initialized) {
        int provided = 0;
        check(MPI_Init_thread(&argc, &argv, MPI_THREAD_FUNNELED, &provided), "MPI_Init_thread");
        owns_mpi_ = true;
    }
    register_sync_normalizers(world());
}

Session::~Session() {
    if (!owns_mpi_) return;
    int finalized = 0;
    MPI_Finalized(&finalized);
    if (!finalized) MPI_Finalize();
}

}  // namespace normlab::mpi
