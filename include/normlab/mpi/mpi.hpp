#pragma once
// Everything of normlab_mpi: communicator and session, synchronized normalizers, the registry
// hook and the data-parallel helpers (docs/distributed.md).

#include "normlab/mpi/communicator.hpp"
#include "normlab/mpi/data_parallel.hpp"
#include "normlab/mpi/errors.hpp"
#include "normlab/mpi/registration.hpp"
#include "normlab/mpi/replicas.hpp"
#include "normlab/mpi/sync_batch_norm.hpp"
#include "normlab/mpi/sync_batch_renorm.hpp"
