// KvCache: the layers of one sequence (sharing append's scratch and the RoPE tables), their
// bytes, and saving/loading SQuat states.
#include <algorithm>
#include <cmath>
#include <limits>

#include "core/error.h"
#include "core/thread_pool.h"
#include "kvcache/layer_cache_impl.h"

namespace squat::kv {

KvCache::KvCache(const CacheConfig& config, int n_layers, int n_kv_heads, int head_dim,
                 RopeSpec rope)
    : config_(config) {
  config.validate(head_dim);
  if (n_layers <= 0) fail_usage("n_layers must be positive, got {}", n_layers);
  if (config.key_rope == KeyRope::Pre) rope_ = std::make_shared<RopeTable>(std::move(rope));
  make_layers(n_layers, n_kv_heads, head_dim);
}

KvCache::KvCache(const CacheConfig& config, int n_layers, int n_kv_heads, int head_dim,
                 std::shared_ptr<RopeTable> rope)
    : config_(config), rope_(config.key_rope == KeyRope::Pre ? std::move(rope) : nullptr) {
  config.validate(head_dim);
  if (n_layers <= 0) fail_usage("n_layers must be positive, got {}", n_layers);
  make_layers(n_layers, n_kv_heads, head_dim);
}

void KvCache::make_layers(int n_layers, int n_kv_heads, int head_dim) {
  layers_.reserve(std::size_t(n_layers));
  for (int i = 0; i < n_layers; ++i) {
    layers_.emplace_back(config_, n_kv_heads, head_dim, rope_);
    if (i > 0) {  // one scratch and one lane table for all layers
      layers_.back().impl_->scratch = layers_[0].impl_->scratch;
      layers_.back().impl_->rope_lanes = layers_[0].impl_->rope_lanes;
    }
  }
}

std::size_t KvCache::bytes() const {
  std::size_t b = 0;
  for (const LayerCache& l : layers_) b += l.bytes();
  return b;
}

std::size_t KvCache::allocated_bytes() const {
  std::size_t b = 0;
  for (const LayerCache& l : layers_) b += l.allocated_bytes();
  return b;
}

void KvCache::reserve(std::size_t n_tokens) {
  for (LayerCache& l : layers_) l.reserve(n_tokens);
}

double KvCache::bits_per_element() const {
  const std::size_t n = tokens();
  if (n == 0 || layers_.empty()) return 0.0;
  const double elems = double(n) * double(layers_.size()) * double(layers_[0].n_kv_heads()) *
                       double(layers_[0].head_dim()) * 2.0;
  return double(bytes()) * 8.0 / elems;
}

void KvCache::clear() {
  for (LayerCache& l : layers_) l.clear();
}

void KvCache::save_states(const std::string& path, const std::string& tag) const {
  std::vector<SquatState> all;
  for (const LayerCache& l : layers_) {
    if (!l.has_states()) fail("cannot save SQuat states: a layer has none yet");
    all.insert(all.end(), l.states().begin(), l.states().end());
  }
  SquatStateFile::save(path, all, tag);
}

void KvCache::load_states(const std::string& path, const std::string& expected_tag) {
  std::string tag;
  std::vector<SquatState> all = SquatStateFile::load(path, &tag);
  if (!expected_tag.empty() && !tag.empty() && tag != expected_tag) {
    fail("SQuat state file {} was made for {}, not for {}", path, tag, expected_tag);
  }
  const std::size_t per = std::size_t(layers_.at(0).n_kv_heads());
  if (all.size() != per * layers_.size()) {
    fail("SQuat state file {} holds {} states, the cache needs {} ({} layers x {} KV heads)", path,
         all.size(), per * layers_.size(), layers_.size(), per);
  }
  for (std::size_t i = 0; i < layers_.size(); ++i) {
    std::vector<SquatState> s(all.begin() + std::ptrdiff_t(i * per),
                              all.begin() + std::ptrdiff_t((i + 1) * per));
    layers_[i].set_states(std::move(s));
  }
}

}  // namespace squat::kv
