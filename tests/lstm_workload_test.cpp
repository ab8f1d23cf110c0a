// The recurrent workloads of build_model ("lstm", "lstm_varlen") and how sequence lengths reach
// the model: from the data set, or from the workload's length rule.
#include <set>

#include <gtest/gtest.h>

#include "normlab/data/dataset.hpp"
#include "normlab/errors.hpp"
#include "normlab/model/recurrent.hpp"
#include "normlab/model/training.hpp"
#include "normlab/train/trainer.hpp"

namespace normlab {
namespace {

const data::Split& synthetic() {
    static const data::Split s = data::make_synthetic(240, 100, 4);
    return s;
}

TEST(LstmWorkload, ReadsImagesRowByRowAndClassifiesFromTheLastHiddenState) {
    EXPECT_EQ(model::example_shape("lstm"), (Shape{28, 28}));
    EXPECT_EQ(model::example_shape("lstm_varlen"), (Shape{28, 28}));
    auto m = model::build_model<float>("lstm", "layer_norm", 1);
    EXPECT_EQ(m.describe(),
              "0 time_major\n"
              "1 lstm(28 -> 128; input_norm layer_norm, recurrent_norm layer_norm, cell_norm "
              "layer_norm)\n"
              "2 linear(128 -> 10)\n");
    const Array<float> x = xt::reshape_view(synthetic().train.slice(0, 6).images, {6, 28, 28});
    EXPECT_EQ(shape_of(m.forward(x, Mode::train)), (Shape{6, 10}));
    EXPECT_FALSE(m.has_length_rule());
    // BN-LSTM recipe for batch statistics: 28 steps of statistics per slot.
    auto bn = model::build_model<float>("lstm", "batch_norm", 1);
    std::size_t gates = 0;
    for (const auto& b : bn.buffers())
        gates += b.name.find("input_norm.step27.running_mean") != std::string::npos;
    EXPECT_EQ(gates, 1u);
    for (const auto& p : bn.parameters())
        if (p.name.ends_with("norm.weight")) {
            EXPECT_FLOAT_EQ((*p.value)(0), 0.1f) << p.name;
        }
}

TEST(LstmWorkload, VarlenLengthsAreUniformAndFixedByTheExampleAlone) {
    const auto& images = synthetic().train.images;
    const Array<float> batch = xt::reshape_view(images, {240, 28, 28});
    const auto lengths = model::varlen_lengths(batch);
    std::set<std::size_t> seen(lengths.begin(), lengths.end());
    EXPECT_EQ(*seen.begin(), 7u);
    EXPECT_EQ(*seen.rbegin(), 28u);
    EXPECT_GE(seen.size(), 20u);  // 22 possible values, 240 draws
    // Another subset and order: each example keeps its length.
    const Array<float> part = xt::reshape_view(synthetic().train.slice(100, 7).images, {7, 28, 28});
    const auto again = model::varlen_lengths(part);
    for (std::size_t i = 0; i < 7; ++i)
        EXPECT_EQ(again[i], lengths[100 + i]);
}

TEST(LstmWorkload, VarlenModelAppliesItsLengthRuleUnlessLengthsAreGiven) {
    auto m = model::build_model<float>("lstm_varlen", "batch_norm", 2);
    ASSERT_TRUE(m.has_length_rule());
    auto plain = model::build_model<float>("lstm", "batch_norm", 2);  // the same weights
    const Array<float> x = xt::reshape_view(synthetic().train.slice(0, 8).images, {8, 28, 28});
    const auto lengths = model::varlen_lengths(x);
    const Array<float> ruled = m.forward(x, Mode::eval, Grad::none);
    EXPECT_EQ(ruled, plain.forward(x, lengths, Mode::eval, Grad::none));
    EXPECT_NE(ruled, plain.forward(x, Mode::eval, Grad::none));
    const std::vector<std::size_t> full(8, 28);
    EXPECT_EQ(m.forward(x, full, Mode::eval, Grad::none), plain.forward(x, Mode::eval, Grad::none));
}

TEST(LstmWorkload, DataSetLengthsReachTheBatches) {
    data::Dataset d = synthetic().train.slice(0, 10);
    for (std::size_t i = 0; i < 10; ++i)
        d.lengths.push_back(i + 1);
    EXPECT_EQ(d.slice(3, 2).lengths, (std::vector<std::size_t>{4, 5}));
    data::BatchIterator it(d, 4, 0, 0, false, false);
    Array<float> x;
    std::vector<int> y;
    std::vector<std::size_t> lengths;
    ASSERT_TRUE(it.next(x, y, {28, 28}, &lengths));
    EXPECT_EQ(lengths, (std::vector<std::size_t>{1, 2, 3, 4}));
    d.lengths.pop_back();
    EXPECT_THROW(data::BatchIterator(d, 4, 0, 0), ShapeError);
}

TEST(LstmWorkload, TrainerRunsBothWorkloadsWithBatchAndLayerStatistics) {
    for (const char* workload : {"lstm", "lstm_varlen"})
        for (const char* norm : {"batch_norm", "layer_norm"}) {
            train::TrainConfig c;
            c.workload = workload;
            c.normalizer = norm;
            c.batch_size = 20;
            c.epochs = 2;
            c.optimizer = "adam";
            c.lr = 0.003;
            train::Trainer trainer(c, synthetic().train, synthetic().test);
            const auto r = trainer.run();
            ASSERT_EQ(r.status, "ok") << workload << " " << norm << ": " << r.message;
            ASSERT_EQ(r.epochs.size(), 2u);
            // Learning has begun: above chance (10%) after two epochs of 12 steps.
            EXPECT_GT(r.epochs.back().test.accuracy, 0.15) << workload << " " << norm;
            EXPECT_LT(r.epochs.back().train_loss, r.loss_curve.front()) << workload << " " << norm;
        }
}

}  // namespace
}  // namespace normlab
