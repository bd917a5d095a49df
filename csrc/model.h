// GPT-2: configuration, weights (views into the mmapped safetensors file), KV cache and
// the forward pass. The forward pass in model.cpp reads top to bottom like the math.
#pragma once
#include <array>
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include "kernels.h"
#include "mapped_file.h"
#include "threads.h"

namespace pygpt {

enum class Activation { GeluTanh, GeluErf };

struct ModelConfig {
    int64_t n_layer = 0, n_head = 0, n_embd = 0, n_ctx = 0, vocab_size = 0;
    float layer_norm_epsilon = 1e-5f;
    Activation activation = Activation::GeluTanh;
    bool bias = true;  // linear layers and layer norms have biases (nanoGPT bias=False: none)
    DType dtype = DType::F32;  // storage type of the linear weights and wte
    int64_t group = 0;         // q8/q4 group size
    // Attention scores are q.k / sqrt(head_dim) (scale_attn_weights), further divided by the
    // layer's number, 1 to n_layer (scale_attn_by_inverse_layer_idx): Hugging Face GPT2Config's.
    bool scale_attn_weights = true;
    bool scale_attn_by_inverse_layer_idx = false;
    // The LM head is wte (GPT-2's tied head) or a matrix of its own, lm_head.weight
    // (tie_word_embeddings false).
    bool tie_word_embeddings = true;
};

// One tensor of model.safetensors, as parsed and validated by Python (pygpt/_format.py).
// begin/end are byte offsets from the start of the file (header included).
struct TensorInfo {
    std::string name;
    std::string dtype;  // safetensors dtype string: "F32", "F16", "BF16", "I8", "U8"
    std::vector<int64_t> shape;
    int64_t begin = 0, end = 0;
};

// A low-rank term added to a linear layer's product: y = x W^T + b + (x A^T) B^T, in f32.
// LoRA adapters applied at load time, unmerged (the weights W stay as stored, any dtype):
// several adapters stacked along the rank, each one's scaling folded into its columns of B.
struct LowRank {
    int64_t rank = 0;             // 0: none
    // transposed at set_lora, as Kernels::add_product takes them
    std::vector<float> at;        // A^T [n_in, rank]
    std::vector<float> bt;        // B^T [rank, n_out]
};

struct Linear {
    Matrix w;                     // [n_out, n_in]
    const float* b = nullptr;     // [n_out] or null
    LowRank lora;                 // rank 0 unless an adapter adapts the layer (Model::set_lora)
};

struct LayerNorm {
    const float* w = nullptr;     // [C]
    const float* b = nullptr;     // [C] or null
};

struct Block {
    LayerNorm ln_1;
    Linear c_attn;                // [3C, C]  -> q, k, v
    Linear attn_proj;             // [C, C]
    LayerNorm ln_2;
    Linear c_fc;                  // [4C, C]
    Linear mlp_proj;              // [C, 4C]

    // The linear layers in the order of the pass, and their names after "h.N." (the tensors'
    // names, less ".weight").
    static constexpr const char* kLinearNames[4] = {"attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"};
    std::array<Linear*, 4> linears() { return {&c_attn, &attn_proj, &c_fc, &mlp_proj}; }
    std::array<const Linear*, 4> linears() const { return {&c_attn, &attn_proj, &c_fc, &mlp_proj}; }
};

struct Weights {
    Matrix wte;                   // [V, C]  token embedding
    Linear lm_head;               // [V, C]  the LM head: wte again (tied) or its own matrix; no bias
                                  // (a low-rank term: a LoRA on lm_head, at load time)
    const float* wpe = nullptr;   // [n_ctx, C]  position embedding
    // LoRAs on the embeddings (at load time): row i of the table gets A^T[i] B^T, A [rank, rows]
    // and B [C, rank] (peft's lora_embedding_A and _B), kept as at [rows, rank] and bt [rank, C]
    LowRank wte_lora, wpe_lora;
    std::vector<Block> h;         // n_layer blocks
    LayerNorm ln_f;
};

// How a KV cache stores keys and values: f32; IEEE half floats (half the memory and the
// reads); or int8 with one f32 scale per position and head (x ~= q * scale, q = round(x /
// scale), scale = max|x| / 127 over the head's head_dim values: a little over a quarter of
// the f32 bytes).
enum class KVType { F32, F16, Int8 };
const char* kv_type_name(KVType t);                // "f32", "f16", "int8"
bool kv_type_from_name(const std::string& name, KVType* out);

// Frees what std::aligned_alloc gave.
struct FreeDeleter {
    void operator()(uint8_t* p) const { std::free(p); }
};

// Keys and values of one sequence, preallocated for n_ctx positions. Each head's keys (and
// values) are contiguous over positions, so attention streams them.
struct KVCache {
    int64_t n_layer = 0, n_head = 0, n_ctx = 0, head_dim = 0;
    KVType type = KVType::F32;
    int64_t pos = 0;              // number of positions filled
    // [n_layer, n_head, n_ctx, head_dim] of f32, f16 or int8, left uninitialised: a position
    // is written before it is read, and the pages of positions never reached are never
    // touched (75 MB per f32 sequence for gpt2 at n_ctx 1024; zero-filling them cost
    // milliseconds per call). 64-byte aligned, so a head's row at a position starts a cache line
    // when its bytes are a multiple of 64 (GPT-2's 64 values at any type).
    std::unique_ptr<uint8_t[], FreeDeleter> k, v;
    // int8 only: the scales, [n_layer, n_head, n_ctx]
    std::unique_ptr<float[]> k_scale, v_scale;

    KVCache(int64_t n_layer, int64_t n_head, int64_t n_ctx, int64_t head_dim, KVType type = KVType::F32);
    int64_t elem_bytes() const { return elem_bytes(type); }
    static int64_t elem_bytes(KVType t) { return t == KVType::F32 ? 4 : t == KVType::F16 ? 2 : 1; }
    // keys, values (and int8 scales) of one position, all layers
    static int64_t bytes_per_position(const ModelConfig& c, KVType t) {
        return c.n_layer * 2 * (c.n_embd * elem_bytes(t) + (t == KVType::Int8 ? c.n_head * 4 : 0));
    }
    uint8_t* k_at(int64_t l, int64_t h, int64_t t) { return k.get() + offset(l, h, t); }
    uint8_t* v_at(int64_t l, int64_t h, int64_t t) { return v.get() + offset(l, h, t); }
    const uint8_t* k_at(int64_t l, int64_t h, int64_t t) const { return k.get() + offset(l, h, t); }
    const uint8_t* v_at(int64_t l, int64_t h, int64_t t) const { return v.get() + offset(l, h, t); }
    float* k_scale_at(int64_t l, int64_t h, int64_t t) const { return k_scale.get() + (l * n_head + h) * n_ctx + t; }
    float* v_scale_at(int64_t l, int64_t h, int64_t t) const { return v_scale.get() + (l * n_head + h) * n_ctx + t; }
    // fork: same prefix, own storage: other's positions [from, to) (to = -1: other.pos), and pos
    // = to. Positions before `from` are taken as equal already (a cache that ran the same
    // tokens there holds the same bits: rows never depend on the batch).
    void copy_from(const KVCache& other, int64_t from = 0, int64_t to = -1);

private:
    int64_t offset(int64_t l, int64_t h, int64_t t) const {
        return ((l * n_head + h) * n_ctx + t) * head_dim * elem_bytes();
    }
};

// New tokens of one sequence for one forward call.
struct SeqStep {
    KVCache* cache = nullptr;     // appended to: positions cache->pos .. cache->pos + n_tokens - 1
    const int32_t* tokens = nullptr;
    int64_t n_tokens = 0;
    bool all_logits = false;      // logits for every new token, or only for the last one
};

class Model {
public:
    Model(const std::string& path, const ModelConfig& config, const std::vector<TensorInfo>& tensors,
          int n_threads, const std::string& isa, KVType kv_type = KVType::F32);

    const ModelConfig& config() const { return config_; }
    const Kernels& kernels() const { return *kernels_; }
    int n_threads() const { return n_threads_; }
    KVType kv_type() const { return kv_type_; }  // how new caches store keys and values
    size_t file_bytes() const { return file_->size(); }
    size_t copied_bytes() const { return copied_bytes_; }

    // A cache for up to `positions` positions (0: n_ctx; a shorter one for a sequence known to
    // stay shorter, such as a text to embed, touches fewer pages).
    std::unique_ptr<KVCache> new_cache(int64_t positions = 0) const;

    // Runs the new tokens of every sequence through the network (ragged: each sequence at
    // its own positions, no padding) and appends their keys/values to each cache.
    // Writes logits rows to `logits` in step order: n_tokens rows for a step with
    // all_logits, else one row. With `hidden`, also writes those rows' final hidden states
    // there (ln_f of the residual stream, n_embd floats a row: what the LM head multiplies);
    // with logits null, only those (the LM head is skipped). Throws std::invalid_argument on
    // bad ids or cache overflow. Thread-safe: calls on one model are serialised.
    void forward(const std::vector<SeqStep>& steps, float* logits, float* hidden = nullptr);

    // Rows `forward` will write for these steps.
    static int64_t logit_rows(const std::vector<SeqStep>& steps);

    // Gives the linear layer `name` ("h.3.attn.c_attn", "h.3.attn.c_proj", "h.3.mlp.c_fc" or
    // "h.3.mlp.c_proj") the low-rank term (x A^T) B^T: a = A [a_rows, a_cols] = [rank, n_in],
    // b = B [b_rows, b_cols] = [n_out, rank], row-major f32, copied (transposed). Once per
    // layer, before the first forward pass (keys and values cached without it would not match).
    // Throws std::invalid_argument on a bad name, shape, value or call.
    void set_lora(const std::string& name, const float* a, int64_t a_rows, int64_t a_cols, const float* b,
                  int64_t b_rows, int64_t b_cols);
    // Bytes of the low-rank terms' A and B.
    size_t lora_bytes() const;

private:
    void forward_team(const Team& team, const std::vector<SeqStep>& steps, int64_t T, float* logits, float* hidden);
    template <class Epilogue>
    void linear(const Team& team, const Linear& lin, const float* x, int64_t T, float* y, int64_t r0, int64_t r1,
                Epilogue&& epilogue, int64_t unit);
    void low_rank_down(const Linear& lin, const float* x, int64_t r0, int64_t r1, float* u) const;
    void low_rank_up(const Linear& lin, const float* u, int64_t T, float* y, int64_t c0, int64_t c1) const;
    void layernorm_rows(const LayerNorm& ln, const float* x, int64_t r0, int64_t r1, float* out) const;
    void append_kv(const std::vector<SeqStep>& steps, int64_t l, const float* qkv, int64_t T, int64_t o0, int64_t o1);
    float attention_scale(int64_t l) const;
    void attention(const Team& team, const std::vector<SeqStep>& steps, int64_t l, const float* qkv, float* out);

    ModelConfig config_;
    const Kernels* kernels_;
    int n_threads_;
    KVType kv_type_;
    std::unique_ptr<MappedFile> file_;
    std::vector<std::vector<uint8_t>> copies_;  // tensors that had to be realigned
    size_t copied_bytes_ = 0;
    Weights w_;
    int64_t max_lora_rank_ = 0;  // of any layer's low-rank term
    bool ran_ = false;           // a forward pass has run (set_lora is refused from then on)
    std::mutex mutex_;

    // activations, grown as needed and reused across calls (no allocation per token)
    std::vector<float> x_, xn_, qkv_, att_, proj_, fc_, last_, scores_;
    // low-rank terms: u = x A^T [T, rank] (few rows: a copy per thread, lora_u_stride_ floats
    // apart), each starting a cache line (threads write them)
    std::unique_ptr<uint8_t[], FreeDeleter> lora_scratch_;
    size_t lora_scratch_bytes_ = 0;
    float* lora_u_ = nullptr;
    int64_t lora_u_stride_ = 0;
    std::unique_ptr<uint8_t[], FreeDeleter> prep_;  // a prompt's prepared activations (Kernels::prepare)
    size_t prep_bytes_ = 0;
    std::vector<int64_t> row_seq_, row_pos_;  // sequence index and position of each row
    std::vector<int64_t> last_rows_;          // rows whose logits are asked for
    std::vector<std::pair<int64_t, int64_t>> att_blocks_;  // attention: (first row, rows)
};

}  // namespace pygpt
