// The private module lmfast.tokenizer._bpe: a thin pybind11 layer over bpe.h that keeps the core's names.
//
// Python objects are converted (and checked) here with the GIL held; every call that can run long releases
// the GIL around the core. C++ exceptions map to Python ones: std::invalid_argument -> ValueError,
// lmfast::FileNotFound -> FileNotFoundError, std::runtime_error -> RuntimeError.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstring>
#include <optional>
#include <utility>

#include "bpe.h"

namespace py = pybind11;

namespace {

std::string type_name(py::handle obj) { return py::str(py::type::handle_of(obj).attr("__name__")).cast<std::string>(); }

// UTF-8 of a Python str, without a copy (CPython caches it in the object). Lone surrogates have no UTF-8;
// like tiktoken they become U+FFFD (text.encode("utf-16", "surrogatepass").decode("utf-16", "replace"), which
// also joins a valid surrogate pair into its code point), and `holder` keeps that new str alive.
std::string_view utf8_of(py::handle text, py::object& holder, const char* what) {
    if (!PyUnicode_Check(text.ptr())) throw py::type_error(std::string(what) + " must be str, got " + type_name(text));
    Py_ssize_t size;
    const char* data = PyUnicode_AsUTF8AndSize(text.ptr(), &size);
    if (!data) {
        PyErr_Clear();
        holder = py::reinterpret_borrow<py::object>(text).attr("encode")("utf-16", "surrogatepass").attr("decode")(
            "utf-16", "replace");
        data = PyUnicode_AsUTF8AndSize(holder.ptr(), &size);
        if (!data) throw py::error_already_set();
    }
    return std::string_view(data, static_cast<size_t>(size));
}

std::string bytes_of(py::handle obj, const std::string& what) {
    if (!PyBytes_Check(obj.ptr())) throw py::type_error(what + " must be bytes, got " + type_name(obj));
    return py::reinterpret_borrow<py::bytes>(obj).cast<std::string>();
}

int64_t int_of(py::handle obj, const std::string& what) {
    if (!PyLong_Check(obj.ptr()) || PyBool_Check(obj.ptr()))
        throw py::type_error(what + " must be int, got " + type_name(obj));
    int overflow = 0;
    long long v = PyLong_AsLongLongAndOverflow(obj.ptr(), &overflow);
    if (overflow) throw py::value_error(what + " is out of range; token ids must be in [0, 2**31)");
    return v;
}

// One shared int object per token id, made once: filling a result list is then an INCREF per id instead of an
// allocation, which matters because list building runs with the GIL held, after the threads are done.
// Measured on Shakespeare with GPT-2's vocab (1.57M ids): encode_ordinary 0.110 -> 0.087 s CPU. Sparse vocabs with
// huge ids (over 4M) fall back to allocating.
PyObject* const* id_objects(size_t count) {
    static std::vector<PyObject*> ints;  // kept for the life of the process; only touched with the GIL held
    while (ints.size() < count) {
        PyObject* v = PyLong_FromSize_t(ints.size());
        if (!v) throw py::error_already_set();
        ints.push_back(v);
    }
    return ints.data();
}

py::list to_list(const lmfast::IdVector& ids, size_t vocab_size) {
    constexpr size_t kMaxShared = size_t{1} << 22;
    PyObject* const* ints = vocab_size <= kMaxShared ? id_objects(vocab_size) : nullptr;
    PyObject* list = PyList_New(static_cast<Py_ssize_t>(ids.size()));
    if (!list) throw py::error_already_set();
    for (size_t i = 0; i < ids.size(); ++i) {
        PyObject* v;
        if (ints) {
            v = ints[ids[i]];  // ids come from the vocab, so ids[i] < vocab_size
            Py_INCREF(v);
        } else if (!(v = PyLong_FromUnsignedLong(ids[i]))) {
            Py_DECREF(list);
            throw py::error_already_set();
        }
        PyList_SET_ITEM(list, static_cast<Py_ssize_t>(i), v);
    }
    return py::reinterpret_steal<py::list>(list);
}

// Token ids for decoding, each checked here so that no Python object reaches the core unconverted: a non-int is a
// TypeError and an int beyond int64 (2**70) a ValueError, both naming the id and its position, instead of
// pybind11's "incompatible function arguments" dump. Out-of-vocab ids that fit in int64 are the core's to report.
std::vector<int64_t> id_list(py::handle items, size_t vocab_size) {
    if (PyUnicode_Check(items.ptr()) || PyBytes_Check(items.ptr()))
        throw py::type_error("ids must be a sequence of int token ids, got " + type_name(items));
    std::vector<int64_t> ids;
    size_t k = 0;
    for (py::handle item : py::reinterpret_borrow<py::iterable>(items)) {
        py::object id;  // numpy and other integer types convert through __index__; floats and bools do not
        if (PyLong_Check(item.ptr()) && !PyBool_Check(item.ptr())) {
            id = py::reinterpret_borrow<py::object>(item);
        } else if (!PyBool_Check(item.ptr()) && PyIndex_Check(item.ptr())) {
            id = py::reinterpret_steal<py::object>(PyNumber_Index(item.ptr()));
            if (!id) throw py::error_already_set();
        } else {
            throw py::type_error("token ids must be int, got " + type_name(item) + " " +
                                 py::repr(item).cast<std::string>().substr(0, 60) + " at position " +
                                 std::to_string(k));
        }
        int overflow = 0;
        long long v = PyLong_AsLongLongAndOverflow(id.ptr(), &overflow);
        if (overflow) {
            long bits = id.attr("bit_length")().cast<long>();  // str() of a 10**5000 would itself raise
            std::string shown = bits <= 256 ? py::str(id).cast<std::string>() : "of " + std::to_string(bits) + " bits";
            throw py::value_error("unknown token id " + shown + " at position " + std::to_string(k) +
                                  "; valid ids are those in the vocab (0.." +
                                  std::to_string(static_cast<int64_t>(vocab_size) - 1) + ")");
        }
        ids.push_back(v);
        ++k;
    }
    return ids;
}

// Ids as the bytes of a little-endian uint16 or uint32 array, made straight into a bytes object.
py::bytes packed(const lmfast::IdVector& ids, int itemsize) {
    PyObject* obj = PyBytes_FromStringAndSize(nullptr, static_cast<Py_ssize_t>(ids.size() * itemsize));
    if (!obj) throw py::error_already_set();
    char* dst = PyBytes_AS_STRING(obj);
    if (itemsize == 4) {
        std::memcpy(dst, ids.data(), ids.size() * 4);  // x86 and ARM Linux/macOS are little-endian, as .npy '<u4' is
    } else {
        for (size_t i = 0; i < ids.size(); ++i) {
            uint16_t v = static_cast<uint16_t>(ids[i]);
            std::memcpy(dst + 2 * i, &v, 2);
        }
    }
    return py::reinterpret_steal<py::bytes>(obj);
}

std::vector<std::string> str_list(py::handle items, const char* what) {
    std::vector<std::string> out;
    if (PyUnicode_Check(items.ptr()))
        throw py::type_error(std::string(what) + " must be a set of str, got a single str; wrap it: {text}");
    for (py::handle item : py::reinterpret_borrow<py::iterable>(items)) {
        if (!PyUnicode_Check(item.ptr()))
            throw py::type_error(std::string(what) + " must hold str, got " + type_name(item));
        out.push_back(item.cast<std::string>());
    }
    return out;
}

// The shared half of encode_batch and encode_batch_to_bytes: check and view the texts, encode without the GIL.
std::vector<lmfast::IdVector> encode_texts(const lmfast::Engine& self, py::handle texts,
                                                py::handle allowed_special, int num_threads) {
    if (PyUnicode_Check(texts.ptr()))
        throw py::type_error("texts must be a list of str, got a single str; wrap it: [text]");
    std::vector<py::object> holders;
    std::vector<std::string_view> views;
    std::vector<py::object> keep;  // the texts themselves, in case `texts` is a one-shot iterable
    for (py::handle t : py::reinterpret_borrow<py::iterable>(texts)) {
        keep.push_back(py::reinterpret_borrow<py::object>(t));
        holders.emplace_back();
        views.push_back(utf8_of(t, holders.back(), "each text"));
    }
    std::vector<std::string> allowed = str_list(allowed_special, "allowed_special");
    py::gil_scoped_release release;
    return self.encode_batch(views, allowed, num_threads);
}

lmfast::Pattern pattern_of(const std::string& name) {
    lmfast::Pattern p;
    if (lmfast::pattern_from_name(name, p)) return p;
    std::string known;
    for (int k = 0; k < lmfast::kNumPatterns; ++k)
        known += std::string(k ? ", " : "") + "'" + lmfast::pattern_name(static_cast<lmfast::Pattern>(k)) + "'";
    throw py::value_error("pattern '" + name + "' is not one of the pre-tokenizers " + known);
}

void check_itemsize(const lmfast::Engine& self, int itemsize) {
    if (itemsize != 2 && itemsize != 4) throw py::value_error("itemsize must be 2 or 4");
    if (itemsize == 2 && self.vocab_size() > (size_t{1} << 16))
        throw py::value_error("itemsize 2 holds ids below 65536, but the vocab has " +
                              std::to_string(self.vocab_size()) + " ids; use 4");
}

std::unique_ptr<lmfast::Engine> make_engine(const py::dict& vocab, const py::iterable& merges,
                                            const py::dict& special_tokens, const std::string& pattern,
                                            bool ignore_merges) {
    lmfast::Pattern pat = pattern_of(pattern);
    std::vector<std::pair<int64_t, std::string>> v;
    v.reserve(vocab.size());
    for (auto item : vocab) v.emplace_back(int_of(item.first, "vocab key"), bytes_of(item.second, "vocab value"));
    std::vector<std::pair<std::string, std::string>> m;
    for (py::handle pair : merges) {
        if (!PySequence_Check(pair.ptr()) || PySequence_Size(pair.ptr()) != 2)
            throw py::type_error("each merge must be a pair (bytes, bytes), got " + type_name(pair));
        py::sequence seq = py::reinterpret_borrow<py::sequence>(pair);
        m.emplace_back(bytes_of(seq[0], "merge part"), bytes_of(seq[1], "merge part"));
    }
    std::vector<std::pair<std::string, int64_t>> s;
    for (auto item : special_tokens) {
        if (!PyUnicode_Check(item.first.ptr()))
            throw py::type_error("special token must be str, got " + type_name(item.first));
        s.emplace_back(item.first.cast<std::string>(), int_of(item.second, "special token id"));
    }
    py::gil_scoped_release release;
    return std::make_unique<lmfast::Engine>(v, m, s, pat, ignore_merges);
}

}  // namespace

PYBIND11_MODULE(_bpe, mod) {
    mod.doc() = "C++ BPE tokenizer core (csrc/); the public API is lmfast.tokenizer.";
    py::register_exception_translator([](std::exception_ptr p) {
        try {
            if (p) std::rethrow_exception(p);
        } catch (const lmfast::FileNotFound& e) {
            PyErr_SetString(PyExc_FileNotFoundError, e.what());
        }
    });
    mod.attr("CLASS_OTHER") = static_cast<int>(lmfast::kOther);
    mod.attr("CLASS_LETTER") = static_cast<int>(lmfast::kLetter);
    mod.attr("CLASS_NUMBER") = static_cast<int>(lmfast::kNumber);
    mod.attr("CLASS_SPACE") = static_cast<int>(lmfast::kSpace);

    // ----- Pre-tokenizer -----
    mod.def(
        "char_class",
        [](int64_t cp) {
            if (cp < 0 || cp > 0x10FFFF)
                throw py::value_error("code point " + std::to_string(cp) + " is outside 0..0x10FFFF");
            return lmfast::char_class(static_cast<uint32_t>(cp));
        },
        py::arg("codepoint"), "Class of a code point: 0 other, 1 letter (\\p{L}), 2 number (\\p{N}), 3 space (\\s).");
    mod.def(
        "pretokenize",
        [](py::handle text, const std::string& pattern) {
            lmfast::Pattern pat = pattern_of(pattern);
            py::object holder;
            std::string_view s = utf8_of(text, holder, "text");
            std::vector<std::pair<size_t, size_t>> spans;
            {
                py::gil_scoped_release release;
                lmfast::pretokenize(pat, s, [&](size_t b, size_t e) { spans.emplace_back(b, e); });
            }
            py::list out(spans.size());
            for (size_t i = 0; i < spans.size(); ++i) {
                auto size = static_cast<Py_ssize_t>(spans[i].second - spans[i].first);
                PyObject* piece = PyUnicode_DecodeUTF8(s.data() + spans[i].first, size, "strict");
                if (!piece) throw py::error_already_set();
                PyList_SET_ITEM(out.ptr(), static_cast<Py_ssize_t>(i), piece);
            }
            return out;
        },
        py::arg("text"), py::arg("pattern") = "gpt2",
        "Split text with a pre-tokenizer pattern: 'gpt2', 'cl100k', 'llama3', 'qwen2' or 'o200k' (the `regex` "
        "module's semantics).");
    mod.def(
        "fine_class",
        [](int64_t cp) {
            if (cp < 0 || cp > 0x10FFFF)
                throw py::value_error("code point " + std::to_string(cp) + " is outside 0..0x10FFFF");
            return lmfast::fine_class(static_cast<uint32_t>(cp));
        },
        py::arg("codepoint"),
        "Fine class of a code point: 0 other, 1 upper (Lu, Lt), 2 lower (Ll), 3 other letter (Lm, Lo), 4 mark (M), "
        "5 number (N), 6 space (\\s).");
    py::list patterns;
    for (int k = 0; k < lmfast::kNumPatterns; ++k) patterns.append(lmfast::pattern_name(static_cast<lmfast::Pattern>(k)));
    mod.attr("PATTERNS") = py::tuple(patterns);

    // ----- Encoding / Decoding -----
    py::class_<lmfast::Engine>(mod, "Engine", "Byte-level BPE engine: encode/decode with a fixed vocab and merges.")
        .def(py::init(&make_engine), py::arg("vocab"), py::arg("merges"), py::arg("special_tokens"),
             py::arg("pattern") = "gpt2", py::arg("ignore_merges") = false)
        .def(
            "encode_ordinary",
            [](const lmfast::Engine& self, py::handle text) {
                py::object holder;
                std::string_view s = utf8_of(text, holder, "text");
                lmfast::IdVector ids;
                {
                    py::gil_scoped_release release;
                    ids = self.encode_ordinary(s);
                }
                return to_list(ids, self.vocab_size());
            },
            py::arg("text"), "Pre-tokenize and BPE text; special-token text is encoded as ordinary text.")
        .def(
            "encode",
            [](const lmfast::Engine& self, py::handle text, py::handle allowed_special) {
                py::object holder;
                std::string_view s = utf8_of(text, holder, "text");
                std::vector<std::string> allowed = str_list(allowed_special, "allowed_special");
                lmfast::IdVector ids;
                {
                    py::gil_scoped_release release;
                    ids = self.encode(s, allowed);
                }
                return to_list(ids, self.vocab_size());
            },
            py::arg("text"), py::arg("allowed_special"),
            "Encode text; occurrences of allowed_special become their ids (leftmost first, longest at a position).")
        .def(
            "encode_batch",
            [](const lmfast::Engine& self, py::handle texts, py::handle allowed_special, int num_threads) {
                std::vector<lmfast::IdVector> results = encode_texts(self, texts, allowed_special, num_threads);
                py::list out(results.size());
                for (size_t i = 0; i < results.size(); ++i) {
                    py::list ids = to_list(results[i], self.vocab_size());
                    PyList_SET_ITEM(out.ptr(), static_cast<Py_ssize_t>(i), ids.release().ptr());
                }
                return out;
            },
            py::arg("texts"), py::arg("allowed_special"), py::arg("num_threads"),
            "encode() of each text on num_threads native threads; results in input order.")
        .def(
            "encode_batch_to_bytes",
            [](const lmfast::Engine& self, py::handle texts, py::handle allowed_special, int num_threads,
               int itemsize) {
                check_itemsize(self, itemsize);
                std::vector<lmfast::IdVector> results = encode_texts(self, texts, allowed_special, num_threads);
                py::list out(results.size());
                for (size_t i = 0; i < results.size(); ++i) {
                    PyList_SET_ITEM(out.ptr(), static_cast<Py_ssize_t>(i), packed(results[i], itemsize).release().ptr());
                    lmfast::IdVector().swap(results[i]);  // free as we go: peak = the ids + one text's bytes
                }
                return out;
            },
            py::arg("texts"), py::arg("allowed_special"), py::arg("num_threads"), py::arg("itemsize"),
            "encode_batch() with each text's ids packed as little-endian uint16 (itemsize 2) or uint32 (4) bytes: "
            "what a token file holds, without a Python int per id.")
        .def(
            "encode_to_numpy",
            [](const lmfast::Engine& self, py::handle texts, py::handle allowed_special, int64_t separator,
               int num_threads, int itemsize, size_t chunk) {
                check_itemsize(self, itemsize);
                if (separator >= static_cast<int64_t>(self.vocab_size()))
                    throw py::value_error("separator id " + std::to_string(separator) + " is not in the vocab");
                std::vector<py::object> holders, keep;
                std::vector<std::string_view> views;
                if (PyUnicode_Check(texts.ptr())) {
                    holders.emplace_back();
                    views.push_back(utf8_of(texts, holders.back(), "text"));
                } else {
                    for (py::handle t : py::reinterpret_borrow<py::iterable>(texts)) {
                        keep.push_back(py::reinterpret_borrow<py::object>(t));
                        holders.emplace_back();
                        views.push_back(utf8_of(t, holders.back(), "each document"));
                    }
                }
                std::vector<std::string> allowed = str_list(allowed_special, "allowed_special");
                // The engine writes the ids straight into an IdBuffer, which numpy then owns through a capsule.
                lmfast::IdBuffer buffer;
                size_t n;
                {
                    py::gil_scoped_release release;
                    n = self.encode_to_array(
                        views, allowed, separator, itemsize, num_threads,
                        [&](size_t capacity) { return buffer.reserve(capacity * itemsize); }, chunk);
                    buffer.reserve(1);  // no text at all: no round asked for room
                    buffer.shrink(n * itemsize);
                }
                using Mapping = std::pair<void*, size_t>;
                auto* mapping = new Mapping(buffer.data(), 0);
                py::capsule owner(mapping, [](void* m) {
                    auto* p = static_cast<Mapping*>(m);
                    lmfast::IdBuffer::unmap(p->first, p->second);
                    delete p;
                });
                *mapping = buffer.release();
                void* data = mapping->first;
                const auto size = static_cast<py::ssize_t>(n);
                py::object array = itemsize == 2
                    ? py::object(py::array_t<uint16_t>(size, static_cast<uint16_t*>(data), owner))
                    : py::object(py::array_t<uint32_t>(size, static_cast<uint32_t*>(data), owner));
                return array;
            },
            py::arg("texts"), py::arg("allowed_special"), py::arg("separator"), py::arg("num_threads"),
            py::arg("itemsize"), py::arg("chunk") = size_t{1} << 20,
            "The ids of encode() of a text, or of each document of an iterable concatenated with `separator` after "
            "each (none when < 0), as one uint16 (itemsize 2) or uint32 (4) numpy array; long texts are cut at safe "
            "points and encoded on num_threads threads.")
        .def(
            "encode_file",
            [](const lmfast::Engine& self, py::object path, int out_fd, py::handle allowed_special, int itemsize,
               int num_threads, py::object progress, size_t chunk) {
                check_itemsize(self, itemsize);
                std::string p = py::module_::import("os").attr("fsdecode")(path).cast<std::string>();
                std::vector<std::string> allowed = str_list(allowed_special, "allowed_special");
                auto report = [&progress](uint64_t done) {
                    py::gil_scoped_acquire gil;
                    if (PyErr_CheckSignals() != 0) throw py::error_already_set();
                    if (!progress.is_none()) progress(done);
                };
                py::gil_scoped_release release;
                return self.encode_file(p, out_fd, allowed, itemsize, num_threads, report, chunk);
            },
            py::arg("path"), py::arg("out_fd"), py::arg("allowed_special"), py::arg("itemsize"),
            py::arg("num_threads"), py::arg("progress") = py::none(), py::arg("chunk") = size_t{1} << 21,
            "Encode a UTF-8 file and write its ids (little-endian uint16 or uint32) to the open file descriptor "
            "out_fd; returns how many. Memory stays bounded whatever the file size; progress(bytes read) is called "
            "after each round of chunks and Ctrl-C stops it.")
        .def(
            "decode_bytes",
            [](const lmfast::Engine& self, py::handle id_seq) {
                std::vector<int64_t> ids = id_list(id_seq, self.vocab_size());
                std::string out;
                {
                    py::gil_scoped_release release;
                    out = self.decode_bytes(ids);
                }
                return py::bytes(out);
            },
            py::arg("ids"), "Concatenated bytes of the ids; an id not in the vocab raises ValueError naming it.")
        .def_property_readonly("vocab_size", &lmfast::Engine::vocab_size, "Largest id + 1.")
        .def_property_readonly(
            "pattern", [](const lmfast::Engine& self) { return lmfast::pattern_name(self.pattern()); },
            "The pre-tokenizer's name.");

    // ----- Training -----
    mod.def(
        "train_bpe",
        [](py::object input_path, int64_t vocab_size, py::handle special_tokens, std::optional<int> num_workers,
           py::object progress, const std::string& pattern, size_t block_size) {
            lmfast::Pattern pat = pattern_of(pattern);
            // fsdecode takes str, bytes and PathLike alike (a bytes path must not become the text "b'...'").
            std::string path = py::module_::import("os").attr("fsdecode")(input_path).cast<std::string>();
            if (vocab_size < 0) throw py::value_error("vocab_size=" + std::to_string(vocab_size) + " must be >= 256");
            std::vector<std::string> specials = str_list(special_tokens, "special_tokens");
            if (num_workers && *num_workers < 1)
                throw py::value_error("num_workers=" + std::to_string(*num_workers) +
                                      " must be >= 1 (or None for all cores)");
            // Called with the GIL released, ~10 times a second: report progress, and let Ctrl-C (a signal Python
            // only notices between bytecodes) stop a long training by raising out of the core.
            auto report = [&progress](lmfast::TrainStage stage, uint64_t done, uint64_t total) {
                py::gil_scoped_acquire gil;
                if (PyErr_CheckSignals() != 0) throw py::error_already_set();
                const char* name = stage == lmfast::TrainStage::kCounting ? "count" : "merge";
                if (!progress.is_none()) progress(name, done, total);
            };
            lmfast::TrainResult r;
            {
                py::gil_scoped_release release;
                r = lmfast::train_bpe(path, static_cast<size_t>(vocab_size), specials, num_workers.value_or(0), report,
                                      pat, block_size);
            }
            py::dict vocab;
            for (size_t i = 0; i < r.vocab.size(); ++i) vocab[py::int_(i)] = py::bytes(r.vocab[i]);
            py::list merges(r.merges.size());
            for (size_t i = 0; i < r.merges.size(); ++i) {
                const auto& [a, b] = r.merges[i];
                py::tuple pair = py::make_tuple(py::bytes(r.vocab[a]), py::bytes(r.vocab[b]));
                PyList_SET_ITEM(merges.ptr(), static_cast<Py_ssize_t>(i), pair.release().ptr());
            }
            return py::make_tuple(vocab, merges);
        },
        py::arg("input_path"), py::arg("vocab_size"), py::arg("special_tokens"), py::arg("num_workers") = py::none(),
        py::arg("progress") = py::none(), py::arg("pattern") = "gpt2", py::arg("block_size") = 0,
        "Train byte-level BPE on a UTF-8 file, read in blocks of block_size bytes (0: the default; small ones are "
        "for tests): returns (vocab id -> bytes, merges in order); progress(stage, done, total) is called about "
        "ten times a second, stage 'count' in bytes of the file, then 'merge' in merges.");
}
