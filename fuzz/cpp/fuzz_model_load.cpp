// libFuzzer target for the C++ loader's own checks: MappedFile + TensorTable + Model
// (csrc/mapped_file.cpp, csrc/model.cpp), the layer that must hold even if Python's validation
// (pygpt/_format.py) were bypassed or wrong. Built with ASan + UBSan by fuzz/build_cpp.sh.
//
// The input describes a config (dtype, bias, group size), a tensor table (names mostly from
// the expected set, dtypes, shapes and byte ranges from the input, often near the right values)
// and the file contents. The Model constructor must either succeed or throw FormatError /
// FileNotFound / std::invalid_argument; when it succeeds, a forward pass over every weight must run.
#include <unistd.h>

#include <cstdint>
#include <cstdio>
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

std::vector<std::string> expected_names(const ModelConfig& c, bool quant) {
    std::vector<std::string> n = {"wte.weight", "wpe.weight", "ln_f.weight", "ln_f.bias"};
    if (quant) n.push_back("wte.weight_scales");
    for (int64_t l = 0; l < c.n_layer; l++) {
        const std::string p = "h." + std::to_string(l) + ".";
        for (const char* s : {"ln_1.weight", "ln_1.bias", "ln_2.weight", "ln_2.bias"}) n.push_back(p + s);
        for (const char* s : {"attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"}) {
            n.push_back(p + s + ".weight");
            n.push_back(p + s + ".bias");
            if (quant) n.push_back(p + s + ".weight_scales");
        }
    }
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
    const bool quant = cfg.dtype == DType::Q8 || cfg.dtype == DType::Q4;
    const std::vector<std::string> names = expected_names(cfg, quant);

    std::vector<TensorInfo> tensors;
    const size_t n_tensors = fdp.ConsumeIntegralInRange<size_t>(0, names.size() + 2);
    int64_t cursor = 8 + fdp.ConsumeIntegralInRange<int64_t>(0, 64);
    for (size_t i = 0; i < n_tensors; i++) {
        TensorInfo t;
        t.name = fdp.ConsumeIntegralInRange<int>(0, 15) ? names[i % names.size()] : fdp.ConsumeRandomLengthString(8);
        t.dtype = kDtypes[fdp.ConsumeIntegralInRange<size_t>(0, 6)];
        const size_t rank = fdp.ConsumeIntegralInRange<size_t>(0, 3);
        int64_t elems = 1;
        for (size_t d = 0; d < rank; d++) {
            // mostly small dims; sometimes anything (negative, huge: products that overflow)
            const int64_t dim = fdp.ConsumeIntegralInRange<int>(0, 7) ? fdp.ConsumeIntegralInRange<int64_t>(0, 16)
                                                                       : fdp.ConsumeIntegral<int64_t>();
            t.shape.push_back(dim);
            elems = (dim >= 0 && dim < (1 << 20) && elems < (1 << 20)) ? elems * dim : 1 << 20;
        }
        const int64_t width = t.dtype == "F32" ? 4 : (t.dtype == "F16" || t.dtype == "BF16") ? 2 : 1;
        if (fdp.ConsumeIntegralInRange<int>(0, 7)) {  // consistent-ish ranges, packed one after another
            t.begin = cursor + fdp.ConsumeIntegralInRange<int64_t>(-2, 2);
            t.end = t.begin + elems * width + fdp.ConsumeIntegralInRange<int64_t>(-1, 1);
        } else {
            t.begin = fdp.ConsumeIntegral<int64_t>();
            t.end = fdp.ConsumeIntegral<int64_t>();
        }
        cursor = t.end > cursor && t.end < (1 << 24) ? t.end : cursor;
        tensors.push_back(std::move(t));
    }
    // the file: a requested size, filled from the rest of the input (repeated; zeros if none)
    const size_t file_size = fdp.ConsumeIntegralInRange<size_t>(0, 1 << 16);
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
