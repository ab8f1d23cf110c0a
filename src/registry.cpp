#include "normlab/registry.hpp"

#include "normlab/errors.hpp"

// One line per variant below, in the table.
#include "variants/batch_layer_norm.hpp"
#include "variants/batch_norm.hpp"
#include "variants/batch_renorm.hpp"
#include "variants/group_norm.hpp"
#include "variants/identity.hpp"
#include "variants/instance_norm.hpp"
#include "variants/layer_norm.hpp"
#include "variants/rms_norm.hpp"

namespace normlab {
namespace {

template <class T>
using Factory = std::unique_ptr<BasicNormalizer<T>> (*)(std::size_t, const ParsedSpec&);

struct Entry {
    VariantInfo info;
    Factory<float> make_float;
    Factory<double> make_double;
};

template <template <class> class V, class T>
std::unique_ptr<BasicNormalizer<T>> build(std::size_t num_features, const ParsedSpec& spec) {
    using Options = typename V<T>::Options;
    return std::make_unique<V<T>>(num_features, read_options<Options>(spec.name, spec.options));
}

template <template <class> class V>
Entry entry() {
    return {{V<float>::kName, V<float>::kSummary, describe_options<typename V<float>::Options>()},
            &build<V, float>, &build<V, double>};
}

const std::vector<Entry>& table() {
    static const std::vector<Entry> entries = {
        entry<Identity>(),      entry<BatchNorm>(), entry<LayerNorm>(),
        entry<InstanceNorm>(),  entry<GroupNorm>(), entry<RmsNorm>(),
        entry<BatchRenorm>(),   entry<BatchLayerNorm>(),
    };
    return entries;
}

const Entry& find(const std::string& name) {
    for (const auto& e : table())
        if (e.info.name == name) return e;
    std::string valid;
    for (const auto& e : table()) valid += (valid.empty() ? "" : ", ") + e.info.name;
    throw OptionError("unknown normalizer '" + name + "'; registered normalizers: " + valid);
}

}  // namespace

template <>
std::unique_ptr<BasicNormalizer<float>> make_normalizer<float>(const std::string& spec,
                                                               std::size_t num_features) {
    const ParsedSpec parsed = parse_spec(spec);
    return find(parsed.name).make_float(num_features, parsed);
}

template <>
std::unique_ptr<BasicNormalizer<double>> make_normalizer<double>(const std::string& spec,
                                                                 std::size_t num_features) {
    const ParsedSpec parsed = parse_spec(spec);
    return find(parsed.name).make_double(num_features, parsed);
}

const std::vector<VariantInfo>& registered_variants() {
    static const std::vector<VariantInfo> infos = [] {
        std::vector<VariantInfo> out;
        for (const auto& e : table()) out.push_back(e.info);
        return out;
    }();
    return infos;
}

std::string describe_variants() {
    std::string out;
    for (const auto& v : registered_variants()) {
        out += v.name + ": " + v.summary + "\n";
        for (const auto& o : v.options)
            out += "    " + o.key + "=" + o.default_value + "  " + o.help + "\n";
    }
    return out;
}

}  // namespace normlab
