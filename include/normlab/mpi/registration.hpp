#pragma once
// Makes the synchronized normalizers constructible by spec string:
//   make_normalizer("sync_batch_norm(momentum=0.1)", 64)
//   make_normalizer("sync_batch_renorm(rmax=3,dmax=5)", 64)
// Layers built that way use `comm`. Session registers them with MPI_COMM_WORLD; call this again
// to switch to another communicator for the layers built afterwards.

#include "normlab/mpi/communicator.hpp"

namespace normlab::mpi {

void register_sync_normalizers(const Communicator& comm);

}  // namespace normlab::mpi
