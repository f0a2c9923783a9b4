// spikelite native LIF kernels: the whole sequence forward and backward through time, one call each,
// registered as the operator spikelite_native::lif with its autograd in C++ (no Python on the step's
// backward). Same dynamics as spikelite.snn.neuron (SpikingJelly's conventions):
//   charge  H_t = V + (X_t - (V - r)) / tau       (decay_input)    H_t = V - (V - r) / tau + X_t
//   fire    S_t = [H_t >= th]
//   reset   V = S_t ? r : H_t                     (hard)           V = H_t - S_t * th       (soft, r = 0)
// Fixed tau and threshold (learned ones use the Python fused path). CPU, float32 / float64.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/autograd.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <optional>
#include <bit>
#include <cmath>
#include <cstdint>
#include <functional>
#include <vector>

namespace spikelite_native {

constexpr int64_t kChunk = 512;   // elements whose membranes are carried through time together
constexpr int64_t kGrain = 8192;  // at::parallel_for splits a tensor into pieces of at least this many

enum Surrogate : int64_t { kSigmoid = 0, kATan = 1, kFastSigmoid = 2, kTriangle = 3, kRectangle = 4 };

// exp(x) for float in a form the compiler vectorises (std::exp is a scalar libm call, which made the
// sigmoid surrogate's backward 5x slower than the others): x = n·ln2 + r with |r| <= ln2/2, exp(r) by
// Cephes' degree-6 polynomial (relative error ~1e-7), 2^n built in the exponent bits. x is clamped to
// [-87.3, 88.3] so 2^n stays a normal float; beyond that sigmoid's 1/(1 + e) is 0 or 1 to float precision.
inline float vexp(float x) {
  x = x < -87.3f ? -87.3f : x;
  x = x > 88.3f ? 88.3f : x;
  const float n = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;  // round to nearest
  const float r = (x - n * 0.693359375f) + n * 2.12194440e-4f;
  const float z = r * r;
  // the polynomial by Estrin's scheme (three independent pairs, then r^2 and r^4) rather than Horner's
  // chain: fewer dependent steps in the loop that bounds the sigmoid surrogate's backward
  const float p01 = 1.6666665459e-1f * r + 5.0000001201e-1f;
  const float p23 = 8.3334519073e-3f * r + 4.1665795894e-2f;
  const float p45 = 1.9875691500e-4f * r + 1.3981999507e-3f;
  float y = (p45 * (z * z) + p23 * z) + p01;
  y = y * z + r + 1.0f;
  const float scale = std::bit_cast<float>((static_cast<int32_t>(n) + 127) << 23);
  return y * scale;
}
inline double vexp(double x) { return std::exp(x); }

// Surrogate constants rounded as the Python formulas round them (a Python float meets a tensor: the
// constant is computed in double, then cast to the tensor's dtype).
template <typename S>
struct SurrogateConsts {
  S a, c1, c2;
  explicit SurrogateConsts(double alpha)
      : a(S(alpha)), c1(S(M_PI / 2.0 * alpha)), c2(S(alpha / 2.0)) {}
};

template <typename S, int64_t kind>
inline S surrogate_grad(S x, const SurrogateConsts<S>& k) {
  if constexpr (kind == kSigmoid) {  // a·σ(a·x)·(1 − σ(a·x)), rounded as torch.sigmoid's users round it
    const S s = S(1) / (S(1) + vexp(-(k.a * x)));
    return k.a * s * (S(1) - s);
  } else if constexpr (kind == kATan) {  // (a/2) / (1 + (π/2·a·x)²)
    const S u = k.c1 * x;
    return k.c2 / (S(1) + u * u);
  } else if constexpr (kind == kFastSigmoid) {  // 1 / (a·|x| + 1)²
    const S d = k.a * std::abs(x) + S(1);
    return S(1) / (d * d);
  } else if constexpr (kind == kTriangle) {  // a·max(0, 1 − a·|x|)
    const S u = S(1) - k.a * std::abs(x);
    return k.a * (u > S(0) ? u : S(0));
  } else {  // a·[|x| < 0.5/a]: c1 holds 0.5/a for this kind
    return std::abs(x) < k.c1 ? k.a : S(0);
  }
}

struct Params {
  double tau, th, r, alpha;
  bool decay_input, soft, detach;
  int64_t surrogate;
};

// 1/tau is exact when tau is a power of two (the default 2) or infinite (IF): a·(1/tau) then rounds
// exactly as a/tau, and the kernels multiply instead of divide (a division costs several multiplies).
bool exact_inverse(double tau) {
  if (std::isinf(tau)) return true;
  int e = 0;
  return std::isfinite(tau) && std::frexp(tau, &e) == 0.5;
}

template <typename S, bool inv>
inline S over_tau(S a, S tau, S itau) {
  if constexpr (inv) return a * itau;
  else return a / tau;
}

// The charge H_t from the membrane V and the input X_t, written once for the forward and for the
// backward's recomputation (same expression, same rounding: the backward sees the forward's H).
template <typename S, bool decay, bool inv>
inline S charge(S v, S x, S tau, S itau, S r) {
  if constexpr (decay) return v + over_tau<S, inv>(x - (v - r), tau, itau);
  else return v - over_tau<S, inv>(v - r, tau, itau) + x;
}

template <typename S, bool soft>
inline S after_fire(S h, S s, S th, S r) {
  if constexpr (soft) return h - s * th;
  else return h >= th ? r : h;
}

// The input as the kernels read it: element m of step t at x[t * step + m], with step = M (T outermost
// in memory, every other element inside one step) or 0 (one step broadcast over time, e.g. the
// direct-encoded input expanded to [T, ...]). Other layouts are copied (contiguous).
struct Seq {
  at::Tensor x;
  int64_t step;
};

// Whether one step x[t] (dims 1..) fills exactly M elements of memory, each once (any order of its
// dims): sorted by stride, every dim's stride is the product of the sizes inside it. Computed from the
// sizes and strides (x.select(0, 0) would be one more operator call per layer).
bool step_dense(const at::Tensor& x, int64_t M) {
  std::vector<std::pair<int64_t, int64_t>> dims;  // (stride, size) of the dims with size > 1
  for (int64_t d = 1; d < x.dim(); ++d)
    if (x.size(d) != 1) dims.emplace_back(x.stride(d), x.size(d));
  std::sort(dims.begin(), dims.end());
  int64_t expected = 1;
  for (const auto& [stride, size] : dims) {
    if (stride != expected) return false;
    expected *= size;
  }
  return expected == M;
}

Seq as_seq(const at::Tensor& x) {
  const int64_t T = x.size(0);
  const int64_t M = T ? x.numel() / T : 0;
  if (T >= 1 && M > 0 && step_dense(x, M)) {
    if (T == 1 || x.stride(0) == M) return {x, M};
    if (x.stride(0) == 0) return {x, 0};
  }
  return {x.contiguous(), M};
}

// A new [T, ...] tensor laid out as x's steps are (T outermost, each step in x's inner layout).
at::Tensor empty_steps(const Seq& q) {
  const at::Tensor& x = q.x;
  const int64_t M = x.size(0) ? x.numel() / x.size(0) : 0;
  std::vector<int64_t> strides(x.strides().begin(), x.strides().end());
  strides[0] = M;
  return at::empty_strided(x.sizes(), strides, x.options());
}

// One chunk of elements through time. Flags are template arguments so the inner loops have no branches
// and vectorise; the chunk's membranes stay in a small stack array between steps. They start at v0 (one
// step's layout) when given, else at rest, and end in v_end when given (a chunked run's windows).
template <typename S, bool decay, bool soft, bool inv, bool keep_h>
void forward_chunk(const S* x, int64_t xstep, S* spikes, S* h_out, const S* v0, S* v_end, int64_t T, int64_t M,
                   int64_t b, int64_t n, S tau, S itau, S th, S r) {
  S v[kChunk];
  if (v0)
    for (int64_t i = 0; i < n; ++i) v[i] = v0[b + i];
  else
    for (int64_t i = 0; i < n; ++i) v[i] = r;
  for (int64_t t = 0; t < T; ++t) {
    const S* __restrict__ xt = x + t * xstep + b;
    S* __restrict__ st = spikes + t * M + b;
    S* __restrict__ ht = keep_h ? h_out + t * M + b : nullptr;
    for (int64_t i = 0; i < n; ++i) {
      const S h = charge<S, decay, inv>(v[i], xt[i], tau, itau, r);
      const S s = h >= th ? S(1) : S(0);
      st[i] = s;
      if constexpr (keep_h) ht[i] = h;
      v[i] = after_fire<S, soft>(h, s, th, r);
    }
  }
  if (v_end)
    for (int64_t i = 0; i < n; ++i) v_end[b + i] = v[i];
}

template <typename S>
struct Consts {
  S tau, itau, th, r;
  explicit Consts(const Params& p)
      : tau(S(p.tau)), itau(S(1.0 / p.tau)), th(S(p.th)), r(S(p.soft ? 0.0 : p.r)) {}
};

template <typename S, bool decay, bool soft, bool inv, bool keep_h>
void forward_kernel(const S* x, int64_t xstep, S* spikes, S* h_out, const S* v0, S* v_end, int64_t T, int64_t M,
                    const Params& p) {
  const Consts<S> c(p);
  at::parallel_for(0, M, kGrain, [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; b += kChunk)
      forward_chunk<S, decay, soft, inv, keep_h>(x, xstep, spikes, h_out, v0, v_end, T, M, b,
                                                 std::min(kChunk, end - b), c.tau, c.itau, c.th, c.r);
  });
}

template <typename S, bool keep_h>
void forward_dispatch(const S* x, int64_t xstep, S* spikes, S* h_out, int64_t T, int64_t M, const Params& p,
                      const S* v0 = nullptr, S* v_end = nullptr) {
  const bool inv = exact_inverse(p.tau);
#define SPIKELITE_FWD(D, SO, I) \
  if (p.decay_input == D && p.soft == SO && inv == I) \
    return forward_kernel<S, D, SO, I, keep_h>(x, xstep, spikes, h_out, v0, v_end, T, M, p);
  SPIKELITE_FWD(true, false, true) SPIKELITE_FWD(true, false, false) SPIKELITE_FWD(true, true, true)
  SPIKELITE_FWD(true, true, false) SPIKELITE_FWD(false, false, true) SPIKELITE_FWD(false, false, false)
  SPIKELITE_FWD(false, true, true) SPIKELITE_FWD(false, true, false)
#undef SPIKELITE_FWD
}

// Backward of one chunk. H is not stored by the forward: the chunk's charges are recomputed from the
// saved input (a forward sweep into hbuf, the same arithmetic as the forward), then the gradient runs
// back through time. At T = 1 the two sweeps are one loop.
template <typename S, bool decay, bool soft, bool detach, bool inv, int64_t kind>
void backward_chunk(const S* x, int64_t xstep, const S* g, S* gx, S* hbuf, int64_t T, int64_t M, int64_t b,
                    int64_t n, const Consts<S>& c, const SurrogateConsts<S>& k) {
  const S tau = c.tau, itau = c.itau, th = c.th, r = c.r;
  if (T == 1) {
    const S* __restrict__ x0 = x + b;
    const S* __restrict__ g0 = g + b;
    S* __restrict__ gx0 = gx + b;
    for (int64_t i = 0; i < n; ++i) {
      const S h = charge<S, decay, inv>(r, x0[i], tau, itau, r);
      const S gh = g0[i] * surrogate_grad<S, kind>(h - th, k);
      gx0[i] = decay ? over_tau<S, inv>(gh, tau, itau) : gh;
    }
    return;
  }
  {
    S v[kChunk];
    for (int64_t i = 0; i < n; ++i) v[i] = r;
    for (int64_t t = 0; t < T; ++t) {
      const S* __restrict__ xt = x + t * xstep + b;
      S* __restrict__ ht = hbuf + t * kChunk;
      for (int64_t i = 0; i < n; ++i) {
        const S h = charge<S, decay, inv>(v[i], xt[i], tau, itau, r);
        ht[i] = h;
        v[i] = after_fire<S, soft>(h, h >= th ? S(1) : S(0), th, r);
      }
    }
  }
  const S keep = S(1) - S(1) / tau;
  S gv[kChunk];  // dL/dV flowing back from step t+1
  for (int64_t t = T - 1; t >= 0; --t) {
    const S* __restrict__ ht = hbuf + t * kChunk;
    const S* __restrict__ gt = g + t * M + b;
    S* __restrict__ gxt = gx + t * M + b;
    if (t == T - 1) {  // nothing flows back from a later step
      for (int64_t i = 0; i < n; ++i) {
        const S gh = gt[i] * surrogate_grad<S, kind>(ht[i] - th, k);
        gxt[i] = decay ? over_tau<S, inv>(gh, tau, itau) : gh;
        gv[i] = gh * keep;
      }
      continue;
    }
    for (int64_t i = 0; i < n; ++i) {
      const S hi = ht[i];
      const S sg = surrogate_grad<S, kind>(hi - th, k);
      S gh = gt[i] * sg;
      if constexpr (soft) {
        gh = gh + (detach ? gv[i] : gv[i] * (S(1) - th * sg));
      } else {
        const S not_fired = hi < th ? S(1) : S(0);
        gh = gh + gv[i] * (detach ? not_fired : not_fired + (r - hi) * sg);
      }
      gxt[i] = decay ? over_tau<S, inv>(gh, tau, itau) : gh;
      gv[i] = gh * keep;
    }
  }
}

template <typename S, bool decay, bool soft, bool detach, bool inv, int64_t kind>
void backward_kernel(const S* x, int64_t xstep, const S* g, S* gx, int64_t T, int64_t M, const Params& p) {
  const Consts<S> c(p);
  SurrogateConsts<S> k(p.alpha);
  if (kind == kRectangle) k.c1 = S(0.5 / p.alpha);
  at::parallel_for(0, M, kGrain, [&](int64_t begin, int64_t end) {
    std::vector<S> hbuf(T > 1 ? T * kChunk : 0);  // the chunk's charges, one row per step
    for (int64_t b = begin; b < end; b += kChunk)
      backward_chunk<S, decay, soft, detach, inv, kind>(x, xstep, g, gx, hbuf.data(), T, M, b,
                                                        std::min(kChunk, end - b), c, k);
  });
}

template <typename S, int64_t kind>
void backward_flags(const S* x, int64_t xstep, const S* g, S* gx, int64_t T, int64_t M, const Params& p) {
  const bool inv = exact_inverse(p.tau);
#define SPIKELITE_BWD(D, SO, DE) \
  if (p.decay_input == D && p.soft == SO && p.detach == DE) { \
    if (inv) return backward_kernel<S, D, SO, DE, true, kind>(x, xstep, g, gx, T, M, p); \
    return backward_kernel<S, D, SO, DE, false, kind>(x, xstep, g, gx, T, M, p); \
  }
  SPIKELITE_BWD(true, false, true) SPIKELITE_BWD(true, false, false) SPIKELITE_BWD(true, true, true)
  SPIKELITE_BWD(true, true, false) SPIKELITE_BWD(false, false, true) SPIKELITE_BWD(false, false, false)
  SPIKELITE_BWD(false, true, true) SPIKELITE_BWD(false, true, false)
#undef SPIKELITE_BWD
}

template <typename S>
void backward_dispatch(const S* x, int64_t xstep, const S* g, S* gx, int64_t T, int64_t M, const Params& p) {
  switch (p.surrogate) {
    case kSigmoid: return backward_flags<S, kSigmoid>(x, xstep, g, gx, T, M, p);
    case kATan: return backward_flags<S, kATan>(x, xstep, g, gx, T, M, p);
    case kFastSigmoid: return backward_flags<S, kFastSigmoid>(x, xstep, g, gx, T, M, p);
    case kTriangle: return backward_flags<S, kTriangle>(x, xstep, g, gx, T, M, p);
    default: return backward_flags<S, kRectangle>(x, xstep, g, gx, T, M, p);
  }
}

void check(const at::Tensor& x) {
  TORCH_CHECK(x.device().is_cpu(), "spikelite_native::lif runs on CPU tensors, got ", x.device());
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble,
              "spikelite_native::lif takes float32 or float64, got ", x.scalar_type());
  TORCH_CHECK(x.dim() >= 1 && x.size(0) >= 1, "spikelite_native::lif expects [T, ...] with T >= 1");
}

// spikes (and H when keep_h) for the input q, in the layout of q's steps
std::pair<at::Tensor, at::Tensor> run_forward(const Seq& q, const Params& p, bool keep_h) {
  const at::Tensor& x = q.x;
  const int64_t T = x.size(0), M = x.numel() / T;
  at::Tensor spikes = empty_steps(q);
  at::Tensor h = keep_h ? empty_steps(q) : at::Tensor();
  if (M == 0) return {spikes, h};
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "spikelite_lif_forward", [&] {
    if (keep_h)
      forward_dispatch<scalar_t, true>(x.const_data_ptr<scalar_t>(), q.step, spikes.mutable_data_ptr<scalar_t>(),
                                       h.mutable_data_ptr<scalar_t>(), T, M, p);
    else
      forward_dispatch<scalar_t, false>(x.const_data_ptr<scalar_t>(), q.step, spikes.mutable_data_ptr<scalar_t>(),
                                        nullptr, T, M, p);
  });
  return {spikes, h};
}

// One window of a chunked run (spikelite.snn.window): spikes from the membrane v0 (one step of x; undefined:
// from rest), and the membrane after the last step, in the layout of one step of the spikes. Inference only.
std::tuple<at::Tensor, at::Tensor> run_steps(const Seq& q, const at::Tensor& v0, const Params& p) {
  const at::Tensor& x = q.x;
  const int64_t T = x.size(0), M = x.numel() / T;
  at::Tensor spikes = empty_steps(q);
  const at::Tensor step = spikes.select(0, 0);
  at::Tensor v_end = at::empty_strided(step.sizes(), step.strides(), x.options());
  at::Tensor v_in;
  if (v0.defined()) {
    TORCH_CHECK(v0.sizes() == step.sizes(), "spikelite_native::lif_steps: membrane of shape ", v0.sizes(),
                " for steps of shape ", step.sizes());
    v_in = at::empty_strided(step.sizes(), step.strides(), x.options()).copy_(v0);  // the kernel's element order
  }
  if (M == 0) return {spikes, v_end};
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "spikelite_lif_steps", [&] {
    forward_dispatch<scalar_t, false>(x.const_data_ptr<scalar_t>(), q.step, spikes.mutable_data_ptr<scalar_t>(),
                                      nullptr, T, M, p, v_in.defined() ? v_in.const_data_ptr<scalar_t>() : nullptr,
                                      v_end.mutable_data_ptr<scalar_t>());
  });
  return {spikes, v_end};
}

// dL/dX from the saved input q and dL/dS
at::Tensor run_backward(const Seq& q, const at::Tensor& grad_in, const Params& p) {
  const at::Tensor& x = q.x;
  at::Tensor gx = empty_steps(q);
  if (!grad_in.defined()) return gx.zero_();
  TORCH_CHECK(grad_in.sizes() == x.sizes(), "spikelite_native::lif: gradient of shape ", grad_in.sizes(),
              " for spikes of shape ", x.sizes());
  at::Tensor grad = grad_in;
  if (grad.strides() != gx.strides() || grad.scalar_type() != x.scalar_type())
    grad = at::empty_like(gx).copy_(grad);
  const int64_t T = x.size(0), M = x.numel() / T;
  if (M == 0) return gx;
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "spikelite_lif_backward", [&] {
    backward_dispatch<scalar_t>(x.const_data_ptr<scalar_t>(), q.step, grad.const_data_ptr<scalar_t>(),
                                gx.mutable_data_ptr<scalar_t>(), T, M, p);
  });
  return gx;
}

// The neuron's arguments kept on an autograd node between its forward and backward.
void save_params(torch::autograd::AutogradContext* ctx, const Params& p) {
  ctx->saved_data["tau"] = p.tau;
  ctx->saved_data["th"] = p.th;
  ctx->saved_data["r"] = p.r;
  ctx->saved_data["alpha"] = p.alpha;
  ctx->saved_data["flags"] = int64_t(p.decay_input) | int64_t(p.soft) << 1 | int64_t(p.detach) << 2;
  ctx->saved_data["surrogate"] = p.surrogate;
}

Params load_params(torch::autograd::AutogradContext* ctx) {
  const int64_t flags = ctx->saved_data["flags"].toInt();
  return Params{ctx->saved_data["tau"].toDouble(), ctx->saved_data["th"].toDouble(), ctx->saved_data["r"].toDouble(),
                ctx->saved_data["alpha"].toDouble(), bool(flags & 1), bool(flags & 2), bool(flags & 4),
                ctx->saved_data["surrogate"].toInt()};
}

class NativeLIF : public torch::autograd::Function<NativeLIF> {
 public:
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& x, double tau, double th,
                            double r, double alpha, bool decay_input, bool soft, bool detach, int64_t surrogate) {
    Params p{tau, th, r, alpha, decay_input, soft, detach, surrogate};
    check(x);
    const Seq q = as_seq(x);
    auto out = run_forward(q, p, false);
    // The input (or its contiguous copy) is saved, not H: the backward recomputes H from it, so the
    // forward writes spikes only; a broadcast input is saved as its one step.
    ctx->save_for_backward({q.x});
    ctx->saved_data["step"] = q.step;
    save_params(ctx, p);
    return out.first;
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    const Seq q{ctx->get_saved_variables()[0], ctx->saved_data["step"].toInt()};
    const Params p = load_params(ctx);
    at::Tensor gx = run_backward(q, grads[0], p);
    return {gx, at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(),
            at::Tensor()};
  }
};

// A BatchNorm and the LIF layer it feeds, with nothing in between kept for backward (recompute_neurons):
// the forward runs ATen's BatchNorm and the LIF and keeps only the BatchNorm's input and statistics; the
// backward recomputes the BatchNorm's output with the same ATen call (the same values, bit for bit), runs
// the LIF's backward on it, then ATen's BatchNorm backward. So gradients and running statistics are those
// of the two layers run one after the other, without a Python autograd function or a second graph.
// z holds T steps of N rows ([T*N, ...]), or N rows broadcast over the T steps ([N, ...], broadcast).
namespace {
std::optional<at::Tensor> opt(const at::Tensor& t) {
  return t.defined() ? std::optional<at::Tensor>(t) : std::nullopt;
}

// [T, rows/T, ...] view of a folded [rows, ...] tensor, or the broadcast of [N, ...] over T
at::Tensor steps_of(const at::Tensor& y, int64_t T, bool broadcast) {
  std::vector<int64_t> sizes(y.sizes().begin(), y.sizes().end());
  if (!broadcast) sizes[0] /= T;
  sizes.insert(sizes.begin(), T);
  return broadcast ? y.unsqueeze(0).expand(sizes) : y.reshape(sizes);
}

at::Tensor folded(const at::Tensor& s) {  // [T, N, ...] -> [T*N, ...]
  return s.flatten(0, 1);
}
}  // namespace

class NativeBNLIF : public torch::autograd::Function<NativeBNLIF> {
 public:
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& z, const at::Tensor& weight,
                            const at::Tensor& bias, const at::Tensor& running_mean, const at::Tensor& running_var,
                            bool training, double momentum, double eps, int64_t T, bool broadcast, double tau,
                            double th, double r, double alpha, bool decay_input, bool soft, bool detach,
                            int64_t surrogate) {
    Params p{tau, th, r, alpha, decay_input, soft, detach, surrogate};
    auto bn = at::native_batch_norm(z, opt(weight), opt(bias), opt(running_mean), opt(running_var), training,
                                    momentum, eps);
    const at::Tensor y = std::get<0>(bn);
    check(y);
    auto out = run_forward(as_seq(steps_of(y, T, broadcast)), p, false);
    // in training the statistics of the batch are used (saved), the running ones only get updated: they
    // are not kept (a later forward changes them); in eval the running ones are the statistics
    if (training)
      ctx->save_for_backward({z, weight, bias, std::get<1>(bn), std::get<2>(bn)});
    else
      ctx->save_for_backward({z, weight, bias, std::get<1>(bn), std::get<2>(bn), running_mean, running_var});
    ctx->saved_data["training"] = training;
    ctx->saved_data["eps"] = eps;
    ctx->saved_data["T"] = T;
    ctx->saved_data["broadcast"] = broadcast;
    save_params(ctx, p);
    return folded(out.first);
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const at::Tensor &z = saved[0], &weight = saved[1], &bias = saved[2], &mean = saved[3], &invstd = saved[4];
    const bool training = ctx->saved_data["training"].toBool();
    const at::Tensor running_mean = training ? at::Tensor() : saved[5];
    const at::Tensor running_var = training ? at::Tensor() : saved[6];
    const double eps = ctx->saved_data["eps"].toDouble();
    const int64_t T = ctx->saved_data["T"].toInt();
    const bool broadcast = ctx->saved_data["broadcast"].toBool();
    const Params p = load_params(ctx);
    // the BatchNorm's output again: the same call on the same input (no running statistics to update)
    const at::Tensor y = std::get<0>(at::native_batch_norm(z, opt(weight), opt(bias), opt(running_mean),
                                                           opt(running_var), training, 0.0, eps));
    const at::Tensor y_steps = steps_of(y, T, broadcast);
    at::Tensor g = grads[0];
    if (g.defined()) g = steps_of(g, T, false);
    at::Tensor gy = run_backward(as_seq(y_steps), g, p);
    gy = broadcast ? gy.sum(0) : folded(gy);
    const std::array<bool, 3> mask{ctx->needs_input_grad(0), weight.defined() && ctx->needs_input_grad(1),
                                   bias.defined() && ctx->needs_input_grad(2)};
    auto gs = at::native_batch_norm_backward(gy, z, opt(weight), opt(running_mean), opt(running_var), opt(mean),
                                             opt(invstd), training, eps, mask);
    return {std::get<0>(gs), std::get<1>(gs), std::get<2>(gs), at::Tensor(), at::Tensor(), at::Tensor(),
            at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(),
            at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

at::Tensor bn_lif(const at::Tensor& z, const std::optional<at::Tensor>& weight, const std::optional<at::Tensor>& bias,
                  const std::optional<at::Tensor>& running_mean, const std::optional<at::Tensor>& running_var,
                  bool training, double momentum, double eps, int64_t T, bool broadcast, double tau, double th,
                  double r, double alpha, bool decay_input, bool soft, bool detach, int64_t surrogate) {
  TORCH_CHECK(surrogate >= 0 && surrogate <= 4, "spikelite_native::bn_lif: unknown surrogate ", surrogate);
  TORCH_CHECK(T >= 1 && z.dim() >= 2 && (broadcast || z.size(0) % T == 0),
              "spikelite_native::bn_lif: ", z.size(0), " rows are not T = ", T, " steps of a batch");
  const auto get = [](const std::optional<at::Tensor>& t) { return t.has_value() ? *t : at::Tensor(); };
  return NativeBNLIF::apply(z, get(weight), get(bias), get(running_mean), get(running_var), training, momentum, eps,
                            T, broadcast, tau, th, r, alpha, decay_input, soft, detach, surrogate);
}

at::Tensor lif(const at::Tensor& x, double tau, double th, double r, double alpha, bool decay_input, bool soft,
               bool detach, int64_t surrogate) {
  TORCH_CHECK(surrogate >= 0 && surrogate <= 4, "spikelite_native::lif: unknown surrogate ", surrogate);
  if (at::GradMode::is_enabled() && x.requires_grad())
    return NativeLIF::apply(x, tau, th, r, alpha, decay_input, soft, detach, surrogate);
  check(x);
  Params p{tau, th, r, alpha, decay_input, soft, detach, surrogate};
  return run_forward(as_seq(x), p, false).first;
}

// The pieces on their own, for tests and benchmarks: forward returning (spikes, H), and backward from
// the input X (H recomputed); and one window of a chunked run: (spikes, membrane after the last step) from a
// given membrane.
std::tuple<at::Tensor, at::Tensor> lif_forward(const at::Tensor& x, double tau, double th, double r,
                                               bool decay_input, bool soft) {
  check(x);
  Params p{tau, th, r, 1.0, decay_input, soft, false, 0};
  auto out = run_forward(as_seq(x), p, true);
  return {out.first, out.second};
}

std::tuple<at::Tensor, at::Tensor> lif_steps(const at::Tensor& x, const std::optional<at::Tensor>& v0, double tau,
                                             double th, double r, bool decay_input, bool soft) {
  check(x);
  Params p{tau, th, r, 1.0, decay_input, soft, false, 0};
  return run_steps(as_seq(x), v0.has_value() ? *v0 : at::Tensor(), p);
}

at::Tensor lif_backward(const at::Tensor& x, const at::Tensor& grad, double tau, double th, double r, double alpha,
                        bool decay_input, bool soft, bool detach, int64_t surrogate) {
  check(x);
  TORCH_CHECK(surrogate >= 0 && surrogate <= 4, "spikelite_native::lif: unknown surrogate ", surrogate);
  Params p{tau, th, r, alpha, decay_input, soft, detach, surrogate};
  return run_backward(as_seq(x), grad, p);
}


// ConversionIF (spikelite.snn.neuron.ConversionIF) forward, inference only: the integrate-and-fire neuron of
// rate-coded conversion, whose spikes carry its threshold th, with signed spikes, bursts and rate r. Per step
// t (its index in the whole run, `start` + the step's index here), the Python formulas' arithmetic in S:
//   V += X_t;  burst > 1: S = min(max(floor(V / th), signed ? -C : 0), min(r(t+1) - C, burst)),  C += S
//              burst = 1: S = [V >= th] - (signed ? [V < 0 and C > 0] : 0),                      C += S
//   O_t = S·th;  V -= O_t
// V starts at X_0·0 + th·v_init (v0/c0 absent) or at v0 with count c0 (one window of a chunked run).
// With `inside` (training): also [0 <= X_0 + ... + X_t <= r(t+1)·th] per step, the rate code's straight-through
// gradient mask (ConversionIF._forward_autograd), the running sum in S as the Python loop adds it.
template <typename S, bool burst, bool signed_>
void cif_chunk(const S* x, int64_t xstep, S* out, const S* v0, const S* c0, S* v_end, S* c_end, int64_t T,
               int64_t M, int64_t b, int64_t n, S th, S vi, S rate, S maxb, int64_t start, bool* inside = nullptr) {
  S v[kChunk], c[kChunk], tot[kChunk];
  if (inside)
    for (int64_t i = 0; i < n; ++i) tot[i] = S(0);
  if (v0) {
    for (int64_t i = 0; i < n; ++i) v[i] = v0[b + i];
  } else {
    const S* __restrict__ x0 = x + b;
    for (int64_t i = 0; i < n; ++i) v[i] = x0[i] * S(0) + vi;
  }
  if (c0)
    for (int64_t i = 0; i < n; ++i) c[i] = c0[b + i];
  else
    for (int64_t i = 0; i < n; ++i) c[i] = S(0);
  for (int64_t t = 0; t < T; ++t) {
    const S* __restrict__ xt = x + t * xstep + b;
    S* __restrict__ ot = out + t * M + b;
    const S cap = rate * S(start + t + 1);
    if (inside) {
      bool* __restrict__ it = inside + t * M + b;
      const S top = cap * th;
      for (int64_t i = 0; i < n; ++i) {
        tot[i] = tot[i] + xt[i];
        it[i] = tot[i] >= S(0) && tot[i] <= top;
      }
    }
    for (int64_t i = 0; i < n; ++i) {
      const S h = v[i] + xt[i];
      S s;
      if constexpr (burst) {
        s = std::floor(h / th);
        const S lo = signed_ ? -c[i] : S(0);
        S hi = cap - c[i];
        hi = maxb < hi ? maxb : hi;   // NaN stays NaN through these comparisons, as through torch's
        s = s < lo ? lo : s;          // minimum / maximum
        s = hi < s ? hi : s;
        c[i] = c[i] + s;
      } else {
        s = h >= th ? S(1) : S(0);
        if constexpr (signed_) {
          s = s - ((h < S(0) && c[i] > S(0)) ? S(1) : S(0));
          c[i] = c[i] + s;
        }
      }
      const S o = s * th;
      ot[i] = o;
      v[i] = h - o;
    }
  }
  if (v_end)
    for (int64_t i = 0; i < n; ++i) v_end[b + i] = v[i];
  if (c_end)
    for (int64_t i = 0; i < n; ++i) c_end[b + i] = c[i];
}

// Every chunk of neurons through cif_chunk, in parallel, with the flags as template arguments. The Python
// formulas' constants: th·v_init and the caps are products of a tensor and a Python number, computed in S.
template <typename S>
void cif_run(const S* x, int64_t xstep, S* out, const S* v0, const S* c0, S* v_end, S* c_end, bool* inside,
             int64_t T, int64_t M, double th, double v_init, bool signed_, int64_t burst, int64_t rate, int64_t start) {
  const S ths = S(th), vi = ths * S(v_init), rs = S(rate), maxb = S(burst);
  at::parallel_for(0, M, kGrain, [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; b += kChunk) {
      const int64_t n = std::min(kChunk, end - b);
#define SPIKELITE_CIF(B, SG) \
  cif_chunk<S, B, SG>(x, xstep, out, v0, c0, v_end, c_end, T, M, b, n, ths, vi, rs, maxb, start, inside)
      if (burst > 1) {
        if (signed_) SPIKELITE_CIF(true, true); else SPIKELITE_CIF(true, false);
      } else {
        if (signed_) SPIKELITE_CIF(false, true); else SPIKELITE_CIF(false, false);
      }
#undef SPIKELITE_CIF
    }
  });
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> conversion_if_steps(const at::Tensor& x_in,
                                                                   const std::optional<at::Tensor>& v0_opt,
                                                                   const std::optional<at::Tensor>& c0_opt,
                                                                   double th, double v_init, bool signed_,
                                                                   int64_t burst, int64_t rate, int64_t start) {
  check(x_in);
  TORCH_CHECK(burst >= 1 && rate >= 1 && rate <= burst, "spikelite_native::conversion_if_steps: burst ", burst,
              " and rate ", rate, " need 1 <= rate <= burst");
  TORCH_CHECK(v0_opt.has_value() == c0_opt.has_value(),
              "spikelite_native::conversion_if_steps: give both the membrane and the count, or neither");
  const Seq q = as_seq(x_in);
  const at::Tensor& x = q.x;
  const int64_t T = x.size(0), M = x.numel() / T;
  at::Tensor out = empty_steps(q);
  const at::Tensor step = out.select(0, 0);
  at::Tensor v_end = at::empty_strided(step.sizes(), step.strides(), x.options());
  at::Tensor c_end = at::empty_strided(step.sizes(), step.strides(), x.options());
  at::Tensor v_in, c_in;
  if (v0_opt.has_value()) {
    TORCH_CHECK(v0_opt->sizes() == step.sizes() && c0_opt->sizes() == step.sizes(),
                "spikelite_native::conversion_if_steps: state of shape ", v0_opt->sizes(), " for steps of shape ",
                step.sizes());
    v_in = at::empty_strided(step.sizes(), step.strides(), x.options()).copy_(*v0_opt);  // the kernel's order
    c_in = at::empty_strided(step.sizes(), step.strides(), x.options()).copy_(*c0_opt);
  }
  if (M == 0) return {out, v_end, c_end};
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "spikelite_conversion_if_steps", [&] {
    cif_run<scalar_t>(x.const_data_ptr<scalar_t>(), q.step, out.mutable_data_ptr<scalar_t>(),
                      v_in.defined() ? v_in.const_data_ptr<scalar_t>() : nullptr,
                      c_in.defined() ? c_in.const_data_ptr<scalar_t>() : nullptr, v_end.mutable_data_ptr<scalar_t>(),
                      c_end.mutable_data_ptr<scalar_t>(), nullptr, T, M, th, v_init, signed_, burst, rate, start);
  });
  return {out, v_end, c_end};
}

// ConversionIF's training forward (fine-tuning a converted network): its outputs from rest over the whole
// sequence, and the straight-through mask of each step (bool, in the outputs' layout).
std::tuple<at::Tensor, at::Tensor> conversion_if_train(const at::Tensor& x_in, double th, double v_init, bool signed_,
                                                       int64_t burst, int64_t rate) {
  check(x_in);
  TORCH_CHECK(burst >= 1 && rate >= 1 && rate <= burst, "spikelite_native::conversion_if_train: burst ", burst,
              " and rate ", rate, " need 1 <= rate <= burst");
  const Seq q = as_seq(x_in);
  const at::Tensor& x = q.x;
  const int64_t T = x.size(0), M = x.numel() / T;
  at::Tensor out = empty_steps(q);
  at::Tensor inside = at::empty_strided(out.sizes(), out.strides(), x.options().dtype(at::kBool));
  if (M == 0) return {out, inside};
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "spikelite_conversion_if_train", [&] {
    cif_run<scalar_t>(x.const_data_ptr<scalar_t>(), q.step, out.mutable_data_ptr<scalar_t>(), nullptr, nullptr,
                      nullptr, nullptr, inside.mutable_data_ptr<bool>(), T, M, th, v_init, signed_, burst, rate, 0);
  });
  return {out, inside};
}


// QCFS with a learned threshold λ (models/qcfs.py), the CNN-side twin of ConversionIF, as one pass each way over a
// dense tensor (any memory format: x, its gradient and the output share strides). Forward: the Python formula's
// operations in its order, each rounded in S (-ffp-contract=off), y = floor(clamp(x/λ, 0, 1)·L + 1/2) / L · λ.
// Backward: the straight-through rounding, so dy/dx = [0 < x/λ < 1] and dy/dλ = q − [0 < x/λ < 1]·x/λ with
// q = floor(clamp(x/λ, 0, 1)·L + 1/2) / L; the λ gradient is summed in blocks of 1,024 in S, the blocks in double.
void check_dense(const at::Tensor& t, const char* what) {
  TORCH_CHECK(t.device().is_cpu(), "spikelite_native::qcfs runs on CPU tensors, got ", t.device(), " for ", what);
  TORCH_CHECK(t.scalar_type() == at::kFloat || t.scalar_type() == at::kDouble,
              "spikelite_native::qcfs takes float32 or float64, got ", t.scalar_type(), " for ", what);
  TORCH_CHECK(t.is_non_overlapping_and_dense(), "spikelite_native::qcfs needs a dense tensor for ", what);
}

at::Tensor qcfs_forward(const at::Tensor& x, double lam, int64_t levels) {
  check_dense(x, "x");
  TORCH_CHECK(lam > 0 && levels >= 1, "spikelite_native::qcfs_forward: lam > 0 and levels >= 1 needed");
  at::Tensor y = at::empty_like(x);
  const int64_t n = x.numel();
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "spikelite_qcfs_forward", [&] {
    using S = scalar_t;
    const S* xp = x.const_data_ptr<S>();
    S* yp = y.mutable_data_ptr<S>();
    const S l = S(lam), L = S(levels), half = S(0.5);
    at::parallel_for(0, n, kGrain, [&](int64_t b, int64_t e) {
      for (int64_t i = b; i < e; ++i) {
        S u = xp[i] / l;
        u = u < S(0) ? S(0) : (u > S(1) ? S(1) : u);
        yp[i] = std::floor(u * L + half) / L * l;
      }
    });
  });
  return y;
}

std::tuple<at::Tensor, at::Tensor> qcfs_backward(const at::Tensor& grad, const at::Tensor& x, double lam,
                                                 int64_t levels) {
  check_dense(x, "x");
  check_dense(grad, "grad");
  TORCH_CHECK(grad.sizes() == x.sizes() && grad.strides() == x.strides() && grad.scalar_type() == x.scalar_type(),
              "spikelite_native::qcfs_backward: grad and x must share shape, strides and dtype");
  at::Tensor gx = at::empty_like(x);
  const int64_t n = x.numel();
  double glam = 0.0;
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "spikelite_qcfs_backward", [&] {
    using S = scalar_t;
    const S* xp = x.const_data_ptr<S>();
    const S* gp = grad.const_data_ptr<S>();
    S* gxp = gx.mutable_data_ptr<S>();
    const S l = S(lam), L = S(levels), half = S(0.5);
    glam = at::parallel_reduce(0, n, kGrain, 0.0, [&](int64_t b, int64_t e, double acc) {
      // blocks of kLanes independent partial sums (a loop the compiler vectorises), each block added in double
      constexpr int64_t kLanes = 16;
      auto one = [&](int64_t i) -> S {
        const S u = xp[i] / l;
        const bool inside = u > S(0) && u < S(1);  // open, as torch.clamp's gradient
        const S c = u < S(0) ? S(0) : (u > S(1) ? S(1) : u);
        const S q = std::floor(c * L + half) / L;
        const S g = gp[i];
        gxp[i] = inside ? g : S(0);
        return g * (inside ? q - u : q);
      };
      int64_t i = b;
      for (; i + 64 * kLanes <= e; i += 64 * kLanes) {
        S part[kLanes] = {};
        for (int64_t j = 0; j < 64 * kLanes; j += kLanes)
          for (int64_t k = 0; k < kLanes; ++k) part[k] += one(i + j + k);
        for (int64_t k = 0; k < kLanes; ++k) acc += double(part[k]);
      }
      for (; i < e; ++i) acc += double(one(i));
      return acc;
    }, std::plus<double>());
  });
  return {gx, at::scalar_tensor(glam, x.options().device(at::kCPU))};
}

}  // namespace spikelite_native

using spikelite_native::bn_lif;
using spikelite_native::conversion_if_steps;
using spikelite_native::conversion_if_train;
using spikelite_native::lif;
using spikelite_native::lif_backward;
using spikelite_native::lif_forward;
using spikelite_native::lif_steps;
using spikelite_native::qcfs_backward;
using spikelite_native::qcfs_forward;

TORCH_LIBRARY(spikelite_native, m) {
  m.def("lif(Tensor x, float tau, float th, float r, float alpha, bool decay_input, bool soft, bool detach, "
        "int surrogate) -> Tensor");
  m.def("bn_lif(Tensor z, Tensor? weight, Tensor? bias, Tensor? running_mean, Tensor? running_var, bool training, "
        "float momentum, float eps, int T, bool broadcast, float tau, float th, float r, float alpha, "
        "bool decay_input, bool soft, bool detach, int surrogate) -> Tensor");
  m.def("lif_forward(Tensor x, float tau, float th, float r, bool decay_input, bool soft) -> (Tensor, Tensor)");
  m.def("lif_steps(Tensor x, Tensor? v0, float tau, float th, float r, bool decay_input, bool soft) -> (Tensor, Tensor)");
  m.def("lif_backward(Tensor x, Tensor grad, float tau, float th, float r, float alpha, bool decay_input, "
        "bool soft, bool detach, int surrogate) -> Tensor");
  m.def("conversion_if_steps(Tensor x, Tensor? v0, Tensor? c0, float th, float v_init, bool signed, int burst, "
        "int rate, int start) -> (Tensor, Tensor, Tensor)");
  m.def("conversion_if_train(Tensor x, float th, float v_init, bool signed, int burst, int rate) -> (Tensor, Tensor)");
  m.def("qcfs_forward(Tensor x, float lam, int levels) -> Tensor");
  m.def("qcfs_backward(Tensor grad, Tensor x, float lam, int levels) -> (Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(spikelite_native, CompositeImplicitAutograd, m) {
  m.impl("lif", &lif);
  m.impl("bn_lif", &bn_lif);
}

TORCH_LIBRARY_IMPL(spikelite_native, CPU, m) {
  m.impl("lif_forward", &lif_forward);
  m.impl("lif_steps", &lif_steps);
  m.impl("conversion_if_steps", &conversion_if_steps);
  m.impl("conversion_if_train", &conversion_if_train);
  m.impl("lif_backward", &lif_backward);
  m.impl("qcfs_forward", &qcfs_forward);
  m.impl("qcfs_backward", &qcfs_backward);
}
