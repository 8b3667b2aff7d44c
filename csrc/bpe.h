// The BPE tokenizer core: byte-level BPE encoding and decoding over one of the pre-tokenizers of pretokenize.h, and
// BPE training.
//
// Plain C++17 with no Python types (bindings.cpp is the only pybind11 file). Bad input raises
// std::invalid_argument (ValueError in Python); I/O problems raise FileNotFound or std::runtime_error.
// Sections in the same order as lmfast/tokenizer.py: pre-tokenizer, Encoding, Decoding, Training.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <functional>
#include <memory>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

#include "pretokenize.h"
#include "unicode.h"

namespace lmfast {

struct FileNotFound : std::runtime_error {
    using std::runtime_error::runtime_error;
};

// An allocator whose resize() leaves new elements uninitialised: id buffers are sized for the worst case (one id per
// byte) and every id kept is written, so zero-filling them first would cost a pass over 4x the text's size.
template <class T>
struct NoInit : std::allocator<T> {
    template <class U>
    struct rebind {
        using other = NoInit<U>;
    };
    NoInit() = default;
    template <class U>
    NoInit(const NoInit<U>&) {}
    template <class U>
    void construct(U* p) noexcept { ::new (static_cast<void*>(p)) U; }
    template <class U, class... Args>
    void construct(U* p, Args&&... args) { ::new (static_cast<void*>(p)) U(std::forward<Args>(args)...); }
};
using IdVector = std::vector<uint32_t, NoInit<uint32_t>>;

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
// Masks that keep the first s bytes of two little-endian words: lo[s], hi[s] for s = 0..16.
struct KeyMasks {
    uint64_t lo[17], hi[17];
    constexpr KeyMasks() : lo(), hi() {
        for (int s = 0; s <= 16; ++s) {
            lo[s] = s >= 8 ? ~uint64_t{0} : (uint64_t{1} << (8 * s)) - 1;
            hi[s] = s >= 16 ? ~uint64_t{0} : s <= 8 ? 0 : (uint64_t{1} << (8 * (s - 8))) - 1;
        }
    }
};
inline constexpr KeyMasks kKeyMasks{};

struct ShortKey {
    uint64_t k0 = 0, k1 = 0;
    uint32_t len = 0;

    static constexpr size_t kMaxLen = 16;
    static ShortKey of(std::string_view s);  // s.size() <= kMaxLen
    // The same from the size bytes at p, reading 16 bytes at once when p + 16 <= end (no memcpy call, no branch on
    // the size). A piece of more than kMaxLen bytes gets a key that no cache entry holds (len 255).
    static ShortKey of(const char* p, size_t size, const char* end) {
        if (p + 16 > end) return size > kMaxLen ? too_long() : of(std::string_view(p, size));
        const size_t s = size > kMaxLen ? 0 : size;
        ShortKey k;
        std::memcpy(&k.k0, p, 8);
        std::memcpy(&k.k1, p + 8, 8);
        k.k0 &= kKeyMasks.lo[s];
        k.k1 &= kKeyMasks.hi[s];
        k.len = size > kMaxLen ? 255 : static_cast<uint32_t>(size);
        return k;
    }
    static ShortKey too_long() {
        ShortKey k;
        k.len = 255;
        return k;
    }
    uint64_t hash() const {
        uint64_t h = (k0 ^ (uint64_t{len} << 59)) * 0x9E3779B97F4A7C15ull + k1 * 0xC2B2AE3D27D4EB4Full;
        return h ^ (h >> 29);
    }
    bool operator==(const ShortKey& o) const { return k0 == o.k0 && k1 == o.k1 && len == o.len; }
};

// A cache of pre-token -> ids, one per thread and engine (the Engine stays immutable and shareable): every piece
// of up to 16 bytes that the thread has encoded, single tokens and BPE results alike, so that a repeat costs one
// probe. Open addressing with 32-byte entries (key, up to 3 ids inline, longer results in a side pool), grown at
// half load up to kMaxSlots (32 MiB), then reset to the engine's seed when full: memory stays bounded on any
// text. A thread keeps the caches of its last kPerThread engines. Each starts as a copy of its engine's seed, a
// cache that holds every whole token of 2..16 bytes, so a piece the cache does not hold is no whole token.
// Pieces of 17..kMaxLongLen bytes have a small map of their own.
//
// Why one big table: a 2-way set-associative cache of 32k entries (1 MiB, meant to stay in L2) held too few of the
// mixed corpus's 165k distinct pieces; misses went to the whole-token map or to BPE again, and even a warm encode
// ran at 87 MB/s. With every piece kept, the hardware caches keep the hot entries' lines close by themselves.
class PieceCache {
   public:
    struct alignas(32) Entry {
        uint64_t k0, k1;
        uint32_t ids[3];  // the ids, or ids[0] = offset into pool_ when n > 3
        uint8_t len, n;   // len 0: empty
        uint16_t pad;
        bool holds(const ShortKey& key) const { return k0 == key.k0 && k1 == key.k1 && len == key.len; }
    };
    static constexpr size_t kMinSlots = size_t{1} << 16;
    static constexpr size_t kMaxSlots = size_t{1} << 20;
    static constexpr size_t kMaxLongLen = 256;
    static constexpr int kPerThread = 4;

    PieceCache();
    // A copy of seed, with room for `more` entries at half load.
    PieceCache(const PieceCache& seed, size_t more = 0);
    PieceCache& operator=(const PieceCache&) = delete;

    // This thread's cache for the engine with this id (a copy of seed with room for `more` on first use).
    static PieceCache& of(uint32_t engine_id, const PieceCache& seed, size_t more);
    // Whether an engine with this id exists (Engine::Live).
    static bool engine_live(uint32_t engine_id);

    // The entry holding key, or the empty slot where it would go. Probes go by pairs of entries (one cache line)
    // from the key's home pair.
    Entry* find(const ShortKey& key, uint64_t hash) {
        for (size_t i = (hash >> 24) & mask_ & ~size_t{1};; i = (i + 1) & mask_) {
            Entry* e = slots_.get() + i;
            if (e->len == 0 || e->holds(key)) return e;
        }
    }
    const uint32_t* ids(const Entry& e) const { return e.n <= 3 ? e.ids : pool_.data() + e.ids[0]; }

    // Where a probe for hash starts: prefetched a batch ahead (Engine::encode_ordinary_into), which then looks at
    // slots()[(hash >> 24) & pair_mask()] and the entry after it.
    const Entry* home(uint64_t hash) const { return slots_.get() + ((hash >> 24) & mask_ & ~size_t{1}); }
    const Entry* slots() const { return slots_.get(); }
    size_t pair_mask() const { return mask_ & ~size_t{1}; }
    // Stores key -> ids in the empty slot find() returned (which a grow moves; the caller does not keep it); when
    // the cache is full it first starts again from seed.
    void insert(Entry* slot, const ShortKey& key, uint64_t hash, const uint32_t* ids, size_t n,
                const PieceCache& seed);

    // Grows the table now to hold `more` new entries at half load (up to kMaxSlots): a caller that knows it has a lot
    // of text saves the rehashes of growing step by step.
    void reserve(size_t more);

    // Pieces of 17..kMaxLongLen bytes (hash: hash_bytes of the piece): the ids and their count, or nullptr.
    const uint32_t* find_long(std::string_view piece, uint64_t hash, size_t& n) const;
    void insert_long(std::string_view piece, uint64_t hash, const uint32_t* ids, size_t n, const PieceCache& seed);

   private:
    struct LongEntry {
        uint64_t hash;
        uint32_t at, len, ids, n;  // the bytes at long_bytes_[at], the ids at pool_[ids]; len 0: empty
    };
    void resize(size_t slots);
    void map(size_t slots);                         // a fresh empty table
    void put_all(const Entry* from, size_t slots);  // rehashes from's entries in
    void reset_to(const PieceCache& seed, size_t more = 0);
    bool full(size_t more_ids) const;
    struct Free {
        Free() noexcept : bytes(0) {}
        explicit Free(size_t b) noexcept : bytes(b) {}
        size_t bytes;
        void operator()(Entry* p) const;
    };
    std::unique_ptr<Entry[], Free> slots_;
    size_t mask_ = 0, count_ = 0;
    std::vector<uint32_t> pool_;
    std::vector<LongEntry> long_;
    size_t long_count_ = 0;
    std::string long_bytes_;
};

// ---------------------------------------------------------------------------------------------------------
// Encoding
// ---------------------------------------------------------------------------------------------------------

// Room for encode_to_array's ids: anonymous pages of its own (a mapping given back earlier, else fresh ones asked for
// 2 MiB pages where the kernel has them), grown by mremap (no copy) and shrunk in place. Written front to back, only
// the pages that receive ids are ever touched. With malloc/realloc the ids cost a fault per 4 KiB page (~4000 on the
// mixed corpus, ~15 ms of kernel time on a shared VM); a numpy array as the buffer cost a zero-filled pass on every
// resize.
class IdBuffer {
   public:
    IdBuffer() = default;
    IdBuffer(const IdBuffer&) = delete;
    IdBuffer& operator=(const IdBuffer&) = delete;
    ~IdBuffer() { unmap(data_, bytes_); }

    // At least `bytes` of room keeping what is written; the address may change.
    void* reserve(size_t bytes);
    // Gives back the room past `bytes`.
    void shrink(size_t bytes);
    void* data() const { return data_; }
    // The mapping's pointer and size, now the caller's: give them back with IdBuffer::unmap (which keeps a few
    // mappings for the next IdBuffer or PieceCache).
    std::pair<void*, size_t> release() {
        std::pair<void*, size_t> m(data_, bytes_);
        data_ = nullptr;
        bytes_ = 0;
        return m;
    }
    static void unmap(void* data, size_t bytes);

   private:
    void* data_ = nullptr;
    size_t bytes_ = 0;  // mapped, a multiple of the page size
};

class Engine {
   public:
    // vocab: (id, token bytes); merges: in priority order; special_tokens: (text, id), each id in vocab.
    // pattern: the pre-tokenizer. ignore_merges: a pre-token that is itself a vocab token becomes that token even
    // where its merges would not make it (tiktoken's rule, and tokenizer.json's "ignore_merges": true).
    Engine(const std::vector<std::pair<int64_t, std::string>>& vocab,
           const std::vector<std::pair<std::string, std::string>>& merges,
           const std::vector<std::pair<std::string, int64_t>>& special_tokens, Pattern pattern = Pattern::kGpt2,
           bool ignore_merges = false);

    // Pre-tokenizer + BPE; special-token text is encoded as ordinary text.
    IdVector encode_ordinary(std::string_view text) const;
    // Allowed special tokens are split out first (leftmost occurrence, longest at a position).
    IdVector encode(std::string_view text, const std::vector<std::string>& allowed_special) const;
    // encode() of each text on num_threads threads; results in input order.
    std::vector<IdVector> encode_batch(const std::vector<std::string_view>& texts,
                                                    const std::vector<std::string>& allowed_special,
                                                    int num_threads) const;
    // The ids of encode() of each text, concatenated (with `separator` after each text when it is >= 0), as ids of
    // itemsize bytes (2 or 4) in native byte order, written straight into the array reserve(capacity) returns: room
    // for `capacity` ids that keeps the ids already written (a realloc). It is called once per round of up to
    // kChunksPerRound chunks of text, with the ids so far plus that round's bound (its bytes, plus 4 per chunk).
    // Returns the number of ids, the array's first ones; the rest is scratch (the caller may shrink it). The texts
    // are cut into ~chunk-byte chunks at safe points and encoded on num_threads threads.
    size_t encode_to_array(const std::vector<std::string_view>& texts, const std::vector<std::string>& allowed_special,
                           int64_t separator, int itemsize, int num_threads,
                           const std::function<void*(size_t)>& reserve, size_t chunk = size_t{1} << 20) const;
    static constexpr size_t kChunksPerRound = 64;
    // Encodes a UTF-8 file (allowed specials as in encode()) and writes the ids, little-endian of itemsize bytes,
    // to the file descriptor out_fd. Reads, encodes and writes in rounds of num_threads chunks of ~chunk bytes, so
    // memory stays near num_threads * chunk * (1 + itemsize) whatever the file size. progress(bytes read), when
    // given, is called after each round; an exception it throws stops the encoding. Returns the number of ids.
    uint64_t encode_file(const std::string& path, int out_fd, const std::vector<std::string>& allowed_special,
                         int itemsize, int num_threads, const std::function<void(uint64_t)>& progress = {},
                         size_t chunk = size_t{1} << 21) const;

    std::string decode_bytes(const std::vector<int64_t>& ids) const;
    size_t vocab_size() const { return tokens_.size(); }
    Pattern pattern() const { return pattern_; }

   private:
    using Specials = std::vector<std::pair<std::string_view, uint32_t>>;
    static constexpr uint32_t kNoRank = (1u << 21) - 1;
    static constexpr uint32_t kNoToken = (1u << 21) - 1;  // an internal id in no merge

    template <class T>
    T* encode_ordinary_into(std::string_view text, T* out, PieceCache& cache) const;
    template <class T>
    T* encode_into(std::string_view text, const Specials& specials, T* out, PieceCache& cache) const;
    static constexpr size_t kBatch = 64;  // pieces per batch of encode_ordinary_into
    template <class T>
    T* encode_slow(const char* piece, size_t size, const ShortKey& key, uint64_t hash, T* out,
                   PieceCache& cache) const;
    template <class T>
    T* encode_long(const char* piece, size_t size, T* out, PieceCache& cache) const;
    // BPE of a piece: appends its (external) ids to out.
    void bpe(std::string_view piece, std::vector<uint32_t>& out) const;
    void bpe_medium(std::string_view piece, std::vector<uint32_t>& out) const;  // size <= 128
    void bpe_long(std::string_view piece, std::vector<uint32_t>& out) const;
    void build_pairs16();  // pairs_ from merge_table_, which it frees
    // A piece of 2..16 bytes: its ids at out (room for 16). kDirect: direct_ holds, so ids need no mapping.
    template <bool kDirect>
    size_t bpe_small_as(const ShortKey& piece, uint32_t* out) const;
    size_t bpe_small(const ShortKey& piece, uint32_t* out) const {
        return direct_ ? bpe_small_as<true>(piece, out) : bpe_small_as<false>(piece, out);
    }
    Specials resolve_allowed(const std::vector<std::string>& names) const;
    // A chunk of encode_to_array's work: its text, whether the separator follows, where in its round's room it
    // writes (in ids) and how many it wrote.
    struct ArrayUnit {
        std::string_view text;
        bool separator;
        size_t at, count;
    };
    // One round of encode_to_array: units[0, count) into out, on `workers` threads; returns the ids written (packed).
    size_t encode_round(ArrayUnit* units, size_t count, const Specials& allowed, int64_t separator, int itemsize,
                        int workers, size_t bytes, char* out) const;
    PieceCache& cache_for(size_t bytes) const;
    // Cut points of text into pieces of about `chunk` bytes that encode apart to the ids of the whole.
    std::vector<size_t> chunk_cuts(std::string_view text, const Specials& specials, size_t chunk) const;
    template <class T>
    size_t encode_range(std::string_view text, const Specials& specials, std::vector<T, NoInit<T>>& buf,
                        PieceCache& cache) const;
    // Merge of internal ids (a, b): its rank (kNoRank: none) and, through merged_, its result.
    static uint64_t pair_of(uint32_t a, uint32_t b) { return (static_cast<uint64_t>(a) << 21) | b; }
    // The merge table: buckets of kBucket 8-byte slots (a:21 b:21 rank:21, kEmptySlot when free), a pair in its home
    // bucket unless that bucket overflowed into the next ones. A lookup compares the whole bucket without a branch;
    // the one branch, on a full bucket that overflowed, is rarely taken (buckets hold <= 2 pairs on average).
    static constexpr uint64_t kEmptySlot = ~uint64_t{0};
    static constexpr int kBucket = 4;
    size_t pair_home(uint64_t key) const { return ((key * 0x9E3779B97F4A7C15ull) >> 24) & merge_bucket_mask_; }
    uint32_t rank_from(size_t bucket, uint64_t key) const {
        while (true) {
            const uint64_t* s = merge_table_.data() + bucket * kBucket;
            uint32_t r = kNoRank;
            for (int k = 0; k < kBucket; ++k) r = (s[k] >> 21) == key ? static_cast<uint32_t>(s[k]) & kNoRank : r;
            const bool more = (r == kNoRank) & (s[kBucket - 1] != kEmptySlot);
            if (__builtin_expect(!more, 1) || !merge_overflow_[bucket]) return r;
            bucket = (bucket + 1) & merge_bucket_mask_;
        }
    }
    uint32_t find_rank(uint32_t a, uint32_t b) const {
        if (!pairs_.empty()) return find_rank16(a, b);
        const uint64_t key = pair_of(a, b);
        return rank_from(pair_home(key), key);
    }
    // The same table in half the room where internal ids and ranks fit 16 bits (GPT-2, and any vocab under 65535
    // tokens): 64-byte buckets of 10 (a << 16 | b) keys and their 16-bit ranks, 512 KiB for GPT-2's 50k merges
    // against 1 MiB of 8-byte slots, so that it stays in a 1 MiB L2 beside the piece cache's traffic. A key holding
    // kNoToken (0x1FFFFF) has a half 0xFFFF, which no pair of real ids has: it finds nothing.
    struct alignas(64) PairBucket {
        uint32_t key[10];   // kEmptyPair when free
        uint16_t rank[10];  // 0xFFFF when free
        uint32_t overflow;  // pairs of this bucket went on to the next
    };
    static constexpr uint32_t kEmptyPair = ~uint32_t{0};
    size_t pair_home16(uint32_t key) const { return (key * 0x9E3779B97F4A7C15ull >> 32) & pair_mask_; }
    uint32_t find_rank16(uint32_t a, uint32_t b) const {
        const uint32_t key = a << 16 | (b & 0xFFFF);
        for (size_t k = pair_home16(key);; k = (k + 1) & pair_mask_) {
            const PairBucket& bucket = pairs_[k];
            const uint32_t hit = match10(bucket.key, key);
            const uint32_t r = hit ? bucket.rank[__builtin_ctz(hit)] : kNoRank;  // a select, not a branch
            if (__builtin_expect(((hit == 0) & (bucket.overflow != 0)) == 0, 1)) return r;
        }
    }
    // Bit s set where keys[s] == key, s < 10 (keys points at a PairBucket: 16 bytes past keys[9] are readable).
    static uint32_t match10(const uint32_t* keys, uint32_t key) {
#if defined(__SSE2__)
        const __m128i k = _mm_set1_epi32(static_cast<int>(key));
        auto eq = [&](const uint32_t* at) {
            return static_cast<uint32_t>(_mm_movemask_ps(_mm_castsi128_ps(
                _mm_cmpeq_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(at)), k))));
        };
        return (eq(keys) | eq(keys + 4) << 4 | eq(keys + 8) << 8) & 0x3FF;
#else
        uint32_t m = 0;
        for (int s = 0; s < 10; ++s) m |= static_cast<uint32_t>(keys[s] == key) << s;
        return m;
#endif
    }

    std::vector<std::string> tokens_;  // id -> bytes
    std::vector<bool> present_;        // id -> is the id in the vocab
    Pattern pattern_;
    // BPE runs on dense internal ids (< 2**21): the 256 bytes by value, then the tokens of the merges in the order
    // they first appear, so a merge is one 8-byte slot and the first pairs of a piece, bytes, are one load from
    // byte_rank_. Cold pieces (the mixed corpus has 136k distinct multi-token ones) spend much of their BPE time on
    // the merge table. Tried before: 16-byte (key | rank, merged) slots in two arrays at load 1/2 (2 + 2 MiB), ~900 ns
    // a piece; 8-byte slots at load 3/8 (1 MiB), ~500 ns; 4-byte slots (a 12-bit tag + rank, 256 KiB) checked
    // against a rank -> pair array, slower again: the check is a second miss. Then linear probing at load 3/4
    // (512 KiB): ~1 mispredicted branch per lookup (found here, found later, empty: no pattern), 14 a piece; the
    // buckets (1 MiB for GPT-2) have ~0.5, and bpe_small went from ~850 to ~650 instructions a piece. Vocabs under
    // 65535 tokens then move to pairs_ (512 KiB for GPT-2).
    std::vector<uint32_t> external_;   // internal id -> id
    uint32_t byte_id_[256];
    uint32_t byte_internal_[256];
    bool merged_next_ = true;          // merged_[r] == 256 + r for every rank in the table
    bool direct_ = false;              // merged_next_, and external_[i] == i for every i
    std::vector<uint64_t> merge_table_;
    std::vector<uint32_t> merged_;      // rank -> internal id of the merged token
    size_t merge_bucket_mask_ = 0;
    std::vector<uint8_t> merge_overflow_;  // bucket -> whether pairs of this bucket went on to the next
    std::vector<PairBucket> pairs_;        // the compact table, when ids and ranks fit 16 bits (else empty)
    size_t pair_mask_ = 0;
    std::vector<uint32_t> byte_rank_;   // (byte a << 8 | byte b) -> rank of the merge of their tokens (kNoRank: none)
    // Whole pre-token -> id, for tokens whose own BPE is that single token (so the shortcut never changes a
    // result; GPT-2's "<|endoftext|>" for instance is in the vocab but BPE never produces it), or for every token
    // with ignore_merges: those of up to 16 bytes in seed_, the first state of every thread's PieceCache, longer
    // ones in whole_long_.
    uint32_t id_;                      // names this engine's PieceCaches
    // Marks id_ live while this engine (or a copy of it) exists: a thread drops the PieceCaches of dead engines
    // before it makes a new one, which is then built in their pages.
    struct Live {
        explicit Live(uint32_t id);
        Live(const Live& other);
        Live& operator=(const Live&) = delete;
        ~Live();
        uint32_t id;
    } live_{id_};
    PieceCache seed_;
    BytesMap<uint32_t> whole_long_;
    std::vector<std::pair<std::string, uint32_t>> specials_;
};

// ---------------------------------------------------------------------------------------------------------
// Training
// ---------------------------------------------------------------------------------------------------------

struct TrainResult {
    std::vector<std::string> vocab;                         // id -> bytes
    std::vector<std::pair<uint32_t, uint32_t>> merges;      // ids of the two merged tokens, in order
};

// What a training progress report counts: bytes of the file while pre-tokens are counted, then merges.
enum class TrainStage { kCounting, kMerging };

// CS336-style BPE training: ids are special tokens, then the 256 bytes, then one per merge. The most frequent
// pair is merged each step; ties go to the lexicographically greater (bytes, bytes) pair.
// The file is read in blocks (block_size bytes, 0: the default), so memory holds the word table, not the text.
// progress(stage, done, total), when given, is called from the calling thread at the start of each stage, about
// every 100 ms and at its end: bytes of the file read and counted, then merges done of merges wanted; an exception
// it throws stops training within a chunk or a merge (the bindings use it to let Ctrl-C through).
// pattern: the pre-tokenizer that splits the text before counting.
TrainResult train_bpe(const std::string& input_path, size_t vocab_size, const std::vector<std::string>& special_tokens,
                      int num_workers,
                      const std::function<void(TrainStage, uint64_t, uint64_t)>& progress = {},
                      Pattern pattern = Pattern::kGpt2, size_t block_size = 0);

}  // namespace lmfast
