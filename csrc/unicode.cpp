#include "unicode.h"

#include <cstring>

namespace lmfast {

size_t utf8_error_offset(const char* data, size_t size) {
    const uint8_t* p = reinterpret_cast<const uint8_t*>(data);
    size_t i = 0;
    while (i < size) {
        // 8 ASCII bytes at a time: most text is ASCII, and this keeps the check far below file-read cost.
        if (i + 8 <= size) {
            uint64_t word;
            std::memcpy(&word, p + i, 8);
            if ((word & 0x8080808080808080ull) == 0) { i += 8; continue; }
        }
        uint8_t b = p[i];
        if (b < 0x80) { ++i; continue; }
        size_t need;
        uint8_t lo = 0x80, hi = 0xBF;  // allowed range of the second byte
        if (b >= 0xC2 && b <= 0xDF) need = 1;
        else if (b == 0xE0) { need = 2; lo = 0xA0; }
        else if (b >= 0xE1 && b <= 0xEC) need = 2;
        else if (b == 0xED) { need = 2; hi = 0x9F; }  // U+D800..U+DFFF are surrogates
        else if (b >= 0xEE && b <= 0xEF) need = 2;
        else if (b == 0xF0) { need = 3; lo = 0x90; }
        else if (b >= 0xF1 && b <= 0xF3) need = 3;
        else if (b == 0xF4) { need = 3; hi = 0x8F; }
        else return i;
        if (i + need >= size) return i;  // truncated sequence at the end
        if (p[i + 1] < lo || p[i + 1] > hi) return i;
        for (size_t k = 2; k <= need; ++k)
            if ((p[i + k] & 0xC0) != 0x80) return i;
        i += need + 1;
    }
    return size;
}

}  // namespace lmfast
