#pragma once
// train::Trainer's data-parallel replicas over MPI: every rank of `comm` is one replica.
//
//   normlab::mpi::Session session(argc, argv);
//   normlab::mpi::MpiReplicas replicas(session.world());
//   normlab::train::Trainer trainer(config, train, test, &replicas);  // per-rank batch
//   trainer.run();                       // identical results on every rank

#include "normlab/mpi/communicator.hpp"
#include "normlab/train/trainer.hpp"

namespace normlab::mpi {

class MpiReplicas final : public train::Replicas {
  public:
    explicit MpiReplicas(Communicator comm) : comm_(comm) {}
    int rank() const override { return comm_.rank(); }
    int size() const override { return comm_.size(); }
    void average_gradients(model::Sequential<float>& model) override;
    void broadcast_buffers(model::Sequential<float>& model) override;
    void sum(std::span<double> values) override;
    const Communicator& communicator() const { return comm_; }

  private:
    Communicator comm_;
};

}  // namespace normlab::mpi
