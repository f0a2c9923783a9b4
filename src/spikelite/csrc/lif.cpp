// spikelite native LIF kernels: the whole sequence forward and backward through time, one call each,
// registered as the operator spikelite_native::lif with its autograd in C++ (no Python on the step's
// backward). Same dynamics as spikelite.neuron (SpikingJelly's conventions):
//   charge  H_t = V + (X_t - (V - r)) / tau       (decay_input)    H_t = V - (V - r) / tau + X_t
//   fire    S_t = [H_t >= th]
//   reset   V = S_t ? r : H_t                     (hard)           V = H_t - S_t * th       (soft, r = 0)
// Fixed tau and threshold (learned ones use the Python fused path). CPU, float32 / float64.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/autograd.h>
#include <torch/library.h>

#include <bit>
#include <cmath>
#include <cstdint>

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
  float y = 1.9875691500e-4f;
  y = y * r + 1.3981999507e-3f;
  y = y * r + 8.3334519073e-3f;
  y = y * r + 4.1665795894e-2f;
  y = y * r + 1.6666665459e-1f;
  y = y * r + 5.0000001201e-1f;
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

// T is outermost in memory with every other element inside one step: data[t * M + m].
bool time_outermost(const at::Tensor& x) {
  if (!x.is_non_overlapping_and_dense()) return false;
  const int64_t M = x.numel() / std::max<int64_t>(x.size(0), 1);
  if (x.size(0) > 1 && x.stride(0) != M) return false;
  for (int64_t d = 1; d < x.dim(); ++d)
    if (x.size(d) > 1 && x.stride(d) >= M) return false;
  return true;
}

at::Tensor in_layout(const at::Tensor& x) { return time_outermost(x) ? x : x.contiguous(); }


// One chunk of elements through time. Flags are template arguments so the inner loops have no branches
// and vectorise; the chunk's membranes stay in a small stack array between steps.
template <typename S, bool decay, bool soft, bool keep_h>
void forward_chunk(const S* x, S* spikes, S* h_out, int64_t T, int64_t M, int64_t b, int64_t n, S tau, S th, S r) {
  S v[kChunk];
  for (int64_t i = 0; i < n; ++i) v[i] = r;
  for (int64_t t = 0; t < T; ++t) {
    const S* __restrict__ xt = x + t * M + b;
    S* __restrict__ st = spikes + t * M + b;
    S* __restrict__ ht = keep_h ? h_out + t * M + b : nullptr;
    for (int64_t i = 0; i < n; ++i) {
      const S vi = v[i];
      const S h = decay ? vi + (xt[i] - (vi - r)) / tau : vi - (vi - r) / tau + xt[i];
      const S s = h >= th ? S(1) : S(0);
      st[i] = s;
      if constexpr (keep_h) ht[i] = h;
      v[i] = soft ? h - s * th : (h >= th ? r : h);
    }
  }
}

template <typename S, bool decay, bool soft, bool keep_h>
void forward_kernel(const S* x, S* spikes, S* h_out, int64_t T, int64_t M, const Params& p) {
  const S tau = S(p.tau), th = S(p.th), r = S(soft ? 0.0 : p.r);
  at::parallel_for(0, M, kGrain, [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; b += kChunk)
      forward_chunk<S, decay, soft, keep_h>(x, spikes, h_out, T, M, b, std::min(kChunk, end - b), tau, th, r);
  });
}

template <typename S>
void forward_dispatch(const S* x, S* spikes, S* h_out, int64_t T, int64_t M, const Params& p) {
  const bool keep = h_out != nullptr;
#define SPIKELITE_FWD(D, SO, K) \
  if (p.decay_input == D && p.soft == SO && keep == K) return forward_kernel<S, D, SO, K>(x, spikes, h_out, T, M, p);
  SPIKELITE_FWD(true, false, true) SPIKELITE_FWD(true, false, false) SPIKELITE_FWD(true, true, true)
  SPIKELITE_FWD(true, true, false) SPIKELITE_FWD(false, false, true) SPIKELITE_FWD(false, false, false)
  SPIKELITE_FWD(false, true, true) SPIKELITE_FWD(false, true, false)
#undef SPIKELITE_FWD
}

template <typename S, bool decay, bool soft, bool detach, int64_t kind>
void backward_chunk(const S* h, const S* g, S* gx, int64_t T, int64_t M, int64_t b, int64_t n, S tau, S th, S r,
                    const SurrogateConsts<S>& k) {
  const S keep = S(1) - S(1) / tau;
  S gv[kChunk];  // dL/dV flowing back from step t+1
  for (int64_t t = T - 1; t >= 0; --t) {
    const S* __restrict__ ht = h + t * M + b;
    const S* __restrict__ gt = g + t * M + b;
    S* __restrict__ gxt = gx + t * M + b;
    if (t == T - 1) {  // nothing flows back from a later step
      for (int64_t i = 0; i < n; ++i) {
        const S gh = gt[i] * surrogate_grad<S, kind>(ht[i] - th, k);
        gxt[i] = decay ? gh / tau : gh;
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
      gxt[i] = decay ? gh / tau : gh;
      gv[i] = gh * keep;
    }
  }
}

template <typename S, bool decay, bool soft, bool detach, int64_t kind>
void backward_kernel(const S* h, const S* g, S* gx, int64_t T, int64_t M, const Params& p) {
  const S tau = S(p.tau), th = S(p.th), r = S(soft ? 0.0 : p.r);
  SurrogateConsts<S> k(p.alpha);
  if (kind == kRectangle) k.c1 = S(0.5 / p.alpha);
  at::parallel_for(0, M, kGrain, [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; b += kChunk)
      backward_chunk<S, decay, soft, detach, kind>(h, g, gx, T, M, b, std::min(kChunk, end - b), tau, th, r, k);
  });
}

template <typename S, int64_t kind>
void backward_flags(const S* h, const S* g, S* gx, int64_t T, int64_t M, const Params& p) {
#define SPIKELITE_BWD(D, SO, DE) \
  if (p.decay_input == D && p.soft == SO && p.detach == DE) return backward_kernel<S, D, SO, DE, kind>(h, g, gx, T, M, p);
  SPIKELITE_BWD(true, false, true) SPIKELITE_BWD(true, false, false) SPIKELITE_BWD(true, true, true)
  SPIKELITE_BWD(true, true, false) SPIKELITE_BWD(false, false, true) SPIKELITE_BWD(false, false, false)
  SPIKELITE_BWD(false, true, true) SPIKELITE_BWD(false, true, false)
#undef SPIKELITE_BWD
}

template <typename S>
void backward_dispatch(const S* h, const S* g, S* gx, int64_t T, int64_t M, const Params& p) {
  switch (p.surrogate) {
    case kSigmoid: return backward_flags<S, kSigmoid>(h, g, gx, T, M, p);
    case kATan: return backward_flags<S, kATan>(h, g, gx, T, M, p);
    case kFastSigmoid: return backward_flags<S, kFastSigmoid>(h, g, gx, T, M, p);
    case kTriangle: return backward_flags<S, kTriangle>(h, g, gx, T, M, p);
    default: return backward_flags<S, kRectangle>(h, g, gx, T, M, p);
  }
}

void check(const at::Tensor& x) {
  TORCH_CHECK(x.device().is_cpu(), "spikelite_native::lif runs on CPU tensors, got ", x.device());
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble,
              "spikelite_native::lif takes float32 or float64, got ", x.scalar_type());
  TORCH_CHECK(x.dim() >= 1 && x.size(0) >= 1, "spikelite_native::lif expects [T, ...] with T >= 1");
}

// spikes (and H when keep_h) for x, in x's layout when T is outermost in it
std::pair<at::Tensor, at::Tensor> run_forward(const at::Tensor& x_in, const Params& p, bool keep_h) {
  check(x_in);
  const at::Tensor x = in_layout(x_in);
  const int64_t T = x.size(0), M = x.numel() / T;
  at::Tensor spikes = at::empty_like(x);
  at::Tensor h = keep_h ? at::empty_like(x) : at::Tensor();
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "spikelite_lif_forward", [&] {
    forward_dispatch<scalar_t>(x.const_data_ptr<scalar_t>(), spikes.mutable_data_ptr<scalar_t>(),
                             keep_h ? h.mutable_data_ptr<scalar_t>() : nullptr, T, M, p);
  });
  return {spikes, h};
}

at::Tensor run_backward(const at::Tensor& h, const at::Tensor& grad_in, const Params& p) {
  at::Tensor grad = grad_in;
  if (!grad.defined()) return at::zeros_like(h);
  TORCH_CHECK(grad.sizes() == h.sizes(), "spikelite_native::lif: gradient of shape ", grad.sizes(),
              " for spikes of shape ", h.sizes());
  if (grad.strides() != h.strides() || grad.scalar_type() != h.scalar_type())
    grad = at::empty_like(h).copy_(grad);
  const int64_t T = h.size(0), M = h.numel() / T;
  at::Tensor gx = at::empty_like(h);
  AT_DISPATCH_FLOATING_TYPES(h.scalar_type(), "spikelite_lif_backward", [&] {
    backward_dispatch<scalar_t>(h.const_data_ptr<scalar_t>(), grad.const_data_ptr<scalar_t>(),
                              gx.mutable_data_ptr<scalar_t>(), T, M, p);
  });
  return gx;
}

class NativeLIF : public torch::autograd::Function<NativeLIF> {
 public:
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& x, double tau, double th,
                            double r, double alpha, bool decay_input, bool soft, bool detach, int64_t surrogate) {
    Params p{tau, th, r, alpha, decay_input, soft, detach, surrogate};
    auto out = run_forward(x, p, true);
    ctx->save_for_backward({out.second});
    ctx->saved_data["tau"] = tau;
    ctx->saved_data["th"] = th;
    ctx->saved_data["r"] = r;
    ctx->saved_data["alpha"] = alpha;
    ctx->saved_data["flags"] = int64_t(decay_input) | int64_t(soft) << 1 | int64_t(detach) << 2;
    ctx->saved_data["surrogate"] = surrogate;
    return out.first;
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    const at::Tensor h = ctx->get_saved_variables()[0];
    const int64_t flags = ctx->saved_data["flags"].toInt();
    Params p{ctx->saved_data["tau"].toDouble(), ctx->saved_data["th"].toDouble(), ctx->saved_data["r"].toDouble(),
             ctx->saved_data["alpha"].toDouble(), bool(flags & 1), bool(flags & 2), bool(flags & 4),
             ctx->saved_data["surrogate"].toInt()};
    at::Tensor gx = run_backward(h, grads[0], p);
    return {gx, at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(),
            at::Tensor()};
  }
};

at::Tensor lif(const at::Tensor& x, double tau, double th, double r, double alpha, bool decay_input, bool soft,
               bool detach, int64_t surrogate) {
  TORCH_CHECK(surrogate >= 0 && surrogate <= 4, "spikelite_native::lif: unknown surrogate ", surrogate);
  if (at::GradMode::is_enabled() && x.requires_grad())
    return NativeLIF::apply(x, tau, th, r, alpha, decay_input, soft, detach, surrogate);
  Params p{tau, th, r, alpha, decay_input, soft, detach, surrogate};
  return run_forward(x, p, false).first;
}

// The pieces on their own, for tests and benchmarks: forward returning (spikes, H), and backward.
std::tuple<at::Tensor, at::Tensor> lif_forward(const at::Tensor& x, double tau, double th, double r,
                                               bool decay_input, bool soft) {
  Params p{tau, th, r, 1.0, decay_input, soft, false, 0};
  auto out = run_forward(x, p, true);
  return {out.first, out.second};
}

at::Tensor lif_backward(const at::Tensor& h, const at::Tensor& grad, double tau, double th, double r, double alpha,
                        bool decay_input, bool soft, bool detach, int64_t surrogate) {
  check(h);
  Params p{tau, th, r, alpha, decay_input, soft, detach, surrogate};
  return run_backward(in_layout(h), grad, p);
}

}  // namespace spikelite_native

using spikelite_native::lif;
using spikelite_native::lif_backward;
using spikelite_native::lif_forward;

TORCH_LIBRARY(spikelite_native, m) {
  m.def("lif(Tensor x, float tau, float th, float r, float alpha, bool decay_input, bool soft, bool detach, "
        "int surrogate) -> Tensor");
  m.def("lif_forward(Tensor x, float tau, float th, float r, bool decay_input, bool soft) -> (Tensor, Tensor)");
  m.def("lif_backward(Tensor h, Tensor grad, float tau, float th, float r, float alpha, bool decay_input, "
        "bool soft, bool detach, int surrogate) -> Tensor");
}

TORCH_LIBRARY_IMPL(spikelite_native, CompositeImplicitAutograd, m) {
  m.impl("lif", &lif);
}

TORCH_LIBRARY_IMPL(spikelite_native, CPU, m) {
  m.impl("lif_forward", &lif_forward);
  m.impl("lif_backward", &lif_backward);
}
