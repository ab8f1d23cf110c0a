// A rank that dies in the middle of a step: the last rank exits without a word just before a
// synchronized forward that the others have entered. The job must end (mpirun reports the lost
// rank and stops the others) instead of hanging; ctest checks mpirun's report and the timeout.
#include <cstdio>
#include <cstdlib>

#include "normlab/mpi/communicator.hpp"
#include "normlab/mpi/sync_batch_norm.hpp"

int main(int argc, char** argv) {
    normlab::mpi::Session session(argc, argv);
    const normlab::mpi::Communicator world = session.world();
    normlab::mpi::SyncBatchNorm<float> norm(4, {}, world);
    const normlab::Tensor x = xt::ones<float>({3, 4}) * float(world.rank());
    norm.forward(x, normlab::Mode::train);  // one step in which every rank takes part
    world.barrier();
    if (world.rank() == world.size() - 1) std::_Exit(3);
    norm.forward(x, normlab::Mode::train);  // the survivors wait here for the dead rank
    std::printf("rank %d: a synchronized forward completed without the dead rank\n", world.rank());
    return 0;
}
