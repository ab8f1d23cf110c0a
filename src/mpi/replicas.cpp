#include "normlab/mpi/replicas.hpp"

#include "normlab/mpi/data_parallel.hpp"

namespace normlab::mpi {

void MpiReplicas::average_gradients(model::Sequential<float>& model) {
    mpi::average_gradients(model, comm_);
}

void MpiReplicas::broadcast_buffers(model::Sequential<float>& model) {
    mpi::broadcast_buffers(model, comm_, 0);
}

void MpiReplicas::sum(std::span<double> values) {
    comm_.allreduce_sum(values);
}

}  // namespace normlab::mpi
