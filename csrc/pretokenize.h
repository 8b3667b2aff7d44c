// The pre-tokenizers: the split patterns of GPT-2, cl100k (GPT-4 and the Llama-3 family), o200k and Qwen2, each
// hand-written instead of run by a regex engine, and the safe cut points that let a long text be encoded in pieces.
//
// Each pretokenize_* calls emit(begin, end) with byte offsets for each piece of valid UTF-8, in order; the pieces
// tile the input exactly as the `regex` module's findall with the pattern does (tests/test_pretokenizers.py holds
// them to it on edge cases and a Unicode fuzz, and to tiktoken built with the same pattern). Every alternative of
// these patterns is a run of one class, so one forward pass with a code point or two of lookahead decides each
// piece; ASCII takes a 128-entry class table.
//
// Speed (GPT-2's pattern, the mixed corpus of benchmarks/mixed_corpus.py, 21 MB, one thread): the split alone
// runs at ~300 MB/s with per-code-point classes from the two-stage table; the ASCII table lifted it to ~420 MB/s,
// 8-byte letter runs to ~530; GPT-2's bit masks (gpt2_starts) to ~1170 MB/s.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>
#include <string_view>
#include <vector>

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

#include "unicode.h"

namespace lmfast {

enum class Pattern : uint8_t {
    kGpt2 = 0,    // 's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
    kCl100k = 1,  // tiktoken's cl100k_base: '(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+|
                  //   ?[^\s\p{L}\p{N}]++[\r\n]*+|\s++$|\s*[\r\n]|\s+(?!\S)|\s
    kLlama3 = 2,  // cl100k as Llama-3's tokenizer.json writes it: (?i:'s|'t|'re|'ve|'m|'ll|'d)|
                  //   [^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+
                  // (it differs from kCl100k only in trailing whitespace holding a newline at the end of the text)
    kQwen2 = 3,   // Llama-3's with single digits: ...|\p{N}|...
    kO200k = 4,   // tiktoken's o200k_base (GPT-4o): letter runs split at case changes, contractions attached
};
inline constexpr int kNumPatterns = 5;

// "gpt2", "cl100k", "llama3", "qwen2", "o200k".
const char* pattern_name(Pattern p);
// The pattern of a name; false when the name is none of them.
bool pattern_from_name(std::string_view name, Pattern& out);

namespace pretok_detail {

inline bool is_letter(int fine) { return fine >= kFUpper && fine <= kFLetterOther; }
inline bool is_nl(uint8_t b) { return b == '\r' || b == '\n'; }

// Length of a contraction ('s 't 're 've 'm 'll 'd) starting at the apostrophe p[i], or 0. Case-insensitive ones
// fold as `regex` and Rust's regex do (simple case folding: 's' also matches U+017F LATIN SMALL LETTER LONG S).
template <bool kIgnoreCase>
inline size_t contraction_len(const uint8_t* p, size_t i, size_t n) {
    if (i + 1 >= n || p[i] != '\'') return 0;
    uint8_t d = p[i + 1];
    if (kIgnoreCase) {
        if (d == 0xC5 && i + 2 < n && p[i + 2] == 0xBF) return 3;  // 'ſ
        if (d >= 'A' && d <= 'Z') d = static_cast<uint8_t>(d + 32);
    }
    if (d == 's' || d == 't' || d == 'm' || d == 'd') return 2;
    if (i + 2 >= n) return 0;
    uint8_t e = p[i + 2];
    if (kIgnoreCase && e >= 'A' && e <= 'Z') e = static_cast<uint8_t>(e + 32);
    if ((d == 'r' && e == 'e') || (d == 'v' && e == 'e') || (d == 'l' && e == 'l')) return 3;
    return 0;
}

// End of the run of code points whose fine class satisfies `in` that starts at byte j.
template <class In>
inline size_t run_end(const uint8_t* p, size_t n, size_t j, In in) {
    while (j < n) {
        size_t len;
        if (!in(fine_class_at(p + j, len))) break;
        j += len;
    }
    return j;
}

// The whitespace alternatives once the others failed at a whitespace code point i (of length len):
// GPT-2: \s+(?!\S)|\s+. The cl100k family adds, first, \s*[\r\n]+ (up to the run's last newline), and tiktoken's
// cl100k \s++$ before that (a run reaching the end of the text is one piece).
template <bool kNewlines, bool kWholeAtEnd>
inline size_t whitespace_end(const uint8_t* p, size_t n, size_t i, size_t len) {
    size_t last = i, j = i + len, after_nl = 0;
    if (kNewlines && is_nl(p[i])) after_nl = i + 1;
    while (j < n) {
        size_t l2;
        if (fine_class_at(p + j, l2) != kFSpace) break;
        if (kNewlines && is_nl(p[j])) after_nl = j + 1;
        last = j;
        j += l2;
    }
    if (kWholeAtEnd && j == n) return n;
    if (kNewlines && after_nl) return after_nl;
    return (j == n || last == i) ? j : last;
}

}  // namespace pretok_detail

namespace pretok_detail {

// Byte classes for the ASCII fast paths: the coarse class of an ASCII byte, kNonAscii for a byte >= 0x80.
inline constexpr int kNonAscii = 4;
struct ByteClasses {
    uint8_t cls[256];
    constexpr ByteClasses() : cls() {
        for (int c = 0; c < 256; ++c) cls[c] = c < 128 ? kCoarseOf[kAscii.fine[c]] : kNonAscii;
    }
};
inline constexpr ByteClasses kBytes{};

// End of the run of ASCII letters from j: 8 bytes at a time (SWAR), then byte by byte near the end of the text.
// Letter runs are most of the pieces of prose and code, ~5 bytes on average.
inline size_t ascii_letters_end(const uint8_t* p, size_t n, size_t j) {
    constexpr uint64_t kHigh = 0x8080808080808080ull, kLow7 = 0x7F7F7F7F7F7F7F7Full;
    while (j + 8 <= n) {
        uint64_t w;
        std::memcpy(&w, p + j, 8);
        const uint64_t x = (w | 0x2020202020202020ull) & kLow7;  // folds case; no carry between bytes below
        const uint64_t ge_a = x + 0x1F1F1F1F1F1F1F1Full;       // high bit: x >= 'a'
        const uint64_t gt_z = x + 0x0505050505050505ull;       // high bit: x > 'z'
        const uint64_t letter = ge_a & ~gt_z & ~w & kHigh;     // and the byte itself is ASCII
        const uint64_t stop = ~letter & kHigh;
        if (stop) return j + (static_cast<size_t>(__builtin_ctzll(stop)) >> 3);
        j += 8;
    }
    while (j < n && kBytes.cls[p[j]] == kLetter) ++j;
    return j;
}

// End of the run of coarse class cls from j: ASCII first, then any code point (a letter run goes on into é, 中).
inline size_t coarse_run_end(const uint8_t* p, size_t n, size_t j, int cls) {
    if (cls == kLetter) j = ascii_letters_end(p, n, j);
    else while (j < n && kBytes.cls[p[j]] == cls) ++j;
    if (j < n && p[j] >= 0x80) j = run_end(p, n, j, [cls](int f) { return kCoarseOf[f] == cls; });
    return j;
}

// The end of GPT-2's piece that starts at i. Contractions come first in the alternation and are lowercase ASCII.
inline size_t next_gpt2(const uint8_t* p, size_t n, size_t i) {
    const uint8_t c = p[i];
    int cls = kBytes.cls[c];
    if (c == ' ' && i + 1 < n) {  // ` ?X+` where X is the class of the next code point
        int cls2 = kBytes.cls[p[i + 1]];
        if (cls2 == kNonAscii) {
            size_t len2;
            cls2 = kCoarseOf[fine_class_at(p + i + 1, len2)];
            if (cls2 != kSpace) return coarse_run_end(p, n, i + 1 + len2, cls2);
        } else if (cls2 != kSpace) {
            return coarse_run_end(p, n, i + 2, cls2);  // " 's" too: a contraction never follows the space
        }
    }
    if (c == '\'') {
        if (size_t k = contraction_len<false>(p, i, n)) return i + k;
    }
    size_t len = 1;
    if (cls == kNonAscii) cls = kCoarseOf[fine_class_at(p + i, len)];
    if (cls != kSpace) return coarse_run_end(p, n, i + len, cls);
    return whitespace_end<false, false>(p, n, i, len);
}

// The end of the piece of cl100k, Llama-3 or Qwen2 that starts at i: case-insensitive contractions, letters with one
// leading non-letter non-newline, digits in groups of kMaxDigits, punctuation runs that take the newlines after
// them, and newline-aware whitespace.
template <int kMaxDigits, bool kWholeAtEnd>
inline size_t next_cl100k(const uint8_t* p, size_t n, size_t i) {
    auto punct = [](int f) { return f == kFOther || f == kFMark; };  // [^\s\p{L}\p{N}]
    if (p[i] == '\'') {
        if (size_t c = contraction_len<true>(p, i, n)) return i + c;
    }
    size_t len, tmp;
    const int f = fine_class_at(p + i, len);
    if (is_letter(f)) return coarse_run_end(p, n, i + len, kLetter);
    if (f != kFNumber && !is_nl(p[i]) && i + len < n && is_letter(fine_class_at(p + i + len, tmp)))
        return coarse_run_end(p, n, i + len, kLetter);  // [^\r\n\p{L}\p{N}]\p{L}+
    if (f == kFNumber) {
        size_t j = i + len;
        for (int k = 1; k < kMaxDigits && j < n && fine_class_at(p + j, tmp) == kFNumber; ++k) j += tmp;
        return j;
    }
    if (punct(f) || (p[i] == ' ' && i + 1 < n && punct(fine_class_at(p + i + 1, tmp)))) {
        size_t j = run_end(p, n, punct(f) ? i + len : i + 1, punct);  // ' ?[^\s\p{L}\p{N}]+[\r\n]*'
        while (j < n && is_nl(p[j])) ++j;
        return j;
    }
    return whitespace_end<true, kWholeAtEnd>(p, n, i, len);
}

inline bool o200k_upper(int f) { return f == kFUpper || f == kFLetterOther || f == kFMark; }  // [\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]
inline bool o200k_lower(int f) { return f == kFLower || f == kFLetterOther || f == kFMark; }  // [\p{Ll}\p{Lm}\p{Lo}\p{M}]

// o200k's first letter alternative from byte s: [upper]*[lower]+ then an optional contraction; 0 when it fails.
// With backtracking, [upper]* gives back code points until [lower]+ can start: if the upper run ends at a lower
// (Ll) code point, the lower run goes on from there; else the match ends after the run's last code point that is
// both upper and lower (Lm, Lo, M).
inline size_t o200k_first(const uint8_t* p, size_t n, size_t s) {
    size_t j = s, last_both = 0;
    int f = kFOther;
    while (j < n) {
        size_t len;
        f = fine_class_at(p + j, len);
        if (!o200k_upper(f)) break;
        j += len;
        if (f != kFUpper) last_both = j;
    }
    size_t end;
    if (j < n && f == kFLower) end = run_end(p, n, j, o200k_lower);
    else if (last_both) end = last_both;
    else return 0;
    return end + contraction_len<true>(p, end, n);
}

// The second: [upper]+[lower]* then an optional contraction; 0 when it fails.
inline size_t o200k_second(const uint8_t* p, size_t n, size_t s) {
    size_t j = run_end(p, n, s, o200k_upper);
    if (j == s) return 0;
    j = run_end(p, n, j, o200k_lower);
    return j + contraction_len<true>(p, j, n);
}

// The end of o200k's piece that starts at i.
inline size_t next_o200k(const uint8_t* p, size_t n, size_t i) {
    auto punct = [](int f) { return f == kFOther || f == kFMark; };
    size_t len, j = 0, tmp;
    const int f = fine_class_at(p + i, len);
    // [^\r\n\p{L}\p{N}]? before either letter alternative: tried with the prefix first, then without.
    const bool prefix = !is_letter(f) && f != kFNumber && !is_nl(p[i]) && i + len < n;
    if (prefix) j = o200k_first(p, n, i + len);
    if (!j) j = o200k_first(p, n, i);
    if (!j && prefix) j = o200k_second(p, n, i + len);
    if (!j) j = o200k_second(p, n, i);
    if (j) return j;
    if (f == kFNumber) {
        j = i + len;
        for (int k = 1; k < 3 && j < n && fine_class_at(p + j, tmp) == kFNumber; ++k) j += tmp;
        return j;
    }
    if (punct(f) || (p[i] == ' ' && i + 1 < n && punct(fine_class_at(p + i + 1, tmp)))) {
        j = run_end(p, n, punct(f) ? i + len : i + 1, punct);  // ' ?[^\s\p{L}\p{N}]+[\r\n/]*'
        while (j < n && (is_nl(p[j]) || p[j] == '/')) ++j;
        return j;
    }
    return whitespace_end<true, false>(p, n, i, len);
}

#if defined(__SSE2__)
// GPT-2's pieces by bit masks, 60 bytes at a time: where one-piece-at-a-time spent a branch or more per piece on
// classes and run ends (~60 instructions and ~0.8 mispredicted branches a piece on the mixed corpus), a window of 64
// bytes is classified with SSE2 compares into bit masks (bit r: byte i + r), the piece starts follow from a few
// shifts and ands, and each piece end costs a tzcnt. The rules, for a window that starts at a piece start i:
//   - a piece starts where the class (letter, number, whitespace, other) changes, except right after a ' ' that
//     is followed by a non-space (` ?\p{L}+` and the like take the space);
//   - in a whitespace run followed by a non-space, its last character starts a piece (\s+(?!\S) stops before it);
//   - an apostrophe that starts a piece and is followed by s, t, m, d, re, ve or ll is a piece of its own (the
//     contractions come first in the pattern), and the next piece starts after it.
// Each rule looks at most 3 bytes ahead, so the starts at r <= 60 are final. A multi-byte code point takes its class
// on all its bytes (one scalar lookup each: 1.6% of the bytes of the mixed corpus). A window with non-ASCII
// whitespace (U+00A0, U+2028, ...) goes one piece at a time as before, and so does a piece of more than 60 bytes.
inline constexpr int kGpt2Window = 64, kGpt2Step = 60;

// The ASCII classes gpt2_starts computes with compares, checked against the generated table.
constexpr bool ascii_ranges_match_the_table() {
    for (int c = 0; c < 128; ++c) {
        const int coarse = kCoarseOf[kAscii.fine[c]];
        const bool letter = (c | 0x20) >= 'a' && (c | 0x20) <= 'z', number = c >= '0' && c <= '9';
        const bool space = c == ' ' || (c >= 9 && c <= 13);
        if ((coarse == kLetter) != letter || (coarse == kNumber) != number || (coarse == kSpace) != space) return false;
    }
    return true;
}
static_assert(ascii_ranges_match_the_table(),
              "gpt2_starts' ASCII letters, digits or whitespace differ from \\p{L}, \\p{N}, \\s");

// Piece starts in the 64 bytes at p (p[0] starts a piece, and the text ends after `len` bytes when len < 64), bit r
// for byte r: final for r <= kGpt2Step, with a start at len. False when the window holds non-ASCII whitespace.
inline bool gpt2_starts(const uint8_t* p, size_t len, uint64_t& starts) {
    __m128i v[4];
    for (int q = 0; q < 4; ++q) v[q] = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p + 16 * q));
    // x in [lo, lo + count), as a signed compare after moving lo to -128
    auto in = [](__m128i x, int lo, int count) {
        const __m128i t = _mm_add_epi8(x, _mm_set1_epi8(static_cast<char>(-128 - lo)));
        return _mm_cmplt_epi8(t, _mm_set1_epi8(static_cast<char>(-128 + count)));
    };
    auto mask = [&v](auto test) {
        uint64_t m = 0;
        for (int q = 3; q >= 0; --q) m = (m << 16) | static_cast<uint32_t>(_mm_movemask_epi8(test(v[q])));
        return m;
    };
    auto is = [&mask](char c) { return mask([c](__m128i x) { return _mm_cmpeq_epi8(x, _mm_set1_epi8(c)); }); };
    const uint64_t valid = len >= 64 ? ~uint64_t{0} : (uint64_t{1} << len) - 1;
    uint64_t letter = mask([&](__m128i x) { return in(_mm_or_si128(x, _mm_set1_epi8(0x20)), 'a', 26); });
    uint64_t number = mask([&](__m128i x) { return in(x, '0', 10); });
    const uint64_t space = valid & mask([&](__m128i x) {  // \t \n \v \f \r and ' '
        return _mm_or_si128(in(x, 9, 5), _mm_cmpeq_epi8(x, _mm_set1_epi8(' ')));
    });
    if (const uint64_t high = valid & mask([](__m128i x) { return x; })) {
        // Lead bytes (>= 0xC0) of code points that start at r <= kGpt2Step (whose bytes are all in the window).
        uint64_t lead = high & ~mask([&](__m128i x) { return in(x, 0x80, 0x40); }) & ((uint64_t{2} << kGpt2Step) - 1);
        for (; lead; lead &= lead - 1) {
            const int r = __builtin_ctzll(lead);
            size_t bytes;
            const int cls = kCoarseOf[fine_class(decode_utf8(p + r, bytes))];
            if (cls == kSpace) return false;
            const uint64_t bits = ((uint64_t{1} << bytes) - 1) << r;
            if (cls == kLetter) letter |= bits;
            else if (cls == kNumber) number |= bits;
        }
    }
    const uint64_t b0 = letter | space, b1 = number | space, solid = valid & ~space;
    const uint64_t change = (b0 ^ (b0 << 1)) | (b1 ^ (b1 << 1));
    const uint64_t attach = is(' ') & (solid >> 1);
    uint64_t s = (change & ~(attach << 1)) | (space & (space << 1) & (solid >> 1)) | 1;
    if (const uint64_t quote = is('\'') & s) {
        const uint64_t e = is('e'), l = is('l');
        const uint64_t two = quote & ((is('s') | is('t') | is('m') | is('d')) >> 1);
        const uint64_t three = quote & ((((is('r') | is('v')) & (e >> 1)) | (l & (l >> 1))) >> 1);
        s = (s & ~(two << 1) & ~(three << 1) & ~(three << 2)) | (two << 2) | (three << 3);
    }
    if (len < 64) s = (s & valid) | (uint64_t{1} << len);
    starts = s;
    return true;
}

// fill() for GPT-2's pattern: the piece ends from windows of gpt2_starts, one piece at a time where it declines.
inline size_t fill_gpt2(const uint8_t* p, size_t n, size_t i, size_t* ends, size_t max) {
    constexpr uint64_t kFinal = ((uint64_t{1} << kGpt2Step) - 1) << 1;  // starts at 1..kGpt2Step
    size_t k = 0;
    while (k < max && i < n) {
        const uint8_t* w = p + i;
        alignas(16) uint8_t tail[kGpt2Window];
        if (n - i < kGpt2Window) {  // the last bytes of the text, copied so that the loads stay inside it
            std::memset(tail, 0, sizeof(tail));
            std::memcpy(tail, w, n - i);
            w = tail;
        }
        uint64_t s;
        if (gpt2_starts(w, n - i, s) && (s &= kFinal) != 0) {
            size_t last = i;
            do {
                last = i + static_cast<size_t>(__builtin_ctzll(s));
                ends[k++] = last;
                s &= s - 1;
            } while (s && k < max);
            i = last;
        } else {
            i = next_gpt2(p, n, i);
            ends[k++] = i;
        }
    }
    return k;
}
#endif

template <class Next>
inline size_t fill(const uint8_t* p, size_t n, size_t i, size_t* ends, size_t max, Next next) {
    size_t k = 0;
    while (k < max && i < n) {
        i = next(p, n, i);
        ends[k++] = i;
    }
    return k;
}

}  // namespace pretok_detail

// The ends of up to `max` pieces of the pre-tokenizer of `pattern` from byte i of valid UTF-8 (a piece boundary),
// in order; returns how many. The pieces from a boundary never depend on the text before it, so a caller resumes
// from the last end. Batches let the encoder look the pieces up with their memory accesses overlapped.
inline size_t pretokenize_some(Pattern pattern, const uint8_t* p, size_t n, size_t i, size_t* ends, size_t max) {
    using namespace pretok_detail;
    switch (pattern) {
#if defined(__SSE2__)
        case Pattern::kGpt2: return fill_gpt2(p, n, i, ends, max);
#else
        case Pattern::kGpt2: return fill(p, n, i, ends, max, next_gpt2);
#endif
        case Pattern::kCl100k: return fill(p, n, i, ends, max, next_cl100k<3, true>);
        case Pattern::kLlama3: return fill(p, n, i, ends, max, next_cl100k<3, false>);
        case Pattern::kQwen2: return fill(p, n, i, ends, max, next_cl100k<1, false>);
        case Pattern::kO200k: return fill(p, n, i, ends, max, next_o200k);
    }
    return 0;
}

// The pre-tokenizer of `pattern` over valid UTF-8: emit(begin, end) for each piece, in order.
template <class Emit>
void pretokenize(Pattern pattern, std::string_view text, Emit&& emit) {
    const uint8_t* p = reinterpret_cast<const uint8_t*>(text.data());
    const size_t n = text.size();
    size_t ends[64], i = 0;
    while (i < n) {
        const size_t k = pretokenize_some(pattern, p, n, i, ends, 64);
        for (size_t j = 0; j < k; ++j) {
            emit(i, ends[j]);
            i = ends[j];
        }
    }
}

// GPT-2's pattern (the default everywhere before patterns were selectable).
template <class Emit>
void pretokenize(std::string_view text, Emit&& emit) {
    pretokenize(Pattern::kGpt2, text, emit);
}

// The rightmost byte offset c in (lo, hi] where every pattern above ends a piece, so that pre-tokenizing text[..c)
// and text[c..) apart gives the pieces of the whole (c < text.size(): the cut needs the byte after it), or 0 when
// there is none. Cuts, all decided by at most one code point on each side:
//   - an ASCII non-whitespace byte, then ' ' (no piece holds a non-space followed by a space: letters take one
//     leading character, punctuation a leading ' ' and trailing newlines, whitespace runs hold only whitespace);
//   - an ASCII letter, then an ASCII byte that is neither a letter nor an apostrophe (o200k attaches contractions);
//   - an ASCII digit, then an ASCII non-digit (digit pieces hold only digits);
//   - a letter code point (\p{L}), then '\n' (a letter piece ends at its last letter, and '\n' is no letter).
// A piece never depends on the text before it (no pattern has lookbehind), and the left part ends in a
// non-whitespace code point, so neither the (?!\S) lookahead nor `$` sees a different character.
size_t find_cut(std::string_view text, size_t lo, size_t hi);

}  // namespace lmfast
