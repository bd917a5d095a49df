// libFuzzer target for the C++ loader's own checks: MappedFile + TensorTable + Model
// (csrc/mapped_file.cpp, csrc/model.cpp), the layer that must hold even if Python's validation
// (pygpt/_format.py) were bypassed or wrong. Built with ASan + UBSan by fuzz/build_cpp.sh.
//
// The input describes a config (dtype, bias, group size), then up to 3 corruptions of the valid
// tensor table for it (offsets, shapes incl. overflowing ones, dtypes, names, duplicates,
// removals, file length), and the file contents. The Model constructor must either succeed or throw FormatError /
// FileNotFound / std::invalid_argument; when it succeeds, a forward pass over every weight must run.
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <algorithm>
#include <cstdlib>
#include <string>
#include <vector>

#include <fuzzer/FuzzedDataProvider.h>

#include "errors.h"
#include "model.h"

using namespace pygpt;

namespace {

std::string g_path;
size_t g_loaded = 0;  // inputs that made a valid model (reported at powers of two)

const char* kDtypes[] = {"F32", "F16", "BF16", "I8", "U8", "F64", ""};

int64_t width(const std::string& dtype) {
    return dtype == "F32" ? 4 : (dtype == "F16" || dtype == "BF16") ? 2 : 1;
}

// The tensor table a valid file for cfg holds, in file order, without offsets.
std::vector<TensorInfo> valid_table(const ModelConfig& c) {
    std::vector<TensorInfo> out;
    const bool quant = c.dtype == DType::Q8 || c.dtype == DType::Q4;
    auto add = [&](const std::string& name, const std::string& dtype, std::vector<int64_t> shape) {
        TensorInfo t;
        t.name = name;
        t.dtype = dtype;
        t.shape = std::move(shape);
        out.push_back(std::move(t));
    };
    auto matrix = [&](const std::string& name, int64_t n_out, int64_t n_in) {
        // elements of a stored row: bytes for the quantized (byte) dtypes, else n_in
        const int64_t row = quant ? matrix_row_bytes(c.dtype, n_in) : n_in;
        add(name, storage_dtype(c.dtype), {n_out, row});
        if (quant) add(name + "_scales", "F32", {n_out, c.group > 0 ? n_in / c.group : 0});
    };
    auto norm = [&](const std::string& name) {
        add(name + ".weight", "F32", {c.n_embd});
        if (c.bias) add(name + ".bias", "F32", {c.n_embd});
    };
    auto linear = [&](const std::string& name, int64_t n_out, int64_t n_in) {
        matrix(name + ".weight", n_out, n_in);
        if (c.bias) add(name + ".bias", "F32", {n_out});
    };
    const int64_t C = c.n_embd;
    matrix("wte.weight", c.vocab_size, C);
    add("wpe.weight", "F32", {c.n_ctx, C});
    for (int64_t l = 0; l < c.n_layer; l++) {
        const std::string p = "h." + std::to_string(l) + ".";
        norm(p + "ln_1");
        linear(p + "attn.c_attn", 3 * C, C);
        linear(p + "attn.c_proj", C, C);
        norm(p + "ln_2");
        linear(p + "mlp.c_fc", 4 * C, C);
        linear(p + "mlp.c_proj", C, 4 * C);
    }
    norm("ln_f");
    return out;
}

int64_t bytes_of(const TensorInfo& t) {
    int64_t n = width(t.dtype);
    for (int64_t d : t.shape) n *= d;
    return n;
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
    const char* dir = std::getenv("TMPDIR");
    g_path = std::string(dir ? dir : "/tmp") + "/pygpt-fuzz-model-" + std::to_string(getpid()) + ".safetensors";
    return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    FuzzedDataProvider fdp(data, size);
    ModelConfig cfg;
    cfg.n_layer = fdp.ConsumeIntegralInRange<int64_t>(1, 2);
    cfg.n_head = fdp.ConsumeIntegralInRange<int64_t>(1, 2);
    cfg.n_embd = cfg.n_head * fdp.ConsumeIntegralInRange<int64_t>(1, 4);
    cfg.n_ctx = fdp.ConsumeIntegralInRange<int64_t>(1, 4);
    cfg.vocab_size = fdp.ConsumeIntegralInRange<int64_t>(1, 8);
    cfg.bias = fdp.ConsumeBool();
    cfg.dtype = static_cast<DType>(fdp.ConsumeIntegralInRange<int>(0, 4));
    cfg.group = fdp.ConsumeIntegralInRange<int64_t>(0, 4);
    // a valid table, packed from the data start at the chosen alignment...
    std::vector<TensorInfo> tensors = valid_table(cfg);
    const int64_t align = int64_t(1) << fdp.ConsumeIntegralInRange<int>(0, 3);
    int64_t cursor = 8 + fdp.ConsumeIntegralInRange<int64_t>(0, 64);
    for (auto& t : tensors) {
        cursor += (align - cursor % align) % align;
        t.begin = cursor;
        t.end = cursor + bytes_of(t);
        cursor = t.end;
    }
    size_t file_size = static_cast<size_t>(cursor);
    // ...then a few corruptions (none: a valid model that must load and run)
    const int n_mutations = fdp.ConsumeIntegralInRange<int>(0, 3);
    for (int k = 0; k < n_mutations && !tensors.empty(); k++) {
        TensorInfo& t = tensors[fdp.ConsumeIntegralInRange<size_t>(0, tensors.size() - 1)];
        switch (fdp.ConsumeIntegralInRange<int>(0, 9)) {
            case 0: t.begin = int64_t(uint64_t(t.begin) + uint64_t(fdp.ConsumeIntegralInRange<int64_t>(-8, 8))); break;
            case 1: t.end = int64_t(uint64_t(t.end) + uint64_t(fdp.ConsumeIntegralInRange<int64_t>(-8, 8))); break;
            case 2: t.begin = fdp.ConsumeIntegral<int64_t>(); break;
            case 3: t.end = fdp.ConsumeIntegral<int64_t>(); break;
            case 4:  // a dimension: small, or anything (negative, huge: products that overflow)
                if (!t.shape.empty())
                    t.shape[fdp.ConsumeIntegralInRange<size_t>(0, t.shape.size() - 1)] =
                        fdp.ConsumeBool() ? fdp.ConsumeIntegralInRange<int64_t>(-1, 64) : fdp.ConsumeIntegral<int64_t>();
                break;
            case 5: t.dtype = kDtypes[fdp.ConsumeIntegralInRange<size_t>(0, 6)]; break;
            case 6: t.name = fdp.ConsumeRandomLengthString(24); break;
            case 7: tensors.push_back(tensors[fdp.ConsumeIntegralInRange<size_t>(0, tensors.size() - 1)]); break;
            case 8: tensors.erase(tensors.begin() + fdp.ConsumeIntegralInRange<size_t>(0, tensors.size() - 1)); break;
            default:  // the file shorter or longer than the data
                file_size = static_cast<size_t>(
                    std::max<int64_t>(0, int64_t(file_size) + fdp.ConsumeIntegralInRange<int64_t>(-64, 64)));
        }
    }
    // the file: filled from the rest of the input (repeated; zeros if none)
    const std::string fill = fdp.ConsumeRemainingBytesAsString();
    std::string file(file_size, '\0');
    for (size_t i = 0; i < file_size && !fill.empty(); i++) file[i] = fill[i % fill.size()];
    FILE* f = std::fopen(g_path.c_str(), "wb");
    if (!f) return 0;
    std::fwrite(file.data(), 1, file.size(), f);
    std::fclose(f);

    try {
        Model model(g_path, cfg, tensors, 1, "scalar");
        // every weight is read by a forward pass over two positions (or one if n_ctx is 1)
        auto cache = model.new_cache();
        const int32_t ids[2] = {0, static_cast<int32_t>(cfg.vocab_size - 1)};
        SeqStep step;
        step.cache = cache.get();
        step.tokens = ids;
        step.n_tokens = cfg.n_ctx >= 2 ? 2 : 1;
        step.all_logits = true;
        std::vector<float> logits(2 * cfg.vocab_size);
        model.forward({step}, logits.data());
        ++g_loaded;
        if ((g_loaded & (g_loaded - 1)) == 0) std::fprintf(stderr, "valid models loaded and run: %zu\n", g_loaded);
    } catch (const FormatError&) {
    } catch (const FileNotFound&) {
    } catch (const std::invalid_argument&) {
    }
    return 0;
}
