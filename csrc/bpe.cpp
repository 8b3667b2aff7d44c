// The BPE tokenizer core: encoding and decoding (training is in bpe_train.cpp). See bpe.h for the contract;
// performance notes sit beside the code they explain.
//
// Where encode time went, first round (Shakespeare, 5.06 MB, GPT-2's 50k vocab; CPU seconds of one encode_ordinary
// call, best of 5 by getrusage, on a shared 2-core AMD EPYC; tiktoken 0.14 takes 0.49-0.52 s on the same text):
//   first version (BytesMap whole-piece lookup, bpe_short per miss, PyLong per id)   0.34-0.99 s wall, busy host
//   + 16-byte inline keys for the whole-piece map, per-call piece cache (16k slots)  0.138 s
//   + thread-local piece cache (32k slots, kept across calls)                         0.110 s
//   + shared int objects when building the result list (bindings.cpp)                 0.085 s  (~60 MB/s)
//
// Second round: text -> id array on the mixed corpus (benchmarks/mixed_corpus.py: 21 MB of prose, Python source,
// German and French man pages; 5.1M pre-tokens, 165k distinct, 136k of them several tokens), GPT-2's vocab, one
// pinned thread of a 2-core AMD EPYC shared with other jobs (load 6-14 during this work, so steps are compared
// back to back, and MB/s vary by ~20% between runs). Cold: a fresh engine; warm: the same text again.
//                                                                                         cold     warm  MB/s
//   start: pieces one at a time, 4 MiB whole-token map, 2 MiB direct-mapped BPE cache       45       55
//   + BPE on dense internal ids, merges in one array of 8-byte slots (was 2 x 2 MiB)          64       68
//   + 32-byte entries, 2-way sets (a set is one cache line)                                   77       88
//   + one growable open-addressing cache per thread and engine (nothing evicted)            ~50      ~80
//     (worse alone: a random probe into 16 MiB per piece; it pays with the next two)
//   + pieces in batches of 32, each piece's cache slot prefetched before the batch is
//     resolved (memory-level parallelism instead of one miss at a time)                     ~75     ~130
//   + the pre-tokenizer as resumable batches (pretokenize_some) with an ASCII class table and
//     8-byte letter runs: the split alone 330 -> 540 MB/s                                    ~105     ~155
//   + merge slots at load 3/4 (512 KiB) instead of 4-byte tag slots + a check array          ~105     ~164
//   + the cache-hit path inline in the batch loop; no prefetch of the whole-token map       same, 5% fewer instructions
// Tried and dropped: a 128 KiB direct-mapped front cache of 2..7-byte pieces ahead of the big one (no gain once
// lookups were batched); 4-byte merge slots (a 12-bit tag + rank, 256 KiB) checked against a rank -> pair array
// (the check was a second miss: ~92 vs ~105 cold); prefetching the whole-token map too (64 prefetches in flight
// per batch stalled on the miss buffers).
// Also tried on 2 threads: a lock-free table of BPE results shared by the threads of one engine, so that each
// distinct piece is merged once instead of once per thread; the process's CPU seconds did not move (72-78 vs
// 73-76 MB/s of CPU), its probes into 16 MiB cost what the saved merges gave. Not kept.
// Third round, text -> array, cold, 1 thread, mixed corpus, ratios to gigatoken 0.10 interleaved on the same host:
//   start (second round's end)                                                                   0.69x
//   + every thread's cache seeded with each byte and whole token of <= 16 bytes (a miss is BPE,
//     no whole-token probe), sized for the text at once; a cache of its own for 17-256-byte
//     pieces; BPE of short pieces on a dense byte-pair rank table, fixed positions, vectorised
//     minimum; 4-slot merge buckets; GPT-2's pre-tokenizer by SSE2 bit masks                     ~1.04x
//   + ids written straight into the array (IdBuffer: its own 2 MiB pages, grown by mremap,
//     filled in rounds of 64 chunks so its room beyond the ids stays bounded); on 2 threads
//     each thread takes a consecutive share of the units (its distinct pieces stay its own)     ~1.1-1.2x
//   + freed arrays and dropped cache tables keep their pages for the next call (Spares), and a
//     thread's cache starts at its final size: the kernel's page zeroing 10% -> 4% of samples    ~1.1-1.25x
// Tried and dropped in this round: BPE of a batch's new pieces four at a time, one merge step of each in turn, so
// that their merge-table misses overlap (bpe_small_many; 219 -> 203 ns a piece alone with hot tables, but a cold
// encode went from ~120 to ~130 ms: each lane's end is a mispredicted branch that throws away the others' steps,
// and finding the batch's other new pieces costs probes of its own).
// Where the time is now (perf, cold encode_to_numpy of the mixed corpus, 1 thread, ~120-145 ms a call): BPE of the
// 131k distinct new pieces of <= 16 bytes 36% (~500 ns a piece against ~220 with hot tables: half its samples sit on
// the two merge-table loads of a step, 1 MiB of buckets that the 16 MiB piece cache's probes push out of L2), the
// batch loop with its cache probes 25-28%, the pre-tokenizer 12%, encode_slow (results of more than 3 ids, misses)
// 6%, BPE of 17-128-byte pieces 4%, the kernel zeroing fresh pages 4%, the special-token split 1%. Warm (the same
// text again, ~67 ms) it is the batch loop and the pre-tokenizer. What would close more: a merge table small enough
// to stay in L2 (two-choice buckets at load ~0.9 would halve it), a branch-free way to interleave pieces' BPE, and
// more ids inline (uint16 ids when the vocab fits would hold 6 in an entry, sparing encode_slow).
// Fourth round (same corpus and call; cachegrind with a simulated 1 MiB L2 as "LL" gives counts that the shared host's
// timings cannot: one cold call is ~900M instructions, 428M of them the batch loop, 211M bpe_small, 183M the
// pre-tokenizer; perf puts ~half the cold time in bpe_small, which runs at ~1 instruction a cycle):
//   + merges of 16-bit ids in 64-byte buckets of 10 keys (512 KiB, was 1 MiB): bpe_small's L2 misses 797k -> 313k a
//     call; time 0.96-0.99x of before (25 and 41 interleaved rounds, load ~2). On 2 threads (wall; each thread has
//     its own L2 and a cache half the size) it is 1.03-1.04x slower (21 and 41 rounds, load ~1): a lookup's chain is
//     longer (three compares, a mask, ctz, then the rank's load, against four compare-selects), which the fewer
//     misses pay for only where the table was being evicted. Kept for the 1-thread target.
//   The benchmark at that commit (5 rounds, load 0.9-1.6): cold array 1.06x gigatoken on 1 thread (was 1.02x), 1.27x
//   on 2; 41 interleaved rounds on a calmer host gave 1.21-1.24x on 1 thread, so the 1-thread figure sits in the
//   host's noise around the 1.2x target rather than clearly above it.
// Tried and dropped (41 interleaved rounds each, within noise or slower): a region of its own (128 KiB) for the pairs
// of two ids < 512 (9k of GPT-2's merges), to keep the first merges' lookups in a few hot lines (1.03x slower than
// one table); byte_rank_ in 16 bits (128 KiB; bpe_small's L2 misses did not move: 313k); the minimum of the 16 keys
// by a scalar tree, so that the three keys a step stores reach it by store forwarding, not a stalled vector load
// (0.94x, 0.99x, 1.00x in three runs); batches of 32 pieces (1.04x slower); Entry::holds by xor/or instead of &&
// (1.00x). What is left: bpe_small, ~half the cold time at ~1 instruction a cycle, is a serial chain per merge step
// (minimum -> merge -> two lookups -> minimum) with L2 misses no longer its main cost; the batch loop is ~84
// instructions a piece at ~3 a cycle, 20% of its samples on the prefetch of the next batch's homes.
#include "bpe.h"
#include "bpe_internal.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <atomic>
#include <condition_variable>
#include <cstring>
#include <exception>
#include <functional>
#include <mutex>
#include <thread>
#include <tuple>
#include <unordered_map>

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

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

// Engine id -> how many engines (an engine and its copies) hold it. Looked up only when a thread makes a new
// PieceCache, once per engine and thread, so a mutex costs nothing that shows.
struct LiveEngines {
    std::mutex mutex;
    std::unordered_map<uint32_t, uint32_t> count;
    static LiveEngines& instance() {
        static LiveEngines* live = new LiveEngines();  // leaked on purpose: engines may die during exit
        return *live;
    }
};

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

// ----- Spare mappings, IdBuffer -----

namespace {

size_t whole_pages(size_t bytes) {
    const size_t page = static_cast<size_t>(::sysconf(_SC_PAGESIZE));
    return std::max(page, (bytes + page - 1) / page * page);
}

// Mappings given back (the memory of a freed id array, of a dropped piece cache), kept for the next one that needs
// memory, as malloc keeps freed memory: its pages are already there, so they cost no fault and no zeroing by the
// kernel. Without them ~10% of a cold encode_to_numpy on the mixed corpus (perf, clear_page_erms) went to faulting in
// the fresh 2 MiB pages of the output (11 MB) and of the cache table (16 MiB). At most kKeptBytes are kept; after
// fork() the child starts with none (the parent's pool object is leaked). Arrays and tables are kept apart: an id
// array takes the largest kept array, a table one of its exact size, so that the array (asked before the table)
// cannot take the 16 MiB of a dropped table and leave the table to fresh pages.
enum class Kind { array, table };

class Spares {
   public:
    static constexpr size_t kKeptBytes = size_t{64} << 20;

    static Spares& instance() {
        static std::mutex guard;
        static Spares* spares = nullptr;
        std::lock_guard<std::mutex> lock(guard);
        if (!spares || spares->pid_ != ::getpid()) spares = new Spares();  // leaked on purpose, as WorkerPool
        return *spares;
    }
    // A kept table of exactly `bytes`, or the largest kept array; {nullptr, 0} when there is none.
    std::pair<void*, size_t> take(Kind kind, size_t bytes = 0) {
        std::lock_guard<std::mutex> lock(mutex_);
        size_t best = kept_.size();
        for (size_t k = 0; k < kept_.size(); ++k) {
            if (kept_[k].kind != kind) continue;
            const bool better = best == kept_.size() || kept_[k].bytes > kept_[best].bytes;
            if (kind == Kind::table ? kept_[k].bytes == bytes : better) best = k;
        }
        if (best == kept_.size()) return {nullptr, 0};
        const Kept m = kept_[best];
        kept_.erase(kept_.begin() + static_cast<std::ptrdiff_t>(best));
        total_ -= m.bytes;
        return {m.data, m.bytes};
    }
    // Keeps the mapping, unmapping the oldest kept ones to make room, or unmaps it when it alone is too big.
    void give(void* data, size_t bytes, Kind kind) {
        if (!data) return;
        if (bytes > kKeptBytes) {
            ::munmap(data, bytes);
            return;
        }
        std::lock_guard<std::mutex> lock(mutex_);
        while (total_ + bytes > kKeptBytes) {
            ::munmap(kept_.front().data, kept_.front().bytes);
            total_ -= kept_.front().bytes;
            kept_.erase(kept_.begin());
        }
        kept_.push_back(Kept{data, bytes, kind});
        total_ += bytes;
    }

   private:
    struct Kept {
        void* data;
        size_t bytes;
        Kind kind;
    };
    Spares() : pid_(::getpid()) {}
    const pid_t pid_;
    std::mutex mutex_;
    std::vector<Kept> kept_;  // oldest first
    size_t total_ = 0;
};

// Fresh anonymous memory, asked for 2 MiB pages where the kernel has them.
void* map_fresh(size_t bytes) {
    void* mem = ::mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (mem == MAP_FAILED) throw std::bad_alloc();
#ifdef MADV_HUGEPAGE
    ::madvise(mem, bytes, MADV_HUGEPAGE);
#endif
    return mem;
}

}  // namespace

void* IdBuffer::reserve(size_t bytes) {
    if (bytes <= bytes_) return data_;
    if (!data_) {
        std::tie(data_, bytes_) = Spares::instance().take(Kind::array);
        if (bytes <= bytes_) return data_;
    }
    const size_t size = whole_pages(bytes);
    void* mem;
#ifdef __linux__
    mem = data_ ? ::mremap(data_, bytes_, size, MREMAP_MAYMOVE) : map_fresh(size);
    if (mem == MAP_FAILED) throw std::bad_alloc();
#ifdef MADV_HUGEPAGE
    ::madvise(mem, size, MADV_HUGEPAGE);
#endif
#else
    mem = map_fresh(size);
    if (data_) {
        std::memcpy(mem, data_, bytes_);
        ::munmap(data_, bytes_);
    }
#endif
    data_ = mem;
    bytes_ = size;
    return data_;
}

void IdBuffer::shrink(size_t bytes) {
    const size_t size = whole_pages(bytes);
    if (!data_ || size >= bytes_) return;
    ::munmap(static_cast<char*>(data_) + size, bytes_ - size);
    bytes_ = size;
}

void IdBuffer::unmap(void* data, size_t bytes) { Spares::instance().give(data, bytes, Kind::array); }

// ----- PieceCache -----

void PieceCache::Free::operator()(Entry* p) const { Spares::instance().give(p, bytes, Kind::table); }

PieceCache::PieceCache() { resize(kMinSlots); }

PieceCache::PieceCache(const PieceCache& seed, size_t more) { reset_to(seed, more); }

void PieceCache::reset_to(const PieceCache& seed, size_t more) {
    // A cache made for a lot of text starts at its final size with the seed's entries rehashed into it: copying the
    // 4 MiB seed and then growing to 16 MiB touched 24 MiB of fresh pages (each zeroed by the kernel) instead of 16.
    slots_.reset();
    size_t slots = seed.mask_ + 1;
    while ((seed.count_ + more) * 2 > slots && slots < kMaxSlots) slots *= 2;
    map(slots);
    if (slots == seed.mask_ + 1)
        std::memcpy(static_cast<void*>(slots_.get()), seed.slots_.get(), sizeof(Entry) * slots);
    else
        put_all(seed.slots_.get(), seed.mask_ + 1);
    count_ = seed.count_;
    pool_ = seed.pool_;
    long_.assign(1024, LongEntry{});
    long_count_ = 0;
    long_bytes_.clear();
}

void PieceCache::map(size_t slots) {
    // Zero pages, kept ones cleared or fresh ones from mmap; 2 MiB pages where the kernel has them, so that a probe
    // anywhere in the table costs no TLB miss (the table is 2-32 MiB, far more than 4 KiB pages' TLB reach).
    const size_t bytes = slots * sizeof(Entry);
    void* mem = Spares::instance().take(Kind::table, bytes).first;
    if (mem) std::memset(mem, 0, bytes);
    else mem = map_fresh(bytes);
    slots_ = std::unique_ptr<Entry[], Free>(static_cast<Entry*>(mem), Free(bytes));
    mask_ = slots - 1;
}

void PieceCache::put_all(const Entry* from, size_t slots) {
    // Each entry goes to a random place in the new table: their lines are prefetched kAhead entries ahead.
    constexpr size_t kAhead = 16;
    auto key_of = [&](size_t i) {
        ShortKey key;
        key.k0 = from[i].k0;
        key.k1 = from[i].k1;
        key.len = from[i].len;
        return key;
    };
    for (size_t i = 0; i < slots; ++i) {
        if (i + kAhead < slots && from[i + kAhead].len != 0) __builtin_prefetch(home(key_of(i + kAhead).hash()));
        if (from[i].len == 0) continue;
        const ShortKey key = key_of(i);
        *find(key, key.hash()) = from[i];
    }
}

void PieceCache::resize(size_t slots) {
    std::unique_ptr<Entry[], Free> old(std::move(slots_));
    const size_t old_slots = old ? mask_ + 1 : 0;
    map(slots);
    put_all(old.get(), old_slots);
}

void PieceCache::reserve(size_t more) {
    size_t slots = mask_ + 1;
    while ((count_ + more) * 2 > slots && slots < kMaxSlots) slots *= 2;
    if (slots > mask_ + 1) resize(slots);
}

PieceCache& PieceCache::of(uint32_t engine_id, const PieceCache& seed, size_t more) {
    // The caches of this thread's last kPerThread engines, most recent first. An engine's id is never reused,
    // so a cache can never serve another engine's results; one left behind by a destroyed engine ages out.
    thread_local std::pair<uint32_t, std::unique_ptr<PieceCache>> slots[kPerThread];
    if (slots[0].first == engine_id && slots[0].second) return *slots[0].second;
    int k = 1;
    while (k < kPerThread && !(slots[k].first == engine_id && slots[k].second)) ++k;
    if (k == kPerThread) {
        // The caches of destroyed engines go first (to Spares), and the oldest one if none is dead, so that the new
        // table is made in their pages. Kept until pushed out, each new engine of a long-lived process (a fresh
        // tokenizer per round of the benchmark, per notebook cell) faulted in and zeroed a fresh 16 MiB table,
        // and the process held 4 dead tables.
        for (auto& slot : slots)
            if (slot.second && !engine_live(slot.first)) slot = {0, nullptr};
        std::stable_partition(slots, slots + kPerThread, [](const auto& slot) { return slot.second != nullptr; });
        k = kPerThread - 1;
        slots[k].second.reset();
        slots[k].first = engine_id;
        slots[k].second.reset(new PieceCache(seed, more));
    }
    std::rotate(slots, slots + k, slots + k + 1);
    return *slots[0].second;
}

bool PieceCache::engine_live(uint32_t engine_id) {
    LiveEngines& live = LiveEngines::instance();
    std::lock_guard<std::mutex> lock(live.mutex);
    return live.count.count(engine_id) != 0;
}

bool PieceCache::full(size_t more_ids) const {
    return pool_.size() + more_ids > (size_t{1} << 22) || long_bytes_.size() > (size_t{1} << 22);
}

void PieceCache::insert(Entry* slot, const ShortKey& key, uint64_t hash, const uint32_t* ids, size_t n,
                        const PieceCache& seed) {
    const size_t extra = n > 3 ? n : 0;
    if ((count_ + 1) * 2 > mask_ + 1 || full(extra)) {
        if (mask_ + 1 < kMaxSlots && !full(extra)) resize(2 * (mask_ + 1));
        else reset_to(seed);  // full: start again (bounded memory on any text; the hot pieces come back at once)
        slot = find(key, hash);
    }
    ++count_;
    Entry& e = *slot;
    e.k0 = key.k0;
    e.k1 = key.k1;
    e.len = static_cast<uint8_t>(key.len);
    e.n = static_cast<uint8_t>(n);
    if (n <= 3) {
        std::memcpy(e.ids, ids, n * sizeof(uint32_t));
        return;
    }
    e.ids[0] = static_cast<uint32_t>(pool_.size());
    pool_.insert(pool_.end(), ids, ids + n);
}

const uint32_t* PieceCache::find_long(std::string_view piece, uint64_t hash, size_t& n) const {
    const size_t mask = long_.size() - 1;
    for (size_t i = hash & mask;; i = (i + 1) & mask) {
        const LongEntry& e = long_[i];
        if (e.len == 0) return nullptr;
        if (e.hash == hash && e.len == piece.size() &&
            std::memcmp(long_bytes_.data() + e.at, piece.data(), piece.size()) == 0) {
            n = e.n;
            return pool_.data() + e.ids;
        }
    }
}

void PieceCache::insert_long(std::string_view piece, uint64_t hash, const uint32_t* ids, size_t n,
                             const PieceCache& seed) {
    if (full(n + piece.size())) reset_to(seed);
    if ((long_count_ + 1) * 2 > long_.size()) {
        std::vector<LongEntry> old(long_.size() * 2);
        old.swap(long_);
        for (const LongEntry& e : old) {
            if (e.len == 0) continue;
            size_t i = e.hash & (long_.size() - 1);
            while (long_[i].len != 0) i = (i + 1) & (long_.size() - 1);
            long_[i] = e;
        }
    }
    size_t i = hash & (long_.size() - 1);
    while (long_[i].len != 0) i = (i + 1) & (long_.size() - 1);
    long_[i] = LongEntry{hash, static_cast<uint32_t>(long_bytes_.size()), static_cast<uint32_t>(piece.size()),
                         static_cast<uint32_t>(pool_.size()), static_cast<uint32_t>(n)};
    ++long_count_;
    long_bytes_.append(piece);
    pool_.insert(pool_.end(), ids, ids + n);
}

// ----- Engine -----

Engine::Live::Live(uint32_t engine_id) : id(engine_id) {
    LiveEngines& live = LiveEngines::instance();
    std::lock_guard<std::mutex> lock(live.mutex);
    ++live.count[id];
}

Engine::Live::Live(const Live& other) : Live(other.id) {}

Engine::Live::~Live() {
    LiveEngines& live = LiveEngines::instance();
    std::lock_guard<std::mutex> lock(live.mutex);
    if (--live.count[id] == 0) live.count.erase(id);
}

Engine::Engine(const std::vector<std::pair<int64_t, std::string>>& vocab,
               const std::vector<std::pair<std::string, std::string>>& merges,
               const std::vector<std::pair<std::string, int64_t>>& special_tokens, Pattern pattern,
               bool ignore_merges)
    : pattern_(pattern), id_(next_engine_id()), whole_long_(64) {
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
    size_t present = 0;
    for (size_t id = 0; id < tokens_.size(); ++id) present += present_[id];
    if (present >= (size_t{1} << 21) || merges.size() >= kNoRank)
        throw std::invalid_argument("the vocab has " + std::to_string(present) + " tokens and " +
                                    std::to_string(merges.size()) + " merges; the engine holds at most 2097151 "
                                    "tokens and 2097150 merges");
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
    // Internal ids: the 256 bytes, then the tokens of the merges in the order they first appear (a merge's parts,
    // then its result), so that small ids are early merges. The bytes take the ids of their tokens when those are
    // 0..255 (GPT-2, tiktoken's encodings), else their values: in the first case a vocab whose merge r makes token
    // 256 + r needs no mapping at all (identity_, merged_next_).
    for (unsigned b = 0; b < 256; ++b) {
        char c = static_cast<char>(b);
        const uint32_t* id = ids.find(std::string_view(&c, 1));
        if (!id)
            throw std::invalid_argument("the vocab has no token for the single byte " + hex_byte(b) +
                                        "; byte-level BPE needs all 256 single-byte tokens in the vocab");
        byte_id_[b] = *id;
    }
    const bool bytes_first = std::all_of(byte_id_, byte_id_ + 256, [](uint32_t id) { return id < 256; });
    std::vector<uint32_t> internal(tokens_.size(), UINT32_MAX);
    external_.assign(256, 0);
    uint8_t byte_of[256];  // internal id < 256 -> its byte
    for (unsigned b = 0; b < 256; ++b) {
        byte_internal_[b] = bytes_first ? byte_id_[b] : b;
        byte_of[byte_internal_[b]] = static_cast<uint8_t>(b);
        internal[byte_id_[b]] = byte_internal_[b];
        external_[byte_internal_[b]] = byte_id_[b];
    }
    auto internal_of = [&](uint32_t id) {
        if (internal[id] == UINT32_MAX) {
            internal[id] = static_cast<uint32_t>(external_.size());
            external_.push_back(id);
        }
        return internal[id];
    };
    size_t buckets = 16;
    while (buckets * kBucket < merges.size() * 2) buckets *= 2;  // buckets at most half full on average
    merge_table_.assign(buckets * kBucket, kEmptySlot);
    merge_overflow_.assign(buckets, 0);
    merge_bucket_mask_ = buckets - 1;
    merged_.assign(merges.size(), 0);
    byte_rank_.assign(size_t{1} << 16, kNoRank);
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
        const uint32_t ia = internal_of(*a), ib = internal_of(*b);
        const uint64_t key = pair_of(ia, ib);
        if (rank_from(pair_home(key), key) != kNoRank) continue;  // a repeated merge keeps its first (best) rank
        for (size_t b = pair_home(key);; b = (b + 1) & merge_bucket_mask_) {
            uint64_t* bucket = &merge_table_[b * kBucket];
            uint64_t* slot = std::find(bucket, bucket + kBucket, kEmptySlot);
            if (slot != bucket + kBucket) {
                *slot = key << 21 | r;
                break;
            }
            merge_overflow_[b] = 1;
        }
        merged_[r] = internal_of(*m);
        merged_next_ = merged_next_ && merged_[r] == 256 + r;
        if ((ia | ib) < 256) byte_rank_[byte_of[ia] << 8 | byte_of[ib]] = static_cast<uint32_t>(r);
    }
    if (external_.size() < 0xFFFF && merges.size() < 0xFFFF) build_pairs16();
    bool identity = true;
    for (size_t i = 0; i < external_.size(); ++i) identity = identity && external_[i] == i;
    direct_ = identity && merged_next_;
    // The whole-piece shortcut: most pre-tokens of natural text are one token, and one hash probe replaces the
    // merge loop for them. Without ignore_merges only tokens that BPE itself turns into that same single token are
    // admitted, so the shortcut never changes a result.
    for (unsigned b = 0; b < 256; ++b) {
        const char c = static_cast<char>(b);
        const ShortKey key = ShortKey::of(std::string_view(&c, 1));
        const uint64_t h = key.hash();
        seed_.insert(seed_.find(key, h), key, h, &byte_id_[b], 1, seed_);
    }
    std::vector<uint32_t> out;
    for (const auto& slot : ids.slots()) {
        if (!slot.used || slot.size < 2) continue;
        std::string_view piece(slot.data, slot.size);
        if (ignore_merges && is_special[slot.value]) continue;  // special tokens are never matched as text
        if (!ignore_merges) {
            out.clear();
            bpe(piece, out);
            if (out.size() != 1 || out[0] != slot.value) continue;
        }
        if (piece.size() > ShortKey::kMaxLen) {
            whole_long_[piece] = slot.value;
            continue;
        }
        const ShortKey key = ShortKey::of(piece);
        const uint64_t h = key.hash();
        seed_.insert(seed_.find(key, h), key, h, &slot.value, 1, seed_);
    }
}

void Engine::build_pairs16() {
    size_t buckets = 16, count = 0;
    for (uint64_t slot : merge_table_) count += slot != kEmptySlot;
    while (buckets * 65 < count * 10) buckets *= 2;  // at most 0.65 full on average: few buckets overflow
    PairBucket empty;
    std::fill(empty.key, empty.key + 10, kEmptyPair);
    std::fill(empty.rank, empty.rank + 10, uint16_t{0xFFFF});
    empty.overflow = 0;
    pairs_.assign(buckets, empty);
    pair_mask_ = buckets - 1;
    for (uint64_t slot : merge_table_) {
        if (slot == kEmptySlot) continue;
        const uint32_t a = static_cast<uint32_t>(slot >> 42), b = static_cast<uint32_t>(slot >> 21) & kNoToken;
        const uint32_t key = a << 16 | b;
        for (size_t k = pair_home16(key);; k = (k + 1) & pair_mask_) {
            PairBucket& bucket = pairs_[k];
            uint32_t* free = std::find(bucket.key, bucket.key + 10, kEmptyPair);
            if (free != bucket.key + 10) {
                *free = key;
                bucket.rank[free - bucket.key] = static_cast<uint16_t>(slot & kNoRank);
                break;
            }
            bucket.overflow = 1;
        }
    }
    std::vector<uint64_t>().swap(merge_table_);  // find_rank goes to pairs_ from now on
    std::vector<uint8_t>().swap(merge_overflow_);
}

// BPE of a piece of 2..16 bytes (every piece the cache holds) on internal ids, whose first 256 are the bytes
// themselves. Positions never move: key[i] = rank << 4 | i for the pair that token i starts (INT32_MAX when none or
// when i is merged away), tokens linked by next/prev. A step is the minimum of 16 keys (the leftmost lowest rank,
// branch-free and vectorised), one merge and two lookups for the new neighbours.
// The smallest of 16 keys (each < 2**31).
static inline int32_t min16(const int32_t* key) {
#if defined(__SSE2__)
    auto mn = [](__m128i x, __m128i y) {
        const __m128i lt = _mm_cmplt_epi32(x, y);
        return _mm_or_si128(_mm_and_si128(lt, x), _mm_andnot_si128(lt, y));
    };
    const __m128i* k = reinterpret_cast<const __m128i*>(key);
    __m128i m = mn(mn(_mm_loadu_si128(k), _mm_loadu_si128(k + 1)), mn(_mm_loadu_si128(k + 2), _mm_loadu_si128(k + 3)));
    m = mn(m, _mm_shuffle_epi32(m, 0x4E));
    m = mn(m, _mm_shuffle_epi32(m, 0xB1));
    return _mm_cvtsi128_si32(m);
#else
    int32_t m = key[0];
    for (int i = 1; i < 16; ++i) m = key[i] < m ? key[i] : m;
    return m;
#endif
}

template <bool kDirect>
size_t Engine::bpe_small_as(const ShortKey& piece, uint32_t* out) const {
    const uint8_t* p = reinterpret_cast<const uint8_t*>(&piece.k0);  // 16 bytes, zero after the piece's len
    static_assert(offsetof(ShortKey, k1) == 8, "the key's 16 bytes are contiguous");
    const uint32_t n = piece.len;
    // Position 16 is a dummy: the left neighbour of token 0 and the right one of the last token, a token that is in
    // no pair, so that a merge looks up both its new pairs without a branch. The loops run over all 16 positions
    // (no branch on the length either); alive marks the positions not merged away.
    alignas(16) int32_t key[17];
    uint32_t tok[17];
    uint8_t next[17], prev[17];
    for (uint32_t i = 0; i < 15; ++i) {
        const int32_t k = static_cast<int32_t>(byte_rank_[p[i] << 8 | p[i + 1]] << 4 | i);
        key[i] = i + 1 < n ? k : INT32_MAX;
    }
    key[15] = INT32_MAX;
    for (uint32_t i = 0; i < 16; ++i) {
        tok[i] = byte_internal_[p[i]];
        next[i] = static_cast<uint8_t>(i + 1);
        prev[i] = static_cast<uint8_t>(i - 1);
    }
    next[n - 1] = 16;
    prev[0] = 16;
    tok[16] = kNoToken;
    uint32_t alive = (1u << n) - 1;
    while (true) {
        const int32_t m = min16(key);
        if (static_cast<uint32_t>(m) >> 4 >= kNoRank) break;
        const uint32_t i = static_cast<uint32_t>(m) & 15, j = next[i], nj = next[j], pi = prev[i];
        tok[i] = kDirect ? 256 + (static_cast<uint32_t>(m) >> 4) : merged_[static_cast<uint32_t>(m) >> 4];
        key[j] = INT32_MAX;
        alive &= ~(1u << j);
        next[i] = static_cast<uint8_t>(nj);
        prev[nj] = static_cast<uint8_t>(i);
        key[i] = static_cast<int32_t>(find_rank(tok[i], tok[nj]) << 4 | i);
        key[pi] = static_cast<int32_t>(find_rank(tok[pi], tok[i]) << 4 | pi);
    }
    size_t k = 0;
    for (uint32_t i = 0; i < 16; ++i) {
        out[k] = kDirect ? tok[i] : external_[tok[i]];
        k += (alive >> i) & 1;
    }
    return k;
}

// BPE of a piece of up to 128 bytes: arrays of tokens and pair ranks, merge the leftmost lowest-rank pair, patch its
// two neighbours. O(n^2) in the worst case but everything stays in L1; tiktoken does the same.
void Engine::bpe_medium(std::string_view piece, std::vector<uint32_t>& out) const {
    const uint8_t* p = reinterpret_cast<const uint8_t*>(piece.data());
    const size_t n0 = piece.size();
    uint32_t tok[128], rank[128];  // rank[i]: rank of the merge of (tok[i], tok[i+1])
    for (size_t i = 0; i < n0; ++i) tok[i] = byte_internal_[p[i]];
    for (size_t i = 0; i + 1 < n0; ++i) rank[i] = byte_rank_[p[i] << 8 | p[i + 1]];
    size_t n = n0;
    while (n > 1) {
        size_t best = 0;
        uint32_t best_rank = kNoRank;
        for (size_t i = 0; i + 1 < n; ++i)
            if (rank[i] < best_rank) { best_rank = rank[i]; best = i; }
        if (best_rank == kNoRank) break;
        tok[best] = merged_[best_rank];
        std::memmove(tok + best + 1, tok + best + 2, (n - best - 2) * sizeof(uint32_t));
        if (best + 2 < n) std::memmove(rank + best + 1, rank + best + 2, (n - best - 2) * sizeof(uint32_t));
        --n;
        if (best > 0) rank[best - 1] = find_rank(tok[best - 1], tok[best]);
        if (best + 1 < n) rank[best] = find_rank(tok[best], tok[best + 1]);
    }
    for (size_t i = 0; i < n; ++i) out.push_back(external_[tok[i]]);
}

// Long pieces (a 1 MB line of letters, 100k spaces): a doubly linked list of tokens and a min-heap of
// (rank, position) with lazy deletion, O(n log n) instead of O(n^2). Position breaks rank ties, so the
// leftmost pair merges first, exactly as in bpe_small. 20 bytes per byte of the piece at the peak: token, links
// and one heap entry per position (an entry is checked by looking its rank up again, not by storing its pair:
// ranks are unique per pair).
void Engine::bpe_long(std::string_view piece, std::vector<uint32_t>& out) const {
    const uint32_t n = static_cast<uint32_t>(piece.size());
    constexpr uint32_t kNone = UINT32_MAX;
    std::vector<uint32_t> tok(n), prev(n), next(n);
    for (uint32_t i = 0; i < n; ++i) {
        tok[i] = byte_internal_[static_cast<uint8_t>(piece[i])];
        prev[i] = i == 0 ? kNone : i - 1;
        next[i] = i + 1 == n ? kNone : i + 1;
    }
    struct Entry {
        uint32_t rank, pos;
        bool operator>(const Entry& o) const { return rank != o.rank ? rank > o.rank : pos > o.pos; }
    };
    auto rank_at = [&](uint32_t pos) {
        return next[pos] == kNone || tok[pos] == kNone ? kNoRank : find_rank(tok[pos], tok[next[pos]]);
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
        tok[e.pos] = merged_[e.rank];
        tok[nx] = kNone;
        next[e.pos] = next[nx];
        if (next[nx] != kNone) prev[next[nx]] = e.pos;
        if (prev[e.pos] != kNone) push(prev[e.pos]);
        push(e.pos);
    }
    for (uint32_t i = 0; i != kNone; i = next[i]) out.push_back(external_[tok[i]]);
}

void Engine::bpe(std::string_view piece, std::vector<uint32_t>& out) const {
    if (piece.size() <= ShortKey::kMaxLen) {
        uint32_t ids[ShortKey::kMaxLen];
        const size_t n = piece.size() < 2 ? 0 : bpe_small(ShortKey::of(piece), ids);
        if (piece.size() == 1) out.push_back(byte_id_[static_cast<uint8_t>(piece[0])]);
        out.insert(out.end(), ids, ids + n);
    } else if (piece.size() <= 128) {
        bpe_medium(piece, out);
    } else {
        bpe_long(piece, out);
    }
}

// A piece longer than ShortKey::kMaxLen (runs of spaces in source code, long words): the thread's long-piece cache,
// else the whole-token map, else BPE. Pieces of more than PieceCache::kMaxLongLen bytes are not cached.
template <class T>
T* Engine::encode_long(const char* piece, size_t size, T* out, PieceCache& cache) const {
    std::string_view s(piece, size);
    const uint64_t h = hash_bytes(piece, size);
    size_t n = 0;
    if (const uint32_t* ids = cache.find_long(s, h, n)) {
        for (size_t k = 0; k < n; ++k) out[k] = static_cast<T>(ids[k]);
        return out + n;
    }
    thread_local std::vector<uint32_t> ids;
    ids.clear();
    if (const uint32_t* id = whole_long_.find(s)) ids.push_back(*id);
    else bpe(s, ids);
    if (size <= PieceCache::kMaxLongLen) cache.insert_long(s, h, ids.data(), ids.size(), seed_);
    for (uint32_t id : ids) *out++ = static_cast<T>(id);
    return out;
}

// Every piece the hit path of encode_ordinary_into does not take: a piece of more than 16 bytes, a key displaced
// past its home pair, a cached result of more than 3 ids, or a piece the thread's cache does not hold yet. The
// cache starts from the engine's seed, which holds every single byte and every whole token of up to 16 bytes, so a
// piece missing from it is no whole token: its BPE, cached.
template <class T>
__attribute__((noinline)) T* Engine::encode_slow(const char* piece, size_t size, const ShortKey& key, uint64_t h,
                                                 T* out, PieceCache& cache) const {
    if (size > ShortKey::kMaxLen) return encode_long(piece, size, out, cache);
    PieceCache::Entry* slot = cache.find(key, h);
    if (slot->len != 0) {
        const uint32_t* ids = cache.ids(*slot);
        for (size_t k = 0; k < slot->n; ++k) out[k] = static_cast<T>(ids[k]);
        return out + slot->n;
    }
    uint32_t ids[ShortKey::kMaxLen];
    const size_t n = bpe_small(key, ids);
    cache.insert(slot, key, h, ids, n, seed_);
    for (size_t k = 0; k < n; ++k) out[k] = static_cast<T>(ids[k]);
    return out + n;
}

// Pieces go through in batches: the pre-tokenizer fills a batch, every piece's key and hash are computed and its
// cache line prefetched, then the batch is resolved in order. A lookup is a random access into a table of several
// MiB, and one at a time each waited out its own miss; a batch keeps ~kBatch of them in flight. The hit path has one
// branch, taken only by misses, pieces of more than 3 ids or 16 bytes, and keys displaced past their home pair.
template <class T>
T* Engine::encode_ordinary_into(std::string_view text, T* out, PieceCache& cache) const {
    const uint8_t* p = reinterpret_cast<const uint8_t*>(text.data());
    const char* base = text.data();
    const char* end = base + text.size();
    size_t starts[kBatch + 1];
    size_t* ends = starts + 1;
    ShortKey keys[kBatch];
    uint64_t hashes[kBatch];
    for (size_t i = 0; i < text.size();) {
        const size_t m = pretokenize_some(pattern_, p, text.size(), i, ends, kBatch);
        starts[0] = i;
        for (size_t k = 0; k < m; ++k) {
            keys[k] = ShortKey::of(base + starts[k], ends[k] - starts[k], end);
            hashes[k] = keys[k].hash();
            __builtin_prefetch(cache.home(hashes[k]));
        }
        const PieceCache::Entry* slots = cache.slots();
        size_t mask = cache.pair_mask();
        for (size_t k = 0; k < m; ++k) {
            const PieceCache::Entry* e = slots + ((hashes[k] >> 24) & mask);
            const bool h0 = e[0].holds(keys[k]), h1 = e[1].holds(keys[k]);
            const PieceCache::Entry* f = h1 ? e + 1 : e;
            // The hit path: the cached ids (3 copied whatever their count) and the count.
            out[0] = static_cast<T>(f->ids[0]);
            out[1] = static_cast<T>(f->ids[1]);
            out[2] = static_cast<T>(f->ids[2]);
            if ((h0 | h1) & (f->n <= 3)) {
                out += f->n;
                continue;
            }
            out = encode_slow(base + starts[k], ends[k] - starts[k], keys[k], hashes[k], out, cache);
            slots = cache.slots();  // an insert may have grown the table
            mask = cache.pair_mask();
        }
        i = ends[m - 1];
    }
    return out;
}

Engine::Specials Engine::resolve_allowed(const std::vector<std::string>& names) const {
    Specials allowed;
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

template <class T>
T* Engine::encode_into(std::string_view text, const Specials& specials, T* out, PieceCache& cache) const {
    if (specials.empty()) return encode_ordinary_into(text, out, cache);
    std::vector<std::string_view> names;
    for (const auto& s : specials) names.push_back(s.first);
    split_on_specials(
        text, names, [&](size_t b, size_t e) { out = encode_ordinary_into(text.substr(b, e - b), out, cache); },
        [&](size_t k) { *out++ = static_cast<T>(specials[k].second); });
    return out;
}

// Encodes text into buf (resized to hold the worst case, one id per byte, plus the slack encode_piece writes past
// the end, then down to the ids), returning the number of ids.
template <class T>
size_t Engine::encode_range(std::string_view text, const Specials& specials, std::vector<T, NoInit<T>>& buf,
                            PieceCache& cache) const {
    if (buf.size() < text.size() + 4) buf.resize(text.size() + 4);
    return static_cast<size_t>(encode_into(text, specials, buf.data(), cache) - buf.data());
}

// This thread's cache, grown at once for the distinct pieces of `bytes` of text: about one in 128 bytes on the mixed
// corpus (165k in 21.7 MB; fewer per byte in more text, and the cache stops at kMaxSlots anyway). Growing step by
// step from the seed's 4 MiB to 16 MiB cost two rehashes and 12 MiB of pages used once.
PieceCache& Engine::cache_for(size_t bytes) const {
    PieceCache& cache = PieceCache::of(id_, seed_, bytes / 128);
    cache.reserve(bytes / 128);
    return cache;
}

IdVector Engine::encode_ordinary(std::string_view text) const {
    IdVector out;
    out.resize(encode_range(text, {}, out, cache_for(text.size())));
    return out;
}

IdVector Engine::encode(std::string_view text, const std::vector<std::string>& allowed_special) const {
    IdVector out;
    out.resize(encode_range(text, resolve_allowed(allowed_special), out, cache_for(text.size())));
    return out;
}

std::vector<IdVector> Engine::encode_batch(const std::vector<std::string_view>& texts,
                                           const std::vector<std::string>& allowed_special, int num_threads) const {
    if (num_threads < 1)
        throw std::invalid_argument("num_threads=" + std::to_string(num_threads) + " must be >= 1");
    auto allowed = resolve_allowed(allowed_special);
    std::vector<IdVector> results(texts.size());
    // Texts are handed out one at a time from an atomic counter, so uneven lengths still balance.
    std::atomic<size_t> next{0};
    int workers = static_cast<int>(std::min<size_t>(static_cast<size_t>(num_threads), texts.size()));
    size_t bytes = 0;
    for (std::string_view t : texts) bytes += t.size();
    run_workers(workers, [&](int) {
        PieceCache& cache = cache_for(bytes);
        for (size_t i; (i = next.fetch_add(1)) < texts.size();) {
            // Encode into a vector of this thread's own and move it in at the end: writing straight into
            // results[i] rewrites that vector's header, which shares a cache line with its neighbours' being
            // filled by the other threads (false sharing). That kept 2 threads at 1.03x of one on Shakespeare
            // in 100 kB texts, with both cores busy.
            IdVector ids;
            ids.resize(encode_range(texts[i], allowed, ids, cache));
            results[i] = std::move(ids);
        }
    });
    return results;
}

// ----- Chunked encoding: to an array, and file to file -----

std::vector<size_t> Engine::chunk_cuts(std::string_view text, const Specials& specials, size_t chunk) const {
    size_t longest = 1;
    for (const auto& s : specials) longest = std::max(longest, s.first.size());
    // A cut inside an allowed special token would encode its two halves as text.
    auto straddles = [&](size_t c) {
        for (const auto& s : specials) {
            const size_t len = s.first.size();
            if (len < 2) continue;
            const size_t from = c >= len - 1 ? c - (len - 1) : 0;
            const size_t q = text.substr(from, c + len - 1 - from).find(s.first);
            if (q != std::string_view::npos && from + q < c) return true;
        }
        return false;
    };
    std::vector<size_t> cuts;
    size_t pos = 0;
    while (text.size() - pos > chunk + chunk / 2) {
        size_t hi = pos + chunk, c = 0;
        while (true) {
            c = find_cut(text, pos, std::min(hi, text.size() - longest));
            while (c && straddles(c)) c = find_cut(text, pos, c - 1);
            if (c || hi >= text.size()) break;
            hi *= 2;  // no cut yet: look further (text without whitespace, a run of one class)
        }
        if (!c) break;
        cuts.push_back(c);
        pos = c;
    }
    return cuts;
}

namespace {

template <class T>
using Buffer = std::vector<T, NoInit<T>>;

// Work for several threads over consecutive units of text: thread t owns units [t * count / threads, (t + 1) * count /
// threads) and takes them from the front, in order; a thread done with its own share takes the others' from their
// back. Consecutive text keeps a thread's distinct pieces (each encoded and cached once per thread) to those of its
// share: on the mixed corpus the two halves (prose and Python source, then the man pages) share few, where units
// handed out one at a time made each thread meet nearly every distinct piece of the corpus. Taking from the back
// keeps the owner's output one run (see Engine::encode_round).
class Shares {
   public:
    Shares(size_t count, int threads) : share_(static_cast<size_t>(threads)) {
        const size_t n = share_.size();
        for (size_t t = 0; t < n; ++t) share_[t].span = pack(count * t / n, count * (t + 1) / n);
    }
    // The next unit for thread t, or false when none is left; `own`: whether it is from t's own share.
    bool next(int t, size_t& unit, bool& own) {
        const size_t n = share_.size();
        for (size_t k = 0; k < n; ++k) {
            std::atomic<uint64_t>& span = share_[(static_cast<size_t>(t) + k) % n].span;
            for (uint64_t s = span.load(std::memory_order_relaxed); front(s) < back(s);) {
                const bool mine = k == 0;
                const uint64_t taken = mine ? pack(front(s) + 1, back(s)) : pack(front(s), back(s) - 1);
                if (span.compare_exchange_weak(s, taken, std::memory_order_relaxed)) {
                    unit = mine ? front(s) : back(s) - 1;
                    own = mine;
                    return true;
                }
            }
        }
        return false;
    }

   private:
    static uint64_t pack(size_t front, size_t back) { return static_cast<uint64_t>(back) << 32 | front; }
    static size_t front(uint64_t s) { return static_cast<size_t>(s & 0xFFFFFFFFu); }
    static size_t back(uint64_t s) { return static_cast<size_t>(s >> 32); }
    struct alignas(64) Share {  // one cache line each: the threads' spans do not share one
        std::atomic<uint64_t> span{0};  // [front, back) not yet taken, packed
    };
    std::vector<Share> share_;
};

}  // namespace

size_t Engine::encode_to_array(const std::vector<std::string_view>& texts,
                               const std::vector<std::string>& allowed_special, int64_t separator, int itemsize,
                               int num_threads, const std::function<void*(size_t)>& reserve, size_t chunk) const {
    if (num_threads < 1)
        throw std::invalid_argument("num_threads=" + std::to_string(num_threads) + " must be >= 1");
    if (itemsize != 2 && itemsize != 4) throw std::invalid_argument("itemsize must be 2 or 4");
    const Specials allowed = resolve_allowed(allowed_special);
    if (chunk < 64) throw std::invalid_argument("chunk must be at least 64 bytes");
    // Units of work: the texts cut into chunks at safe points; the last of a text carries its separator.
    std::vector<ArrayUnit> units;
    size_t bytes = 0;
    for (std::string_view t : texts) {
        size_t begin = 0;
        std::vector<size_t> cuts = chunk_cuts(t, allowed, chunk);
        cuts.push_back(t.size());
        for (size_t k = 0; k < cuts.size(); ++k) {
            units.push_back(ArrayUnit{t.substr(begin, cuts[k] - begin), k + 1 == cuts.size() && separator >= 0, 0, 0});
            begin = cuts[k];
        }
        bytes += t.size();
    }
    // Rounds of up to kChunksPerRound chunks' worth of text (64 MiB at the default chunk): each asks reserve() for
    // its worst case (unit u may write [at_u, at_u + bytes_u + 4): at most one id per byte, its separator, and the 3
    // ids encode_into may write past its last), so the array never holds more than one round's room beyond its ids.
    const int workers = static_cast<int>(std::min<size_t>(static_cast<size_t>(num_threads), units.size()));
    const size_t round_bytes = kChunksPerRound * chunk;
    size_t n = 0;
    for (size_t first = 0, last; first < units.size(); first = last) {
        size_t room = 0;
        for (last = first; last < units.size() && (last == first || room + units[last].text.size() <= round_bytes);
             ++last) {
            units[last].at = room;
            room += units[last].text.size() + 4;
        }
        char* out = static_cast<char*>(reserve(n + room)) + n * static_cast<size_t>(itemsize);
        n += encode_round(units.data() + first, last - first, allowed, separator, itemsize, workers, bytes, out);
    }
    return n;
}

size_t Engine::encode_round(ArrayUnit* units, size_t count, const Specials& allowed, int64_t separator, int itemsize,
                            int workers, size_t bytes, char* out) const {
    auto encode_unit = [&](auto* ids, const ArrayUnit& u, PieceCache& cache) {
        using T = std::remove_pointer_t<decltype(ids)>;
        T* end = encode_into(u.text, allowed, ids, cache);
        if (u.separator) *end++ = static_cast<T>(separator);
        return static_cast<size_t>(end - ids);
    };
    workers = static_cast<int>(std::min<size_t>(static_cast<size_t>(workers), count));  // no share left empty
    if (workers <= 1) {  // in order, each unit right after the last: no gaps to close
        PieceCache& cache = cache_for(bytes);
        size_t n = 0;
        for (size_t i = 0; i < count; ++i) {
            n += itemsize == 2 ? encode_unit(reinterpret_cast<uint16_t*>(out) + n, units[i], cache)
                               : encode_unit(reinterpret_cast<uint32_t*>(out) + n, units[i], cache);
        }
        return n;
    }
    // A thread writes the units of its own share one after another from the share's first room, and a unit it
    // takes from another share into that unit's own room: the owner's run stops short of every such room (no unit
    // writes more than its room), so nothing overlaps, and only the pages of the ids are touched.
    Shares shares(count, workers);
    run_workers(workers, [&](int t) {
        PieceCache& cache = cache_for(bytes / static_cast<size_t>(workers));
        size_t at = units[count * static_cast<size_t>(t) / static_cast<size_t>(workers)].at;
        bool own;
        for (size_t i; shares.next(t, i, own);) {
            ArrayUnit& u = units[i];
            if (own) u.at = at;
            u.count = itemsize == 2 ? encode_unit(reinterpret_cast<uint16_t*>(out) + u.at, u, cache)
                                    : encode_unit(reinterpret_cast<uint32_t*>(out) + u.at, u, cache);
            if (own) at += u.count;
        }
    });
    size_t n = 0;  // close the gaps: each unit's ids move down to follow the last (never onto a later unit's)
    const size_t size = static_cast<size_t>(itemsize);
    for (size_t i = 0; i < count; ++i) {
        std::memmove(out + n * size, out + units[i].at * size, units[i].count * size);
        n += units[i].count;
    }
    return n;
}

namespace {

void write_all(int fd, const char* data, size_t size) {
    while (size > 0) {
        ssize_t w = ::write(fd, data, size);
        if (w < 0) {
            if (errno == EINTR) continue;
            throw std::runtime_error(std::string("cannot write the token file: ") + std::strerror(errno));
        }
        data += w;
        size -= static_cast<size_t>(w);
    }
}

// A file opened for reading, closed on every way out.
struct InputFile {
    int fd = -1;
    explicit InputFile(const std::string& path) {
        fd = ::open(path.c_str(), O_RDONLY);
        if (fd < 0) {
            int err = errno;
            std::string msg = "cannot open '" + path + "': " + std::strerror(err);
            if (err == ENOENT) throw FileNotFound(msg + "; check the path");
            throw std::runtime_error(msg);
        }
    }
    ~InputFile() { ::close(fd); }
    size_t read_some(char* dst, size_t size) {
        while (true) {
            ssize_t r = ::read(fd, dst, size);
            if (r >= 0) return static_cast<size_t>(r);
            if (errno != EINTR) throw std::runtime_error(std::string("cannot read the text: ") + std::strerror(errno));
        }
    }
};

}  // namespace

uint64_t Engine::encode_file(const std::string& path, int out_fd, const std::vector<std::string>& allowed_special,
                             int itemsize, int num_threads, const std::function<void(uint64_t)>& progress,
                             size_t chunk) const {
    if (num_threads < 1)
        throw std::invalid_argument("num_threads=" + std::to_string(num_threads) + " must be >= 1");
    if (itemsize != 2 && itemsize != 4) throw std::invalid_argument("itemsize must be 2 or 4");
    if (chunk < 64) throw std::invalid_argument("chunk must be at least 64 bytes");
    const Specials allowed = resolve_allowed(allowed_special);
    size_t longest = 1;
    for (const auto& s : allowed) longest = std::max(longest, s.first.size());
    InputFile file(path);
    struct stat info;
    const size_t file_bytes = ::fstat(file.fd, &info) == 0 ? static_cast<size_t>(info.st_size) : 0;
    std::string buf;        // the text not yet encoded; buf[0] is at file offset `base`
    uint64_t base = 0, count = 0;
    size_t valid = 0;       // buf[0, valid) is checked UTF-8
    bool eof = false;
    const size_t round = chunk * static_cast<size_t>(num_threads);
    size_t want = round + longest;
    std::vector<Buffer<uint16_t>> out16(itemsize == 2 ? num_threads : 0);
    std::vector<Buffer<uint32_t>> out32(itemsize == 4 ? num_threads : 0);
    while (true) {
        while (!eof && buf.size() < want) {
            size_t old = buf.size();
            buf.resize(want);
            size_t got = file.read_some(&buf[old], want - old);
            buf.resize(old + got);
            eof = got == 0;
        }
        size_t bad = valid + utf8_error_offset(buf.data() + valid, buf.size() - valid);
        if (bad < buf.size() && (eof || buf.size() - bad >= 4))
            throw std::invalid_argument("'" + path + "' is not valid UTF-8 at byte offset " +
                                        std::to_string(base + bad) + " (byte " +
                                        hex_byte(static_cast<uint8_t>(buf[bad])) +
                                        "); re-encode the file as UTF-8 (e.g. iconv -t UTF-8)");
        valid = bad;  // an incomplete code point at the end waits for the next read
        // This round's chunks: up to num_threads of ~chunk bytes, each ending at a safe cut; the rest waits.
        std::string_view text(buf.data(), valid);
        std::vector<std::string_view> parts;
        size_t pos = 0;
        const bool last = eof && valid == buf.size();
        while (static_cast<int>(parts.size()) < num_threads && pos < valid) {
            if (last && valid - pos <= chunk + chunk / 2) {
                parts.push_back(text.substr(pos));
                pos = valid;
                break;
            }
            std::vector<size_t> cuts = chunk_cuts(text.substr(pos), allowed, chunk);
            if (cuts.empty()) {
                if (last) {  // a tail without a safe cut: encode it whole
                    parts.push_back(text.substr(pos));
                    pos = valid;
                }
                break;
            }
            parts.push_back(text.substr(pos, cuts[0]));
            pos += cuts[0];
        }
        if (parts.empty()) {
            if (last) break;  // nothing left
            if (eof) throw std::logic_error("encode_file: undecodable tail");  // unreachable: checked above
            want = buf.size() * 2;  // no safe cut in what is buffered: read more (a long run without whitespace)
            continue;
        }
        std::atomic<size_t> next{0};
        std::vector<size_t> counts(parts.size());
        run_workers(static_cast<int>(parts.size()), [&](int) {
            PieceCache& cache = cache_for(file_bytes);
            for (size_t i; (i = next.fetch_add(1)) < parts.size();) {
                if (itemsize == 2) counts[i] = encode_range(parts[i], allowed, out16[i], cache);
                else counts[i] = encode_range(parts[i], allowed, out32[i], cache);
            }
        });
        for (size_t i = 0; i < parts.size(); ++i) {
            const char* data = itemsize == 2 ? reinterpret_cast<const char*>(out16[i].data())
                                             : reinterpret_cast<const char*>(out32[i].data());
            write_all(out_fd, data, counts[i] * itemsize);  // little-endian hosts: the bytes are the .npy's
            count += counts[i];
        }
        buf.erase(0, pos);
        base += pos;
        valid -= pos;
        want = round + longest;
        if (progress) progress(base);
        if (eof && buf.empty()) break;
    }
    return count;
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
