// What the CPU launcher's passes share (extrap_cpu.cpp: the phases; reading_cpu.cpp: the reading passes):
// the spans the threads share out, the per-tensor values of an adaptive launch, and the loops' SIMD clones.
#pragma once

#include <ATen/ATen.h>

#include <algorithm>
#include <vector>

#include "../launch.h"

namespace extrap {

constexpr int64_t kChunk = 1 << 16;  // the smallest share of a thread: large enough to amortize

// The loops are compute-bound whenever the data sits in cache, so they are compiled for AVX-512 and
// AVX2+FMA as well as the baseline, and the loader picks the widest one the processor has.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define EXTRAP_SIMD_CLONES __attribute__((target_clones("default", "arch=x86-64-v3", "arch=x86-64-v4")))
#else
#define EXTRAP_SIMD_CLONES
#endif

// The elements of a launch's tensors as `grain`-sized spans (tensor, begin, end), in order: the threads
// share them out evenly whatever the tensor sizes.
struct Span {
  int64_t tensor, begin, end;
};
inline std::vector<Span> spans_of(const std::vector<at::Tensor>& tensors, int64_t grain) {
  std::vector<Span> spans;
  for (size_t t = 0; t < tensors.size(); ++t) {
    const int64_t numel = tensors[t].numel();
    for (int64_t begin = 0; begin < numel; begin += grain) {
      spans.push_back({static_cast<int64_t>(t), begin, std::min(numel, begin + grain)});
    }
  }
  return spans;
}

// The per-tensor values of an adaptive launch: the LAMB ratio, the key of the noise and of the rounding (the
// stored count), and the bias corrections of the count the phase's direction uses (the look-ahead of
// kExtrapolate and the reading pass: the count after the coming update; an update phase has counted its own
// when it runs). The corrections are computed once per run of tensors with the same stored count: a launch's
// tensors have almost always stepped alike, and each count costs four pow calls (anchor-free: its count's and the
// one before), which were 6% of a step of 161 one-element tensors (perf).
template <typename acc>
class AdaptiveArgs {
 public:
  AdaptiveArgs(const Launch& L, const Hyper<acc>& h, bool next_count) : L_(L), h_(h), next_count_(next_count) {}

  TensorArgs<acc> operator()(size_t t) {
    const float stored = *L_.steps[t].data_ptr<float>();
    const float step = stored + (next_count_ ? 1.0f : 0.0f);
    TensorArgs<acc> args{L_.trust ? L_.trust->data_ptr<acc>()[t] : acc(1),
                         false,
                         static_cast<uint32_t>(stored),
                         static_cast<uint32_t>(L_.indices[t]),
                         acc(0),
                         acc(1),
                         acc(1)};
    const bool anchor_free = L_.anchor_free();  // (the Adam family's: its recovery weights and their corrections)
    if (computed_ && stored == stored_) {
      args.bias1 = last_.bias1;
      args.bias2_sqrt = last_.bias2_sqrt;
      args.last_bias1 = last_.last_bias1;
      args.last_bias2_sqrt = last_.last_bias2_sqrt;
      if (anchor_free) {
        const acc* weights = L_.last_gammas[t].data_ptr<acc>();
        args.recovery0 = weights[0];
        args.recovery1 = weights[1];
      }
      return args;
    }
    bias_corrections(h_, step, args.bias1, args.bias2_sqrt);
    if (anchor_free) {  // x was made by the update before this update's count (counted already by an update
      // phase; LAMB's reading pass runs before it)
      recovery_args(h_, L_.last_gammas[t].data_ptr<acc>(), step - 1.0f, args);
    }
    computed_ = true;
    stored_ = stored;
    last_ = args;
    return args;
  }

 private:
  const Launch& L_;
  const Hyper<acc>& h_;
  const bool next_count_;
  bool computed_ = false;
  float stored_ = 0.0f;
  TensorArgs<acc> last_{};
};

}  // namespace extrap
