// Character classes and UTF-8 decoding for the GPT-2 pre-tokenizer.
//
// The classes come from the `regex` module itself (scripts/gen_unicode_tables.py writes unicode_tables.h), so
// \p{L}, \p{N} and \s here mean exactly what they mean in the Python reference. A two-stage table costs two
// loads per code point; ASCII stays in the first block, which is hot in cache.
#pragma once

#include <cstddef>
#include <cstdint>

#include "unicode_tables.h"

namespace lmfast {

enum CharClass : int { kOther = 0, kLetter = 1, kNumber = 2, kSpace = 3 };

inline int char_class(uint32_t cp) {
    if (cp >= 0x110000) return kOther;
    return unicode_tables::kStage2[(static_cast<uint32_t>(unicode_tables::kStage1[cp >> 8]) << 8) | (cp & 0xFF)];
}

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

// Offset of the first byte that is not part of valid UTF-8 (as Python's strict decoder defines it: no
// overlongs, no surrogates, nothing above U+10FFFF), or `size` when all of it is valid.
size_t utf8_error_offset(const char* data, size_t size);

}  // namespace lmfast
