// Scalar block decoders, included twice: by dequant.cpp (the reference, baseline ISA) and inside
// each Highway target namespace of matmul_simd.cpp, where the same loops compile to that
// target's vectors for the generic matvec/matmul path. The includer provides <cstring>,
// core/fp16.h and gguf/types.h and opens the namespace; per-target toggle guard as Highway's
// -inl.h headers.
#if defined(SQUAT_KERNELS_DEQUANT_INL_H_) == defined(HWY_TARGET_TOGGLE)
#ifdef SQUAT_KERNELS_DEQUANT_INL_H_
#undef SQUAT_KERNELS_DEQUANT_INL_H_
#else
#define SQUAT_KERNELS_DEQUANT_INL_H_
#endif

namespace dq {

using gguf::TensorType;

inline float load_fp16(const uint8_t* p) {
  uint16_t h;
  std::memcpy(&h, p, 2);
  return fp16_to_float(h);
}

// Block layouts (ggml-common.h): every scale is an fp16 at the start of the block unless noted.
// Q4_0: d, 16 nibble bytes; element j is the low nibble of byte j, j+16 the high one; d*(q-8).
inline void q4_0(const uint8_t* b, float* y, std::size_t nb) {
  for (std::size_t i = 0; i < nb; ++i, b += 18, y += 32) {
    const float d = load_fp16(b);
    for (int j = 0; j < 16; ++j) {
      y[j] = d * float(int(b[2 + j] & 0x0f) - 8);
      y[j + 16] = d * float(int(b[2 + j] >> 4) - 8);
    }
  }
}

// Q4_1: d, m, 16 nibble bytes; d*q + m.
inline void q4_1(const uint8_t* b, float* y, std::size_t nb) {
  for (std::size_t i = 0; i < nb; ++i, b += 20, y += 32) {
    const float d = load_fp16(b), m = load_fp16(b + 2);
    for (int j = 0; j < 16; ++j) {
      y[j] = d * float(b[4 + j] & 0x0f) + m;
      y[j + 16] = d * float(b[4 + j] >> 4) + m;
    }
  }
}

// Q5_0: d, 32-bit little-endian qh holding bit 4 of element j at bit j, 16 nibble bytes;
// d*(q-16).
inline void q5_0(const uint8_t* b, float* y, std::size_t nb) {
  for (std::size_t i = 0; i < nb; ++i, b += 22, y += 32) {
    const float d = load_fp16(b);
    uint32_t qh;
    std::memcpy(&qh, b + 2, 4);
    for (int j = 0; j < 16; ++j) {
      const int lo = (b[6 + j] & 0x0f) | int((qh >> j) & 1u) << 4;
      const int hi = (b[6 + j] >> 4) | int((qh >> (j + 16)) & 1u) << 4;
      y[j] = d * float(lo - 16);
      y[j + 16] = d * float(hi - 16);
    }
  }
}

// Q5_1: d, m, qh, 16 nibble bytes; d*q + m.
inline void q5_1(const uint8_t* b, float* y, std::size_t nb) {
  for (std::size_t i = 0; i < nb; ++i, b += 24, y += 32) {
    const float d = load_fp16(b), m = load_fp16(b + 2);
    uint32_t qh;
    std::memcpy(&qh, b + 4, 4);
    for (int j = 0; j < 16; ++j) {
      const int lo = (b[8 + j] & 0x0f) | int((qh >> j) & 1u) << 4;
      const int hi = (b[8 + j] >> 4) | int((qh >> (j + 16)) & 1u) << 4;
      y[j] = d * float(lo) + m;
      y[j + 16] = d * float(hi) + m;
    }
  }
}

// Q8_0: d, 32 int8; d*q.
inline void q8_0(const uint8_t* b, float* y, std::size_t nb) {
  for (std::size_t i = 0; i < nb; ++i, b += 34, y += 32) {
    const float d = load_fp16(b);
    for (int j = 0; j < 32; ++j) y[j] = d * float(int8_t(b[2 + j]));
  }
}

// K-quants' 12 scale bytes hold eight 6-bit scales and eight 6-bit mins. For sub-block j < 4
// they are the low 6 bits of bytes j and j+4; for j >= 4 the low 4 bits come from byte j+4
// (low nibble: scale, high nibble: min) and the top 2 bits from bits 6..7 of bytes j-4 and j.
inline void k_scale_min(const uint8_t* s, int j, int& scale, int& min) {
  if (j < 4) {
    scale = s[j] & 63;
    min = s[j + 4] & 63;
  } else {
    scale = (s[j + 4] & 0x0f) | ((s[j - 4] >> 6) << 4);
    min = (s[j + 4] >> 4) | ((s[j] >> 6) << 4);
  }
}

// Q4_K (256 elements): d, dmin, 12 scale bytes, 128 nibble bytes. Each 64 elements use 32
// bytes: low nibbles are sub-block 2k, high nibbles sub-block 2k+1; d*sc*q - dmin*m.
inline void q4_k(const uint8_t* b, float* y, std::size_t nb) {
  for (std::size_t i = 0; i < nb; ++i, b += gguf::kQ4_KBlockBytes) {
    const float d = load_fp16(b), dmin = load_fp16(b + 2);
    const uint8_t* scales = b + 4;
    const uint8_t* q = b + 16;
    for (int k = 0; k < 4; ++k, q += 32, y += 64) {
      int sc0, m0, sc1, m1;
      k_scale_min(scales, 2 * k, sc0, m0);
      k_scale_min(scales, 2 * k + 1, sc1, m1);
      // Hoisted per sub-block (same values as d * sc * q - dmin * m evaluated left to right);
      // plain indexed loops so the compiler vectorises them.
      const float d0 = d * float(sc0), o0 = dmin * float(m0);
      const float d1 = d * float(sc1), o1 = dmin * float(m1);
      for (int l = 0; l < 32; ++l) y[l] = d0 * float(q[l] & 0x0f) - o0;
      for (int l = 0; l < 32; ++l) y[32 + l] = d1 * float(q[l] >> 4) - o1;
    }
  }
}

// Q5_K: d, dmin, 12 scale bytes, 32 qh bytes, 128 nibble bytes. Bit 4 of element l of
// sub-block s is bit s of qh[l].
inline void q5_k(const uint8_t* b, float* y, std::size_t nb) {
  for (std::size_t i = 0; i < nb; ++i, b += gguf::kQ5_KBlockBytes) {
    const float d = load_fp16(b), dmin = load_fp16(b + 2);
    const uint8_t* scales = b + 4;
    const uint8_t* qh = b + 16;
    const uint8_t* q = b + 48;
    for (int k = 0; k < 4; ++k, q += 32, y += 64) {
      int sc0, m0, sc1, m1;
      k_scale_min(scales, 2 * k, sc0, m0);
      k_scale_min(scales, 2 * k + 1, sc1, m1);
      const float d0 = d * float(sc0), o0 = dmin * float(m0);
      const float d1 = d * float(sc1), o1 = dmin * float(m1);
      for (int l = 0; l < 32; ++l) {
        const int v = (q[l] & 0x0f) | ((qh[l] >> (2 * k)) & 1) << 4;
        y[l] = d0 * float(v) - o0;
      }
      for (int l = 0; l < 32; ++l) {
        const int v = (q[l] >> 4) | ((qh[l] >> (2 * k + 1)) & 1) << 4;
        y[32 + l] = d1 * float(v) - o1;
      }
    }
  }
}

// Q6_K: 128 low-nibble bytes ql, 64 bytes qh of 2-bit high parts, 16 int8 scales (one per 16
// elements), d last. Each half of 128 elements uses 64 ql bytes and 32 qh bytes: element
// l + 32*k (k = 0..3, l < 32) takes nibble (k < 2 ? low : high) of ql[l + 32*(k&1)] and bits
// 2k..2k+1 of qh[l]; value d * scale * (q - 32).
inline void q6_k(const uint8_t* b, float* y, std::size_t nb) {
  for (std::size_t i = 0; i < nb; ++i, b += gguf::kQ6_KBlockBytes, y += 256) {
    const float d = load_fp16(b + 208);
    const int8_t* sc = reinterpret_cast<const int8_t*>(b + 192);
    for (int half = 0; half < 2; ++half) {
      const uint8_t* ql = b + 64 * half;
      const uint8_t* qh = b + 128 + 32 * half;
      const int8_t* s = sc + 8 * half;
      float* out = y + 128 * half;
      for (int g = 0; g < 2; ++g) {  // 16 consecutive l share each of the four scales
        const float s0 = d * float(s[g]), s1 = d * float(s[2 + g]);
        const float s2 = d * float(s[4 + g]), s3 = d * float(s[6 + g]);
        for (int l = 16 * g; l < 16 * g + 16; ++l) {
          const int q0 = (ql[l] & 0x0f) | (qh[l] & 3) << 4;
          const int q1 = (ql[l + 32] & 0x0f) | ((qh[l] >> 2) & 3) << 4;
          const int q2 = (ql[l] >> 4) | ((qh[l] >> 4) & 3) << 4;
          const int q3 = (ql[l + 32] >> 4) | ((qh[l] >> 6) & 3) << 4;
          out[l] = s0 * float(q0 - 32);
          out[l + 32] = s1 * float(q1 - 32);
          out[l + 64] = s2 * float(q2 - 32);
          out[l + 96] = s3 * float(q3 - 32);
        }
      }
    }
  }
}

// Decodes n elements; false when the type has no decoder here.
inline bool dequantize(TensorType type, const uint8_t* b, float* dst, std::size_t n) {
  switch (type) {
    case TensorType::F32:
      std::memcpy(dst, b, n * sizeof(float));
      return true;
    case TensorType::F16:
      for (std::size_t i = 0; i < n; ++i) dst[i] = load_fp16(b + 2 * i);
      return true;
    case TensorType::BF16:
      for (std::size_t i = 0; i < n; ++i) {
        uint16_t h;
        std::memcpy(&h, b + 2 * i, 2);
        dst[i] = bf16_to_float(h);
      }
      return true;
    case TensorType::Q4_0:
      q4_0(b, dst, n / 32);
      return true;
    case TensorType::Q4_1:
      q4_1(b, dst, n / 32);
      return true;
    case TensorType::Q5_0:
      q5_0(b, dst, n / 32);
      return true;
    case TensorType::Q5_1:
      q5_1(b, dst, n / 32);
      return true;
    case TensorType::Q8_0:
      q8_0(b, dst, n / 32);
      return true;
    case TensorType::Q4_K:
      q4_k(b, dst, n / 256);
      return true;
    case TensorType::Q5_K:
      q5_k(b, dst, n / 256);
      return true;
    case TensorType::Q6_K:
      q6_k(b, dst, n / 256);
      return true;
    default:
      return false;
  }
}

}  // namespace dq

#endif  // SQUAT_KERNELS_DEQUANT_INL_H_
