#pragma once
// Spec strings: "name" or "name(key=value, key=value)". A variant lists its options once, in a
// visit() member of its options struct; the same list reads a spec, writes the canonical spec
// and describes the options for help texts:
//
//   struct BatchNormOptions {
//       double eps = 1e-5;
//       template <class V> void visit(V& v) { v("eps", eps, "added to the variance"); }
//   };

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace normlab {

struct ParsedSpec {
    std::string name;
    std::vector<std::pair<std::string, std::string>> options;  // in the order given
};

// Throws OptionError on malformed text (unbalanced parentheses, missing '=', repeated keys).
ParsedSpec parse_spec(const std::string& spec);

std::string format_value(double v);
std::string format_value(std::int64_t v);
std::string format_value(bool v);
std::string format_value(const std::string& v);
std::string format_value(const std::optional<double>& v);

// Fills an options struct from the key=value pairs of a spec.
class OptionReader {
  public:
    OptionReader(std::string layer, const std::vector<std::pair<std::string, std::string>>& given);

    void operator()(const std::string& key, double& field, const char* help);
    void operator()(const std::string& key, std::int64_t& field, const char* help);
    void operator()(const std::string& key, bool& field, const char* help);
    void operator()(const std::string& key, std::string& field, const char* help);
    // "none" (or "null") clears the value.
    void operator()(const std::string& key, std::optional<double>& field, const char* help);

    // Throws OptionError naming every key that no option matched and listing the valid ones.
    void finish() const;

  private:
    const std::string* take(const std::string& key);
    [[noreturn]] void bad_value(const std::string& key, const std::string& value,
                                const char* expected) const;

    std::string layer_;
    std::map<std::string, std::string> given_;
    std::vector<std::string> known_;
};

// Writes "key=value" for every option, in declaration order.
class SpecWriter {
  public:
    template <class V>
    void operator()(const std::string& key, const V& field, const char* /*help*/) {
        text_ += (text_.empty() ? "" : ",") + key + "=" + format_value(field);
    }
    const std::string& text() const { return text_; }

  private:
    std::string text_;
};

struct OptionInfo {
    std::string key;
    std::string default_value;
    std::string help;
};

// Collects key, default and help of every option.
class OptionDescriber {
  public:
    template <class V>
    void operator()(const std::string& key, const V& field, const char* help) {
        info_.push_back({key, format_value(field), help});
    }
    const std::vector<OptionInfo>& info() const { return info_; }

  private:
    std::vector<OptionInfo> info_;
};

template <class Options>
Options read_options(const std::string& layer,
                     const std::vector<std::pair<std::string, std::string>>& given) {
    Options o;
    OptionReader reader(layer, given);
    o.visit(reader);
    reader.finish();
    return o;
}

template <class Options>
std::string canonical_spec(const std::string& name, Options o) {
    SpecWriter w;
    o.visit(w);
    return w.text().empty() ? name : name + "(" + w.text() + ")";
}

template <class Options>
std::vector<OptionInfo> describe_options() {
    Options o;
    OptionDescriber d;
    o.visit(d);
    return d.info();
}

}  // namespace normlab
