#include "normlab/options.hpp"

#include <array>
#include <cctype>
#include <charconv>
#include <cmath>
#include <set>

#include "normlab/errors.hpp"

namespace normlab {
namespace {

std::string trim(const std::string& s) {
    std::size_t b = 0, e = s.size();
    while (b < e && std::isspace(static_cast<unsigned char>(s[b])))
        ++b;
    while (e > b && std::isspace(static_cast<unsigned char>(s[e - 1])))
        --e;
    return s.substr(b, e - b);
}

bool valid_identifier(const std::string& s) {
    if (s.empty()) return false;
    for (char ch : s)
        if (!(std::isalnum(static_cast<unsigned char>(ch)) || ch == '_')) return false;
    return true;
}

}  // namespace

ParsedSpec parse_spec(const std::string& spec) {
    ParsedSpec out;
    const std::string text = trim(spec);
    const auto open = text.find('(');
    out.name = trim(text.substr(0, open));
    if (!valid_identifier(out.name))
        throw OptionError("spec '" + spec + "': expected a name such as 'batch_norm', got '" +
                          out.name + "'");
    if (open == std::string::npos) return out;
    if (text.back() != ')' || text.find('(', open + 1) != std::string::npos ||
        text.find(')') != text.size() - 1)
        throw OptionError("spec '" + spec +
                          "': expected 'name(key=value,...)' with one pair of parentheses");
    const std::string body = text.substr(open + 1, text.size() - open - 2);
    if (trim(body).empty()) return out;
    std::set<std::string> seen;
    std::size_t pos = 0;
    while (pos <= body.size()) {
        const auto comma = body.find(',', pos);
        const std::string item =
            body.substr(pos, comma == std::string::npos ? std::string::npos : comma - pos);
        const auto eq = item.find('=');
        if (eq == std::string::npos)
            throw OptionError("spec '" + spec + "': expected key=value, got '" + trim(item) + "'");
        std::string key = trim(item.substr(0, eq));
        std::string value = trim(item.substr(eq + 1));
        if (!valid_identifier(key) || value.empty())
            throw OptionError("spec '" + spec + "': expected key=value, got '" + trim(item) + "'");
        if (!seen.insert(key).second)
            throw OptionError("spec '" + spec + "': option '" + key + "' is given twice");
        out.options.emplace_back(std::move(key), std::move(value));
        if (comma == std::string::npos) break;
        pos = comma + 1;
    }
    return out;
}

std::string format_value(double v) {
    std::array<char, 64> buf{};
    auto res = std::to_chars(buf.data(), buf.data() + buf.size(), v);
    return std::string(buf.data(), res.ptr);
}
std::string format_value(std::int64_t v) {
    return std::to_string(v);
}
std::string format_value(bool v) {
    return v ? "true" : "false";
}
std::string format_value(const std::string& v) {
    return v;
}
std::string format_value(const std::optional<double>& v) {
    return v ? format_value(*v) : std::string("none");
}

OptionReader::OptionReader(std::string layer,
                           const std::vector<std::pair<std::string, std::string>>& given)
    : layer_(std::move(layer)), given_(given.begin(), given.end()) {}

const std::string* OptionReader::take(const std::string& key) {
    known_.push_back(key);
    auto it = given_.find(key);
    return it == given_.end() ? nullptr : &it->second;
}

void OptionReader::bad_value(const std::string& key, const std::string& value,
                             const char* expected) const {
    throw OptionError(layer_ + ": option '" + key + "' expects " + expected + ", got '" + value +
                      "'");
}

void OptionReader::operator()(const std::string& key, double& field, const char*) {
    const std::string* v = take(key);
    if (!v) return;
    double parsed = 0;
    auto res = std::from_chars(v->data(), v->data() + v->size(), parsed);
    if (res.ec != std::errc() || res.ptr != v->data() + v->size() || !std::isfinite(parsed))
        bad_value(key, *v, "a finite number");
    field = parsed;
}

void OptionReader::operator()(const std::string& key, std::int64_t& field, const char*) {
    const std::string* v = take(key);
    if (!v) return;
    std::int64_t parsed = 0;
    auto res = std::from_chars(v->data(), v->data() + v->size(), parsed);
    if (res.ec != std::errc() || res.ptr != v->data() + v->size()) bad_value(key, *v, "an integer");
    field = parsed;
}

void OptionReader::operator()(const std::string& key, bool& field, const char*) {
    const std::string* v = take(key);
    if (!v) return;
    if (*v == "true" || *v == "1")
        field = true;
    else if (*v == "false" || *v == "0")
        field = false;
    else
        bad_value(key, *v, "true or false");
}

void OptionReader::operator()(const std::string& key, std::string& field, const char*) {
    if (const std::string* v = take(key)) field = *v;
}

void OptionReader::operator()(const std::string& key, std::optional<double>& field,
                              const char* help) {
    const std::string* v = take(key);
    if (!v) return;
    if (*v == "none" || *v == "null") {
        field.reset();
        return;
    }
    double parsed = 0;
    (*this)(key, parsed, help);
    field = parsed;
}

void OptionReader::finish() const {
    std::string unknown;
    for (const auto& [key, value] : given_) {
        bool found = false;
        for (const auto& k : known_)
            found = found || k == key;
        if (!found) unknown += (unknown.empty() ? "'" : ", '") + key + "'";
    }
    if (unknown.empty()) return;
    std::string valid;
    for (const auto& k : known_)
        valid += (valid.empty() ? "" : ", ") + k;
    throw OptionError(layer_ + ": unknown option " + unknown +
                      "; valid options: " + (valid.empty() ? std::string("none") : valid));
}

}  // namespace normlab
