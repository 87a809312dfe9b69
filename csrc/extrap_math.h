// The per-element math of every extrap-kernels optimizer (SPEC.md), written once.
//
// Included unchanged by the CPU kernel (csrc/cpu) and the CUDA kernels (csrc/cuda): it holds scalar
// arithmetic only -- no ATen, no std:: calls without a device version -- so every function is
// __host__ __device__ when compiled by nvcc. Loops, loads, stores and dtype conversions belong to the
// launchers; this file says what happens to one element.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#if defined(__CUDACC__) || defined(__HIPCC__)
#define EXTRAP_HD __host__ __device__ __forceinline__
#elif defined(__GNUC__)
// Always inlined, as the CUDA build forces: GCC stops inlining plain `inline` functions once the translation
// unit has grown past its inline-unit-growth budget, and the CPU loops then call the math per element (the
// anchor-free SGD step ran 6x slower that way, measured)
#define EXTRAP_HD inline __attribute__((always_inline))
#else
#define EXTRAP_HD inline
#endif

namespace extrap {

// One pass over memory. The Python side names them the same (extrap_kernels/bucket.py, Phase), and each
// is an operator, torch.ops.extrap_kernels.<name>_ (csrc/bindings.cpp).
enum Phase : int32_t {
  kExtrapolate = 0,  // two-phase, step 2:  s <- x; x <- s - gamma * e(g)
  kUpdate = 1,       // two-phase, step 4 (and plain fused SGD):  base update of s; x <- s
  kUpdatePast = 2,   // one-phase "past":  base update of s; x <- s - gamma * e, e = d (or g')
  kUpdateNoise = 3,  // one-phase "noise": base update of s; x <- s + sigma * xi
  // one-phase "past" with the anchor recomputed, not stored (heavy-ball momentum, full precision):
  // s = x + last_gamma * m; base update of s; x <- s - gamma * m
  kUpdatePastAnchorFree = 4,
};

// Hyperparameters of one launch, resolved on the host. `acc` is the arithmetic type: float for
// fp32/bf16/fp16 parameters (fp32 state), double for fp64 parameters.
template <typename acc>
struct Hyper {
  acc lr;
  acc gamma;
  acc momentum;
  acc dampening;
  acc weight_decay;
  acc grad_factor;  // 1 / grad_scale, negated when maximize
  acc noise_std;
  bool nesterov;
  bool wd_after_momentum;          // Apex FusedSGD option: decay added to d instead of g
  bool extrapolate_with_momentum;  // e = g' + mu * m in kExtrapolate
  bool past_grad;                  // kUpdatePast extrapolates along g' instead of d
  uint64_t seed;
  // the adaptive bases (SPEC "Base update, Adam family and LAMB"); the betas in double, as the bias
  // corrections 1 - beta^t are computed
  double beta1, beta2;
  acc eps;
  acc grad_gain;        // the weight of g' in m: 1 - beta1, or 1 (LAMB without grad_averaging)
  acc second_gain;      // the weight of g'^2 in v: 1 - beta2, or 1 (Adagrad's sum, with beta2 = 1)
  acc lr_decay;         // Adagrad: the direction divided by 1 + (t - 1) * lr_decay (no bias correction)
  bool grad_averaging;  // (what grad_gain is, for betas read on the device: set_betas)
  bool decoupled;       // AdamW / adam_w_mode: e = a + wd * s instead of g' += wd * s
  bool bias_correction;
};

// Capturable betas, read where the kernel runs: beta1 and grad_gain, which follows it.
template <typename acc>
EXTRAP_HD void set_betas(Hyper<acc>& h, double beta1, double beta2) {
  h.beta1 = beta1;
  h.beta2 = beta2;
  h.grad_gain = h.grad_averaging ? static_cast<acc>(1.0 - beta1) : acc(1);
  h.second_gain = static_cast<acc>(1.0 - beta2);
}

// g' = (g / grad_scale + wd * s) * trust; the sign flip of `maximize` is folded into grad_factor.
template <typename acc>
EXTRAP_HD acc regularized_grad(acc g, acc s, const Hyper<acc>& h, acc trust) {
  acc gp = g * h.grad_factor;
  if (!h.wd_after_momentum) gp += h.weight_decay * s;
  return gp * trust;
}

// kExtrapolate: s is the anchor x_t, m the momentum buffer (read only; zero before the first update).
template <typename acc>
EXTRAP_HD acc extrapolated_point(acc s, acc g, acc m, const Hyper<acc>& h, acc trust) {
  acc e = regularized_grad(g, s, h, trust);
  if (h.extrapolate_with_momentum) e += h.momentum * m;
  return s - h.gamma * e;
}

// The base update of the anchor (torch.optim.SGD semantics). Updates s and m in place and returns the
// direction d; gp receives g', which "past" extrapolation may reuse. kMomentum: mu != 0 (the launchers
// get momentum buffers exactly then); m is not touched without it.
template <bool kMomentum, typename acc>
EXTRAP_HD acc base_update(acc& s, acc& m, acc g, const Hyper<acc>& h, acc trust, bool first, acc& gp) {
  gp = regularized_grad(g, s, h, trust);
  acc d = gp;
  if (kMomentum) {
    m = first ? gp : h.momentum * m + (acc(1) - h.dampening) * gp;
    d = h.nesterov ? gp + h.momentum * m : m;
  }
  if (h.wd_after_momentum) d += h.weight_decay * s;
  s -= h.lr * d;
  return d;
}

// kUpdatePastAnchorFree: x was made as s - last_gamma * m (with this m, before its update), which gives
// the anchor back (SPEC "Memory-lean variants").
template <typename acc>
EXTRAP_HD acc recomputed_anchor(acc x, acc m, acc last_gamma) {
  return x + last_gamma * m;
}

// kUpdatePast(AnchorFree): the extrapolated point from the freshly updated anchor.
template <typename acc>
EXTRAP_HD acc past_point(acc s, acc gp, acc d, const Hyper<acc>& h) {
  return s - h.gamma * (h.past_grad ? gp : d);
}

// Per-tensor values of one launch.
template <typename acc>
struct TensorArgs {
  acc trust;       // LARS (or LAMB) ratio, 1 without; NovoGrad's launch: the tensor's running gradient norm
  bool first;      // the momentum buffer has never been written
  uint32_t step;   // the step count (keys the noise)
  uint32_t index;  // the parameter's index in the optimizer (keys the noise)
  acc last_gamma;  // kUpdatePastAnchorFree: the gamma x was last extrapolated with
  acc bias1;       // adaptive: 1 - beta1^t, and
  acc bias2_sqrt;  //           sqrt(1 - beta2^t) (both 1 without bias correction)
  // kUpdatePastAnchorFree, the Adam family: the weights (r0, r1) of the update t - 1 that made x, and that
  // update's bias corrections (1 at t - 1 = 0, where the weights are 0): recovered_adaptive_anchor
  acc recovery0 = 0, recovery1 = 0, last_bias1 = 1, last_bias2_sqrt = 1;
};

// ---------------------------------------------------------------------------------------------------
// Counter-based noise: Philox4x32-10 and Box-Muller exactly as Triton's tl.randn computes them, with
// the counter (element index lo, element index hi, parameter index, step) and the key (seed lo, seed hi).
// Triton's own randn uses the counter (offset lo, offset hi, 0, 0), so parameter 0 at step 0 draws
// exactly tl.randn(seed, offset).
// ---------------------------------------------------------------------------------------------------
struct Philox4 {
  uint32_t c0, c1, c2, c3;
};

EXTRAP_HD uint32_t mul_hi32(uint32_t a, uint32_t b) {
  return static_cast<uint32_t>((static_cast<uint64_t>(a) * b) >> 32);
}

EXTRAP_HD Philox4 philox4x32_10(Philox4 c, uint64_t seed) {
  constexpr uint32_t kKeyA = 0x9E3779B9u, kKeyB = 0xBB67AE85u;
  constexpr uint32_t kRoundA = 0xD2511F53u, kRoundB = 0xCD9E8D57u;
  uint32_t k0 = static_cast<uint32_t>(seed), k1 = static_cast<uint32_t>(seed >> 32);
  for (int round = 0; round < 10; ++round) {
    const uint32_t c0 = c.c0, c2 = c.c2;
    c.c0 = mul_hi32(kRoundB, c2) ^ c.c1 ^ k0;
    c.c2 = mul_hi32(kRoundA, c0) ^ c.c3 ^ k1;
    c.c1 = kRoundB * c2;
    c.c3 = kRoundA * c0;
    k0 += kKeyA;
    k1 += kKeyB;
  }
  return c;
}

EXTRAP_HD Philox4 noise_bits(uint64_t seed, uint32_t step, uint32_t index, uint64_t element) {
  Philox4 counter{static_cast<uint32_t>(element), static_cast<uint32_t>(element >> 32), index, step};
  return philox4x32_10(counter, seed);
}

// Triton's uint_to_uniform_float for 32-bit integers: [0, 1).
EXTRAP_HD float uniform_from_bits(uint32_t bits) {
  int32_t x = static_cast<int32_t>(bits);
  x = x < 0 ? ~x : x;
  return static_cast<float>(x) * 4.6566127342e-10f;
}

// Triton's pair_uniform_to_normal, first output.
EXTRAP_HD float box_muller(float u1, float u2) {
  u1 = u1 > 1.0e-7f ? u1 : 1.0e-7f;
  const float theta = 6.283185307179586f * u2;
  const float r = sqrtf(-2.0f * logf(u1));
  return r * cosf(theta);
}

EXTRAP_HD float noise_normal(uint64_t seed, uint32_t step, uint32_t index, uint64_t element) {
  const Philox4 bits = noise_bits(seed, step, index, element);
  return box_muller(uniform_from_bits(bits.c0), uniform_from_bits(bits.c1));
}

// ---------------------------------------------------------------------------------------------------
// Stochastic rounding: 16-bit parameters without an fp32 master (master_weights=False) keep x, s and m in
// their own dtype; each stored value, computed in fp32, goes to one of its two 16-bit neighbours, the one
// away from zero with probability equal to the fraction of the gap (unbiased: small updates are not lost
// on average). The random bits are the noise generator's counter under a key of their own (the seed XOR
// kRoundingKey): Philox output c0 rounds s, c1 m, c2 x.
// ---------------------------------------------------------------------------------------------------
enum Rounding : int { kNearest = 0, kStochasticBF16 = 1, kStochasticFP16 = 2 };
constexpr uint64_t kRoundingKey = 0x243F6A8885A308D3ull;  // (pi's first hex digits)

EXTRAP_HD Philox4 rounding_bits(uint64_t seed, uint32_t step, uint32_t index, uint64_t element) {
  return noise_bits(seed ^ kRoundingKey, step, index, element);
}

// The adaptive bases' 16-bit moments (exp_avg_dtype / exp_avg_sq_dtype) draw their rounding bits under a key of
// their own, apart from the noise's and the parameter's: Philox output c0 rounds m, c1 v (SPEC "16-bit optimizer
// state, adaptive bases").
constexpr uint64_t kMomentKey = 0x13198A2E03707344ull;  // (pi's next hex digits)

EXTRAP_HD Philox4 moment_bits(uint64_t seed, uint32_t step, uint32_t index, uint64_t element) {
  return noise_bits(seed ^ kMomentKey, step, index, element);
}

EXTRAP_HD uint32_t float_bits(float v) {
#ifdef __CUDA_ARCH__
  return __float_as_uint(v);
#else
  uint32_t u;
  std::memcpy(&u, &v, sizeof(u));
  return u;
#endif
}
EXTRAP_HD float bits_float(uint32_t u) {
#ifdef __CUDA_ARCH__
  return __uint_as_float(u);
#else
  float v;
  std::memcpy(&v, &u, sizeof(v));
  return v;
#endif
}

// The fp32 value of the chosen 16-bit neighbour of v (exactly representable: the launcher's conversion to
// the 16-bit type is then exact). `random`: 32 uniform bits. Infinities and NaN pass unchanged.
template <int R>
EXTRAP_HD float stochastic_round(float v, uint32_t random) {
  if (R == kNearest) return v;
  const uint32_t u = float_bits(v);
  const uint32_t exponent = (u >> 23) & 0xFFu;
  if (exponent == 0xFFu) return v;
  // the bits of v below the 16-bit type's last place: bf16 keeps 7 of fp32's 23 stored fraction bits at
  // every exponent (its range is fp32's); fp16 keeps 10 down to 2^-14, and below that its subnormals are
  // spaced 2^-24: one more bit dropped per halving
  int drop = 16;
  if (R == kStochasticFP16) {
    drop = 13 + (exponent < 113u ? static_cast<int>(113u - exponent) : 0);
    if (drop > 23) {  // |v| < 2^-24: 0 or 2^-24, the latter with probability |v| / 2^-24 (to 2^-24)
      const float fraction = fabsf(v) * 16777216.0f;
      const float uniform = static_cast<float>(random >> 8) * 5.9604644775390625e-8f;  // [0, 1), 2^-24 steps
      return copysignf(uniform < fraction ? 5.9604644775390625e-8f : 0.0f, v);
    }
  }
  // add `drop` random bits below the last place and truncate: the magnitude steps up to the next
  // neighbour (a carry may move into the exponent) exactly when they overflow it
  const uint32_t mask = (1u << drop) - 1u;
  return bits_float((u + (random & mask)) & ~mask);
}

// ---------------------------------------------------------------------------------------------------
// The compensated anchor (master_weights="compensated"; extrap_kernels/compensation.py): a bf16 x keeps the 16 low
// bits of its fp32 value as an int16 remainder, and the step runs on the joined fp32 value, x its own anchor. The
// split rounds half up at the 16th bit, so the remainder is the low half as a signed number, negative exactly where
// the high half was carried up, which the join undoes. (The launchers hold the remainders where the anchor goes.)
// ---------------------------------------------------------------------------------------------------
// The fp32 value of the bf16 bits `high` over `remainder`, exactly as split_value made them.
EXTRAP_HD float joined_value(uint16_t high, int16_t remainder) {
  const uint32_t top = static_cast<uint32_t>(high) - (remainder < 0 ? 1u : 0u);
  return bits_float((top << 16) | static_cast<uint16_t>(remainder));
}

// The bf16 bits of `value` rounded half up at the 16th bit, its low half in `remainder`. An inf or nan is kept in x
// (a nan as a nan: its quiet bit set) over remainder 0: a carry would turn a nan with high low bits, CUDA's canonical
// 0x7FFFFFFF among them, into -0, and the model must see the nan.
EXTRAP_HD uint16_t split_value(float value, int16_t& remainder) {
  const uint32_t u = float_bits(value);
  if ((u & 0x7F800000u) == 0x7F800000u) {
    remainder = 0;
    return static_cast<uint16_t>((u >> 16) | ((u & 0x007FFFFFu) != 0u ? 0x0040u : 0u));
  }
  const uint32_t low = u & 0xFFFFu;
  remainder = static_cast<int16_t>(static_cast<uint16_t>(low));
  return static_cast<uint16_t>((u >> 16) + (low >= 0x8000u ? 1u : 0u));
}

// What a phase reads and stores: launchers move s and m only where these say so (SPEC's traffic). Every
// phase reads exactly one of x and s: x for a full-precision snapshot and where the anchor is recomputed
// from it, s (the anchor, or x itself where x is its own anchor) everywhere else.
template <Phase P, bool kMaster>
EXTRAP_HD constexpr bool reads_param() {
  return (P == kExtrapolate && !kMaster) || P == kUpdatePastAnchorFree;
}
template <Phase P, bool kMaster>
EXTRAP_HD constexpr bool stores_anchor() {
  return P == kExtrapolate ? !kMaster : (P == kUpdate ? kMaster : P != kUpdatePastAnchorFree);
}
template <Phase P, bool kMomentum>
EXTRAP_HD constexpr bool stores_momentum() {
  return kMomentum && P != kExtrapolate;
}

// One element of one phase, in the arithmetic type: x (where reads_param), s (elsewhere) and m are read,
// and replaced by their new values. kMaster: s is the fp32 master of a 16-bit x (else s and x hold the
// same precision).
template <Phase P, bool kMomentum, bool kMaster, typename acc>
EXTRAP_HD void phase_element(acc& x, acc g, acc& s, acc& m, const Hyper<acc>& h, const TensorArgs<acc>& t,
                             uint64_t element) {
  if (P == kExtrapolate) {
    if (!kMaster) s = x;  // the snapshot
    x = extrapolated_point(s, g, kMomentum ? m : acc(0), h, t.trust);
    return;
  }
  if (P == kUpdatePastAnchorFree) s = recomputed_anchor(x, m, t.last_gamma);
  acc gp;
  const acc d = base_update<kMomentum>(s, m, g, h, t.trust, t.first, gp);
  if (P == kUpdate) {
    x = s;
  } else if (P == kUpdatePast || P == kUpdatePastAnchorFree) {
    x = past_point(s, gp, d, h);
  } else {
    x = s + h.noise_std * static_cast<acc>(noise_normal(h.seed, t.step, t.index, element));
  }
}

// 16-bit state without a master: the values a phase stores, each rounded stochastically (`bits`: the
// element's rounding_bits). The x of a local step is its anchor, rounded once.
template <Phase P, int R, typename acc>
EXTRAP_HD void round_stored(acc& x, acc& s, acc& m, const Philox4& bits) {
  s = stochastic_round<R>(s, bits.c0);
  m = stochastic_round<R>(m, bits.c1);
  x = P == kUpdate ? s : stochastic_round<R>(x, bits.c2);
}

// The adaptive bases' 16-bit x and anchor without a master (their moments stay fp32): the values a phase stores,
// rounded stochastically as round_stored rounds them (c0 the anchor, c2 x; a local step's x is its anchor).
template <Phase P, int R, typename acc>
EXTRAP_HD void round_stored_anchor(acc& x, acc& s, const Philox4& bits) {
  s = stochastic_round<R>(s, bits.c0);
  x = P == kUpdate ? s : stochastic_round<R>(x, bits.c2);
}

// found_inf: anchor, momentum and step stay; the snapshot is still taken and an extrapolated x
// returns to its anchor, so that x stays consistent with the abandoned iteration.
template <Phase P, bool kMaster, typename acc>
EXTRAP_HD void skipped_element(acc& x, acc& s) {
  if (P == kExtrapolate && !kMaster) s = x;
  if (P == kUpdate) x = s;
}
template <Phase P, bool kMaster>
EXTRAP_HD constexpr bool skip_stores_anchor() {
  return P == kExtrapolate && !kMaster;
}
template <Phase P>
EXTRAP_HD constexpr bool skip_stores_param() {
  return P == kUpdate;
}

// ---------------------------------------------------------------------------------------------------
// The adaptive bases: Adam, AdamW and LAMB (SPEC "Base update, Adam family and LAMB"). The moments m
// ("exp_avg"), v ("exp_avg_sq") and, with amsgrad, v_max ("max_exp_avg_sq") are fp32 state (fp64 for fp64
// parameters; or 16-bit, rounded stochastically: adaptive_direction's RM) whatever the master (a 16-bit x without one
// is its own anchor, or keeps a 16-bit one); a phase's direction e is trust * u, trust the LAMB ratio of the tensor (1
// for Adam).
// ---------------------------------------------------------------------------------------------------
template <typename T>
EXTRAP_HD T square_root(T v) {
#ifdef __CUDA_ARCH__
  return sqrt(v);
#else
  return std::sqrt(v);
#endif
}

// The bias corrections of the moments after update `step` (in double, as the reference's Python floats).
// Without them, bias1 carries Adagrad's learning-rate decay, 1 + (t - 1) * lr_decay (1 for every other base).
template <typename acc>
EXTRAP_HD void bias_corrections(const Hyper<acc>& h, float step, acc& bias1, acc& bias2_sqrt) {
  if (!h.bias_correction) {
    bias1 = h.lr_decay == acc(0) ? acc(1) : acc(1) + (static_cast<acc>(step) - acc(1)) * h.lr_decay;
    bias2_sqrt = acc(1);
    return;
  }
  bias1 = static_cast<acc>(1.0 - pow(h.beta1, static_cast<double>(step)));
  bias2_sqrt = static_cast<acc>(square_root(1.0 - pow(h.beta2, static_cast<double>(step))));
}

// The anchor-free update's per-tensor recovery values (TensorArgs): the weights (r0, r1) recorded by update `made`,
// the one that made x, and its bias corrections (left at 1 where made is 0: a fresh x, whose weights are 0).
template <typename acc>
EXTRAP_HD void recovery_args(const Hyper<acc>& h, const acc* weights, float made, TensorArgs<acc>& t) {
  t.recovery0 = weights[0];
  t.recovery1 = weights[1];
  if (made > 0.0f) bias_corrections(h, made, t.last_bias1, t.last_bias2_sqrt);
}

// a = (m / bias1) / (sqrt(second) / bias2_sqrt + eps), the per-tensor corrections applied as their reciprocals: two
// multiplications in place of two of its three divisions, which bound the CPU loops' time (the anchor-free update
// computes a twice: 6 divisions and 2 square roots an element took 1.3x torch's fused AdamW, measured). Each
// reciprocal adds one rounding; the update and the recovery compute a alike, so the recovery gives back exactly the
// a the update used.
// On the GPU, where the divisions hide behind the memory traffic, the quotient stays the formula's: the reciprocals'
// registers made nvcc spill in 16-bit and reading-pass kernels (make cuda-check), and its update and recovery still
// compute a alike.
template <typename acc>
EXTRAP_HD acc adam_quotient(acc m, acc second, acc bias1, acc bias2_sqrt, acc eps) {
#ifdef __CUDA_ARCH__
  return (m / bias1) / (square_root(second) / bias2_sqrt + eps);
#else
  return (m * (acc(1) / bias1)) / (square_root(second) * (acc(1) / bias2_sqrt) + eps);
#endif
}

// u, the undamped direction of one element: g' = g / grad_scale (the launch folds LAMB's clipping into
// grad_scale) with L2 decay unless decoupled; the moments updated in place (callers pass copies to look
// ahead); a = (m / bias1) / (sqrt(v) / bias2_sqrt + eps), v_max in place of v with amsgrad; u = a, plus
// the decoupled decay wd * s. Adagrad is the case beta1 = 0, grad_gain = 1 (m = g', which its launchers
// neither load nor store), beta2 = second_gain = 1 (v <- v + g'^2, its "sum") and no bias correction.
// RM: the rounding of 16-bit moments (extrap_math.h's Rounding; kNearest: moments of acc, or a look-ahead that
// stores nothing): m and v go to their 16-bit neighbours with `bits` (moment_bits: c0 m, c1 v) before the direction
// reads them, so that the stored moments are the ones the step used (the anchor-free update recovers its anchor
// from them). v_max, the larger of two 16-bit values, needs no rounding.
template <bool kAmsgrad, int RM = kNearest, typename acc>
EXTRAP_HD acc adaptive_direction(acc s, acc g, acc& m, acc& v, acc& v_max, const Hyper<acc>& h, acc bias1,
                                 acc bias2_sqrt, const Philox4& bits = Philox4{0, 0, 0, 0}) {
  acc gp = g * h.grad_factor;
  if (!h.decoupled) gp += h.weight_decay * s;
  m = static_cast<acc>(h.beta1) * m + h.grad_gain * gp;
  v = static_cast<acc>(h.beta2) * v + (h.second_gain * gp) * gp;
  if (RM != kNearest) {
    m = stochastic_round<RM>(m, bits.c0);
    v = stochastic_round<RM>(v, bits.c1);
  }
  if (kAmsgrad) v_max = v > v_max ? v : v_max;
  const acc second = kAmsgrad ? v_max : v;
  acc u = adam_quotient(m, second, bias1, bias2_sqrt, h.eps);
  if (h.decoupled) u += h.weight_decay * s;
  return u;
}

// The moments an adaptive launch keeps (the Triton kernels' MOMENTS, the same numbers).
enum Moments : int {
  kSumOnly = 1,         // Adagrad: v, the running sum of g'^2 (its m = g' is neither loaded nor stored)
  kFirstAndSecond = 2,  // Adam, AdamW, LAMB: m and v
  kWithMax = 3,         // with amsgrad: m, v and v_max
  kFirstAndNorm = 4,    // NovoGrad: m; the second moment is one number per tensor, its running gradient norm
};
EXTRAP_HD constexpr bool keeps_first(int moments) { return moments != kSumOnly; }
EXTRAP_HD constexpr bool keeps_second(int moments) { return moments != kFirstAndNorm; }
EXTRAP_HD constexpr bool keeps_max(int moments) { return moments == kWithMax; }

// NovoGrad's direction (SPEC "NovoGrad", Apex FusedNovoGrad): `norm` is the tensor's running gradient norm after
// this gradient (the launch blends it: extrap_kernels/novograd_math.py), d = norm / bias2_sqrt + eps. Apex's moment
// mode 1 (decoupled: reg_inside_moment False) m <- b1 * m + grad_gain * g', u = (m / bias1) / d + wd * s; mode 0
// m <- b1 * m + grad_gain * (g' / d + wd * s), u = m / bias1. m is updated in place (callers pass a copy to look
// ahead).
template <typename acc>
EXTRAP_HD acc novograd_direction(acc s, acc g, acc& m, acc norm, const Hyper<acc>& h, acc bias1, acc bias2_sqrt) {
  const acc gp = g * h.grad_factor;
  const acc d = norm / bias2_sqrt + h.eps;
  const acc b1 = static_cast<acc>(h.beta1);
  if (!h.decoupled) {
    m = b1 * m + h.grad_gain * (gp / d + h.weight_decay * s);
    return m / bias1;
  }
  m = b1 * m + h.grad_gain * gp;
  return (m / bias1) / d + h.weight_decay * s;
}

// e, the direction of one element of an adaptive phase: trust * u for the per-element second moments (trust the
// LAMB ratio, 1 for Adam); NovoGrad's launch passes each tensor's running norm where the ratio would be.
// RM: the 16-bit moments' rounding (adaptive_direction), keyed by the element, the count t.step and the parameter.
template <int M, int RM = kNearest, typename acc>
EXTRAP_HD acc adaptive_step_direction(acc s, acc g, acc& m, acc& v, acc& v_max, const Hyper<acc>& h,
                                      const TensorArgs<acc>& t, uint64_t element = 0) {
  if (M == kFirstAndNorm) return novograd_direction(s, g, m, t.trust, h, t.bias1, t.bias2_sqrt);
  if (RM == kNearest) return t.trust * adaptive_direction<keeps_max(M)>(s, g, m, v, v_max, h, t.bias1, t.bias2_sqrt);
  const Philox4 bits = moment_bits(h.seed, t.step, t.index, element);
  return t.trust * adaptive_direction<keeps_max(M), RM>(s, g, m, v, v_max, h, t.bias1, t.bias2_sqrt, bits);
}

// kUpdatePastAnchorFree, the Adam family (extrap_kernels/recovery.py; SPEC "Memory-lean variants, adaptive bases
// and noise mode"): the last update made x = s - gamma * e from the moments it stored, which give its a back as it
// computed it, so s = x + r0 * x + r1 * a with that update's weights (0, gamma for Adam; AdamW's fold its decay).
template <bool kAmsgrad, typename acc>
EXTRAP_HD acc recovered_adaptive_anchor(acc x, acc m, acc v, acc v_max, const Hyper<acc>& h, const TensorArgs<acc>& t) {
  if (t.recovery1 == acc(0)) return x;  // a fresh or written x is its anchor (and a may be 0 / 0 there, with eps 0)
  const acc a = adam_quotient(m, kAmsgrad ? v_max : v, t.last_bias1, t.last_bias2_sqrt, h.eps);
  return x + t.recovery0 * x + t.recovery1 * a;
}

// One element of one adaptive phase (kExtrapolate, kUpdate, kUpdatePast, kUpdateNoise; the Adam family's
// kUpdatePastAnchorFree too): as phase_element,
// with the moments M keeps read and replaced. kExtrapolate ("local") looks ahead: the direction from
// the moments as if updated with this gradient (t.bias* of the count after it), the state read only. RM: an update's
// rounding of 16-bit moments (adaptive_direction; the look-ahead, storing nothing, rounds none).
template <Phase P, int M, bool kMaster, int RM = kNearest, typename acc>
EXTRAP_HD void adaptive_element(acc& x, acc g, acc& s, acc& m, acc& v, acc& v_max, const Hyper<acc>& h,
                                const TensorArgs<acc>& t, uint64_t element) {
  if (P == kExtrapolate) {
    if (!kMaster) s = x;  // the snapshot
    acc m1 = m, v1 = v, v_max1 = v_max;
    x = s - h.gamma * adaptive_step_direction<M>(s, g, m1, v1, v_max1, h, t);
    return;
  }
  if (P == kUpdatePastAnchorFree) s = recovered_adaptive_anchor<keeps_max(M)>(x, m, v, v_max, h, t);
  const acc e = adaptive_step_direction<M, RM>(s, g, m, v, v_max, h, t, element);
  s -= h.lr * e;
  if (P == kUpdate) {
    x = s;
  } else if (P == kUpdatePast || P == kUpdatePastAnchorFree) {
    x = s - h.gamma * e;
  } else {
    x = s + h.noise_std * static_cast<acc>(noise_normal(h.seed, t.step, t.index, element));
  }
}

// Where LAMB's reading pass takes an element's anchor from: the anchor array, x itself (before a snapshot of x's own
// precision) or, for the anchor-free update, x and the moments that give it back (recovered_adaptive_anchor).
enum AnchorFrom : int { kAnchorArray = 0, kParamItself = 1, kRecoveredFromParam = 2 };

template <int kFrom, bool kAmsgrad, typename acc>
EXTRAP_HD acc reading_pass_anchor(acc x, acc s, acc m, acc v, acc v_max, const Hyper<acc>& h,
                                  const TensorArgs<acc>& t) {
  if (kFrom == kRecoveredFromParam) return recovered_adaptive_anchor<kAmsgrad>(x, m, v, v_max, h, t);
  return kFrom == kParamItself ? x : s;
}

// LAMB's reading pass, one element: adds s^2 and u^2 (u the direction of the coming update, or of the
// look-ahead: the moments as if updated, t.bias* of that count) to the tensor's sums. Nothing is stored. RM: the
// coming update's rounding of 16-bit moments, which its direction reads (t.step that update's count; none before
// a look-ahead).
template <bool kAmsgrad, int RM = kNearest, typename acc>
EXTRAP_HD void adaptive_norm_element(acc s, acc g, acc m, acc v, acc v_max, const Hyper<acc>& h,
                                     const TensorArgs<acc>& t, acc& s_squares, acc& u_squares, uint64_t element = 0) {
  const Philox4 bits = RM == kNearest ? Philox4{0, 0, 0, 0} : moment_bits(h.seed, t.step, t.index, element);
  const acc u = adaptive_direction<kAmsgrad, RM>(s, g, m, v, v_max, h, t.bias1, t.bias2_sqrt, bits);
  s_squares += s * s;
  u_squares += u * u;
}

}  // namespace extrap
