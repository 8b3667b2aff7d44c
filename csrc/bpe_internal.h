// Helpers the encoder (bpe.cpp) and the trainer (bpe_train.cpp) share; internal to the extension, not its API.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <string>
#include <string_view>
#include <vector>

#include "pretokenize.h"

namespace lmfast {

// "0x4f": a byte for error messages.
std::string hex_byte(unsigned b);

// Runs fn(worker_index) for indices 0..n-1 on n threads (inline when n == 1; a parked pool when free) and rethrows
// the first exception.
void run_workers(int n, const std::function<void(int)>& fn);

// A pair of token ids as one 64-bit key, and its slot in an open-addressing table of mask + 1 slots.
inline uint64_t pair_key(uint32_t a, uint32_t b) { return (static_cast<uint64_t>(a) << 32) | b; }

inline size_t pair_slot(uint64_t key, size_t mask) {
    return static_cast<size_t>((key * 0x9E3779B97F4A7C15ull) >> 17) & mask;
}

// Splits text at occurrences of the given special tokens: leftmost occurrence first, the longest one when several
// start at the same byte. Calls on_text(begin, end) for the (possibly empty) text between them and
// on_special(index) for each occurrence, in order.
template <class OnText, class OnSpecial>
inline void split_on_specials(std::string_view text, const std::vector<std::string_view>& specials, OnText&& on_text,
                       OnSpecial&& on_special) {
    constexpr size_t npos = std::string_view::npos;
    // Next occurrence of each special at or after `pos`, refreshed only when passed: one find per occurrence.
    std::vector<size_t> next(specials.size());
    for (size_t k = 0; k < specials.size(); ++k) next[k] = text.find(specials[k]);
    size_t pos = 0;
    while (true) {
        size_t best = npos, best_k = 0;
        for (size_t k = 0; k < specials.size(); ++k) {
            if (next[k] == npos) continue;
            if (next[k] < best || (next[k] == best && specials[k].size() > specials[best_k].size())) {
                best = next[k];
                best_k = k;
            }
        }
        if (best == npos) break;
        on_text(pos, best);
        on_special(best_k);
        pos = best + specials[best_k].size();
        for (size_t k = 0; k < specials.size(); ++k)
            if (next[k] != npos && next[k] < pos) next[k] = text.find(specials[k], pos);
    }
    on_text(pos, text.size());
}

// Training's first half (bpe_count.cpp): the pre-token counts of a UTF-8 file, split on the special tokens first,
// read in blocks of block_size bytes (0: the default) on num_workers >= 1 threads, so memory holds the counts and a
// few blocks, never the file. Calls each(pre-token, count) once per distinct pre-token at the end, and
// progress(bytes done, file size) from the calling thread at the start, about every 100 ms and at the end; an
// exception it throws stops every thread. Invalid UTF-8 raises std::invalid_argument naming the byte offset.
void count_file_pretokens(const std::string& path, const std::vector<std::string_view>& specials, Pattern pattern,
                          int num_workers, size_t block_size,
                          const std::function<void(uint64_t, uint64_t)>& progress,
                          const std::function<void(std::string_view, int64_t)>& each);

}  // namespace lmfast
