// Character classes and UTF-8 decoding for the pre-tokenizers.
//
// The classes come from the `regex` module itself (scripts/gen_unicode_tables.py writes unicode_tables.h), so
// \p{L}, \p{N}, \s and o200k's \p{Lu}/\p{Ll}/... here mean exactly what they mean in the Python reference. A
// two-stage table costs two loads per code point; ASCII has a 128-entry table of its own, one load from L1.
#pragma once

#include <cstddef>
#include <cstdint>

#include "unicode_tables.h"

namespace lmfast {

// Fine classes, one per code point (disjoint): what o200k's pattern distinguishes. The coarse view of GPT-2's and
// cl100k's patterns folds the three letter classes into \p{L} and counts marks as "other" (\p{M} is not \p{L}).
enum FineClass : uint8_t { kFOther = 0, kFUpper = 1, kFLower = 2, kFLetterOther = 3, kFMark = 4, kFNumber = 5,
                           kFSpace = 6 };
enum CharClass : int { kOther = 0, kLetter = 1, kNumber = 2, kSpace = 3 };

inline constexpr uint8_t kCoarseOf[7] = {kOther, kLetter, kLetter, kLetter, kOther, kNumber, kSpace};

inline int fine_class(uint32_t cp) {
    if (cp >= 0x110000) return kFOther;
    return unicode_tables::kStage2[(static_cast<uint32_t>(unicode_tables::kStage1[cp >> 8]) << 8) | (cp & 0xFF)];
}

inline int char_class(uint32_t cp) { return kCoarseOf[fine_class(cp)]; }

// Fine classes of the 128 ASCII code points, computed once at compile time from the same table.
struct AsciiClasses {
    uint8_t fine[128];
    constexpr AsciiClasses() : fine() {
        for (int c = 0; c < 128; ++c) fine[c] = unicode_tables::kStage2[c];  // block 0 holds U+0000..U+00FF
    }
};
inline constexpr AsciiClasses kAscii{};

// Decodes one code point of valid UTF-8 at p (the caller guarantees validity: text from a Python str, or a
// file checked by utf8_error_offset first) and stores its length in bytes.
inline uint32_t decode_utf8(const uint8_t* p, size_t& len) {
    uint32_t b = p[0];
    if (b < 0x80) { len = 1; return b; }
    if (b < 0xE0) { len = 2; return ((b & 0x1F) << 6) | (p[1] & 0x3F); }
    if (b < 0xF0) { len = 3; return ((b & 0x0F) << 12) | ((p[1] & 0x3F) << 6) | (p[2] & 0x3F); }
    len = 4;
    return ((b & 0x07) << 18) | ((p[1] & 0x3F) << 12) | ((p[2] & 0x3F) << 6) | (p[3] & 0x3F);
}

// Fine class of the code point at p and its length: ASCII from the small table.
inline int fine_class_at(const uint8_t* p, size_t& len) {
    if (p[0] < 0x80) { len = 1; return kAscii.fine[p[0]]; }
    return fine_class(decode_utf8(p, len));
}

// Offset of the first byte that is not part of valid UTF-8 (as Python's strict decoder defines it: no
// overlongs, no surrogates, nothing above U+10FFFF), or `size` when all of it is valid.
size_t utf8_error_offset(const char* data, size_t size);

}  // namespace lmfast
