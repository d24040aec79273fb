// The CPU decoder of packed 4-bit weights: a scalar loop and an AVX2 one (picked at run time),
// bit-identical.
#include "decode4bit.h"

#include <ATen/ATen.h>

#include <algorithm>

#if defined(__GNUC__) && defined(__x86_64__)
#include <immintrin.h>
#endif

namespace peft::quant::detail {
namespace {

// dst[2i], dst[2i + 1] = lut[high nibble of p[i]] * s, lut[low nibble] * s for i < nbytes (scalar);
// kBf16: each product rounded to bfloat16 (kept as float32).
template <bool kBf16>
inline void decode_bytes_scalar(const uint8_t* p, int64_t nbytes, const float* lut, float s,
                                float* dst) {
  for (int64_t i = 0; i < nbytes; ++i) {
    const uint8_t b = p[i];
    const float v0 = lut[b >> 4] * s, v1 = lut[b & 15] * s;
    dst[2 * i] = kBf16 ? round_bf16(v0) : v0;
    dst[2 * i + 1] = kBf16 ? round_bf16(v1) : v1;
  }
}

#if defined(__GNUC__) && defined(__x86_64__)
#define PEFT_QW_AVX2 1
// The same with AVX2, 8 bytes (16 values) per step: the 16-entry table lives in two registers,
// vpermps picks by the low 3 bits of the nibble and bit 3 selects the register. Products are the
// same IEEE float32 multiplications and the bfloat16 rounding the same integer arithmetic as
// round_bf16, so the results are bit-identical to the scalar loop. Compiled for AVX2 only here;
// used after a runtime CPU check.
template <bool kBf16>
__attribute__((target("avx2"))) inline void lookup8_avx2(__m256i idx, __m256 lut_lo, __m256 lut_hi,
                                                         __m256 scale, float* dst) {
  const __m256 a = _mm256_permutevar8x32_ps(lut_lo, idx);
  const __m256 b = _mm256_permutevar8x32_ps(lut_hi, idx);
  const __m256 v =
      _mm256_mul_ps(_mm256_blendv_ps(a, b, _mm256_castsi256_ps(_mm256_slli_epi32(idx, 28))), scale);
  if constexpr (kBf16) {
    const __m256i u = _mm256_castps_si256(v);
    const __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(1));
    __m256i r = _mm256_add_epi32(u, _mm256_add_epi32(lsb, _mm256_set1_epi32(0x7FFF)));
    r = _mm256_and_si256(r, _mm256_set1_epi32(static_cast<int>(0xFFFF0000u)));
    const __m256 nan = _mm256_cmp_ps(v, v, _CMP_UNORD_Q);
    _mm256_storeu_ps(dst,
                     _mm256_blendv_ps(_mm256_castsi256_ps(r),
                                      _mm256_castsi256_ps(_mm256_set1_epi32(0x7FC00000)), nan));
  } else {
    _mm256_storeu_ps(dst, v);
  }
}

template <bool kBf16>
__attribute__((target("avx2"))) void decode_bytes_avx2(const uint8_t* p, int64_t nbytes,
                                                       const float* lut, float s, float* dst) {
  const __m256 lut_lo = _mm256_loadu_ps(lut), lut_hi = _mm256_loadu_ps(lut + 8);
  const __m256 scale = _mm256_set1_ps(s);
  const __m256i low_mask = _mm256_set1_epi32(15);
  int64_t i = 0;
  for (; i + 8 <= nbytes; i += 8) {
    const __m256i b =
        _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p + i)));
    const __m256i hi = _mm256_srli_epi32(b, 4), lo = _mm256_and_si256(b, low_mask);
    const __m256i a0 = _mm256_unpacklo_epi32(hi, lo);  // h0 l0 h1 l1 | h4 l4 h5 l5
    const __m256i a1 = _mm256_unpackhi_epi32(hi, lo);  // h2 l2 h3 l3 | h6 l6 h7 l7
    lookup8_avx2<kBf16>(_mm256_permute2x128_si256(a0, a1, 0x20), lut_lo, lut_hi, scale,
                        dst + 2 * i);  // h0 .. l3
    lookup8_avx2<kBf16>(_mm256_permute2x128_si256(a0, a1, 0x31), lut_lo, lut_hi, scale,
                        dst + 2 * i + 8);  // h4 .. l7
  }
  decode_bytes_scalar<kBf16>(p + i, nbytes - i, lut, s, dst + 2 * i);
}
// __builtin_cpu_init first: this initializer may run before libgcc's own constructor.
const bool kHasAvx2 = [] {
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx2") != 0;
}();
#endif

template <bool kBf16>
void decode_bytes(const uint8_t* p, int64_t nbytes, const float* lut, float s, float* dst) {
#ifdef PEFT_QW_AVX2
  if (kHasAvx2) return decode_bytes_avx2<kBf16>(p, nbytes, lut, s, dst);
#endif
  decode_bytes_scalar<kBf16>(p, nbytes, lut, s, dst);
}

// Decodes flat elements [e0, e1) of a packed 4-bit tensor into dst: lut[nibble] * absmax[element /
// blocksize], the first element of each byte in the high nibble. The same float32 product as
// dequantize_4bit, so the values are bit-identical. e0 may be odd and [e0, e1) may start and end
// inside blocks (tiles straddling blocks). kBf16: each value rounded to bfloat16 on the way (the
// operand of an emulated bfloat16 GEMM).
template <bool kBf16>
void decode_4bit_impl(const uint8_t* packed, const float* absmax, const float* lut,
                      int64_t blocksize, int64_t e0, int64_t e1, float* dst) {
  const auto one = [](float v) { return kBf16 ? round_bf16(v) : v; };
  int64_t e = e0;
  while (e < e1) {
    const int64_t block = e / blocksize;
    const int64_t seg_end = std::min((block + 1) * blocksize, e1);
    const float s = absmax[block];
    if (e & 1) {  // a low nibble first: only at the start of the range (blocksize is even)
      *dst++ = one(lut[packed[e >> 1] & 15] * s);
      ++e;
    }
    const int64_t nbytes = (seg_end - e) / 2;
    decode_bytes<kBf16>(packed + (e >> 1), nbytes, lut, s, dst);
    dst += 2 * nbytes;
    e += 2 * nbytes;
    if (e < seg_end) {  // a trailing high nibble: only at the end of the range
      *dst++ = one(lut[packed[e >> 1] >> 4] * s);
      ++e;
    }
  }
}

}  // namespace

void round_in_place(const at::Tensor& t, at::ScalarType dtype) {
  float* p = t.data_ptr<float>();
  const int64_t n = t.numel();
  if (dtype == at::kBFloat16) {
    for (int64_t i = 0; i < n; ++i) p[i] = round_bf16(p[i]);
  } else if (dtype == at::kHalf) {
    for (int64_t i = 0; i < n; ++i) p[i] = static_cast<float>(c10::Half(p[i]));
  }
}

void decode_4bit_cpu(bool bf16, const uint8_t* packed, const float* absmax, const float* lut,
                     int64_t blocksize, int64_t e0, int64_t e1, float* dst) {
  if (bf16) {
    decode_4bit_impl<true>(packed, absmax, lut, blocksize, e0, e1, dst);
  } else {
    decode_4bit_impl<false>(packed, absmax, lut, blocksize, e0, e1, dst);
  }
}

}  // namespace peft::quant::detail
