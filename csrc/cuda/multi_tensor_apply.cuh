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
// (148 tensors, ~2000 chunks) parameter list in ONE launch per phase. Where the runtime, the driver or the
// device cannot take that (checked when the launch runs: large_kernel_args in extrap_cuda.cu), the launch
// falls back to a table that fits 4 KB, with fewer tensors and chunks per launch, as torch's
// MultiTensorApply does.
// (The host emulation, csrc/emulation, builds with small limits, so that its tests cross every boundary.)
#ifndef EXTRAP_TABLE_TENSORS
#define EXTRAP_TABLE_TENSORS 192
#define EXTRAP_TABLE_BLOCKS 2560
#define EXTRAP_SMALL_TABLE_TENSORS 24
#define EXTRAP_SMALL_TABLE_BLOCKS 288
#define EXTRAP_CHUNK_SIZE 65536
#endif
constexpr int64_t kChunkSize = EXTRAP_CHUNK_SIZE;  // elements per block
static_assert(kChunkSize % 8 == 0, "a chunk must be a multiple of every vector width");
// (what a kernel takes besides the table: Hyper and a few pointers)
constexpr size_t kOtherArgBytes = 256;

template <int Tensors, int Blocks>
struct TensorTable {
  static constexpr int kTensors = Tensors;  // table entries per launch
  static constexpr int kBlocks = Blocks;    // blocks per launch
  void* x[Tensors];
  void* g[Tensors];  // (unscaled in place where a launch has its loss scale)
  void* s[Tensors];
  void* m[Tensors];
  void* v[Tensors];      // adaptive: the second moments, and
  void* v_max[Tensors];  //           their maxima (amsgrad); else null
  const float* step[Tensors];
  const void* last_gamma[Tensors];  // the anchor-free update's recorded gamma (state dtype); else null
  int64_t numel[Tensors];
  int32_t tensor[Tensors];  // the tensor's position in the bucket (its trust ratio)
  uint32_t index[Tensors];  // the parameter's index in the optimizer (the noise key)
  uint16_t block_tensor[Blocks];
  int32_t block_chunk[Blocks];
};
using LargeTable = TensorTable<EXTRAP_TABLE_TENSORS, EXTRAP_TABLE_BLOCKS>;
using SmallTable = TensorTable<EXTRAP_SMALL_TABLE_TENSORS, EXTRAP_SMALL_TABLE_BLOCKS>;
static_assert(sizeof(LargeTable) <= 32764 - kOtherArgBytes, "the large table must fit the 32 KB argument limit");
static_assert(sizeof(SmallTable) <= 4096 - kOtherArgBytes, "the small table must fit the 4 KB argument limit");

// Calls launch(table, blocks) with a `Table` as often as needed to cover every chunk of every non-empty tensor.
// Empty `anchors`: the parameters are their own anchors (plain fused SGD on full-precision x), or the
// anchors are recomputed (the anchor-free update, which gives `last_gammas`, else empty). `second` and
// `second_max`: the adaptive bases' second moments and their maxima, or empty.
template <typename Table, typename Launch>
void multi_tensor_apply(const std::vector<at::Tensor>& params, const std::vector<at::Tensor>& grads,
                        const std::vector<at::Tensor>& anchors, const std::vector<at::Tensor>& momenta,
                        const std::vector<at::Tensor>& steps, const std::vector<int64_t>& indices,
                        const std::vector<at::Tensor>& last_gammas, const std::vector<at::Tensor>& second,
                        const std::vector<at::Tensor>& second_max, Launch&& launch) {
  Table table;
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
      if (blocks == Table::kBlocks || (last_chunk && entries == Table::kTensors - 1)) {
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
