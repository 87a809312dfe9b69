// A multi-tensor launcher in the spirit of Apex's multi_tensor_apply: the tensors of a bucket are cut
// into fixed-size chunks, and each launch carries (as a kernel argument) a table of tensor addresses
// and a block -> (tensor, chunk) map, so that one launch covers many tensors. Tensors with more chunks
// than one table holds continue in the next launch.
#pragma once

#include <ATen/ATen.h>

#include <vector>

namespace extrap {

// Since CUDA 12.1 a kernel on Volta or newer takes up to 32764 bytes of arguments (4 KB before, Apex's
// limit of 36 tensors). A 26 KB table covers a ResNet-50 (161 tensors, ~400 chunks) or a GPT-2 small
// (148 tensors, ~2000 chunks) parameter list in ONE launch per phase.
// (The host emulation, csrc/emulation, builds with small limits, so that its tests cross every boundary.)
#ifndef EXTRAP_TABLE_TENSORS
#define EXTRAP_TABLE_TENSORS 192
#define EXTRAP_TABLE_BLOCKS 2560
#define EXTRAP_CHUNK_SIZE 65536
#endif
constexpr int kMaxTensors = EXTRAP_TABLE_TENSORS;   // table entries per launch
constexpr int kMaxBlocks = EXTRAP_TABLE_BLOCKS;     // blocks per launch
constexpr int64_t kChunkSize = EXTRAP_CHUNK_SIZE;   // elements per block
static_assert(kChunkSize % 8 == 0, "a chunk must be a multiple of every vector width");

struct TensorTable {
  void* x[kMaxTensors];
  const void* g[kMaxTensors];
  void* s[kMaxTensors];
  void* m[kMaxTensors];
  void* v[kMaxTensors];      // adaptive: the second moments, and
  void* v_max[kMaxTensors];  //           their maxima (amsgrad); else null
  const float* step[kMaxTensors];
  const void* last_gamma[kMaxTensors];  // the anchor-free update's recorded gamma (state dtype); else null
  int64_t numel[kMaxTensors];
  int32_t tensor[kMaxTensors];  // the tensor's position in the bucket (its trust ratio)
  uint32_t index[kMaxTensors];  // the parameter's index in the optimizer (the noise key)
  uint16_t block_tensor[kMaxBlocks];
  int32_t block_chunk[kMaxBlocks];
};
// (what a kernel takes besides the table: Hyper and a few pointers, well under 1 KB)
static_assert(sizeof(TensorTable) <= 32764 - 1024, "the table must fit the 32 KB kernel-argument limit");

// Calls launch(table, blocks) as often as needed to cover every chunk of every non-empty tensor.
// Empty `anchors`: the parameters are their own anchors (plain fused SGD on full-precision x), or the
// anchors are recomputed (the anchor-free update, which gives `last_gammas`, else empty). `second` and
// `second_max`: the adaptive bases' second moments and their maxima, or empty.
template <typename Launch>
void multi_tensor_apply(const std::vector<at::Tensor>& params, const std::vector<at::Tensor>& grads,
                        const std::vector<at::Tensor>& anchors, const std::vector<at::Tensor>& momenta,
                        const std::vector<at::Tensor>& steps, const std::vector<int64_t>& indices,
                        const std::vector<at::Tensor>& last_gammas, const std::vector<at::Tensor>& second,
                        const std::vector<at::Tensor>& second_max, Launch&& launch) {
  TensorTable table;
  int entries = 0, blocks = 0;
  for (size_t t = 0; t < params.size(); ++t) {
    const int64_t numel = params[t].numel();
    if (numel == 0) continue;
    table.x[entries] = params[t].data_ptr();
    table.g[entries] = grads[t].data_ptr();
    table.s[entries] = anchors.empty() ? params[t].data_ptr() : anchors[t].data_ptr();
    table.m[entries] = momenta.empty() ? nullptr : momenta[t].data_ptr();
    table.v[entries] = second.empty() ? nullptr : second[t].data_ptr();
    table.v_max[entries] = second_max.empty() ? nullptr : second_max[t].data_ptr();
    table.step[entries] = steps[t].data_ptr<float>();
    table.last_gamma[entries] = last_gammas.empty() ? nullptr : last_gammas[t].data_ptr();
    table.numel[entries] = numel;
    table.tensor[entries] = static_cast<int32_t>(t);
    table.index[entries] = static_cast<uint32_t>(indices[t]);
    const int64_t chunks = (numel + kChunkSize - 1) / kChunkSize;
    for (int64_t c = 0; c < chunks; ++c) {
      table.block_tensor[blocks] = static_cast<uint16_t>(entries);
      table.block_chunk[blocks] = static_cast<int32_t>(c);
      ++blocks;
      const bool last_chunk = c == chunks - 1;
      if (blocks == kMaxBlocks || (last_chunk && entries == kMaxTensors - 1)) {
        launch(table, blocks);
        blocks = 0;
        if (last_chunk) {
          entries = -1;  // the table starts empty
        } else {         // the tensor continues as entry 0 of the next table
          table.x[0] = table.x[entries];
          table.g[0] = table.g[entries];
          table.s[0] = table.s[entries];
          table.m[0] = table.m[entries];
          table.v[0] = table.v[entries];
          table.v_max[0] = table.v_max[entries];
          table.step[0] = table.step[entries];
          table.last_gamma[0] = table.last_gamma[entries];
          table.numel[0] = table.numel[entries];
          table.tensor[0] = table.tensor[entries];
          table.index[0] = table.index[entries];
          entries = 0;
        }
      }
    }
    ++entries;
  }
  if (blocks > 0) launch(table, blocks);
}

}  // namespace extrap
