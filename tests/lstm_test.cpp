// The recurrent layers (spec §3.3 LN-LSTM, §7 BN-LSTM): gradients through time against finite
// differences for every normalizer in every slot, with and without padding; the published
// configurations; errors.
#include <gtest/gtest.h>

#include "gradient_check.hpp"
#include "lstm_test_support.hpp"
#include "normlab/errors.hpp"

namespace normlab::model {
namespace {

using testing::ArrayD;
using testing::random_array;

// Every registered normalizer that can normalize a (rows, features) pre-activation.
// instance_norm cannot (one value per set) and is checked to be refused below. Batch Renorm in
// its warm-up clips r = 1, d = 0, so finite differences apply (see conformance_test.cpp).
const std::vector<std::string>& slot_specs() {
    static const std::vector<std::string> s = {
        "identity",
        "batch_norm",
        "layer_norm",
        "group_norm(groups=2)",
        "rms_norm",
        "batch_renorm",
        "batch_layer_norm",
        "batch_layer_norm(weights=actual,track_running_stats=false,batch_moving_mean=false,"
        "batch_moving_var=false)",
    };
    return s;
}

enum class Where { input, recurrent, cell, all };

struct GradientCase {
    RecurrentCell cell;
    std::string spec;
    Where where;
    bool masked;
};

void PrintTo(const GradientCase& c, std::ostream* os) {
    *os << (c.cell == RecurrentCell::lstm ? "lstm " : "rnn ") << c.spec << " slot " << int(c.where)
        << (c.masked ? " masked" : "");
}

// The published BLN keeps feature statistics per slot of a fixed-size batch, so it cannot see
// the shrinking batches of padded steps (RecurrentMasks.PublishedBatchLayerNormRefusesPadding).
bool supports_padding(const std::string& spec) {
    return spec != "batch_layer_norm";
}

std::vector<GradientCase> gradient_cases() {
    std::vector<GradientCase> out;
    for (const auto& spec : slot_specs())
        for (bool masked : {false, true}) {
            if (masked && !supports_padding(spec)) continue;
            for (Where w : {Where::input, Where::recurrent, Where::cell, Where::all})
                out.push_back({RecurrentCell::lstm, spec, w, masked});
            for (Where w : {Where::input, Where::recurrent})
                out.push_back({RecurrentCell::tanh_rnn, spec, w, masked});
        }
    return out;
}

std::string gradient_case_name(const ::testing::TestParamInfo<GradientCase>& info) {
    const auto& c = info.param;
    std::string name = c.cell == RecurrentCell::lstm ? "lstm_" : "rnn_";
    for (char ch : c.spec.substr(0, c.spec.find(',')))
        name += std::isalnum((unsigned char)ch) ? ch : '_';
    const char* where[] = {"_input", "_recurrent", "_cell", "_all"};
    return name + where[int(c.where)] + (c.masked ? "_masked" : "");
}

class RecurrentGradients : public ::testing::TestWithParam<GradientCase> {};

TEST_P(RecurrentGradients, MatchFiniteDifferencesThroughTime) {
    const auto& c = GetParam();
    RecurrentNorms norms;
    if (c.where == Where::input || c.where == Where::all) norms.input = c.spec;
    if (c.where == Where::recurrent || c.where == Where::all) norms.recurrent = c.spec;
    if (c.where == Where::cell || c.where == Where::all) norms.cell = c.spec;
    // T = 5 steps, N = 4 sequences; masked: lengths 5, 3, 4, 1, so step 4 keeps a single row
    // (the lone-row rule of a batch-statistics slot is exercised too).
    auto layer = testing::make_recurrent(c.cell, norms, SequenceOutput::all_steps);
    testing::randomize(*layer, 21);
    const std::vector<std::size_t> lengths =
        c.masked ? std::vector<std::size_t>{5, 3, 4, 1} : std::vector<std::size_t>{};
    const ArrayD x = random_array({5, 4, testing::kFeatures}, 5, 0.3, 1.0);
    const auto errors = testing::check_layer_gradients(*layer, x, lengths);
    testing::expect_gradients_match(errors, 1e-6);
    for (const auto& e : errors)
        RecordProperty(e.tensor, std::to_string(e.error));
}

INSTANTIATE_TEST_SUITE_P(EveryNormalizerInEverySlot, RecurrentGradients,
                         ::testing::ValuesIn(gradient_cases()), gradient_case_name);

TEST(Lstm, LastStepOutputGradientsMatchFiniteDifferences) {
    auto layer =
        testing::make_recurrent(RecurrentCell::lstm, RecurrentNorms::batch_norm_lstm("batch_norm"),
                                SequenceOutput::last_step);
    testing::randomize(*layer, 4);
    const ArrayD x = random_array({6, 4, testing::kFeatures}, 6);
    testing::expect_gradients_match(testing::check_layer_gradients(*layer, x, {6, 2, 0, 5}), 1e-6);
}

TEST(Lstm, LastStepOutputIsTheHiddenStateAtEachSequencesLastValidStep) {
    auto all = testing::make_recurrent(RecurrentCell::lstm, RecurrentNorms::layer_norm_lstm(),
                                       SequenceOutput::all_steps, 8);
    auto last = testing::make_recurrent(RecurrentCell::lstm, RecurrentNorms::layer_norm_lstm(),
                                        SequenceOutput::last_step, 8);
    const ArrayD x = random_array({6, 4, testing::kFeatures}, 7);
    const std::vector<std::size_t> lengths{6, 2, 0, 5};
    const ArrayD seq = all->forward(x, lengths, Mode::train, Grad::none);
    const ArrayD fin = last->forward(x, lengths, Mode::train, Grad::none);
    for (std::size_t n = 0; n < 4; ++n)
        for (std::size_t j = 0; j < testing::kHidden; ++j)
            EXPECT_EQ(fin(n, j), lengths[n] ? seq(lengths[n] - 1, n, j) : 0.0) << n << "," << j;
}

TEST(Lstm, PublishedConfigurationsSetGammaAndBeta) {
    auto bn = testing::make_recurrent(RecurrentCell::lstm, RecurrentNorms::batch_norm_lstm(),
                                      SequenceOutput::last_step);
    std::vector<std::string> names;
    for (auto& p : bn->parameters()) {
        names.push_back(p.name);
        if (p.name.ends_with(".weight")) {
            EXPECT_TRUE(xt::all(xt::equal(*p.value, 0.1))) << p.name;
        }
    }
    // BN-LSTM: β_x = β_h = 0 are not parameters; the cell keeps its β.
    const std::vector<std::string> expected_bn{
        "weight_ih",        "weight_hh",     "bias", "input_norm.weight", "recurrent_norm.weight",
        "cell_norm.weight", "cell_norm.bias"};
    EXPECT_EQ(names, expected_bn);
    auto ln = testing::make_recurrent(RecurrentCell::lstm, RecurrentNorms::layer_norm_lstm(),
                                      SequenceOutput::last_step);
    std::size_t gains = 0, shifts = 0;
    for (auto& p : ln->parameters()) {
        if (p.name.ends_with("norm.weight")) gains += xt::all(xt::equal(*p.value, 1.0));
        if (p.name.ends_with("norm.bias")) shifts += xt::all(xt::equal(*p.value, 0.0));
    }
    EXPECT_EQ(gains, 3u);
    EXPECT_EQ(shifts, 3u);
    EXPECT_TRUE(ln->is_normalizer_parameter("cell_norm.bias"));
    EXPECT_FALSE(ln->is_normalizer_parameter("weight_hh"));
    // The recipe follows uses_batch_statistics().
    EXPECT_EQ(RecurrentNorms::recipe_for("batch_renorm", 8).gamma, 0.1);
    EXPECT_EQ(RecurrentNorms::recipe_for("rms_norm", 8).gamma, 1.0);
    EXPECT_EQ(RecurrentNorms::recipe_for("identity", 8).input, "none");
}

TEST(Lstm, ForgetGateBiasStartsAtForgetBias) {
    auto layer = testing::make_recurrent(RecurrentCell::lstm, {}, SequenceOutput::last_step);
    const ArrayD& bias = *layer->parameters()[2].value;
    for (std::size_t j = 0; j < 4 * testing::kHidden; ++j)
        EXPECT_EQ(bias(j), j < testing::kHidden ? 1.0 : 0.0) << j;
}

TEST(Lstm, RecurrentWeightBlocksAreOrthogonal) {
    auto layer = testing::make_recurrent(RecurrentCell::lstm, {}, SequenceOutput::last_step);
    const ArrayD& w = *layer->parameters()[1].value;
    const std::size_t h = testing::kHidden;
    for (std::size_t b = 0; b < 4; ++b)
        for (std::size_t i = 0; i < h; ++i)
            for (std::size_t k = 0; k < h; ++k) {
                double dot = 0;
                for (std::size_t j = 0; j < h; ++j)
                    dot += w(b * h + i, j) * w(b * h + k, j);
                EXPECT_NEAR(dot, i == k ? 1.0 : 0.0, 1e-12);
            }
}

TEST(Lstm, BadInputIsRefusedNamingTheLayerAndTheShapes) {
    auto layer = testing::make_recurrent(RecurrentCell::lstm, {}, SequenceOutput::all_steps);
    const ArrayD x = random_array({5, 4, testing::kFeatures}, 1);
    auto message = [&](auto&& call) {
        try {
            call();
        } catch (const ShapeError& e) {
            return std::string(e.what());
        }
        return std::string("no ShapeError");
    };
    EXPECT_NE(message([&] {
                  layer->forward(random_array({4, testing::kFeatures}, 1), Mode::train);
              }).find("expected input of shape (T, N, 3)"),
              std::string::npos);
    EXPECT_NE(message([&] {
                  layer->forward(random_array({5, 4, 2}, 1), Mode::train);
              }).find("got (5, 4, 2)"),
              std::string::npos);
    EXPECT_NE(message([&] {
                  layer->forward(x, {5, 5, 5}, Mode::train);
              }).find("expected 4 sequence lengths"),
              std::string::npos);
    EXPECT_NE(message([&] {
                  layer->forward(x, {5, 6, 5, 5}, Mode::train);
              }).find("sequence 1 has length 6, more than the 5 steps"),
              std::string::npos);
    EXPECT_THROW(layer->backward(x), StateError);
    layer->forward(x, Mode::train);
    EXPECT_NE(message([&] {
                  layer->backward(random_array({5, 4, 2}, 1));
              }).find("expected dy of shape (5, 4, 4)"),
              std::string::npos);
    EXPECT_NO_THROW(layer->backward(random_array({5, 4, testing::kHidden}, 1)));
}

TEST(Lstm, ImpossibleSlotsAreRefusedNamingTheSlot) {
    RecurrentNorms cell_on_rnn;
    cell_on_rnn.cell = "layer_norm";
    EXPECT_THROW(
        testing::make_recurrent(RecurrentCell::tanh_rnn, cell_on_rnn, SequenceOutput::all_steps),
        OptionError);
    RecurrentNorms groups;
    groups.recurrent = "group_norm(groups=3)";  // 3 does not divide 4·4 gate units
    try {
        testing::make_recurrent(RecurrentCell::lstm, groups, SequenceOutput::all_steps);
        ADD_FAILURE() << "no OptionError";
    } catch (const OptionError& e) {
        EXPECT_NE(std::string(e.what()).find("recurrent_norm"), std::string::npos) << e.what();
    }
    // Instance statistics of a dense vector are single values: refused at the first forward.
    RecurrentNorms instance;
    instance.input = "instance_norm";
    auto layer = testing::make_recurrent(RecurrentCell::lstm, instance, SequenceOutput::all_steps);
    try {
        layer->forward(random_array({5, 4, testing::kFeatures}, 1), Mode::train);
        ADD_FAILURE() << "no ShapeError";
    } catch (const ShapeError& e) {
        EXPECT_NE(std::string(e.what()).find("input_norm at step 0"), std::string::npos)
            << e.what();
    }
    EXPECT_EQ(layer->slot_normalizer(RecurrentLayer<double>::Slot::input)->saved_contexts(), 0u);
}

TEST(Lstm, TrainingBeyondMaxStepsIsRefusedAndInferenceReusesTheLastStep) {
    auto layer = testing::make_recurrent(RecurrentCell::lstm, RecurrentNorms::batch_norm_lstm(),
                                         SequenceOutput::all_steps, 4);  // max_steps 4
    EXPECT_THROW(layer->forward(random_array({5, 4, testing::kFeatures}, 1), Mode::train),
                 ShapeError);
    EXPECT_NO_THROW(layer->forward(random_array({4, 4, testing::kFeatures}, 1), Mode::train));
    EXPECT_NO_THROW(layer->forward(random_array({9, 4, testing::kFeatures}, 1), Mode::eval));
}

TEST(TimeMajor, SwapsBatchAndTimeAndBack) {
    TimeMajor<double> layer;
    const ArrayD x = random_array({2, 3, 4}, 1);
    const ArrayD y = layer.forward(x, Mode::train);
    ASSERT_EQ(shape_of(y), (Shape{3, 2, 4}));
    EXPECT_EQ(y(2, 1, 3), x(1, 2, 3));
    EXPECT_EQ(layer.backward(y), x);
    EXPECT_THROW(layer.forward(random_array({2, 3}, 1), Mode::train), ShapeError);
}

}  // namespace
}  // namespace normlab::model
