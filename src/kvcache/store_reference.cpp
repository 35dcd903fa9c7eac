// The scalar reference of the store: dequantize a head and attend in double precision, what the
// tests compare the fast attention with.
#include <algorithm>
#include <cmath>
#include <limits>

#include "core/error.h"
#include "core/thread_pool.h"
#include "kvcache/layer_cache_impl.h"

namespace squat::kv {

void LayerCache::dequantize(int kv_head, float* keys, float* values) const {
  const Impl& m = *impl_;
  const HeadStore& hs = m.heads.at(std::size_t(kv_head));
  const std::size_t D = m.D(), Gs = std::size_t(m.G);
  std::vector<uint8_t> codes(std::max<std::size_t>(Gs, 1));
  // Keys.
  std::vector<uint8_t> row(D);
  for (std::size_t t = 0; t < m.n_kq; ++t) {
    if (m.key_layout == GroupLayout::PerChannel) {
      // Token rows of d packed codes; scale/min per (token group, channel).
      unpack_codes(hs.kq.codes.data() + t * packed_bytes(D, m.kbits), D, m.kbits, row.data());
      for (std::size_t c = 0; c < D; ++c) {
        const std::size_t g = (t / Gs) * D + c;
        keys[t * D + c] = float(row[c]) * hs.kq.scale.get(g) + hs.kq.min.get(g);
      }
    } else {
      for (std::size_t c = 0; c < D; ++c) {
        const std::size_t g = t * (D / Gs) + c / Gs;
        unpack_codes(hs.kq.codes.data() + g * m.gb(m.kbits), Gs, m.kbits, codes.data());
        keys[t * D + c] = float(codes[c % Gs]) * hs.kq.scale.get(g) + hs.kq.min.get(g);
      }
    }
  }
  for (std::size_t t = m.n_kq; t < m.n; ++t)
    for (std::size_t c = 0; c < D; ++c) keys[t * D + c] = hs.kres.get((t - m.n_kq) * D + c);
  // Values.
  for (std::size_t t = 0; t < m.n_vq; ++t) {
    for (std::size_t c = 0; c < D; ++c) {
      const std::size_t g = t * (D / Gs) + c / Gs;
      unpack_codes(hs.vq.codes.data() + g * m.gb(m.vbits), Gs, m.vbits, codes.data());
      values[t * D + c] = float(codes[c % Gs]) * hs.vq.scale.get(g) + hs.vq.min.get(g);
    }
  }
  for (std::size_t t = m.n_vq; t < m.n; ++t)
    for (std::size_t c = 0; c < D; ++c) values[t * D + c] = hs.vres.get((t - m.n_vq) * D + c);
  if (m.cfg.hadamard) {
    for (std::size_t t = 0; t < m.n; ++t) hadamard_transform(values + t * D, m.d);
  }
}

void LayerCache::attend_reference(const float* q, std::size_t n_q, int n_heads, const int* q_pos,
                                  float* out) const {
  const Impl& m = *impl_;
  m.check_query_heads(n_heads);
  const int n_rep = n_heads / m.n_kv;
  const std::size_t D = m.D();
  std::vector<float> keys(m.n * D), values(m.n * D);
  std::vector<double> logits(m.n);
  for (int h = 0; h < m.n_kv; ++h) {
    dequantize(h, keys.data(), values.data());
    if (m.cfg.key_rope == KeyRope::Pre) {
      for (std::size_t t = 0; t < m.n; ++t) {
        rope_rotate(keys.data() + t * D, D, (long long)t, m.rope->spec().inv_freq.data(),
                    m.rope->layout());
      }
    }
    for (std::size_t i = 0; i < n_q; ++i) {
      const std::size_t vis =
          std::size_t(std::clamp<long long>((long long)q_pos[i] + 1, 0, (long long)m.n));
      for (int r = 0; r < n_rep; ++r) {
        const std::size_t hq = std::size_t(h * n_rep + r);
        const float* qv = q + (i * std::size_t(n_heads) + hq) * D;
        float* o = out + (i * std::size_t(n_heads) + hq) * D;
        std::fill(o, o + D, 0.0f);
        if (vis == 0) continue;
        double mxl = -std::numeric_limits<double>::infinity();
        for (std::size_t t = 0; t < vis; ++t) {
          double dot = 0;
          for (std::size_t c = 0; c < D; ++c) dot += double(qv[c]) * double(keys[t * D + c]);
          logits[t] = dot / std::sqrt(double(m.d));
          mxl = std::max(mxl, logits[t]);
        }
        double sum = 0;
        for (std::size_t t = 0; t < vis; ++t) sum += std::exp(logits[t] - mxl);
        for (std::size_t c = 0; c < D; ++c) {
          double a = 0;
          for (std::size_t t = 0; t < vis; ++t) {
            a += std::exp(logits[t] - mxl) * double(values[t * D + c]);
          }
          o[c] = float(a / sum);
        }
      }
    }
  }
}

}  // namespace squat::kv
