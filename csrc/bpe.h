// The BPE tokenizer core: GPT-2 pre-tokenizer, byte-level BPE encoding and decoding, and BPE training.
//
// Plain C++17 with no Python types (bindings.cpp is the only pybind11 file). Bad input raises
// std::invalid_argument (ValueError in Python); I/O problems raise FileNotFound or std::runtime_error.
// Sections in the same order as lmfast/tokenizer.py: pre-tokenizer, Encoding, Decoding, Training.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "unicode.h"

namespace lmfast {

struct FileNotFound : std::runtime_error {
    using std::runtime_error::runtime_error;
};

// ---------------------------------------------------------------------------------------------------------
// Pre-tokenizer
// ---------------------------------------------------------------------------------------------------------

// Splits valid UTF-8 the way the `regex` module splits it with GPT-2's pattern
//     's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
// calling emit(begin, end) with byte offsets for each piece, in order; the pieces tile the input.
// Hand-written instead of a regex engine: each alternative is one class run, so one forward pass with at
// most one code point of lookahead decides every piece.
template <class Emit>
void pretokenize(std::string_view text, Emit&& emit) {
    const uint8_t* p = reinterpret_cast<const uint8_t*>(text.data());
    const size_t n = text.size();
    // End of the run of class `cls` that starts at byte j.
    auto run_end = [p, n](size_t j, int cls) {
        while (j < n) {
            if (p[j] < 0x80) {
                if (char_class(p[j]) != cls) break;
                ++j;
            } else {
                size_t len;
                if (char_class(decode_utf8(p + j, len)) != cls) break;
                j += len;
            }
        }
        return j;
    };
    size_t i = 0;
    while (i < n) {
        // Contractions come first in the alternation and are lowercase ASCII only.
        if (p[i] == '\'' && i + 1 < n) {
            uint8_t d = p[i + 1];
            if (d == 's' || d == 't' || d == 'm' || d == 'd') {
                emit(i, i + 2);
                i += 2;
                continue;
            }
            if (i + 2 < n) {
                uint8_t e = p[i + 2];
                if ((d == 'r' && e == 'e') || (d == 'v' && e == 'e') || (d == 'l' && e == 'l')) {
                    emit(i, i + 3);
                    i += 3;
                    continue;
                }
            }
        }
        size_t len;
        uint32_t c = decode_utf8(p + i, len);
        int cls = char_class(c);
        if (c == ' ' && i + 1 < n) {  // ` ?X+` where X is the class of the next code point
            size_t len2;
            int cls2 = char_class(decode_utf8(p + i + 1, len2));
            if (cls2 != kSpace) {
                size_t j = run_end(i + 1 + len2, cls2);
                emit(i, j);
                i = j;
                continue;
            }
        }
        if (cls != kSpace) {
            size_t j = run_end(i + len, cls);
            emit(i, j);
            i = j;
            continue;
        }
        // Whitespace: `\s+(?!\S)` takes the whole run at the end of text, else all but its last code point
        // (which then starts the next piece: ` word`, or a lone `\n`); a single one falls to `\s+`.
        size_t last = i, j = i + len;
        while (j < n) {
            size_t l2;
            if (char_class(decode_utf8(p + j, l2)) != kSpace) break;
            last = j;
            j += l2;
        }
        size_t end = (j == n || last == i) ? j : last;
        emit(i, end);
        i = end;
    }
}

// ---------------------------------------------------------------------------------------------------------
// Hash maps (open addressing; the std ones cost a pointer chase and a modulo per probe)
// ---------------------------------------------------------------------------------------------------------

uint64_t hash_bytes(const char* data, size_t size);

// Byte string -> value. Keys are views the caller keeps alive.
template <class V>
class BytesMap {
   public:
    struct Slot {
        uint64_t hash = 0;
        const char* data = nullptr;
        uint32_t size = 0;
        bool used = false;
        V value{};
    };

    explicit BytesMap(size_t expected = 16) { rehash(capacity_for(expected)); }

    // Slot for key, inserted with value V{} when absent.
    V& operator[](std::string_view key) {
        if ((count_ + 1) * 2 > slots_.size()) rehash(slots_.size() * 2);
        uint64_t h = hash_bytes(key.data(), key.size());
        size_t i = h & mask_;
        while (slots_[i].used) {
            if (slots_[i].hash == h && slots_[i].size == key.size() && equal(slots_[i], key)) return slots_[i].value;
            i = (i + 1) & mask_;
        }
        slots_[i].used = true;
        slots_[i].hash = h;
        slots_[i].data = key.data();
        slots_[i].size = static_cast<uint32_t>(key.size());
        ++count_;
        return slots_[i].value;
    }

    const V* find(std::string_view key) const {
        uint64_t h = hash_bytes(key.data(), key.size());
        size_t i = h & mask_;
        while (slots_[i].used) {
            if (slots_[i].hash == h && slots_[i].size == key.size() && equal(slots_[i], key)) return &slots_[i].value;
            i = (i + 1) & mask_;
        }
        return nullptr;
    }

    size_t size() const { return count_; }
    const std::vector<Slot>& slots() const { return slots_; }

   private:
    static bool equal(const Slot& s, std::string_view key) {
        return key.empty() || std::char_traits<char>::compare(s.data, key.data(), key.size()) == 0;
    }
    static size_t capacity_for(size_t n) {
        size_t c = 16;
        while (c < n * 2) c *= 2;
        return c;
    }
    void rehash(size_t capacity) {
        std::vector<Slot> old = std::move(slots_);
        slots_.assign(capacity, Slot{});
        mask_ = capacity - 1;
        for (Slot& s : old) {
            if (!s.used) continue;
            size_t i = s.hash & mask_;
            while (slots_[i].used) i = (i + 1) & mask_;
            slots_[i] = std::move(s);
        }
    }

    std::vector<Slot> slots_;
    size_t mask_ = 0;
    size_t count_ = 0;
};

// Pieces of up to 16 bytes packed into two little-endian words (zero-padded) plus a length: keys that compare
// and hash without touching the token bytes, so a lookup costs one cache line instead of two.
struct ShortKey {
    uint64_t k0 = 0, k1 = 0;
    uint32_t len = 0;

    static constexpr size_t kMaxLen = 16;
    static ShortKey of(std::string_view s);  // s.size() <= kMaxLen
    uint64_t hash() const {
        uint64_t h = (k0 ^ (uint64_t{len} << 59)) * 0x9E3779B97F4A7C15ull + k1 * 0xC2B2AE3D27D4EB4Full;
        return h ^ (h >> 29);
    }
    bool operator==(const ShortKey& o) const { return k0 == o.k0 && k1 == o.k1 && len == o.len; }
};

// Token bytes -> id for keys of up to 16 bytes (99.97% of GPT-2 pre-tokens on Shakespeare), open addressing.
class ShortTokenMap {
   public:
    void build(const std::vector<std::pair<std::string_view, uint32_t>>& entries);
    const uint32_t* find(const ShortKey& key, uint64_t hash) const {
        for (size_t i = hash & mask_;; i = (i + 1) & mask_) {
            const Slot& s = slots_[i];
            if (s.key.len == 0) return nullptr;
            if (s.key == key) return &s.id;
        }
    }

   private:
    struct Slot {
        ShortKey key;
        uint32_t id = 0;
    };
    std::vector<Slot> slots_;
    size_t mask_ = 0;
};

// A direct-mapped cache of BPE results for short pieces that are not single tokens, one per thread (the Engine
// stays immutable and shareable). Entries carry the id of the engine that wrote them, so engines never see
// each other's results and nothing needs clearing. 64-byte entries, 2 MiB per thread.
class PieceCache {
   public:
    static constexpr size_t kMaxIds = 10;
    struct Entry {
        uint64_t k0 = 0, k1 = 0;
        uint32_t len = 0, n = 0;
        uint32_t owner = 0;  // engine id; 0: empty
        uint32_t ids[kMaxIds];
        bool holds(const ShortKey& key, uint32_t engine) const {
            return owner == engine && k0 == key.k0 && k1 == key.k1 && len == key.len;
        }
    };
    static PieceCache& for_this_thread() {
        thread_local PieceCache cache;
        return cache;
    }
    Entry& slot(uint64_t hash) {
        if (entries_.empty()) entries_.resize(kSlots);
        return entries_[(hash >> 20) & (kSlots - 1)];
    }

   private:
    static constexpr size_t kSlots = 1 << 15;
    std::vector<Entry> entries_;
};

// ---------------------------------------------------------------------------------------------------------
// Encoding
// ---------------------------------------------------------------------------------------------------------

class Engine {
   public:
    // vocab: (id, token bytes); merges: in priority order; special_tokens: (text, id), each id in vocab.
    Engine(const std::vector<std::pair<int64_t, std::string>>& vocab,
           const std::vector<std::pair<std::string, std::string>>& merges,
           const std::vector<std::pair<std::string, int64_t>>& special_tokens);

    // Pre-tokenizer + BPE; special-token text is encoded as ordinary text.
    std::vector<uint32_t> encode_ordinary(std::string_view text) const;
    // Allowed special tokens are split out first (leftmost occurrence, longest at a position).
    std::vector<uint32_t> encode(std::string_view text, const std::vector<std::string>& allowed_special) const;
    // encode() of each text on num_threads threads; results in input order.
    std::vector<std::vector<uint32_t>> encode_batch(const std::vector<std::string_view>& texts,
                                                    const std::vector<std::string>& allowed_special,
                                                    int num_threads) const;
    // BPE of one pre-token (appends its ids to out).
    void encode_piece(std::string_view piece, std::vector<uint32_t>& out, PieceCache& cache) const;

    std::string decode_bytes(const std::vector<int64_t>& ids) const;
    size_t vocab_size() const { return tokens_.size(); }

   private:
    struct Merge {
        uint32_t rank;
        uint32_t merged;
    };
    static constexpr uint32_t kNoRank = UINT32_MAX;

    void encode_ordinary_into(std::string_view text, std::vector<uint32_t>& out, PieceCache& cache) const;
    void encode_into(std::string_view text, const std::vector<std::pair<std::string_view, uint32_t>>& specials,
                     std::vector<uint32_t>& out, PieceCache& cache) const;
    void bpe(std::string_view piece, std::vector<uint32_t>& out) const;
    std::vector<std::pair<std::string_view, uint32_t>> resolve_allowed(const std::vector<std::string>& names) const;
    Merge find_merge(uint32_t a, uint32_t b) const;
    void bpe_short(std::string_view piece, std::vector<uint32_t>& out) const;
    void bpe_long(std::string_view piece, std::vector<uint32_t>& out) const;

    std::vector<std::string> tokens_;  // id -> bytes
    std::vector<bool> present_;        // id -> is the id in the vocab
    uint32_t byte_id_[256];
    // Pair (a, b) -> (rank, merged id), open addressing on the packed 64-bit key.
    std::vector<uint64_t> merge_keys_;
    std::vector<Merge> merge_vals_;
    size_t merge_mask_ = 0;
    // Whole pre-token -> id, only for tokens whose own BPE is that single token (so the shortcut never
    // changes a result; GPT-2's "<|endoftext|>" for instance is in the vocab but BPE never produces it).
    uint32_t id_;                   // tags this engine's PieceCache entries
    ShortTokenMap whole_short_;   // keys of <= 16 bytes
    BytesMap<uint32_t> whole_long_;  // longer keys
    std::vector<std::pair<std::string, uint32_t>> specials_;
};

// ---------------------------------------------------------------------------------------------------------
// Training
// ---------------------------------------------------------------------------------------------------------

struct TrainResult {
    std::vector<std::string> vocab;                         // id -> bytes
    std::vector<std::pair<uint32_t, uint32_t>> merges;      // ids of the two merged tokens, in order
};

// CS336-style BPE training: ids are special tokens, then the 256 bytes, then one per merge. The most frequent
// pair is merged each step; ties go to the lexicographically greater (bytes, bytes) pair.
// progress(merges done, merges wanted), when given, is called at the start, about every 100 ms, and at the end; an
// exception it throws stops training (the bindings use it to let Ctrl-C through).
TrainResult train_bpe(const std::string& input_path, size_t vocab_size, const std::vector<std::string>& special_tokens,
                      int num_workers, const std::function<void(size_t, size_t)>& progress = {});

}  // namespace lmfast
