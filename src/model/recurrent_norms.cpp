// The two published slot configurations, and the rule the workloads use to pick one.
#include "normlab/model/recurrent.hpp"
#include "normlab/registry.hpp"

namespace normlab::model {

RecurrentNorms RecurrentNorms::layer_norm_lstm(const std::string& spec) {
    return {spec, spec, spec, 1.0, true};
}

RecurrentNorms RecurrentNorms::batch_norm_lstm(const std::string& spec) {
    return {spec, spec, spec, 0.1, false};
}

RecurrentNorms RecurrentNorms::recipe_for(const std::string& spec, std::size_t hidden_size) {
    if (spec.empty() || spec == "none" || spec == "identity") return {};
    const bool batch = make_normalizer<float>(spec, 4 * hidden_size)->uses_batch_statistics();
    return batch ? batch_norm_lstm(spec) : layer_norm_lstm(spec);
}

}  // namespace normlab::model
