#include "pretokenize.h"

namespace lmfast {

namespace {
constexpr const char* kNames[kNumPatterns] = {"gpt2", "cl100k", "llama3", "qwen2", "o200k"};

bool ascii_letter(uint8_t b) { return (b | 0x20) >= 'a' && (b | 0x20) <= 'z'; }
bool ascii_digit(uint8_t b) { return b >= '0' && b <= '9'; }
}  // namespace

const char* pattern_name(Pattern p) { return kNames[static_cast<int>(p)]; }

bool pattern_from_name(std::string_view name, Pattern& out) {
    for (int k = 0; k < kNumPatterns; ++k) {
        if (name == kNames[k]) {
            out = static_cast<Pattern>(k);
            return true;
        }
    }
    return false;
}

size_t find_cut(std::string_view text, size_t lo, size_t hi) {
    const uint8_t* p = reinterpret_cast<const uint8_t*>(text.data());
    if (hi + 1 > text.size()) hi = text.size() == 0 ? 0 : text.size() - 1;
    for (size_t c = hi; c > lo; --c) {
        const uint8_t a = p[c - 1], b = p[c];
        if (b == ' ' && a < 0x80 && kAscii.fine[a] != kFSpace) return c;
        if (b >= 0x80) continue;
        if (ascii_letter(a) && !ascii_letter(b) && b != '\'') return c;
        if (ascii_digit(a) && !ascii_digit(b)) return c;
        if (b == '\n' && a >= 0x80) {
            size_t s = c - 1;
            while (s > 0 && (p[s] & 0xC0) == 0x80 && c - s < 4) --s;
            size_t len;
            if (pretok_detail::is_letter(fine_class_at(p + s, len)) && s + len == c) return c;
        }
    }
    return 0;
}

}  // namespace lmfast
