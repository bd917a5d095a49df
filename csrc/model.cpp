// GPT-2 forward pass over a ragged batch of sequences, each with its own KV cache.
//
// B = sequences in the call, T = new tokens over all of them (rows), C = n_embd,
// NH = n_head, HS = C / NH, V = vocab_size. Every row is one token of one sequence at that
// sequence's own position: there is no padding.
#include "model.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <map>
#include <new>
#include <numeric>
#include <set>

#include "errors.h"
#include "threads.h"

namespace pygpt {

// Output columns are split among threads in units of 16 floats (one cache line); c_attn's
// in whole heads too (qkv_unit in forward_team), so that append_kv quantizes whole heads.
constexpr int64_t kColumnUnit = 16;

// ----------------------------------------------------------------------------
// KV cache

const char* kv_type_name(KVType t) { return t == KVType::F32 ? "f32" : t == KVType::F16 ? "f16" : "int8"; }

bool kv_type_from_name(const std::string& name, KVType* out) {
    for (KVType t : {KVType::F32, KVType::F16, KVType::Int8})
        if (name == kv_type_name(t)) {
            *out = t;
            return true;
        }
    return false;
}

// n bytes, 64-byte aligned, uninitialised
static uint8_t* cache_lines(int64_t n) {
    auto* p = static_cast<uint8_t*>(std::aligned_alloc(64, (n + 63) / 64 * 64));
    if (!p) throw std::bad_alloc();
    return p;
}

KVCache::KVCache(int64_t n_layer_, int64_t n_head_, int64_t n_ctx_, int64_t head_dim_, KVType type_)
    : n_layer(n_layer_), n_head(n_head_), n_ctx(n_ctx_), head_dim(head_dim_), type(type_),
      k(cache_lines(n_layer_ * n_head_ * n_ctx_ * head_dim_ * elem_bytes())),
      v(cache_lines(n_layer_ * n_head_ * n_ctx_ * head_dim_ * elem_bytes())) {
    if (type == KVType::Int8) {
        k_scale.reset(new float[n_layer * n_head * n_ctx]);
        v_scale.reset(new float[n_layer * n_head * n_ctx]);
    }
}

void KVCache::copy_from(const KVCache& o, int64_t from, int64_t to) {
    if (o.n_layer != n_layer || o.n_head != n_head || o.n_ctx != n_ctx || o.head_dim != head_dim || o.type != type)
        throw std::invalid_argument("KV caches of different models");
    if (to < 0) to = o.pos;
    if (from < 0 || from > std::min(pos, to) || to > o.pos) throw std::invalid_argument("KV cache copy of bad positions");
    const int64_t n = to - from;
    for (int64_t l = 0; l < n_layer; l++)
        for (int64_t h = 0; h < n_head; h++) {
            std::memcpy(k_at(l, h, from), o.k_at(l, h, from), n * head_dim * elem_bytes());
            std::memcpy(v_at(l, h, from), o.v_at(l, h, from), n * head_dim * elem_bytes());
            if (type == KVType::Int8) {
                std::memcpy(k_scale_at(l, h, from), o.k_scale_at(l, h, from), n * sizeof(float));
                std::memcpy(v_scale_at(l, h, from), o.v_scale_at(l, h, from), n * sizeof(float));
            }
        }
    pos = to;
}

// ----------------------------------------------------------------------------
// Loading: tensors are views into the mapped file

namespace {

size_t dtype_size(const std::string& dt) {
    if (dt == "F32") return 4;
    if (dt == "F16" || dt == "BF16") return 2;
    if (dt == "I8" || dt == "U8") return 1;
    throw FormatError("unsupported tensor dtype " + dt);
}

class TensorTable {
public:
    TensorTable(const MappedFile& file, const std::vector<TensorInfo>& tensors,
                std::vector<std::vector<uint8_t>>& copies, size_t& copied_bytes)
        : file_(file), copies_(copies), copied_bytes_(copied_bytes) {
        // Python validated the header; check again against the real mapping, so nothing
        // here can ever read outside the file.
        std::vector<std::pair<int64_t, int64_t>> ranges;
        for (const auto& t : tensors) {
            if (t.begin < 8 || t.end < t.begin || (uint64_t)t.end > file.size())
                throw FormatError("tensor '" + t.name + "': data offsets outside the file");
            int64_t n = 1;
            for (int64_t d : t.shape) {
                if (d < 0 || (d > 0 && n > INT64_MAX / d)) throw FormatError("tensor '" + t.name + "': bad shape");
                n *= d;
            }
            if ((uint64_t)n > (uint64_t)INT64_MAX / dtype_size(t.dtype) ||
                (int64_t)(n * dtype_size(t.dtype)) != t.end - t.begin)
                throw FormatError("tensor '" + t.name + "': byte size does not match its shape and dtype");
            if (!by_name_.emplace(t.name, t).second) throw FormatError("duplicate tensor '" + t.name + "'");
            ranges.push_back({t.begin, t.end});
        }
        std::sort(ranges.begin(), ranges.end());
        for (size_t i = 1; i < ranges.size(); i++)
            if (ranges[i].first < ranges[i - 1].second) throw FormatError("tensor data ranges overlap");
    }

    // The tensor's data, checked for dtype and shape; copied to aligned memory if the file
    // placed it at an address its element type cannot be read from.
    const void* get(const std::string& name, const std::string& dtype, std::vector<int64_t> shape) {
        auto it = by_name_.find(name);
        if (it == by_name_.end()) throw FormatError("missing tensor '" + name + "'");
        const TensorInfo& t = it->second;
        if (t.dtype != dtype)
            throw FormatError("tensor '" + name + "': dtype " + t.dtype + ", expected " + dtype);
        if (t.shape != shape) throw FormatError("tensor '" + name + "': shape does not match config.json");
        used_.insert(name);
        const uint8_t* p = file_.data() + t.begin;
        const size_t align = dtype_size(dtype);
        if (reinterpret_cast<uintptr_t>(p) % align == 0) return p;
        copies_.emplace_back(p, p + (t.end - t.begin));  // vector storage is malloc-aligned
        copied_bytes_ += t.end - t.begin;
        return copies_.back().data();
    }
    const float* f32(const std::string& name, std::vector<int64_t> shape) {
        return static_cast<const float*>(get(name, "F32", std::move(shape)));
    }
    bool has(const std::string& name) const { return by_name_.count(name) != 0; }

    void check_all_used() const {
        for (const auto& kv : by_name_)
            if (!used_.count(kv.first)) throw FormatError("unexpected tensor '" + kv.first + "'");
    }

private:
    const MappedFile& file_;
    std::vector<std::vector<uint8_t>>& copies_;
    size_t& copied_bytes_;
    std::map<std::string, TensorInfo> by_name_;
    std::set<std::string> used_;
};

Matrix load_matrix(TensorTable& tt, const std::string& name, const ModelConfig& cfg, int64_t n_out, int64_t n_in) {
    Matrix m;
    m.dtype = cfg.dtype;
    m.n_out = n_out;
    m.n_in = n_in;
    if (cfg.dtype == DType::Q8 || cfg.dtype == DType::Q4) {
        // group 0: one scale per row; else a multiple of 64 dividing n_in (the kernels step 64
        // inputs), or 32 (half a block) where n_in is a multiple of 64
        const int64_t group = cfg.group == 0 ? n_in : cfg.group;
        if (!quant_group_fits(group, n_in))
            throw FormatError("tensor '" + name + "': quant_group_size " + std::to_string(cfg.group) +
                              " must be 0 (per row), a multiple of 64 dividing its " + std::to_string(n_in) +
                              " inputs, or 32 where they are a multiple of 64");
        m.group = group;
        const StoredShape s = stored_shape(cfg.dtype, n_out, n_in, group);
        m.data = tt.get(name, storage_dtype(cfg.dtype), {s.data_rows, s.data_cols});
        m.scales = tt.f32(name + "_scales", {s.scale_rows, s.scale_cols});
    } else {
        m.data = tt.get(name, storage_dtype(cfg.dtype), {n_out, n_in});
    }
    return m;
}

}  // namespace

Model::Model(const std::string& path, const ModelConfig& cfg, const std::vector<TensorInfo>& tensors, int n_threads,
             const std::string& isa, KVType kv_type)
    : config_(cfg), kernels_(&select_kernels(isa.c_str())), n_threads_(n_threads), kv_type_(kv_type) {
    const int64_t C = cfg.n_embd, L = cfg.n_layer, V = cfg.vocab_size;
    if (C <= 0 || L <= 0 || V <= 0 || cfg.n_ctx <= 0 || cfg.n_head <= 0 || C % cfg.n_head != 0)
        throw FormatError("invalid model dimensions");
    if (n_threads_ < 1) throw std::invalid_argument("n_threads must be >= 1");
    file_ = std::make_unique<MappedFile>(path);

    TensorTable tt(*file_, tensors, copies_, copied_bytes_);
    auto layer_norm = [&](const std::string& name) {
        LayerNorm ln;
        ln.w = tt.f32(name + ".weight", {C});
        if (cfg.bias) ln.b = tt.f32(name + ".bias", {C});
        return ln;
    };
    auto linear = [&](const std::string& name, int64_t n_out, int64_t n_in) {
        Linear lin;
        lin.w = load_matrix(tt, name + ".weight", cfg, n_out, n_in);
        if (cfg.bias) lin.b = tt.f32(name + ".bias", {n_out});
        return lin;
    };

    w_.wte = load_matrix(tt, "wte.weight", cfg, V, C);
    w_.wpe = tt.f32("wpe.weight", {cfg.n_ctx, C});
    for (int64_t l = 0; l < L; l++) {
        const std::string p = "h." + std::to_string(l) + ".";
        Block b;
        b.ln_1 = layer_norm(p + "ln_1");
        b.c_attn = linear(p + "attn.c_attn", 3 * C, C);
        b.attn_proj = linear(p + "attn.c_proj", C, C);
        b.ln_2 = layer_norm(p + "ln_2");
        b.c_fc = linear(p + "mlp.c_fc", 4 * C, C);
        b.mlp_proj = linear(p + "mlp.c_proj", C, 4 * C);
        w_.h.push_back(b);
    }
    w_.ln_f = layer_norm("ln_f");
    w_.lm_head.w = cfg.tie_word_embeddings ? w_.wte : load_matrix(tt, "lm_head.weight", cfg, V, C);
    tt.check_all_used();
}

std::unique_ptr<KVCache> Model::new_cache(int64_t positions) const {
    if (positions < 0 || positions > config_.n_ctx) throw std::invalid_argument("new_cache: positions out of range");
    return std::make_unique<KVCache>(config_.n_layer, config_.n_head, positions ? positions : config_.n_ctx,
                                     config_.n_embd / config_.n_head, kv_type_);
}

int64_t Model::logit_rows(const std::vector<SeqStep>& steps) {
    int64_t rows = 0;
    for (const auto& s : steps) rows += s.all_logits ? s.n_tokens : 1;
    return rows;
}

// ----------------------------------------------------------------------------
// Low-rank terms: LoRA adapters applied at load time (pygpt/lora.py builds A and B)

void Model::set_lora(const std::string& name, const float* a, int64_t a_rows, int64_t a_cols, const float* b,
                     int64_t b_rows, int64_t b_cols) {
    std::lock_guard<std::mutex> lock(mutex_);
    if (ran_) throw std::invalid_argument("set_lora: adapters are set at load, before the first forward pass");
    // the term's place and its [n_out, n_in]: a linear layer's; the LM head's (the logits alone,
    // tied or not, as peft's forward adapts them); an embedding's [C, rows] (its row i is x = e_i)
    const int64_t C = config_.n_embd;
    LowRank* lr = nullptr;
    int64_t n_out = 0, n_in = 0;
    auto place = [&](LowRank& target, int64_t out, int64_t in) { lr = &target, n_out = out, n_in = in; };
    if (name == "lm_head") place(w_.lm_head.lora, config_.vocab_size, C);
    else if (name == "wte") place(w_.wte_lora, C, config_.vocab_size);
    else if (name == "wpe") place(w_.wpe_lora, C, config_.n_ctx);
    for (int64_t l = 0; l < config_.n_layer && !lr; l++) {
        const std::string p = "h." + std::to_string(l) + ".";
        const std::array<Linear*, 4> layers = w_.h[l].linears();
        for (size_t i = 0; i < layers.size(); i++)
            if (name == p + Block::kLinearNames[i]) place(layers[i]->lora, layers[i]->w.n_out, layers[i]->w.n_in);
    }
    if (!lr)
        throw std::invalid_argument("set_lora: '" + name + "' is not a layer of this model that takes a LoRA "
                                    "(h.N.attn.c_attn, h.N.attn.c_proj, h.N.mlp.c_fc or h.N.mlp.c_proj, N < " +
                                    std::to_string(config_.n_layer) + "; lm_head, wte, wpe)");
    if (lr->rank) throw std::invalid_argument("set_lora: '" + name + "' has its low-rank term already");
    if (a_rows < 1 || a_cols != n_in || b_rows != n_out || b_cols != a_rows)
        throw std::invalid_argument("set_lora: '" + name + "': A [" + std::to_string(a_rows) + ", " +
                                    std::to_string(a_cols) + "] and B [" + std::to_string(b_rows) + ", " +
                                    std::to_string(b_cols) + "] are not [rank, n_in] and [n_out, rank] of the layer's "
                                    "[n_out, n_in] = [" + std::to_string(n_out) + ", " + std::to_string(n_in) +
                                    "], rank >= 1");
    const int64_t rank = a_rows;
    auto finite = [](const float* p, int64_t n) {
        return std::all_of(p, p + n, [](float v) { return std::isfinite(v); });
    };
    if (!finite(a, rank * n_in) || !finite(b, n_out * rank))
        throw std::invalid_argument("set_lora: '" + name + "': A or B holds NaN or infinity");
    lr->at.resize(n_in * rank);
    for (int64_t j = 0; j < rank; j++)
        for (int64_t i = 0; i < n_in; i++) lr->at[i * rank + j] = a[j * n_in + i];
    lr->bt.resize(rank * n_out);
    for (int64_t o = 0; o < n_out; o++)
        for (int64_t j = 0; j < rank; j++) lr->bt[j * n_out + o] = b[o * rank + j];
    lr->rank = rank;
    max_lora_rank_ = std::max(max_lora_rank_, rank);
}

size_t Model::lora_bytes() const {
    size_t n = 0;
    for (const LowRank* lr : {&w_.lm_head.lora, &w_.wte_lora, &w_.wpe_lora}) n += (lr->at.size() + lr->bt.size()) * sizeof(float);
    for (const Block& blk : w_.h)
        for (const Linear* lin : blk.linears()) n += (lin->lora.at.size() + lin->lora.bt.size()) * sizeof(float);
    return n;
}

// u = x A^T, rows [r0, r1) ([T, rank]; x [T, n_in]).
void Model::low_rank_down(const Linear& lin, const float* x, int64_t r0, int64_t r1, float* u) const {
    const LowRank& lr = lin.lora;
    std::fill(u + r0 * lr.rank, u + r1 * lr.rank, 0.0f);
    kernels_->add_product(u + r0 * lr.rank, x + r0 * lin.w.n_in, lr.at.data(), lin.w.n_in, lr.rank, r1 - r0, 0,
                          lr.rank);
}

// y += u B^T, columns [c0, c1) of every row (u [T, rank], y [T, n_out]).
void Model::low_rank_up(const Linear& lin, const float* u, int64_t T, float* y, int64_t c0, int64_t c1) const {
    const LowRank& lr = lin.lora;
    kernels_->add_product(y, u, lr.bt.data(), lr.rank, lin.w.n_out, T, c0, c1);
}

// ----------------------------------------------------------------------------
// Forward pass
//
// One team of threads (threads.h) runs the whole pass. The matrix products, attention and
// the LM head split their work among the threads and end at a barrier (team.sync) before a
// step reads what other threads wrote. The row-wise steps (embedding, residual adds, layer
// norms) are cheap: in a decode step (few rows) every thread does all of them on its own
// copy of the residual stream, which saves two barriers per layer; for a prompt the rows are
// split among the threads, which share one copy, and a barrier follows.
// A thread's share never changes a value: each output is computed the same way whatever
// the thread count, so logits are bitwise identical for any n_threads.

// Rows up to which every thread keeps its own copy of the residual stream.
constexpr int64_t kMaxOwnCopyRows = 16;

// Chunks of columns per thread in a prompt's products: enough that a slowed thread's lag is
// taken up by the others, few enough that a chunk is long against claiming it.
constexpr int64_t kChunksPerThread = 8;

void Model::forward(const std::vector<SeqStep>& steps, float* logits, float* hidden) {
    std::lock_guard<std::mutex> lock(mutex_);
    const ModelConfig& cfg = config_;
    const int64_t C = cfg.n_embd, V = cfg.vocab_size;

    // which sequence and position each row is
    int64_t T = 0;
    std::set<const KVCache*> caches;
    for (const auto& s : steps) {
        if (!s.cache || s.n_tokens < 1) throw std::invalid_argument("forward: each sequence needs at least one token");
        if (s.cache->n_ctx > cfg.n_ctx || s.cache->n_head != cfg.n_head || s.cache->head_dim != C / cfg.n_head ||
            s.cache->n_layer != cfg.n_layer)
            throw std::invalid_argument("forward: KV cache belongs to another model");
        if (!caches.insert(s.cache).second) throw std::invalid_argument("forward: a KV cache appears twice");
        if (s.cache->pos + s.n_tokens > s.cache->n_ctx)
            throw std::invalid_argument("sequence of " + std::to_string(s.cache->pos + s.n_tokens) +
                                        " tokens is longer than " +
                                        (s.cache->n_ctx == cfg.n_ctx ? "n_ctx = " + std::to_string(cfg.n_ctx)
                                         : "its KV cache's " + std::to_string(s.cache->n_ctx) + " positions"));
        for (int64_t i = 0; i < s.n_tokens; i++)
            if (s.tokens[i] < 0 || s.tokens[i] >= V)
                throw std::invalid_argument("token id " + std::to_string(s.tokens[i]) + " out of range [0, " +
                                            std::to_string(V) + ")");
        T += s.n_tokens;
    }
    if (T == 0) return;
    ran_ = true;
    row_seq_.resize(T);
    row_pos_.resize(T);
    for (int64_t si = 0, r = 0; si < (int64_t)steps.size(); si++)
        for (int64_t i = 0; i < steps[si].n_tokens; i++, r++) {
            row_seq_[r] = si;
            row_pos_[r] = steps[si].cache->pos + i;
        }
    // rows whose logits are asked for
    last_rows_.clear();
    for (int64_t si = 0, r = 0; si < (int64_t)steps.size(); si++)
        for (int64_t i = 0; i < steps[si].n_tokens; i++, r++)
            if (steps[si].all_logits || i == steps[si].n_tokens - 1) last_rows_.push_back(r);

    const int64_t copies = T <= kMaxOwnCopyRows ? n_threads_ : 1;
    x_.resize(copies * T * C);   // residual stream
    xn_.resize(copies * T * C);  // layer-norm output
    qkv_.resize(T * 3 * C);
    att_.resize(T * C);
    proj_.resize(T * C);             // output of a sublayer's projection
    fc_.resize(T * 4 * C);
    if (max_lora_rank_ > 0) {
        lora_u_stride_ = (T * max_lora_rank_ + 15) / 16 * 16;
        const size_t bytes = copies * lora_u_stride_ * sizeof(float);
        if (bytes > lora_scratch_bytes_) {
            lora_scratch_.reset(cache_lines((int64_t)bytes));
            lora_scratch_bytes_ = bytes;
        }
        lora_u_ = reinterpret_cast<float*>(lora_scratch_.get());
    }
    last_.resize(copies * last_rows_.size() * C);
    scores_.resize((size_t)n_threads_ * kAttentionRows * (cfg.n_ctx + kAttentionRows));
    att_blocks_.clear();  // attention: runs of up to kAttentionRows rows of one sequence
    for (int64_t si = 0, r = 0; si < (int64_t)steps.size(); r += steps[si].n_tokens, si++)
        for (int64_t i = 0; i < steps[si].n_tokens; i += kAttentionRows)
            att_blocks_.emplace_back(r + i, std::min<int64_t>(kAttentionRows, steps[si].n_tokens - i));
    if (copies == 1) {  // a prompt: activations prepared once for all threads (linear)
        size_t bytes = 0;
        for (const Block& b : w_.h)
            for (const Linear* lin : b.linears()) bytes = std::max(bytes, kernels_->prepared_bytes(lin->w, T));
        if (bytes > prep_bytes_) {
            prep_.reset(static_cast<uint8_t*>(std::aligned_alloc(64, (bytes + 63) / 64 * 64)));
            if (!prep_) throw std::bad_alloc();
            prep_bytes_ = bytes;
        }
    }

    run_team(n_threads_, [&](const Team& team) { forward_team(team, steps, T, logits, hidden); });
    for (const auto& s : steps) s.cache->pos += s.n_tokens;
}

void Model::forward_team(const Team& team, const std::vector<SeqStep>& steps, int64_t T, float* logits,
                         float* hidden) {
    const ModelConfig& cfg = config_;
    const Kernels& k = *kernels_;
    const int64_t C = cfg.n_embd, R = (int64_t)last_rows_.size();
    const bool own_copy = T <= kMaxOwnCopyRows;
    const int64_t copy = own_copy ? team.id : 0;
    float* x = x_.data() + copy * T * C;        // this thread's copy, or the shared one
    float* xn = xn_.data() + copy * T * C;
    float* last = last_.data() + copy * R * C;
    float* qkv = qkv_.data();                   // shared: each thread writes its columns
    float* att = att_.data();
    float* proj = proj_.data();
    float* fc = fc_.data();
    int64_t r0 = 0, r1 = T;                     // the rows of the row-wise steps
    if (!own_copy) team.split(T, k.prepare_rows, &r0, &r1);
    auto rows_done = [&] {
        if (!own_copy) team.sync();
    };
    const int64_t qkv_unit = std::lcm(kColumnUnit, C / cfg.n_head);  // c_attn: whole heads too
    auto no_epilogue = [](int64_t, int64_t) {};

    // x = wte[token] + wpe[position], each with its LoRA's row: += A^T[i] B^T
    auto add_lora_row = [&](const LowRank& lr, int64_t i, float* row) {
        if (lr.rank) k.add_product(row, lr.at.data() + i * lr.rank, lr.bt.data(), lr.rank, C, 1, 0, C);
    };
    for (int64_t r = r0; r < r1; r++) {
        const SeqStep& s = steps[row_seq_[r]];
        const int32_t token = s.tokens[row_pos_[r] - s.cache->pos];
        k.matrix_row(w_.wte, token, x + r * C);
        k.add(x + r * C, w_.wpe + row_pos_[r] * C, C);
        add_lora_row(w_.wte_lora, token, x + r * C);
        add_lora_row(w_.wpe_lora, row_pos_[r], x + r * C);
    }

    for (int64_t l = 0; l < cfg.n_layer; l++) {
        const Block& b = w_.h[l];

        // x = x + attn(ln_1(x))
        layernorm_rows(b.ln_1, x, r0, r1, xn);
        linear(team, b.c_attn, xn, T, qkv, r0, r1, [&](int64_t c0, int64_t c1) {  // [T, 3C]: q | k | v
            append_kv(steps, l, qkv, T, c0, c1);  // these columns of k, v to the caches
        }, qkv_unit);
        team.sync();
        attention(team, steps, l, qkv, att);          // [T, C]
        team.sync();
        linear(team, b.attn_proj, att, T, proj, r0, r1, no_epilogue, kColumnUnit);
        team.sync();
        k.add(x + r0 * C, proj + r0 * C, (r1 - r0) * C);

        // x = x + mlp(ln_2(x))
        layernorm_rows(b.ln_2, x, r0, r1, xn);
        linear(team, b.c_fc, xn, T, fc, r0, r1, [&](int64_t c0, int64_t c1) {  // [T, 4C], then GELU
            for (int64_t r = 0; r < T; r++) {
                if (cfg.activation == Activation::GeluTanh) k.gelu_tanh(fc + r * 4 * C + c0, c1 - c0);
                else k.gelu_erf(fc + r * 4 * C + c0, c1 - c0);
            }
        }, kColumnUnit);
        team.sync();
        linear(team, b.mlp_proj, fc, T, proj, r0, r1, no_epilogue, kColumnUnit);
        team.sync();
        k.add(x + r0 * C, proj + r0 * C, (r1 - r0) * C);
    }

    // logits = ln_f(x) @ lm_head^T (wte, tied), only for the rows asked for
    int64_t i0 = 0, i1 = R;
    if (!own_copy) {
        team.sync();  // the rows asked for may be other threads'
        team.split(R, 1, &i0, &i1);
    }
    for (int64_t i = i0; i < i1; i++)
        k.layernorm(last + i * C, x + last_rows_[i] * C, w_.ln_f.w, w_.ln_f.b, C, cfg.layer_norm_epsilon);
    if (hidden && (!own_copy || team.id == 0))  // own copies: every thread has all R rows
        std::copy(last + i0 * C, last + i1 * C, hidden + i0 * C);
    if (!logits) return;
    const Linear& head = w_.lm_head;
    float* u = lora_u_ + (own_copy ? team.id * lora_u_stride_ : 0);  // a LoRA's x A^T: this thread's rows
    if (head.lora.rank) low_rank_down(head, last, i0, i1, u);
    rows_done();
    int64_t o0, o1;
    team.split(cfg.vocab_size, kColumnUnit, &o0, &o1);
    k.linear(head.w, nullptr, last, R, logits, o0, o1);
    if (head.lora.rank) low_rank_up(head, u, R, logits, o0, o1);
}

// y = x W^T + b (+ (x A^T) B^T with a low-rank term), this thread's part; epilogue(c0, c1)
// runs on each range of columns it wrote, once they are whole.
//   Few rows (each thread has its own copy of x): a static share of the columns, the
//   activations prepared by each thread for itself inside the kernel; a low-rank term's
//   u = x A^T, which every column needs, computed by each thread for itself.
//   A prompt: the threads prepare the activations once, each its rows [r0, r1) (and those
//   rows of u), then claim chunks of columns as they go (Team::next_chunk), so a thread
//   slowed by the OS or the host does fewer of them.
// Columns are split in multiples of `unit`. Every value is the kernels' for its row and
// column alone (kernels.h), whichever thread computes it.
template <class Epilogue>
void Model::linear(const Team& team, const Linear& lin, const float* x, int64_t T, float* y, int64_t r0, int64_t r1,
                   Epilogue&& epilogue, int64_t unit) {
    const Kernels& k = *kernels_;
    const int64_t n_out = lin.w.n_out;
    const bool low_rank = lin.lora.rank > 0;
    if (T <= kMaxOwnCopyRows) {
        int64_t o0, o1;
        team.split(n_out, unit, &o0, &o1);
        k.linear(lin.w, lin.b, x, T, y, o0, o1);
        if (low_rank && o0 < o1) {
            float* u = lora_u_ + team.id * lora_u_stride_;  // this thread's own
            low_rank_down(lin, x, 0, T, u);
            low_rank_up(lin, u, T, y, o0, o1);
        }
        epilogue(o0, o1);
        return;
    }
    float* u = lora_u_;  // shared: each thread computes its rows
    if (low_rank) low_rank_down(lin, x, r0, r1, u);
    k.prepare(lin.w, x, T, r0, r1, prep_.get());
    team.sync();
    const int64_t units = (n_out + unit - 1) / unit;
    const int64_t chunk = team.n == 1 ? n_out : std::max<int64_t>(1, units / (team.n * kChunksPerThread)) * unit;
    int64_t c0, c1;
    while (team.next_chunk(n_out, chunk, &c0, &c1)) {
        k.linear_prepared(lin.w, lin.b, prep_.get(), T, y, c0, c1);
        if (low_rank) low_rank_up(lin, u, T, y, c0, c1);
        epilogue(c0, c1);
    }
}

void Model::layernorm_rows(const LayerNorm& ln, const float* x, int64_t r0, int64_t r1, float* out) const {
    const int64_t C = config_.n_embd;
    for (int64_t r = r0; r < r1; r++)
        kernels_->layernorm(out + r * C, x + r * C, ln.w, ln.b, C, config_.layer_norm_epsilon);
}

// Columns [o0, o1) of qkv that are keys or values, copied to each row's sequence cache
// (int8 caches: quantized head by head; c_attn's columns are split in whole heads).
void Model::append_kv(const std::vector<SeqStep>& steps, int64_t l, const float* qkv, int64_t T, int64_t o0,
                      int64_t o1) {
    const int64_t C = config_.n_embd, HS = C / config_.n_head;
    for (int64_t part = 1; part <= 2; part++) {  // 1: keys, 2: values
        const int64_t c0 = std::max(o0, part * C) - part * C, c1 = std::min(o1, (part + 1) * C) - part * C;
        for (int64_t r = 0; r < T && c0 < c1; r++) {
            KVCache* cache = steps[row_seq_[r]].cache;
            const int64_t t = row_pos_[r];
            const float* src = qkv + r * 3 * C + part * C;
            for (int64_t c = c0; c < c1;) {  // the pieces of [c0, c1) within one head
                const int64_t h = c / HS, d = c % HS, n = std::min(c1 - c, HS - d);
                uint8_t* dst = part == 1 ? cache->k_at(l, h, t) : cache->v_at(l, h, t);
                switch (cache->type) {
                    case KVType::F32: std::memcpy((float*)dst + d, src + c, n * sizeof(float)); break;
                    case KVType::F16: kernels_->to_f16(src + c, (uint16_t*)dst + d, n); break;
                    case KVType::Int8:
                        if (d != 0 || n != HS) throw std::logic_error("append_kv: part of a head");
                        *(part == 1 ? cache->k_scale_at(l, h, t) : cache->v_scale_at(l, h, t)) =
                            kernels_->quantize_kv(src + c, (int8_t*)dst, HS);
                        break;
                }
                if (t + 1 < cache->n_ctx) {  // the same piece of the next position, owned (for
                    // writing) long before the next step writes it there, instead of waiting then
                    const int64_t e = cache->elem_bytes();
                    for (int64_t b = 0; b < n * e; b += 64) __builtin_prefetch(dst + (HS + d) * e + b, 1, 2);
                }
                c += n;
            }
        }
    }
}

// Causal self-attention of every row against its own sequence's cache, head by head.
// Attention is the only layer that mixes information across positions. A prompt's rows go
// in blocks of up to kAttentionRows consecutive positions, which share the reads of the
// keys and values (Kernels::attention_rows); (block, head) pairs are dealt to threads in
// turn, so long and short rows of a prompt spread evenly. A thread's single rows (decode
// steps) go kAttentionHeads at a time through Kernels::attention_heads, which reads their
// caches in step; each row's result is the same whichever rows share its call.
static_assert(kAttentionHeads <= kAttentionRows, "scratch holds kAttentionRows rows of scores");

// The factor of layer l's attention scores q.k: 1/sqrt(head_dim), as GPT-2 has it, unless the
// config says otherwise (ModelConfig).
float Model::attention_scale(int64_t l) const {
    const int64_t HS = config_.n_embd / config_.n_head;
    float scale = config_.scale_attn_weights ? 1.0f / std::sqrt((float)HS) : 1.0f;
    if (config_.scale_attn_by_inverse_layer_idx) scale /= float(l + 1);
    return scale;
}

void Model::attention(const Team& team, const std::vector<SeqStep>& steps, int64_t l, const float* qkv, float* out) {
    const int64_t C = config_.n_embd, NH = config_.n_head, HS = C / NH;
    const float scale = attention_scale(l);
    float* scratch = scores_.data() + (size_t)team.id * kAttentionRows * (config_.n_ctx + kAttentionRows);
    AttentionHead heads[kAttentionHeads];
    int n_heads = 0;
    KVType heads_type = KVType::F32;
    auto run_heads = [&] {
        switch (heads_type) {
            case KVType::F32: kernels_->attention_heads(heads, n_heads, HS, HS, scale, scratch); break;
            case KVType::F16: kernels_->attention_heads_f16(heads, n_heads, HS, HS, scale, scratch); break;
            case KVType::Int8: kernels_->attention_heads_int8(heads, n_heads, HS, HS, scale, scratch); break;
        }
        n_heads = 0;
    };
    const int64_t n_items = (int64_t)att_blocks_.size() * NH;
    for (int64_t i = team.id; i < n_items; i += team.n) {
        const int64_t r = att_blocks_[i / NH].first, n_rows = att_blocks_[i / NH].second, h = i % NH;
        const KVCache* cache = steps[row_seq_[r]].cache;
        float* o = out + r * C + h * HS;
        const float* q = qkv + r * 3 * C + h * HS;
        const int64_t n_keys = row_pos_[r] + 1;
        if (n_rows == 1) {
            if (n_heads > 0 && cache->type != heads_type) run_heads();
            heads_type = cache->type;
            const bool int8 = cache->type == KVType::Int8;
            heads[n_heads++] = {o, q, cache->k_at(l, h, 0), cache->v_at(l, h, 0),
                                int8 ? cache->k_scale_at(l, h, 0) : nullptr,
                                int8 ? cache->v_scale_at(l, h, 0) : nullptr, n_keys};
            if (n_heads == kAttentionHeads) run_heads();
            continue;
        }
        switch (cache->type) {
            case KVType::F32:
                kernels_->attention_rows(o, C, q, 3 * C, n_rows, (const float*)cache->k_at(l, h, 0),
                                         (const float*)cache->v_at(l, h, 0), HS, n_keys, HS, scale, scratch);
                break;
            case KVType::F16:
                kernels_->attention_rows_f16(o, C, q, 3 * C, n_rows, (const uint16_t*)cache->k_at(l, h, 0),
                                             (const uint16_t*)cache->v_at(l, h, 0), HS, n_keys, HS, scale, scratch);
                break;
            case KVType::Int8:
                kernels_->attention_rows_int8(o, C, q, 3 * C, n_rows, (const int8_t*)cache->k_at(l, h, 0),
                                              (const int8_t*)cache->v_at(l, h, 0), cache->k_scale_at(l, h, 0),
                                              cache->v_scale_at(l, h, 0), HS, n_keys, HS, scale, scratch);
                break;
        }
    }
    if (n_heads > 0) run_heads();
}

}  // namespace pygpt
