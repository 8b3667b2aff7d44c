// BPE training (CS336 semantics; see bpe.h): count pre-tokens (streamed from the file, bpe_count.cpp), then merge
// the most frequent pair until the vocab is full, keeping pair counts up to date incrementally.
//
// Where training time went (Shakespeare, 5.06 MB, vocab 10k, CPU seconds on the shared 2-core host): 0.24 with a
// sorted delta vector, 0.17 with the dense delta array below; perf then shows counting ~20%, the merge loop ~60%,
// heap upkeep ~10%. HF BpeTrainer takes 5.8-8.1 s wall on the same file (benchmarks/bench_tokenizer.py).
//
// Long pre-tokens. A merge rewrites each word that holds the pair, which costs the word's length; for the short
// words of normal text that is nothing, but text without whitespace can be one pre-token of megabytes, and
// rewriting it at every merge made training O(size x merges): 1 MB of random letters took 90 s of CPU for 1000
// merges (0.6 s now).
// Words over kLongWord bytes therefore live in LongWords instead: doubly linked symbols, and each pair keeps the
// positions ("spots") where it occurs in them, so a merge visits the pair's occurrences only. That makes the long
// words' share O(size log size) overall; the merges and ids are exactly those of the word-rewriting path (the
// tests hold both, and the pure-Python reference, equal on texts with long pre-tokens).
#include <algorithm>
#include <chrono>
#include <queue>
#include <thread>
#include <unordered_set>

#include "bpe.h"
#include "bpe_internal.h"

namespace lmfast {

namespace {

// Growable open-addressing map from a packed pair key to a dense index.
class PairIndex {
   public:
    PairIndex() { rehash(1 << 16); }
    // Index of key, or the next free index (== size() before the call) when new.
    uint32_t get_or_add(uint64_t key) {
        if ((count_ + 1) * 2 > keys_.size()) rehash(keys_.size() * 2);
        size_t i = pair_slot(key, mask_);
        while (keys_[i] != UINT64_MAX) {
            if (keys_[i] == key) return vals_[i];
            i = (i + 1) & mask_;
        }
        keys_[i] = key;
        vals_[i] = static_cast<uint32_t>(count_);
        return static_cast<uint32_t>(count_++);
    }
    size_t size() const { return count_; }

   private:
    void rehash(size_t capacity) {
        std::vector<uint64_t> old_keys = std::move(keys_);
        std::vector<uint32_t> old_vals = std::move(vals_);
        keys_.assign(capacity, UINT64_MAX);
        vals_.assign(capacity, 0);
        mask_ = capacity - 1;
        for (size_t j = 0; j < old_keys.size(); ++j) {
            if (old_keys[j] == UINT64_MAX) continue;
            size_t i = pair_slot(old_keys[j], mask_);
            while (keys_[i] != UINT64_MAX) i = (i + 1) & mask_;
            keys_[i] = old_keys[j];
            vals_[i] = old_vals[j];
        }
    }
    std::vector<uint64_t> keys_;
    std::vector<uint32_t> vals_;
    size_t mask_ = 0;
    size_t count_ = 0;
};

// Words longer than this many bytes are trained as LongWords; at or below it, rewriting a word is as cheap as
// following its list. Any value gives the same merges.
constexpr uint32_t kLongWord = 64;
constexpr uint32_t kNone = UINT32_MAX;  // no neighbour / a symbol merged into its left neighbour

// Unique short pre-tokens with their counts, as flat symbol arrays that merges rewrite in place.
struct Words {
    std::vector<uint32_t> symbols;
    std::vector<size_t> start;
    std::vector<uint32_t> length;
    std::vector<int64_t> count;
};

// Unique long pre-tokens: all their symbols in one array, each linked to its live neighbours in its own word.
struct LongWords {
    std::vector<uint32_t> sym;    // token id, kNone once merged into the left neighbour
    std::vector<uint32_t> prev, next;
    std::vector<uint32_t> owner;  // position -> index into count
    std::vector<int64_t> count;

    void add(std::string_view bytes, int64_t n, uint32_t first_byte_id) {
        if (sym.size() + bytes.size() >= kNone)
            throw std::length_error("the training text holds more than 4 GB of pre-tokens over " +
                                    std::to_string(kLongWord) + " bytes; split it with whitespace or newlines");
        const uint32_t base = static_cast<uint32_t>(sym.size());
        const uint32_t last = base + static_cast<uint32_t>(bytes.size()) - 1;
        for (size_t i = 0; i < bytes.size(); ++i) {
            const uint32_t p = base + static_cast<uint32_t>(i);
            sym.push_back(first_byte_id + static_cast<uint8_t>(bytes[i]));
            prev.push_back(p == base ? kNone : p - 1);
            next.push_back(p == last ? kNone : p + 1);
            owner.push_back(static_cast<uint32_t>(count.size()));
        }
        count.push_back(n);
    }
};

// Adds a counted pre-token to the short or the long words.
void add_word(std::string_view bytes, int64_t n, uint32_t first_byte_id, Words& words, LongWords& long_words) {
    if (bytes.size() > kLongWord) {
        long_words.add(bytes, n, first_byte_id);
        return;
    }
    words.start.push_back(words.symbols.size());
    words.length.push_back(static_cast<uint32_t>(bytes.size()));
    words.count.push_back(n);
    for (char c : bytes) words.symbols.push_back(first_byte_id + static_cast<uint8_t>(c));
}

// The merge loop. Pair statistics are updated incrementally: each merge visits only the words and spots that
// hold the merged pair (their lists may hold stale or repeated entries; those are skipped), and only pairs whose
// count changed get a new heap entry. Heap entries whose count no longer matches are dropped when popped.
class Merger {
   public:
    Merger(std::vector<std::string>& vocab, Words& words, LongWords& long_words)
        : vocab_(vocab), words_(words), long_(long_words), heap_(Lower{this}),
          visited_(words.count.size(), UINT32_MAX) {
        count_pairs();
        delta_.assign(pairs_.size(), 0);
    }

    // Merges the most frequent pair (ties: the greater (bytes, bytes)) into a new token; false when none is left.
    bool merge_next(std::vector<std::pair<uint32_t, uint32_t>>& merges) {
        uint32_t best = pop_best();
        if (best == kNone) return false;
        const uint32_t a = pairs_[best].a, b = pairs_[best].b;
        const uint32_t c = static_cast<uint32_t>(vocab_.size());
        vocab_.push_back(vocab_[a] + vocab_[b]);
        merges.emplace_back(a, b);
        touched_.clear();
        merge_short_words(best, a, b, c);
        merge_long_words(best, a, b, c);
        apply_deltas();
        ++step_;
        return true;
    }

   private:
    struct PairData {
        int64_t count = 0;
        uint32_t a = 0, b = 0;
        std::vector<uint32_t> words;  // short words that hold (or held) the pair
        std::vector<uint32_t> spots;  // LongWords positions where the pair starts (or started)
    };
    struct Entry {
        int64_t count;
        uint32_t pair;
    };
    // Max-heap on (count, (bytes of a, bytes of b)): the reference's max(pairs, key=lambda p: (count[p], p)).
    struct Lower {
        const Merger* m;
        bool operator()(const Entry& x, const Entry& y) const {
            if (x.count != y.count) return x.count < y.count;
            const PairData& p = m->pairs_[x.pair];
            const PairData& q = m->pairs_[y.pair];
            int c = m->vocab_[p.a].compare(m->vocab_[q.a]);
            if (c != 0) return c < 0;
            return m->vocab_[p.b].compare(m->vocab_[q.b]) < 0;
        }
    };

    uint32_t pair_index(uint32_t a, uint32_t b) {
        uint32_t i = index_.get_or_add(pair_key(a, b));
        if (i == pairs_.size()) {
            pairs_.emplace_back();
            pairs_.back().a = a;
            pairs_.back().b = b;
        }
        return i;
    }

    void count_pairs() {
        for (uint32_t w = 0; w < words_.count.size(); ++w) {
            const uint32_t* s = &words_.symbols[words_.start[w]];
            for (uint32_t i = 0; i + 1 < words_.length[w]; ++i) {
                PairData& pd = pairs_[pair_index(s[i], s[i + 1])];
                pd.count += words_.count[w];
                if (pd.words.empty() || pd.words.back() != w) pd.words.push_back(w);
            }
        }
        for (uint32_t i = 0; i < long_.sym.size(); ++i) {
            if (long_.next[i] == kNone) continue;
            PairData& pd = pairs_[pair_index(long_.sym[i], long_.sym[long_.next[i]])];
            pd.count += long_.count[long_.owner[i]];
            pd.spots.push_back(i);
        }
        for (uint32_t i = 0; i < pairs_.size(); ++i)
            if (pairs_[i].count > 0) heap_.push(Entry{pairs_[i].count, i});
    }

    uint32_t pop_best() {
        while (!heap_.empty()) {
            Entry e = heap_.top();
            heap_.pop();
            if (e.count > 0 && pairs_[e.pair].count == e.count) return e.pair;
        }
        return kNone;  // no pair occurs any more
    }

    // Count changes within one merge, summed per pair in a dense array (pairs touched listed once). Replaced a
    // vector of (pair, delta) sorted per merge, which was 14% of training time on Shakespeare at vocab 10k.
    void add_delta(uint32_t p, int64_t d) {
        if (p >= delta_.size()) delta_.resize(std::max<size_t>(p + 1, delta_.size() * 2), 0);
        if (delta_[p] == 0) touched_.push_back(p);  // may list p twice if it returns to 0; harmless below
        delta_[p] += d;
    }

    void merge_short_words(uint32_t best, uint32_t a, uint32_t b, uint32_t c) {
        std::vector<uint32_t> holders = std::move(pairs_[best].words);
        pairs_[best].words.clear();
        for (uint32_t w : holders) {
            if (visited_[w] == step_) continue;
            visited_[w] = step_;
            uint32_t* s = &words_.symbols[words_.start[w]];
            const uint32_t n = words_.length[w];
            const int64_t cnt = words_.count[w];
            bool has = false;
            for (uint32_t i = 0; i + 1 < n && !has; ++i) has = s[i] == a && s[i + 1] == b;
            if (!has) continue;  // stale entry: an earlier merge already consumed the pair here
            for (uint32_t i = 0; i + 1 < n; ++i) add_delta(index_.get_or_add(pair_key(s[i], s[i + 1])), -cnt);
            uint32_t m = 0;
            for (uint32_t i = 0; i < n;) {
                if (i + 1 < n && s[i] == a && s[i + 1] == b) { s[m++] = c; i += 2; }
                else s[m++] = s[i++];
            }
            words_.length[w] = m;
            for (uint32_t i = 0; i + 1 < m; ++i) {
                uint32_t p = pair_index(s[i], s[i + 1]);
                add_delta(p, cnt);
                PairData& pd = pairs_[p];
                if ((s[i] == c || s[i + 1] == c) && (pd.words.empty() || pd.words.back() != w)) pd.words.push_back(w);
            }
        }
    }

    // Left to right within each word (spots sorted by position), so "a a a" merges (a, a) as "c a", as the
    // rewriting path does. Each merged occurrence takes away the pairs it overlapped and adds the two it makes.
    void merge_long_words(uint32_t best, uint32_t a, uint32_t b, uint32_t c) {
        std::vector<uint32_t> spots = std::move(pairs_[best].spots);
        pairs_[best].spots.clear();
        std::sort(spots.begin(), spots.end());
        std::vector<uint32_t>& sym = long_.sym;
        for (uint32_t i : spots) {
            const uint32_t j = long_.next[i];
            if (sym[i] != a || j == kNone || sym[j] != b) continue;  // stale: merged away since it was recorded
            const int64_t cnt = long_.count[long_.owner[i]];
            const uint32_t p = long_.prev[i], n = long_.next[j];
            if (p != kNone) add_delta(pair_index(sym[p], a), -cnt);
            add_delta(best, -cnt);
            if (n != kNone) add_delta(pair_index(b, sym[n]), -cnt);
            sym[i] = c;
            sym[j] = kNone;
            long_.next[i] = n;
            if (n != kNone) long_.prev[n] = i;
            if (p != kNone) add_spot(pair_index(sym[p], c), p, cnt);
            if (n != kNone) add_spot(pair_index(c, sym[n]), i, cnt);
        }
    }

    void add_spot(uint32_t pair, uint32_t position, int64_t cnt) {
        add_delta(pair, cnt);
        pairs_[pair].spots.push_back(position);
    }

    void apply_deltas() {
        for (uint32_t p : touched_) {
            int64_t d = delta_[p];
            if (d == 0) continue;
            delta_[p] = 0;
            pairs_[p].count += d;
            if (pairs_[p].count > 0) heap_.push(Entry{pairs_[p].count, p});
        }
    }

    std::vector<std::string>& vocab_;
    Words& words_;
    LongWords& long_;
    PairIndex index_;
    std::vector<PairData> pairs_;
    std::priority_queue<Entry, std::vector<Entry>, Lower> heap_;
    std::vector<uint32_t> visited_;  // short word -> the last step that rewrote it
    std::vector<int64_t> delta_;
    std::vector<uint32_t> touched_;
    uint32_t step_ = 0;
};

}  // namespace

TrainResult train_bpe(const std::string& input_path, size_t vocab_size, const std::vector<std::string>& special_tokens,
                      int num_workers, const std::function<void(TrainStage, uint64_t, uint64_t)>& progress,
                      Pattern pattern, size_t block_size) {
    const size_t base = 256 + special_tokens.size();
    if (vocab_size < base)
        throw std::invalid_argument("vocab_size=" + std::to_string(vocab_size) +
                                    " is smaller than the 256 byte tokens + " + std::to_string(special_tokens.size()) +
                                    " special tokens = " + std::to_string(base) +
                                    "; pass vocab_size >= " + std::to_string(base));
    if (num_workers < 0)
        throw std::invalid_argument("num_workers=" + std::to_string(num_workers) +
                                    " must be >= 1 (or None for all cores)");
    if (num_workers == 0) num_workers = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
    std::unordered_set<std::string> seen_specials;
    for (const std::string& s : special_tokens) {
        if (s.empty()) throw std::invalid_argument("special token '' is empty; special tokens must be non-empty");
        if (!seen_specials.insert(s).second)
            throw std::invalid_argument("special token '" + s + "' is listed twice; list each special token once");
    }

    TrainResult result;
    for (const std::string& s : special_tokens) result.vocab.push_back(s);
    const uint32_t first_byte_id = static_cast<uint32_t>(special_tokens.size());
    for (unsigned b = 0; b < 256; ++b) result.vocab.push_back(std::string(1, static_cast<char>(b)));
    std::vector<std::string_view> specials(special_tokens.begin(), special_tokens.end());
    Words words;
    LongWords long_words;
    std::function<void(uint64_t, uint64_t)> count_progress;
    if (progress) count_progress = [&](uint64_t done, uint64_t total) { progress(TrainStage::kCounting, done, total); };
    count_file_pretokens(input_path, specials, pattern, num_workers, block_size, count_progress,
                         [&](std::string_view w, int64_t n) { add_word(w, n, first_byte_id, words, long_words); });

    Merger merger(result.vocab, words, long_words);
    const size_t wanted = vocab_size - base;
    // Progress (and, through it, Ctrl-C) about ten times a second: a clock read per merge costs nothing next to
    // a merge, a call into Python per merge would.
    using Clock = std::chrono::steady_clock;
    auto last = Clock::now();
    if (progress) progress(TrainStage::kMerging, 0, wanted);
    while (result.vocab.size() < vocab_size && merger.merge_next(result.merges)) {
        if (progress && Clock::now() - last > std::chrono::milliseconds(100)) {
            progress(TrainStage::kMerging, result.merges.size(), wanted);
            last = Clock::now();
        }
    }
    if (progress) progress(TrainStage::kMerging, result.merges.size(), wanted);
    return result;
}

}  // namespace lmfast
