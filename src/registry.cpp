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

struct Entry {
    VariantInfo info;
    NormalizerFactory<float> make_float;
    NormalizerFactory<double> make_double;
};

template <template <class> class V, class T>
std::unique_ptr<BasicNormalizer<T>> build(std::size_t num_features, const ParsedSpec& spec) {
    using Options = typename V<T>::Options;
    return std::make_unique<V<T>>(num_features, read_options<Options>(spec.name, spec.options));
}

template <template <class> class V>
Entry entry() {
    return {{V<float>::kName, V<float>::kSummary, describe_options<typename V<float>::Options>()},
            &build<V, float>,
            &build<V, double>};
}

const std::vector<Entry>& table() {
    static const std::vector<Entry> entries = {
        entry<Identity>(),  entry<BatchNorm>(), entry<LayerNorm>(),   entry<InstanceNorm>(),
        entry<GroupNorm>(), entry<RmsNorm>(),   entry<BatchRenorm>(), entry<BatchLayerNorm>(),
    };
    return entries;
}

// Variants registered at run time by libraries built on normlab (register_variant).
std::vector<Entry>& extra_table() {
    static std::vector<Entry> entries;
    return entries;
}

std::vector<VariantInfo>& infos() {
    static std::vector<VariantInfo> out = [] {
        std::vector<VariantInfo> built_in;
        for (const auto& e : table())
            built_in.push_back(e.info);
        return built_in;
    }();
    return out;
}

const Entry* find_in(const std::vector<Entry>& entries, const std::string& name) {
    for (const auto& e : entries)
        if (e.info.name == name) return &e;
    return nullptr;
}

const Entry& find(const std::string& name) {
    if (const Entry* e = find_in(table(), name)) return *e;
    if (const Entry* e = find_in(extra_table(), name)) return *e;
    std::string valid;
    for (const auto& v : infos())
        valid += (valid.empty() ? "" : ", ") + v.name;
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
    return infos();
}

void register_variant(VariantInfo info, NormalizerFactory<float> make_float,
                      NormalizerFactory<double> make_double) {
    if (find_in(table(), info.name))
        throw OptionError("register_variant: '" + info.name +
                          "' is a built-in normalizer and cannot be replaced");
    if (!make_float || !make_double)
        throw OptionError("register_variant: '" + info.name +
                          "' needs both a float and a double factory");
    auto& extra = extra_table();
    auto& listed = infos();
    for (std::size_t i = 0; i < extra.size(); ++i) {
        if (extra[i].info.name != info.name) continue;
        for (auto& v : listed)
            if (v.name == info.name) v = info;
        extra[i] = {std::move(info), std::move(make_float), std::move(make_double)};
        return;
    }
    listed.push_back(info);
    extra.push_back({std::move(info), std::move(make_float), std::move(make_double)});
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
