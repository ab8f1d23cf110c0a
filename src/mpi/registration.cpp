#include "normlab/mpi/registration.hpp"

#include "normlab/mpi/sync_batch_norm.hpp"
#include "normlab/mpi/sync_batch_renorm.hpp"
#include "normlab/registry.hpp"

namespace normlab::mpi {
namespace {

template <template <class> class V, class T>
NormalizerFactory<T> factory(const Communicator& comm) {
    return [comm](std::size_t num_features, const ParsedSpec& spec) {
        using Options = typename V<T>::Options;
        return std::unique_ptr<BasicNormalizer<T>>(std::make_unique<V<T>>(
            num_features, read_options<Options>(spec.name, spec.options), comm));
    };
}

template <template <class> class V>
void register_one(const Communicator& comm) {
    register_variant(
        {V<float>::kName, V<float>::kSummary, describe_options<typename V<float>::Options>()},
        factory<V, float>(comm), factory<V, double>(comm));
}

}  // namespace

void register_sync_normalizers(const Communicator& comm) {
    register_one<SyncBatchNorm>(comm);
    register_one<SyncBatchRenorm>(comm);
}

}  // namespace normlab::mpi
