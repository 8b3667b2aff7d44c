// Counting the pre-tokens of a training file, streamed from disk in bounded memory (the first half of training;
// bpe_train.cpp merges).
//
// Until this file the trainer memory-mapped the whole text, checked it as UTF-8, then counted it in ~1 MiB chunks.
// On 1 GB that made the page cache of the whole file part of the process's resident memory, ran silent through
// the count and could not be stopped there. Now one thread at a time (the "reader") reads the next block with
// pread, checks it as UTF-8 and cuts what can be counted now into chunks; the threads count chunks from a queue
// and read the next block when it runs low, so reading overlaps counting and there is no barrier per block.
// Resident memory is the word table plus the few blocks whose chunks are queued or being counted.
//
// Where a block may end. split_on_specials takes the leftmost occurrence, the longest at one byte; a scan of a
// truncated text agrees with the whole file's for every occurrence that starts at least `longest` bytes before
// the truncated end (any rival would lie wholly inside too), and no occurrence starts in the text after the last
// such one up to that point. A block is therefore counted up to the last agreed occurrence, plus the text after it
// up to a find_cut point that also lies `longest` bytes before the end (a pre-token boundary for every pattern,
// see pretokenize.h). The rest, with any incomplete UTF-8 character, is carried into the next block. When a block
// holds no such point (a long run without whitespace) the reader reads as much again, so the buffer doubles.
//
// Map keys are copies: BytesMap keeps views, and a block's bytes are freed once its chunks are counted, so each
// counter copies the pre-tokens it sees for the first time into slabs of its own (a miss costs a second probe; a
// hit, nearly every piece of real text, costs what `++counts[piece]` did).
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <memory>
#include <mutex>
#include <thread>

#include "bpe.h"
#include "bpe_internal.h"

namespace lmfast {

namespace {

// A training file opened for reading; pread at given offsets, so whichever thread is the reader can read.
class TrainingFile {
   public:
    explicit TrainingFile(const std::string& path) : path_(path) {
        fd_ = ::open(path.c_str(), O_RDONLY);
        if (fd_ < 0) {
            int err = errno;
            std::string msg = "cannot open training file '" + path + "': " + std::strerror(err);
            if (err == ENOENT) throw FileNotFound(msg + "; check the path");
            throw std::runtime_error(msg);
        }
        struct stat st;
        if (::fstat(fd_, &st) != 0 || !S_ISREG(st.st_mode)) {
            ::close(fd_);
            throw std::invalid_argument("training input '" + path + "' is not a regular file; pass a text file");
        }
        size_ = static_cast<uint64_t>(st.st_size);
#ifdef POSIX_FADV_SEQUENTIAL
        ::posix_fadvise(fd_, 0, 0, POSIX_FADV_SEQUENTIAL);  // a larger read-ahead; only a hint
#endif
    }
    ~TrainingFile() { ::close(fd_); }
    TrainingFile(const TrainingFile&) = delete;
    TrainingFile& operator=(const TrainingFile&) = delete;

    uint64_t size() const { return size_; }
    const std::string& path() const { return path_; }

    // Reads up to n bytes at offset into dst; fewer only at the end of the file.
    size_t read_at(char* dst, size_t n, uint64_t offset) const {
        size_t got = 0;
        while (got < n) {
            ssize_t r = ::pread(fd_, dst + got, n - got, static_cast<off_t>(offset + got));
            if (r == 0) break;
            if (r < 0) {
                if (errno == EINTR) continue;
                throw std::runtime_error("cannot read training file '" + path_ + "': " + std::strerror(errno));
            }
            got += static_cast<size_t>(r);
        }
        return got;
    }

   private:
    std::string path_;
    int fd_ = -1;
    uint64_t size_ = 0;
};

// A counter's own copies of the pre-tokens it has seen, in slabs that never move (its map's keys point into them).
class Arena {
   public:
    std::string_view copy(std::string_view s) {
        if (s.size() > kSlab / 4) {  // a long pre-token gets a slab of its own
            big_.emplace_back(new char[s.size()]);
            std::memcpy(big_.back().get(), s.data(), s.size());
            return std::string_view(big_.back().get(), s.size());
        }
        if (slabs_.empty() || used_ + s.size() > kSlab) {
            slabs_.emplace_back(new char[kSlab]);
            used_ = 0;
        }
        char* p = slabs_.back().get() + used_;
        std::memcpy(p, s.data(), s.size());
        used_ += s.size();
        return std::string_view(p, s.size());
    }

   private:
    static constexpr size_t kSlab = size_t{1} << 20;
    std::vector<std::unique_ptr<char[]>> slabs_, big_;
    size_t used_ = 0;
};

struct Counter {
    BytesMap<int64_t> counts{1 << 14};
    Arena arena;

    void add(std::string_view piece) {
        if (const int64_t* n = counts.find(piece)) {
            ++*const_cast<int64_t*>(n);
            return;
        }
        counts[arena.copy(piece)] = 1;
    }
};

// Cuts [b, e) into pieces of about `target` bytes at points where every pre-tokenizer ends a piece (find_cut in
// pretokenize.h), looking further when a stretch has none. Text without such points stays one piece.
void cut_chunks(std::string_view text, size_t b, size_t e, size_t target, std::vector<std::pair<size_t, size_t>>& out) {
    std::string_view segment = text.substr(0, e);  // a cut needs its next byte inside the segment
    while (e - b > target + target / 2) {
        size_t c = 0;
        for (size_t hi = b + target; !c; hi = b + 2 * (hi - b)) {
            c = find_cut(segment, b, std::min(hi, e - 1));
            if (hi >= e - 1) break;
        }
        if (!c) break;
        out.emplace_back(b, c);
        b = c;
    }
    out.emplace_back(b, e);
}

// Text of one block to count: [begin, end) of the block's bytes, which it keeps alive.
struct Chunk {
    std::shared_ptr<const std::string> block;
    size_t begin = 0, end = 0;
};

// Reads the file block by block and cuts each into chunks that count exactly as they would in the whole file.
// Used by one thread at a time.
class BlockReader {
   public:
    BlockReader(const TrainingFile& file, const std::vector<std::string_view>& specials, size_t block, size_t chunk)
        : file_(file), specials_(specials), block_(block), chunk_(chunk) {
        for (std::string_view s : specials) longest_ = std::max(longest_, s.size());
    }

    bool done() const { return eof_ && carry_.empty(); }

    // Reads until some text can be counted (or the file ends); appends its chunks to `out` and returns how many
    // bytes were consumed outside them (special tokens).
    uint64_t next(std::vector<Chunk>& out) {
        size_t want = block_;
        while (true) {
            auto buf = std::make_shared<std::string>();
            buf->reserve(carry_.size() + want);
            buf->append(carry_);
            buf->resize(carry_.size() + want);
            const size_t got = file_.read_at(&(*buf)[carry_.size()], want, offset_);
            buf->resize(carry_.size() + got);
            offset_ += got;
            eof_ = got < want;
            const size_t valid = check_utf8(*buf);
            std::string_view text(buf->data(), valid);
            const bool last = eof_ && valid == buf->size();
            std::vector<std::pair<size_t, size_t>> segments;
            const size_t end = plan(text, last, segments);
            if (end == 0 && !last) {  // nothing countable yet: read as much again
                carry_valid_ = valid;
                carry_ = std::move(*buf);
                want = std::max(block_, carry_.size());
                continue;
            }
            std::vector<std::pair<size_t, size_t>> pieces;
            for (const auto& [b, e] : segments) cut_chunks(text, b, e, chunk_, pieces);
            uint64_t counted = 0;
            for (const auto& [b, e] : pieces) {
                out.push_back(Chunk{buf, b, e});
                counted += e - b;
            }
            carry_.assign(*buf, end, std::string::npos);
            carry_valid_ = valid - end;
            base_ += end;
            return end - counted;
        }
    }

   private:
    // The length of buf's checked UTF-8 prefix; an incomplete character at the end waits for the next read.
    size_t check_utf8(const std::string& buf) {
        const size_t bad = carry_valid_ + utf8_error_offset(buf.data() + carry_valid_, buf.size() - carry_valid_);
        if (bad < buf.size() && (eof_ || buf.size() - bad >= 4))
            throw std::invalid_argument("training file '" + file_.path() + "' is not valid UTF-8: byte " +
                                        hex_byte(static_cast<uint8_t>(buf[bad])) + " at byte offset " +
                                        std::to_string(base_ + bad) +
                                        "; convert the file to UTF-8 (e.g. iconv -t UTF-8)");
        return bad;
    }

    // The text segments of text[0, end) that count now, and end (0: none; text.size() when `last`).
    size_t plan(std::string_view text, bool last, std::vector<std::pair<size_t, size_t>>& segments) const {
        std::vector<std::pair<size_t, size_t>> texts;  // text before each occurrence, then after the last
        std::vector<size_t> ends;                      // end of each occurrence
        split_on_specials(
            text, specials_, [&](size_t b, size_t e) { texts.emplace_back(b, e); },
            [&](size_t k) { ends.push_back(texts.back().second + specials_[k].size()); });
        size_t agreed = 0;  // occurrences the whole file's scan makes too
        while (agreed < ends.size() && (last || texts[agreed].second + longest_ <= text.size())) ++agreed;
        for (size_t k = 0; k < agreed; ++k)
            if (texts[k].second > texts[k].first) segments.push_back(texts[k]);
        const size_t pos = agreed ? ends[agreed - 1] : 0;
        if (last) {
            if (text.size() > pos) segments.emplace_back(pos, text.size());
            return text.size();
        }
        // A cut at c leaves bytes up to c (its lookahead included) where no occurrence can start.
        const size_t c = text.size() >= pos + longest_ + 1 ? find_cut(text, pos, text.size() - longest_) : 0;
        if (c == 0) return pos;
        segments.emplace_back(pos, c);
        return c;
    }

    const TrainingFile& file_;
    const std::vector<std::string_view>& specials_;
    const size_t block_, chunk_;
    size_t longest_ = 1;    // the longest special token (1 without any: a cut needs the byte after it)
    std::string carry_;     // bytes read but not counted; carry_[0] is at file offset base_
    size_t carry_valid_ = 0;
    uint64_t base_ = 0, offset_ = 0;
    bool eof_ = false;
};

// The chunk queue the threads share. A thread that finds it short, while no one is reading, reads the next block.
class ChunkQueue {
   public:
    ChunkQueue(BlockReader& reader, size_t low) : reader_(reader), low_(low) {}

    // The next chunk to count; false when there is none left or counting stopped.
    bool take(Chunk& out) {
        std::unique_lock<std::mutex> lock(mutex_);
        while (true) {
            if (stop_) return false;
            if (queue_.size() < low_ && !reading_ && !reader_.done()) {
                read(lock);
                continue;
            }
            if (!queue_.empty()) {
                out = std::move(queue_.front());
                queue_.pop_front();
                return true;
            }
            if (!reading_ && reader_.done()) return false;
            wake_.wait(lock);
        }
    }

    void stop() {
        std::lock_guard<std::mutex> lock(mutex_);
        stop_ = true;
        wake_.notify_all();
    }

    std::atomic<uint64_t> done_bytes{0};  // counted, or consumed as special tokens

   private:
    void read(std::unique_lock<std::mutex>& lock) {
        reading_ = true;
        lock.unlock();
        std::vector<Chunk> chunks;
        uint64_t skipped = 0;
        std::exception_ptr error;
        try { skipped = reader_.next(chunks); } catch (...) { error = std::current_exception(); }
        lock.lock();
        reading_ = false;
        for (Chunk& c : chunks) queue_.push_back(std::move(c));
        done_bytes += skipped;
        wake_.notify_all();
        if (error) std::rethrow_exception(error);
    }

    BlockReader& reader_;
    const size_t low_;
    std::mutex mutex_;
    std::condition_variable wake_;
    std::deque<Chunk> queue_;
    bool reading_ = false, stop_ = false;
};

}  // namespace

void count_file_pretokens(const std::string& path, const std::vector<std::string_view>& specials, Pattern pattern,
                          int num_workers, size_t block_size,
                          const std::function<void(uint64_t, uint64_t)>& progress,
                          const std::function<void(std::string_view, int64_t)>& each) {
    // 4 MiB blocks cut into ~1 MiB chunks: enough chunks to balance 2-16 threads, few enough that per-chunk
    // overhead is nil (as when the whole file was mapped), and a few blocks in flight stay far below the word table.
    const size_t block = block_size ? block_size : size_t{4} << 20;
    const size_t chunk = std::max<size_t>(1, std::min<size_t>(size_t{1} << 20, block / 4));
    TrainingFile file(path);
    const uint64_t total = file.size();
    BlockReader reader(file, specials, block, chunk);
    const int workers = std::max(1, num_workers);
    // The next block is read while a block's worth of chunks is still queued, so the other threads have work for
    // as long as the reader reads, checks and cuts (one block more in memory).
    ChunkQueue queue(reader, static_cast<size_t>(workers) + block / chunk);
    std::vector<Counter> counters(workers);
    // Progress (and, through it, Ctrl-C) about ten times a second, from the calling thread only (Python sees
    // signals only there; it is worker 0 unless the shared pool was busy); an exception it throws stops every
    // worker after its current chunk.
    const std::thread::id caller = std::this_thread::get_id();
    using Clock = std::chrono::steady_clock;
    auto last = Clock::now();
    if (progress) progress(0, total);
    run_workers(workers, [&](int t) {
        try {
            Chunk c;
            while (queue.take(c)) {
                std::string_view text(c.block->data() + c.begin, c.end - c.begin);
                pretokenize(pattern, text, [&](size_t b, size_t e) { counters[t].add(text.substr(b, e - b)); });
                queue.done_bytes += c.end - c.begin;
                c.block.reset();  // its bytes are freed once the block's last chunk is counted
                if (progress && std::this_thread::get_id() == caller &&
                    Clock::now() - last > std::chrono::milliseconds(100)) {
                    progress(queue.done_bytes.load(), total);
                    last = Clock::now();
                }
            }
        } catch (...) {
            queue.stop();
            throw;
        }
    });
    BytesMap<int64_t>& sum = counters[0].counts;
    for (int t = 1; t < workers; ++t)
        for (const auto& s : counters[t].counts.slots())
            if (s.used) sum[std::string_view(s.data, s.size)] += s.value;
    for (const auto& s : sum.slots())
        if (s.used) each(std::string_view(s.data, s.size), s.value);
    if (progress) progress(queue.done_bytes.load(), total);
}

}  // namespace lmfast
