// Fused sparse-convolution kernels for the CPU (issue 12): products summed in registers straight from the
// input rows, with no gathered block, no per-offset GEMM and no scatter.
//
// A convolution's pairs (output row i, kernel offset k, input row j) come by offset, built once per map by
// spice/sparse/kernel_map.py (PairLists): k_ptr (K + 1), k_i (P), k_j (P) -- the pairs of offset k, rows
// ascending; each output row has at most one pair per offset.
//
//   offset_mm:  out[i] = sum over i's pairs of src[j] @ W[k]        (forward, input gradient), in row blocks
//               that stay in cache, offset after offset, PB pairs of an offset sharing each load of W[k]
//   pick_mm:    out[i] = src[cell_i / K] @ W[cell_i % K]             (one pair per row, or a zero row)
//   offset_tmm: dW[k]  = sum over k's pairs of src[j]^T other[i]     (weight gradient)
//
// Shapes: src (n_src, Cin), W (K, Cin, Cout), other and out (n, Cout), all contiguous, any Cout: its columns go
// in tiles of whole vectors (`vector_bytes`: 64 where the compiler targets AVX-512, else 32), and the columns
// past the last whole vector (Cout mod the vector's elements) in one tile of single elements. Every sum runs in a
// fixed order (offsets ascending for a row, pairs ascending for dW, channels ascending) and each output
// element is written by one thread, so results do not depend on the number of threads. Vectors are GCC
// vector extensions (-march=native).
#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <utility>

namespace {

#ifdef __AVX512F__
constexpr int VECTOR_BYTES = 64;
#else
constexpr int VECTOR_BYTES = 32;
#endif

template <typename T>
struct Vec {
  static constexpr int L = VECTOR_BYTES / sizeof(T);
  typedef T type __attribute__((vector_size(VECTOR_BYTES)));
};

template <typename V, typename T>
inline V load(const T* p) {
  V v;
  std::memcpy(&v, p, sizeof(V));
  return v;
}

template <typename V, typename T>
inline void store(T* p, const V& v) {
  std::memcpy(p, &v, sizeof(V));
}

constexpr int MAX_NV = 256 / VECTOR_BYTES;  // vectors per column tile (64 floats, 32 doubles)

// A column tile is NV vectors of type V: V is Vec<T>::type for the tiles of whole vectors, or T itself (one
// element) for the columns past the last whole vector. L is the elements per V.
template <typename T, typename V>
constexpr int lanes() { return static_cast<int>(sizeof(V) / sizeof(T)); }

// out[i, tile] = src[q] @ W[k][:, tile] for the one (q, k) of row i (cell = q*K + k), zero where cell >= n_src*K.
template <typename T, typename V, int NV>
void pick_tile(const T* src, int64_t cin, const int64_t* cell, int64_t kernel, int64_t n_src, const T* w,
               int64_t cout, int64_t col0, T* out, int64_t r0, int64_t r1) {
  constexpr int L = lanes<T, V>();
  const int64_t absent = n_src * kernel;
  for (int64_t i = r0; i < r1; ++i) {
    V acc[NV];
    for (int v = 0; v < NV; ++v) acc[v] = V{};
    const int64_t c_i = cell[i];
    if (c_i < absent) {
      const T* x = src + (c_i / kernel) * cin;
      const T* wk = w + (c_i % kernel) * cin * cout + col0;
      for (int64_t c = 0; c < cin; ++c) {
        const T xc = x[c];
        const T* wr = wk + c * cout;
        for (int v = 0; v < NV; ++v) acc[v] += xc * load<V>(wr + v * L);
      }
    }
    for (int v = 0; v < NV; ++v) store(out + i * cout + col0 + v * L, acc[v]);
  }
}

// dw[c0 : c0 + CB, tile] of one offset += sum over pairs [p0, p1) of src[j_p, c0 : c0 + CB]^T other[i_p, tile].
template <typename T, typename V, int NV, int CB>
void tmm_block(const T* src, int64_t cin, const int32_t* k_i, const int32_t* k_j, int64_t p0, int64_t p1,
               const T* other, int64_t cout, int64_t col0, int64_t c0, T* dw) {
  constexpr int L = lanes<T, V>();
  V acc[CB][NV];
  for (int b = 0; b < CB; ++b)
    for (int v = 0; v < NV; ++v) acc[b][v] = load<V>(dw + (c0 + b) * cout + col0 + v * L);
  for (int64_t p = p0; p < p1; ++p) {
    const T* g = other + static_cast<int64_t>(k_i[p]) * cout + col0;
    const T* x = src + static_cast<int64_t>(k_j[p]) * cin + c0;
    V gv[NV];
    for (int v = 0; v < NV; ++v) gv[v] = load<V>(g + v * L);
    for (int b = 0; b < CB; ++b) {
      const T xb = x[b];
      for (int v = 0; v < NV; ++v) acc[b][v] += xb * gv[v];
    }
  }
  for (int b = 0; b < CB; ++b)
    for (int v = 0; v < NV; ++v) store(dw + (c0 + b) * cout + col0 + v * L, acc[b][v]);
}

// One offset's dw tile over pairs [p0, p1): pairs in chunks whose rows stay in L1 (about 16 KiB of `other`),
// every channel block of a chunk before the next chunk; adds into dw.
template <typename T, typename V, int NV>
void tmm_tile(const T* src, int64_t cin, const int32_t* k_i, const int32_t* k_j, int64_t p0, int64_t p1,
              const T* other, int64_t cout, int64_t col0, T* dw) {
  constexpr int CB = lanes<T, V>() == 1 ? (NV <= 4 ? 4 : 2) : NV == 1 ? 8 : NV == 2 ? 4 : NV <= 4 ? 2 : 1;
  const int64_t chunk = std::max<int64_t>(16, 16384 / static_cast<int64_t>(sizeof(T) * cout));
  for (int64_t a = p0; a < p1; a += chunk) {
    const int64_t b = std::min(p1, a + chunk);
    int64_t c0 = 0;
    for (; c0 + CB <= cin; c0 += CB) tmm_block<T, V, NV, CB>(src, cin, k_i, k_j, a, b, other, cout, col0, c0, dw);
    for (; c0 < cin; ++c0) tmm_block<T, V, NV, 1>(src, cin, k_i, k_j, a, b, other, cout, col0, c0, dw);
  }
}

// Pairs per block of offset_mm: PB pairs share each vector of W[k] loaded, PB * NV accumulators in registers
// (at most 24 of the 32 with AVX-512, 12 of the 16 without; single elements as many as whole vectors).
template <int NV, bool WHOLE>
constexpr int pair_block() {
  return !WHOLE ? (NV <= 3 ? 4 : NV <= 6 ? 2 : 1)
       : VECTOR_BYTES == 64 ? (NV <= 2 ? 8 : NV <= 4 ? 6 : 3) : (NV == 1 ? 8 : NV == 2 ? 6 : NV <= 4 ? 12 / NV : 1);
}

// out[i_p, tile] += src[j_p] @ W[k][:, tile] for pairs [p0, p1) of one offset (each row i_p at most once),
// PB pairs at a time: each channel's W vectors are loaded once for the PB pairs.
template <typename T, typename V, int NV>
void offset_tile(const T* src, int64_t cin, const int32_t* k_i, const int32_t* k_j, int64_t p0, int64_t p1,
                 const T* wk, int64_t cout, int64_t col0, T* out) {
  constexpr int L = lanes<T, V>();
  constexpr int PB = pair_block<NV, (L > 1)>();
  const T* w = wk + col0;
  int64_t p = p0;
  for (; p + PB <= p1; p += PB) {
    const T* x[PB];
    for (int b = 0; b < PB; ++b) x[b] = src + static_cast<int64_t>(k_j[p + b]) * cin;
    V acc[PB][NV];
    for (int b = 0; b < PB; ++b)
      for (int v = 0; v < NV; ++v) acc[b][v] = V{};
    for (int64_t c = 0; c < cin; ++c) {
      V wv[NV];
      for (int v = 0; v < NV; ++v) wv[v] = load<V>(w + c * cout + v * L);
      for (int b = 0; b < PB; ++b) {
        const T xb = x[b][c];
        for (int v = 0; v < NV; ++v) acc[b][v] += xb * wv[v];
      }
    }
    for (int b = 0; b < PB; ++b) {
      T* o = out + static_cast<int64_t>(k_i[p + b]) * cout + col0;
      for (int v = 0; v < NV; ++v) store(o + v * L, load<V>(o + v * L) + acc[b][v]);
    }
  }
  for (; p < p1; ++p) {
    const T* x = src + static_cast<int64_t>(k_j[p]) * cin;
    V acc[NV];
    for (int v = 0; v < NV; ++v) acc[v] = V{};
    for (int64_t c = 0; c < cin; ++c) {
      const T xc = x[c];
      for (int v = 0; v < NV; ++v) acc[v] += xc * load<V>(w + c * cout + v * L);
    }
    T* o = out + static_cast<int64_t>(k_i[p]) * cout + col0;
    for (int v = 0; v < NV; ++v) store(o + v * L, load<V>(o + v * L) + acc[v]);
  }
}

// Calls f(std::integral_constant<int, n>) for n in [LO, HI] (a run-time count as a compile-time constant).
template <int LO, int HI, typename F>
inline void dispatch(int n, F&& f) {
  if constexpr (LO <= HI) {
    if (n == LO) f(std::integral_constant<int, LO>{});
    else dispatch<LO + 1, HI>(n, f);
  }
}

template <typename V>
struct Tag { using type = V; };

// Calls tile(Tag<V>, std::integral_constant<int, NV>, col0) for each column tile of cout: tiles of up to MAX_NV
// whole vectors, then the cout mod L columns past the last whole vector as NV = cout mod L single elements.
template <typename T, typename F>
inline void for_tiles(int64_t cout, F&& tile) {
  constexpr int L = Vec<T>::L;
  const int64_t whole = cout / L * L;
  for (int64_t col0 = 0; col0 < whole; col0 += MAX_NV * L) {
    const int nv = static_cast<int>(std::min<int64_t>(MAX_NV, (whole - col0) / L));
    dispatch<1, MAX_NV>(nv, [&](auto n) { tile(Tag<typename Vec<T>::type>{}, n, col0); });
  }
  if (whole < cout) dispatch<1, L - 1>(static_cast<int>(cout - whole), [&](auto n) { tile(Tag<T>{}, n, whole); });
}

// Runs BODY, which names the tile's vector type VT and its vectors NV, for each column tile of cout (for_tiles).
#define SPICE_TILES(T, cout, BODY)                                                          \
  for_tiles<T>((cout), [&](auto tag_, auto nv_, int64_t col0) {                             \
    using VT = typename decltype(tag_)::type;                                               \
    constexpr int NV = decltype(nv_)::value;                                                \
    BODY;                                                                                   \
  })

void check(const at::Tensor& t, const char* what) {
  TORCH_CHECK(t.device().is_cpu() && t.is_contiguous(), what, " must be a contiguous CPU tensor");
}

int64_t grain(int64_t cin, int64_t cout, int64_t pairs_per_row) {
  return std::max<int64_t>(64, 32768 / std::max<int64_t>(1, cin * cout / 16 * pairs_per_row));
}

}  // namespace

// out (n, Cout): row i is src[cell_i / K] @ W[cell_i % K], or zero where cell_i >= n_src * K.
at::Tensor pick_mm(const at::Tensor& src, const at::Tensor& cell, const at::Tensor& weight) {
  check(src, "src"); check(cell, "cell"); check(weight, "weight");
  const int64_t n = cell.size(0), cin = src.size(1), kernel = weight.size(0), cout = weight.size(2);
  TORCH_CHECK(weight.size(1) == cin && weight.scalar_type() == src.scalar_type(), "pick_mm: weight does not match src");
  auto out = at::empty({n, cout}, src.options());
  AT_DISPATCH_FLOATING_TYPES(src.scalar_type(), "pick_mm", [&] {
    const scalar_t* s = src.data_ptr<scalar_t>();
    const scalar_t* w = weight.data_ptr<scalar_t>();
    scalar_t* o = out.data_ptr<scalar_t>();
    const int64_t* c = cell.data_ptr<int64_t>();
    const int64_t n_src = src.size(0);
    at::parallel_for(0, n, grain(cin, cout, 1), [&](int64_t r0, int64_t r1) {
      SPICE_TILES(scalar_t, cout, (pick_tile<scalar_t, VT, NV>(s, cin, c, kernel, n_src, w, cout, col0, o, r0, r1)));
    });
  });
  return out;
}

// out (n, Cout) = for each row, the sum of src[j] @ W[k] over its pairs, added offset after offset (k ascending).
// Rows of `out` (and of `other`, for dW) are taken in blocks of about ROW_BLOCK_BYTES, which stay in L2.
constexpr int64_t ROW_BLOCK_BYTES = 256 << 10;

// The pairs [p0, p1) of offset k whose output rows lie in [r0, r1): a contiguous run, since k's pairs are in
// ascending row order.
inline std::pair<int64_t, int64_t> block_pairs(const int32_t* k_ptr, const int32_t* k_i, int64_t k, int32_t r0,
                                               int32_t r1) {
  const int32_t* first = k_i + k_ptr[k];
  const int32_t* last = k_i + k_ptr[k + 1];
  return {std::lower_bound(first, last, r0) - k_i, std::lower_bound(first, last, r1) - k_i};
}

// Rows go in blocks whose part of `out` stays in L2 (ROW_BLOCK_BYTES), at least 8 blocks a thread; a block's
// pairs of offset k are a contiguous run of k's pairs (rows ascending), found by binary search. Threads take
// whole row blocks, so each output element is written by one thread, and the blocks do not change any sum.
at::Tensor offset_mm(const at::Tensor& src, const at::Tensor& k_ptr, const at::Tensor& k_i, const at::Tensor& k_j,
                     const at::Tensor& weight, int64_t n) {
  check(src, "src"); check(k_ptr, "k_ptr"); check(k_i, "k_i"); check(k_j, "k_j"); check(weight, "weight");
  const int64_t kernel = k_ptr.size(0) - 1, cin = src.size(1), cout = weight.size(2);
  TORCH_CHECK(weight.size(0) == kernel && weight.size(1) == cin && weight.scalar_type() == src.scalar_type(),
              "offset_mm: weight does not match src");
  auto out = at::zeros({n, cout}, src.options());
  AT_DISPATCH_FLOATING_TYPES(src.scalar_type(), "offset_mm", [&] {
    const scalar_t* s = src.data_ptr<scalar_t>();
    const scalar_t* w = weight.data_ptr<scalar_t>();
    scalar_t* o = out.data_ptr<scalar_t>();
    const int32_t* kp = k_ptr.data_ptr<int32_t>();
    const int32_t* ki = k_i.data_ptr<int32_t>();
    const int32_t* kj = k_j.data_ptr<int32_t>();
    const int64_t fit = ROW_BLOCK_BYTES / static_cast<int64_t>(sizeof(scalar_t) * cout);
    const int64_t share = (n + 8 * at::get_num_threads() - 1) / (8 * at::get_num_threads());  // 8 blocks a thread
    const int64_t rows = std::max<int64_t>(16, std::min(fit, share));
    const int64_t blocks = (n + rows - 1) / rows;
    at::parallel_for(0, blocks, 1, [&](int64_t b0, int64_t b1) {
      for (int64_t blk = b0; blk < b1; ++blk) {
        const int32_t r0 = static_cast<int32_t>(blk * rows), r1 = static_cast<int32_t>(std::min(n, (blk + 1) * rows));
        for (int64_t k = 0; k < kernel; ++k) {
          const auto [p0, p1] = block_pairs(kp, ki, k, r0, r1);
          if (p0 == p1) continue;
          const scalar_t* wk = w + k * cin * cout;
          SPICE_TILES(scalar_t, cout, (offset_tile<scalar_t, VT, NV>(s, cin, ki, kj, p0, p1, wk, cout, col0, o)));
        }
      }
    });
  });
  return out;
}

// dW (K, Cin, Cout): dW[k] = sum over the pairs of offset k of src[j]^T other[i].
// Where TMM_GROUPS partial gradients fit TMM_PARTIAL_BYTES and the rows are many, the rows are split into
// TMM_GROUPS fixed ranges (whatever the number of threads); each range sums its pairs into its own partial dW
// in row blocks whose rows of src and other stay in L2 (all offsets of a block before the next block, so each
// row is read from memory about once rather than once per offset), and the partials are added in range order.
// Otherwise the offsets are split among threads, each offset's pairs summed in order.
constexpr int64_t TMM_GROUPS = 16;
constexpr int64_t TMM_PARTIAL_BYTES = 16 << 20;

at::Tensor offset_tmm(const at::Tensor& src, const at::Tensor& k_ptr, const at::Tensor& k_i, const at::Tensor& k_j,
                      const at::Tensor& other) {
  check(src, "src"); check(k_ptr, "k_ptr"); check(k_i, "k_i"); check(k_j, "k_j"); check(other, "other");
  const int64_t kernel = k_ptr.size(0) - 1, cin = src.size(1), cout = other.size(1), n = other.size(0);
  TORCH_CHECK(other.scalar_type() == src.scalar_type(), "offset_tmm: other does not match src");
  const int64_t size = kernel * cin * cout;
  const int64_t row_block = std::max<int64_t>(16, ROW_BLOCK_BYTES / static_cast<int64_t>(src.element_size() * (cin + cout)));
  const bool grouped = TMM_GROUPS * size * src.element_size() <= TMM_PARTIAL_BYTES && n >= TMM_GROUPS * row_block;
  auto dw = at::zeros({kernel, cin, cout}, src.options());
  auto partial = grouped ? at::zeros({TMM_GROUPS, kernel, cin, cout}, src.options()) : dw;
  AT_DISPATCH_FLOATING_TYPES(src.scalar_type(), "offset_tmm", [&] {
    const scalar_t* s = src.data_ptr<scalar_t>();
    const scalar_t* g = other.data_ptr<scalar_t>();
    scalar_t* d = dw.data_ptr<scalar_t>();
    const int32_t* kp = k_ptr.data_ptr<int32_t>();
    const int32_t* ki = k_i.data_ptr<int32_t>();
    const int32_t* kj = k_j.data_ptr<int32_t>();
    if (!grouped) {
      at::parallel_for(0, kernel, 1, [&](int64_t k0, int64_t k1) {
        for (int64_t k = k0; k < k1; ++k) {
          scalar_t* dk = d + k * cin * cout;
          SPICE_TILES(scalar_t, cout, (tmm_tile<scalar_t, VT, NV>(s, cin, ki, kj, kp[k], kp[k + 1], g, cout, col0, dk)));
        }
      });
      return;
    }
    scalar_t* part = partial.data_ptr<scalar_t>();
    const int64_t span = (n + TMM_GROUPS - 1) / TMM_GROUPS;
    at::parallel_for(0, TMM_GROUPS, 1, [&](int64_t g0, int64_t g1) {
      for (int64_t grp = g0; grp < g1; ++grp) {
        scalar_t* dg = part + grp * size;
        const int64_t end = std::min(n, (grp + 1) * span);
        for (int64_t r = grp * span; r < end; r += row_block) {
          const int32_t r0 = static_cast<int32_t>(r), r1 = static_cast<int32_t>(std::min(end, r + row_block));
          for (int64_t k = 0; k < kernel; ++k) {
            const auto [p0, p1] = block_pairs(kp, ki, k, r0, r1);
            if (p0 == p1) continue;
            scalar_t* dk = dg + k * cin * cout;
            SPICE_TILES(scalar_t, cout, (tmm_tile<scalar_t, VT, NV>(s, cin, ki, kj, p0, p1, g, cout, col0, dk)));
          }
        }
      }
    });
    at::parallel_for(0, size, 4096, [&](int64_t e0, int64_t e1) {
      for (int64_t e = e0; e < e1; ++e) {
        scalar_t sum = part[e];
        for (int64_t grp = 1; grp < TMM_GROUPS; ++grp) sum += part[grp * size + e];
        d[e] = sum;
      }
    });
  });
  return dw;
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("vector_bytes", [] { return VECTOR_BYTES; }, "bytes per vector of these kernels (32 or 64)");
  m.def("offset_mm", &offset_mm, "out[i] = sum over row i's pairs of src[j] @ W[k]");
  m.def("pick_mm", &pick_mm, "out[i] = src[cell_i / K] @ W[cell_i % K]");
  m.def("offset_tmm", &offset_tmm, "dW[k] = sum over offset k's pairs of src[j]^T other[i]");
}
