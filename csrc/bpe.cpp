// The BPE tokenizer core: encoding and decoding (training is in bpe_train.cpp). See bpe.h for the contract;
// performance notes sit beside the code they explain.
//
// Where encode time went (Shakespeare, 5.06 MB, GPT-2's 50k vocab; CPU seconds of one encode_ordinary call,
// best of 5 by getrusage, on a shared 2-core AMD EPYC; tiktoken 0.14 takes 0.49-0.52 s on the same text):
//   first version (BytesMap whole-piece lookup, bpe_short per miss, PyLong per id)   0.34-0.99 s wall, busy host
//   + 16-byte inline keys for the whole-piece map, per-call piece cache (16k slots)  0.138 s
//   + thread-local piece cache (32k slots, kept across calls)                         0.110 s
//   + shared int objects when building the result list (bindings.cpp)                 0.085 s  (~60 MB/s)
//   the piece cache alone: disabling it takes the last line back to 0.134 s.
// What is left (perf): the whole-piece probe (one L2/L3 miss per pre-token, the 4 MiB table does not fit in
// L2), the pre-tokenizer's class lookups, and Python list building.
#include "bpe.h"
#include "bpe_internal.h"

#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstring>
#include <exception>
#include <functional>
#include <mutex>
#include <thread>

namespace lmfast {

namespace {

// Python-like repr of a byte string for error messages: b'...' with \xNN escapes.
std::string bytes_repr(std::string_view s) {
    std::string out = "b'";
    for (unsigned char c : s) {
        if (c == '\\' || c == '\'') { out += '\\'; out += static_cast<char>(c); }
        else if (c >= 0x20 && c < 0x7F) out += static_cast<char>(c);
        else out += "\\x" + hex_byte(c).substr(2);
    }
    return out + "'";
}

uint32_t next_engine_id() {
    static std::atomic<uint32_t> counter{0};
    uint32_t id = ++counter;
    return id != 0 ? id : ++counter;  // 0 marks an empty cache entry
}

// A process-wide pool of parked worker threads. Encode threads keep their PieceCache warm between calls only if
// the threads live on: with a fresh std::thread per encode_batch call every call started from cold caches and
// zeroed 2 MiB per thread, which cost more than the second core bought on Shakespeare in 64 KB texts.
// The caller runs worker 0 itself. A call that finds the pool busy (another Python thread inside
// encode_batch) gets fresh threads instead of waiting. After fork() the child starts a new pool (the parent's
// threads do not exist there; the old pool object is leaked, never joined).
class WorkerPool {
   public:
    static WorkerPool& instance() {
        static std::mutex guard;
        static WorkerPool* pool = nullptr;
        std::lock_guard<std::mutex> lock(guard);
        if (!pool || pool->pid_ != ::getpid()) pool = new WorkerPool();  // leaked on purpose: threads never join
        return *pool;
    }

    // Runs fn(0..n-1) on n threads; returns false (having run nothing) when the pool is busy.
    bool try_run(int n, const std::function<void(int)>& fn) {
        std::unique_lock<std::mutex> busy(busy_, std::try_to_lock);
        if (!busy.owns_lock()) return false;
        {
            std::lock_guard<std::mutex> lock(mutex_);
            while (static_cast<int>(threads_.size()) < n - 1) {
                int index = static_cast<int>(threads_.size()) + 1;
                threads_.emplace_back([this, index] { work(index); });
            }
            job_ = &fn;
            job_size_ = n;
            pending_ = n - 1;
            error_ = nullptr;
            ++generation_;
        }
        wake_.notify_all();
        std::exception_ptr mine;
        try { fn(0); } catch (...) { mine = std::current_exception(); }
        std::unique_lock<std::mutex> lock(mutex_);
        done_.wait(lock, [this] { return pending_ == 0; });
        job_ = nullptr;
        std::exception_ptr error = mine ? mine : error_;
        lock.unlock();
        if (error) std::rethrow_exception(error);
        return true;
    }

   private:
    WorkerPool() : pid_(::getpid()) {}

    void work(int index) {
        uint64_t seen = 0;
        std::unique_lock<std::mutex> lock(mutex_);
        while (true) {
            wake_.wait(lock, [&] { return generation_ != seen; });
            seen = generation_;
            if (index >= job_size_) continue;
            const std::function<void(int)>* fn = job_;
            lock.unlock();
            std::exception_ptr error;
            try { (*fn)(index); } catch (...) { error = std::current_exception(); }
            lock.lock();
            if (error && !error_) error_ = error;
            if (--pending_ == 0) done_.notify_one();
        }
    }

    const pid_t pid_;
    std::mutex busy_;   // held for a whole try_run
    std::mutex mutex_;  // guards everything below
    std::condition_variable wake_, done_;
    std::vector<std::thread> threads_;
    const std::function<void(int)>* job_ = nullptr;
    int job_size_ = 0;
    int pending_ = 0;
    uint64_t generation_ = 0;
    std::exception_ptr error_;
};

}  // namespace

// ----- bpe_internal.h -----

std::string hex_byte(unsigned b) {
    const char* digits = "0123456789abcdef";
    return std::string("0x") + digits[(b >> 4) & 15] + digits[b & 15];
}

void run_workers(int n, const std::function<void(int)>& job) {
    if (n <= 1) { job(0); return; }
    if (WorkerPool::instance().try_run(n, job)) return;
    std::vector<std::thread> threads;
    std::exception_ptr error;
    std::mutex error_mutex;
    threads.reserve(n);
    for (int t = 0; t < n; ++t) {
        threads.emplace_back([&, t] {
            try { job(t); } catch (...) {
                std::lock_guard<std::mutex> lock(error_mutex);
                if (!error) error = std::current_exception();
            }
        });
    }
    for (auto& th : threads) th.join();
    if (error) std::rethrow_exception(error);
}

uint64_t hash_bytes(const char* data, size_t size) {
    // 8 bytes per multiply-xorshift round (splitmix64's finaliser); pre-tokens average ~5 bytes, so this is a
    // single round for most of them.
    uint64_t h = 0x9E3779B97F4A7C15ull ^ (size * 0xD6E8FEB86659FD93ull);
    while (size >= 8) {
        uint64_t v;
        std::memcpy(&v, data, 8);
        h = (h ^ v) * 0xBF58476D1CE4E5B9ull;
        h ^= h >> 31;
        data += 8;
        size -= 8;
    }
    uint64_t v = 0;
    std::memcpy(&v, data, size);
    h = (h ^ v) * 0x94D049BB133111EBull;
    h ^= h >> 29;
    h *= 0xBF58476D1CE4E5B9ull;
    return h ^ (h >> 32);
}

// =========================================================================================================
// Encoding
// =========================================================================================================

ShortKey ShortKey::of(std::string_view s) {
    ShortKey k;
    char buf[16] = {0};
    std::memcpy(buf, s.data(), s.size());
    std::memcpy(&k.k0, buf, 8);
    std::memcpy(&k.k1, buf + 8, 8);
    k.len = static_cast<uint32_t>(s.size());
    return k;
}

void ShortTokenMap::build(const std::vector<std::pair<std::string_view, uint32_t>>& entries) {
    size_t capacity = 16;
    while (capacity < entries.size() * 2) capacity *= 2;  // load <= 1/2 keeps linear probes short
    slots_.assign(capacity, Slot{});
    mask_ = capacity - 1;
    for (const auto& [bytes, id] : entries) {
        ShortKey key = ShortKey::of(bytes);
        size_t i = key.hash() & mask_;
        while (slots_[i].key.len != 0 && !(slots_[i].key == key)) i = (i + 1) & mask_;
        slots_[i].key = key;
        slots_[i].id = id;
    }
}

Engine::Engine(const std::vector<std::pair<int64_t, std::string>>& vocab,
               const std::vector<std::pair<std::string, std::string>>& merges,
               const std::vector<std::pair<std::string, int64_t>>& special_tokens)
    : id_(next_engine_id()), whole_long_(64) {
    int64_t max_id = -1;
    for (const auto& [id, bytes] : vocab) {
        if (id < 0 || id >= (int64_t{1} << 31))
            throw std::invalid_argument("vocab id " + std::to_string(id) +
                                        " is out of range; ids must be in [0, 2**31)");
        max_id = std::max(max_id, id);
    }
    // Ids index dense tables (id -> bytes here, id -> int object in the bindings), so very sparse ids are refused.
    if (max_id >= static_cast<int64_t>(vocab.size()) + (int64_t{1} << 24))
        throw std::invalid_argument("vocab ids are too sparse: the largest is " + std::to_string(max_id) + " for " +
                                    std::to_string(vocab.size()) + " tokens; renumber the vocab so ids stay below "
                                    "the token count + 16777216");
    tokens_.assign(static_cast<size_t>(max_id + 1), std::string());
    present_.assign(tokens_.size(), false);
    for (const auto& [id, bytes] : vocab) {
        tokens_[id] = bytes;
        present_[id] = true;
    }
    std::vector<bool> is_special(tokens_.size(), false);
    for (const auto& [text, id] : special_tokens) {
        if (text.empty()) throw std::invalid_argument("special token '' is empty; special tokens must be non-empty");
        if (id < 0 || id >= static_cast<int64_t>(tokens_.size()) || !present_[id])
            throw std::invalid_argument("special token '" + text + "' has id " + std::to_string(id) +
                                        ", which is not in the vocab; give it an id that the vocab maps");
        specials_.emplace_back(text, static_cast<uint32_t>(id));
        is_special[id] = true;
    }
    // Bytes -> id: ordinary tokens first (a duplicated byte string keeps its smallest id), then the special
    // tokens' bytes where no ordinary token has them, exactly as ReferenceEngine resolves merges.
    BytesMap<uint32_t> ids(vocab.size());
    for (size_t id = 0; id < tokens_.size(); ++id) {
        if (!present_[id] || is_special[id] || tokens_[id].empty()) continue;
        if (!ids.find(tokens_[id])) ids[tokens_[id]] = static_cast<uint32_t>(id);
    }
    for (const auto& [text, id] : specials_)
        if (!tokens_[id].empty() && !ids.find(tokens_[id])) ids[tokens_[id]] = id;
    for (unsigned b = 0; b < 256; ++b) {
        char c = static_cast<char>(b);
        const uint32_t* id = ids.find(std::string_view(&c, 1));
        if (!id)
            throw std::invalid_argument("the vocab has no token for the single byte " + hex_byte(b) +
                                        "; byte-level BPE needs all 256 single-byte tokens in the vocab");
        byte_id_[b] = *id;
    }
    size_t capacity = 16;
    while (capacity < merges.size() * 2 + 2) capacity *= 2;
    merge_keys_.assign(capacity, UINT64_MAX);
    merge_vals_.assign(capacity, Merge{kNoRank, 0});
    merge_mask_ = capacity - 1;
    std::string joined;
    for (size_t r = 0; r < merges.size(); ++r) {
        const auto& [left, right] = merges[r];
        const uint32_t* a = ids.find(left);
        const uint32_t* b = ids.find(right);
        joined = left + right;
        const uint32_t* m = ids.find(joined);
        if (!a || !b || !m) {
            std::string missing = bytes_repr(!a ? left : !b ? std::string_view(right) : std::string_view(joined));
            throw std::invalid_argument("merge #" + std::to_string(r) + " (" + bytes_repr(left) + ", " +
                                        bytes_repr(right) + ") needs the token " + missing +
                                        ", which is not in the vocab; every merge's two parts "
                                        "and their concatenation must be in the vocab");
        }
        uint64_t key = pair_key(*a, *b);
        size_t i = pair_slot(key, merge_mask_);
        while (merge_keys_[i] != UINT64_MAX && merge_keys_[i] != key) i = (i + 1) & merge_mask_;
        if (merge_keys_[i] == key) continue;  // a repeated merge keeps its first (best) rank
        merge_keys_[i] = key;
        merge_vals_[i] = Merge{static_cast<uint32_t>(r), *m};
    }
    // The whole-piece shortcut: most pre-tokens of natural text are one token, and one hash probe replaces the
    // merge loop for them. Only tokens that BPE itself turns into that same single token are admitted, so the
    // shortcut never changes a result.
    std::vector<uint32_t> out;
    std::vector<std::pair<std::string_view, uint32_t>> short_entries;
    for (const auto& slot : ids.slots()) {
        if (!slot.used || slot.size < 2) continue;
        std::string_view piece(slot.data, slot.size);
        out.clear();
        bpe(piece, out);
        if (out.size() != 1 || out[0] != slot.value) continue;
        if (piece.size() <= ShortKey::kMaxLen) short_entries.emplace_back(piece, slot.value);
        else whole_long_[piece] = slot.value;
    }
    whole_short_.build(short_entries);
}

Engine::Merge Engine::find_merge(uint32_t a, uint32_t b) const {
    uint64_t key = pair_key(a, b);
    size_t i = pair_slot(key, merge_mask_);
    while (true) {
        uint64_t k = merge_keys_[i];
        if (k == key) return merge_vals_[i];
        if (k == UINT64_MAX) return Merge{kNoRank, 0};
        i = (i + 1) & merge_mask_;
    }
}

// Short pieces: arrays of tokens and pair ranks, merge the leftmost lowest-rank pair, patch its two neighbours.
// O(n^2) in the worst case but n <= 128 and everything stays in L1; tiktoken does the same.
void Engine::bpe_short(std::string_view piece, std::vector<uint32_t>& out) const {
    const size_t n0 = piece.size();
    uint32_t tok[128];
    Merge pr[128];  // pr[i]: merge of (tok[i], tok[i+1])
    for (size_t i = 0; i < n0; ++i) tok[i] = byte_id_[static_cast<uint8_t>(piece[i])];
    for (size_t i = 0; i + 1 < n0; ++i) pr[i] = find_merge(tok[i], tok[i + 1]);
    size_t n = n0;
    while (n > 1) {
        size_t best = 0;
        uint32_t best_rank = kNoRank;
        for (size_t i = 0; i + 1 < n; ++i)
            if (pr[i].rank < best_rank) { best_rank = pr[i].rank; best = i; }
        if (best_rank == kNoRank) break;
        tok[best] = pr[best].merged;
        std::memmove(tok + best + 1, tok + best + 2, (n - best - 2) * sizeof(uint32_t));
        if (best + 2 < n) std::memmove(pr + best + 1, pr + best + 2, (n - best - 2) * sizeof(Merge));
        --n;
        if (best > 0) pr[best - 1] = find_merge(tok[best - 1], tok[best]);
        if (best + 1 < n) pr[best] = find_merge(tok[best], tok[best + 1]);
    }
    out.insert(out.end(), tok, tok + n);
}

// Long pieces (a 1 MB line of letters, 100k spaces): a doubly linked list of tokens and a min-heap of
// (rank, position) with lazy deletion, O(n log n) instead of O(n^2). Position breaks rank ties, so the
// leftmost pair merges first, exactly as in bpe_short. 20 bytes per byte of the piece at the peak: token, links
// and one heap entry per position (an entry is checked by looking its rank up again, not by storing its pair:
// ranks are unique per pair).
void Engine::bpe_long(std::string_view piece, std::vector<uint32_t>& out) const {
    const uint32_t n = static_cast<uint32_t>(piece.size());
    constexpr uint32_t kNone = UINT32_MAX;
    std::vector<uint32_t> tok(n), prev(n), next(n);
    for (uint32_t i = 0; i < n; ++i) {
        tok[i] = byte_id_[static_cast<uint8_t>(piece[i])];
        prev[i] = i == 0 ? kNone : i - 1;
        next[i] = i + 1 == n ? kNone : i + 1;
    }
    struct Entry {
        uint32_t rank, pos;
        bool operator>(const Entry& o) const { return rank != o.rank ? rank > o.rank : pos > o.pos; }
    };
    auto rank_at = [&](uint32_t pos) {
        return next[pos] == kNone || tok[pos] == kNone ? kNoRank : find_merge(tok[pos], tok[next[pos]]).rank;
    };
    std::vector<Entry> heap;
    for (uint32_t i = 0; i + 1 < n; ++i)
        if (uint32_t r = rank_at(i); r != kNoRank) heap.push_back(Entry{r, i});
    std::make_heap(heap.begin(), heap.end(), std::greater<Entry>());
    auto push = [&](uint32_t pos) {
        uint32_t r = rank_at(pos);
        if (r == kNoRank) return;
        heap.push_back(Entry{r, pos});
        std::push_heap(heap.begin(), heap.end(), std::greater<Entry>());
    };
    while (!heap.empty()) {
        std::pop_heap(heap.begin(), heap.end(), std::greater<Entry>());
        Entry e = heap.back();
        heap.pop_back();
        if (rank_at(e.pos) != e.rank) continue;  // stale: a neighbour changed since the entry was pushed
        const uint32_t nx = next[e.pos];
        tok[e.pos] = find_merge(tok[e.pos], tok[nx]).merged;
        tok[nx] = kNone;
        next[e.pos] = next[nx];
        if (next[nx] != kNone) prev[next[nx]] = e.pos;
        if (prev[e.pos] != kNone) push(prev[e.pos]);
        push(e.pos);
    }
    for (uint32_t i = 0; i != kNone; i = next[i]) out.push_back(tok[i]);
}

void Engine::bpe(std::string_view piece, std::vector<uint32_t>& out) const {
    if (piece.size() <= 128) bpe_short(piece, out); else bpe_long(piece, out);
}

void Engine::encode_piece(std::string_view piece, std::vector<uint32_t>& out, PieceCache& cache) const {
    if (piece.size() == 1) { out.push_back(byte_id_[static_cast<uint8_t>(piece[0])]); return; }
    if (piece.empty()) return;
    if (piece.size() > ShortKey::kMaxLen) {
        if (const uint32_t* id = whole_long_.find(piece)) out.push_back(*id);
        else bpe(piece, out);
        return;
    }
    ShortKey key = ShortKey::of(piece);
    uint64_t h = key.hash();
    if (const uint32_t* id = whole_short_.find(key, h)) { out.push_back(*id); return; }
    // ~10% of Shakespeare's pre-tokens are several tokens and took ~1/3 of encode time in bpe_short; the
    // cache serves repeats of them (0.134 -> 0.085 s CPU on Shakespeare).
    PieceCache::Entry& e = cache.slot(h);
    if (e.holds(key, id_)) { out.insert(out.end(), e.ids, e.ids + e.n); return; }
    size_t before = out.size();
    bpe_short(piece, out);
    size_t n = out.size() - before;
    if (n <= PieceCache::kMaxIds) {
        e.k0 = key.k0;
        e.k1 = key.k1;
        e.len = key.len;
        e.owner = id_;
        e.n = static_cast<uint32_t>(n);
        std::copy(out.begin() + before, out.end(), e.ids);
    }
}

void Engine::encode_ordinary_into(std::string_view text, std::vector<uint32_t>& out, PieceCache& cache) const {
    pretokenize(text, [&](size_t b, size_t e) { encode_piece(text.substr(b, e - b), out, cache); });
}

std::vector<uint32_t> Engine::encode_ordinary(std::string_view text) const {
    std::vector<uint32_t> out;
    out.reserve(text.size() / 4 + 16);
    encode_ordinary_into(text, out, PieceCache::for_this_thread());
    return out;
}

std::vector<std::pair<std::string_view, uint32_t>> Engine::resolve_allowed(
    const std::vector<std::string>& names) const {
    std::vector<std::pair<std::string_view, uint32_t>> allowed;
    for (const std::string& name : names) {
        auto it = std::find_if(specials_.begin(), specials_.end(), [&](const auto& s) { return s.first == name; });
        if (it == specials_.end()) {
            std::string known;
            for (const auto& s : specials_) known += (known.empty() ? "'" : ", '") + s.first + "'";
            throw std::invalid_argument("allowed special token '" + name + "' is not one of this engine's special "
                                        "tokens (" + (known.empty() ? std::string("none") : known) +
                                        "); pass only special tokens the engine was built with");
        }
        allowed.emplace_back(it->first, it->second);
    }
    return allowed;
}

void Engine::encode_into(std::string_view text, const std::vector<std::pair<std::string_view, uint32_t>>& specials,
                         std::vector<uint32_t>& out, PieceCache& cache) const {
    if (specials.empty()) { encode_ordinary_into(text, out, cache); return; }
    std::vector<std::string_view> names;
    for (const auto& s : specials) names.push_back(s.first);
    split_on_specials(
        text, names, [&](size_t b, size_t e) { encode_ordinary_into(text.substr(b, e - b), out, cache); },
        [&](size_t k) { out.push_back(specials[k].second); });
}

std::vector<uint32_t> Engine::encode(std::string_view text, const std::vector<std::string>& allowed_special) const {
    auto allowed = resolve_allowed(allowed_special);
    std::vector<uint32_t> out;
    out.reserve(text.size() / 4 + 16);
    encode_into(text, allowed, out, PieceCache::for_this_thread());
    return out;
}

std::vector<std::vector<uint32_t>> Engine::encode_batch(const std::vector<std::string_view>& texts,
                                                        const std::vector<std::string>& allowed_special,
                                                        int num_threads) const {
    if (num_threads < 1)
        throw std::invalid_argument("num_threads=" + std::to_string(num_threads) + " must be >= 1");
    auto allowed = resolve_allowed(allowed_special);
    std::vector<std::vector<uint32_t>> results(texts.size());
    // Texts are handed out one at a time from an atomic counter, so uneven lengths still balance.
    std::atomic<size_t> next{0};
    int workers = static_cast<int>(std::min<size_t>(static_cast<size_t>(num_threads), texts.size()));
    run_workers(workers, [&](int) {
        PieceCache& cache = PieceCache::for_this_thread();
        for (size_t i; (i = next.fetch_add(1)) < texts.size();) {
            // Encode into a vector of this thread's own and move it in at the end: push_back straight into
            // results[i] rewrites that vector's header, which shares a cache line with its neighbours' being
            // filled by the other threads (false sharing). That kept 2 threads at 1.03x of one on Shakespeare
            // in 100 kB texts, with both cores busy.
            std::vector<uint32_t> ids;
            ids.reserve(texts[i].size() / 4 + 16);
            encode_into(texts[i], allowed, ids, cache);
            results[i] = std::move(ids);
        }
    });
    return results;
}

// =========================================================================================================
// Decoding
// =========================================================================================================

std::string Engine::decode_bytes(const std::vector<int64_t>& ids) const {
    size_t total = 0;
    for (size_t k = 0; k < ids.size(); ++k) {
        int64_t id = ids[k];
        if (id < 0 || id >= static_cast<int64_t>(tokens_.size()) || !present_[id])
            throw std::invalid_argument("unknown token id " + std::to_string(id) + " at position " +
                                        std::to_string(k) + "; valid ids are those in the vocab (0.." +
                                        std::to_string(static_cast<int64_t>(tokens_.size()) - 1) + ")");
        total += tokens_[id].size();
    }
    std::string out;
    out.reserve(total);
    for (int64_t id : ids) out += tokens_[id];
    return out;
}

}  // namespace lmfast
