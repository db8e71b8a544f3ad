// CPU kernels for XLA's FFI (float32, NHWC), used by mobilenets/layers.py on the CPU backend:
//
//   DepthwiseConv, DepthwiseConvTranspose, DepthwiseKernelGrad   the depthwise convolution, its
//       input gradient and its kernel gradient;
//   SmallInputConv, SmallInputConvKernelGrad   the stem: a dense convolution on RGB input;
//   MomentSums, BatchNormBackward   BatchNorm's batch statistics and its (+ ReLU6) backward pass.
//
// Why: XLA:CPU makes one pass over the activations per reduction (the depthwise kernel gradient
// is k * k of them), and it fuses the shifted-sum depthwise convolution, recomputed, into every
// consumer of its output. Here each is one or two passes, with accumulators in cache or in
// registers and the channel loop vectorised. Sums over the batch are cut into a fixed number of
// slices added in a fixed order, so no result depends on the number of threads. The jnp code in
// layers.py defines the same functions and is what the tests compare against.
//
// Built on first use by mobilenets/cpu_kernels.py with the host's compiler; see there.

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <cstring>
#include <memory>
#include <mutex>
#include <vector>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

// Runs `slices` tasks on the caller and the pool. A task is claimed through an atomic counter,
// so a pool thread that starts late finds nothing left and returns: the caller never waits for
// a task that has not started, which keeps nested use of the pool free of deadlocks.
template <typename Task>
void ParallelFor(ffi::ThreadPool& pool, int64_t slices, Task task) {
  struct State {
    std::atomic<int64_t> next{0};
    std::mutex mutex;
    std::condition_variable done;
    int64_t finished = 0;
  };
  auto state = std::make_shared<State>();
  auto work = [state, slices, task]() {
    int64_t count = 0;
    for (int64_t s = state->next.fetch_add(1); s < slices; s = state->next.fetch_add(1)) {
      task(s);
      ++count;
    }
    if (count > 0) {
      std::lock_guard<std::mutex> lock(state->mutex);
      state->finished += count;
      state->done.notify_all();
    }
  };
  // The caller works too: with the pool's size in workers the cores are not oversubscribed.
  const int64_t helpers = std::min<int64_t>(pool.num_threads() - 1, slices - 1);
  for (int64_t h = 0; h < helpers; ++h) pool.Schedule([work] { work(); });
  work();
  std::unique_lock<std::mutex> lock(state->mutex);
  state->done.wait(lock, [&] { return state->finished == slices; });
}

// The geometry of a k x k convolution window over one NHWC image, TensorFlow 'SAME' padding
// given as its top / left parts.
struct Window {
  int64_t height, width, out_h, out_w, k, stride, pad_top, pad_left;
};

// Calls f(out_pixel, in_pixel, tap) for every output pixel (i, j), out_pixel = i * out_w + j,
// and every tap = a * k + b of its window that reads an input pixel inside the image, in_pixel =
// row * width + col with (row, col) = (stride * i + a - pad_top, stride * j + b - pad_left).
// Output row by output row: a row's inputs and outputs stay in cache.
template <typename F>
inline void ForEachTap(const Window& w, F f) {
  for (int64_t i = 0; i < w.out_h; ++i) {
    for (int64_t a = 0; a < w.k; ++a) {
      const int64_t row = w.stride * i + a - w.pad_top;
      if (row < 0 || row >= w.height) continue;
      for (int64_t j = 0; j < w.out_w; ++j) {
        for (int64_t b = 0; b < w.k; ++b) {
          const int64_t col = w.stride * j + b - w.pad_left;
          if (col < 0 || col >= w.width) continue;
          f(i * w.out_w + j, row * w.width + col, a * w.k + b);
        }
      }
    }
  }
}

// out[t] = sum over images n of add_image(n, partial)'s contributions, for out[0..size): the
// batch is cut into (at most) eight fixed slices, each summed into its own partial array, and
// the partials are added in slice order, so the sum does not depend on the thread count.
template <typename AddImage>
void SumOverBatch(ffi::ThreadPool& pool, int64_t batch, int64_t size, AddImage add_image,
                  float* out) {
  const int64_t slices = std::min<int64_t>(batch, 8);
  std::vector<float> partial(slices * size, 0.0f);
  float* partial_data = partial.data();
  ParallelFor(pool, slices, [=](int64_t s) {
    for (int64_t n = s * batch / slices; n < (s + 1) * batch / slices; ++n) {
      add_image(n, partial_data + s * size);
    }
  });
  std::memcpy(out, partial_data, size * sizeof(float));
  for (int64_t s = 1; s < slices; ++s) {
    const float* p = partial_data + s * size;
    for (int64_t t = 0; t < size; ++t) out[t] += p[t];
  }
}

// The shapes of one convolution call: `image` [N, H, W, Ci] is the input side, `output`
// [N, OH, OW, Co] the output side, `kernel` [k, k, Ci or 1, Co]; `depthwise` asks for
// Ci = Co with a kernel of shape [k, k, 1, C].
ffi::ErrorOr<Window> CheckConv(ffi::Span<const int64_t> image, ffi::Span<const int64_t> kernel,
                               ffi::Span<const int64_t> output, bool depthwise, int64_t stride,
                               int64_t pad_top, int64_t pad_left) {
  const bool ok = image.size() == 4 && kernel.size() == 4 && output.size() == 4 &&
                  image[0] == output[0] && kernel[0] == kernel[1] && kernel[3] == output[3] &&
                  (depthwise ? kernel[2] == 1 && image[3] == output[3] : kernel[2] == image[3]);
  if (!ok || stride < 1) {
    return ffi::Unexpected(ffi::Error::InvalidArgument(
        depthwise ? "depthwise convolution: expected NHWC arrays and a (k, k, 1, C) kernel"
                  : "convolution: expected NHWC arrays and a (k, k, Ci, Co) kernel"));
  }
  return Window{image[1], image[2], output[1], output[2], kernel[0], stride, pad_top, pad_left};
}

// out[n, i, j, c] = sum_{a, b} x[n, s*i + a - pad_top, s*j + b - pad_left, c] * kernel[a, b, c]:
// one image per task, the channel loop vectorised.
ffi::Error DepthwiseConvImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x,
                             ffi::Buffer<ffi::F32> kernel, ffi::ResultBuffer<ffi::F32> out,
                             int64_t stride, int64_t pad_top, int64_t pad_left) {
  auto window = CheckConv(x.dimensions(), kernel.dimensions(), out->dimensions(), true, stride,
                          pad_top, pad_left);
  if (window.has_error()) return window.error();
  const Window w = window.value();
  const int64_t channels = x.dimensions()[3];
  const float* x_data = x.typed_data();
  const float* k_data = kernel.typed_data();
  float* out_data = out->typed_data();
  ParallelFor(pool, x.dimensions()[0], [=](int64_t n) {
    const float* x_image = x_data + n * w.height * w.width * channels;
    float* out_image = out_data + n * w.out_h * w.out_w * channels;
    std::fill(out_image, out_image + w.out_h * w.out_w * channels, 0.0f);
    ForEachTap(w, [=](int64_t out_pixel, int64_t in_pixel, int64_t tap) {
      float* __restrict o = out_image + out_pixel * channels;
      const float* __restrict xv = x_image + in_pixel * channels;
      const float* __restrict kv = k_data + tap * channels;
#pragma GCC ivdep
      for (int64_t c = 0; c < channels; ++c) o[c] += xv[c] * kv[c];
    });
  });
  return ffi::Error::Success();
}

// The adjoint of DepthwiseConv with respect to x (the input gradient): every output gradient
// pixel adds grad * kernel[a, b] to the input pixel that tap (a, b) read. Per image, so the
// scattered additions never race and their order is fixed.
ffi::Error DepthwiseConvTransposeImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> grad_out,
                                      ffi::Buffer<ffi::F32> kernel,
                                      ffi::ResultBuffer<ffi::F32> grad_x, int64_t stride,
                                      int64_t pad_top, int64_t pad_left) {
  auto window = CheckConv(grad_x->dimensions(), kernel.dimensions(), grad_out.dimensions(), true,
                          stride, pad_top, pad_left);
  if (window.has_error()) return window.error();
  const Window w = window.value();
  const int64_t channels = grad_out.dimensions()[3];
  const float* g_data = grad_out.typed_data();
  const float* k_data = kernel.typed_data();
  float* dx_data = grad_x->typed_data();
  ParallelFor(pool, grad_out.dimensions()[0], [=](int64_t n) {
    const float* g_image = g_data + n * w.out_h * w.out_w * channels;
    float* dx_image = dx_data + n * w.height * w.width * channels;
    std::fill(dx_image, dx_image + w.height * w.width * channels, 0.0f);
    ForEachTap(w, [=](int64_t out_pixel, int64_t in_pixel, int64_t tap) {
      const float* __restrict g = g_image + out_pixel * channels;
      float* __restrict dxv = dx_image + in_pixel * channels;
      const float* __restrict kv = k_data + tap * channels;
#pragma GCC ivdep
      for (int64_t c = 0; c < channels; ++c) dxv[c] += g[c] * kv[c];
    });
  });
  return ffi::Error::Success();
}

// The depthwise kernel gradient in one pass, the k * k * C accumulators in cache:
// dkernel[a, b, c] = sum over n, i, j of
//     grad_out[n, i, j, c] * x[n, stride * i + a - pad_top, stride * j + b - pad_left, c].
ffi::Error DepthwiseKernelGradImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x,
                                   ffi::Buffer<ffi::F32> grad_out, ffi::ResultBuffer<ffi::F32> dk,
                                   int64_t stride, int64_t pad_top, int64_t pad_left) {
  auto window = CheckConv(x.dimensions(), dk->dimensions(), grad_out.dimensions(), true, stride,
                          pad_top, pad_left);
  if (window.has_error()) return window.error();
  const Window w = window.value();
  const int64_t channels = x.dimensions()[3];
  const float* x_data = x.typed_data();
  const float* g_data = grad_out.typed_data();
  auto add_image = [=](int64_t n, float* acc) {
    const float* x_image = x_data + n * w.height * w.width * channels;
    const float* g_image = g_data + n * w.out_h * w.out_w * channels;
    ForEachTap(w, [=](int64_t out_pixel, int64_t in_pixel, int64_t tap) {
      const float* __restrict g = g_image + out_pixel * channels;
      const float* __restrict xv = x_image + in_pixel * channels;
      float* __restrict out = acc + tap * channels;
#pragma GCC ivdep
      for (int64_t c = 0; c < channels; ++c) out[c] += g[c] * xv[c];
    });
  };
  SumOverBatch(pool, x.dimensions()[0], w.k * w.k * channels, add_image, dk->typed_data());
  return ffi::Error::Success();
}

// 16 floats as one value (GCC/Clang vector extension): one AVX-512 register, two AVX2 ones.
constexpr int64_t kLanes = 16;
typedef float Lanes __attribute__((vector_size(kLanes * sizeof(float))));

inline Lanes LoadLanes(const float* p) {
  Lanes v;
  std::memcpy(&v, p, sizeof v);  // an unaligned vector load
  return v;
}

inline void StoreLanes(float* p, Lanes v) { std::memcpy(p, &v, sizeof v); }

// A dense convolution with few input channels: the stem, RGB -> 32 channels, stride 2.
// out[n, i, j, :] = sum_{a, b, ci} x[n, s*i + a - pad_top, s*j + b - pad_left, ci] * w[a, b, ci, :]
// vectorised over the output channels. With three input channels neither XLA:CPU's YNNPACK
// convolution (18 GFLOP/s here) nor a GEMM over 27-wide patches uses the machine well. With a
// multiple of 16 output channels each output pixel's block of 16 accumulates in a register
// over all k * k * Ci terms (accumulating in memory, as the generic path does, is 1.5x slower).
// It keeps its own shape checks and loops: built on CheckConv / Window it ran 1.3-2x slower (same
// source loops; a code-generation effect we did not chase further).
ffi::Error SmallInputConvImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x,
                              ffi::Buffer<ffi::F32> kernel, ffi::ResultBuffer<ffi::F32> out,
                              int64_t stride, int64_t pad_top, int64_t pad_left) {
  auto x_dims = x.dimensions();
  auto k_dims = kernel.dimensions();
  auto o_dims = out->dimensions();
  if (x_dims.size() != 4 || k_dims.size() != 4 || o_dims.size() != 4 || k_dims[0] != k_dims[1] ||
      k_dims[2] != x_dims[3] || o_dims[3] != k_dims[3] || o_dims[0] != x_dims[0]) {
    return ffi::Error::InvalidArgument("small_input_conv: inconsistent shapes");
  }
  const int64_t height = x_dims[1], width = x_dims[2], in_ch = x_dims[3];
  const int64_t k = k_dims[0], out_ch = k_dims[3], out_h = o_dims[1], out_w = o_dims[2];
  const float* x_data = x.typed_data();
  const float* w_data = kernel.typed_data();
  float* out_data = out->typed_data();
  ParallelFor(pool, x_dims[0], [=](int64_t n) {
    const float* x_image = x_data + n * height * width * in_ch;
    for (int64_t i = 0; i < out_h; ++i) {
      for (int64_t j = 0; j < out_w; ++j) {
        float* __restrict o = out_data + ((n * out_h + i) * out_w + j) * out_ch;
        if (out_ch % kLanes == 0) {
          // Each block of 16 output channels accumulates in a register over all k * k * Ci
          // terms (a loop over a plain array left it in memory: 4x slower).
          for (int64_t c0 = 0; c0 < out_ch; c0 += kLanes) {
            Lanes acc = {};
            for (int64_t a = 0; a < k; ++a) {
              const int64_t row = stride * i + a - pad_top;
              if (row < 0 || row >= height) continue;
              for (int64_t b = 0; b < k; ++b) {
                const int64_t col = stride * j + b - pad_left;
                if (col < 0 || col >= width) continue;
                const float* xv = x_image + (row * width + col) * in_ch;
                const float* w = w_data + (a * k + b) * in_ch * out_ch + c0;
                for (int64_t ci = 0; ci < in_ch; ++ci) acc += xv[ci] * LoadLanes(w + ci * out_ch);
              }
            }
            StoreLanes(o + c0, acc);
          }
          continue;
        }
        std::fill(o, o + out_ch, 0.0f);
        for (int64_t a = 0; a < k; ++a) {
          const int64_t row = stride * i + a - pad_top;
          if (row < 0 || row >= height) continue;
          for (int64_t b = 0; b < k; ++b) {
            const int64_t col = stride * j + b - pad_left;
            if (col < 0 || col >= width) continue;
            const float* xv = x_image + (row * width + col) * in_ch;
            for (int64_t ci = 0; ci < in_ch; ++ci) {
              const float value = xv[ci];
              const float* __restrict w = w_data + ((a * k + b) * in_ch + ci) * out_ch;
#pragma GCC ivdep
              for (int64_t co = 0; co < out_ch; ++co) o[co] += value * w[co];
            }
          }
        }
      }
    }
  });
  return ffi::Error::Success();
}

// Its kernel gradient, dw[a, b, ci, :] = sum over n, i, j of x[n, s*i + a - pad_top,
// s*j + b - pad_left, ci] * grad[n, i, j, :], summed over the batch as DepthwiseKernelGrad.
// With a multiple of 16 output channels: one output row's gradient stays in L1 while each
// (tap, input channel, block of 16 output channels) sums over it in a register.
ffi::Error SmallInputConvKernelGradImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x,
                                        ffi::Buffer<ffi::F32> grad_out,
                                        ffi::ResultBuffer<ffi::F32> dk, int64_t stride,
                                        int64_t pad_top, int64_t pad_left) {
  auto window = CheckConv(x.dimensions(), dk->dimensions(), grad_out.dimensions(), false, stride,
                          pad_top, pad_left);
  if (window.has_error()) return window.error();
  const Window w = window.value();
  const int64_t in_ch = x.dimensions()[3], out_ch = grad_out.dimensions()[3];
  const float* x_data = x.typed_data();
  const float* g_data = grad_out.typed_data();
  auto add_image = [=](int64_t n, float* acc) {
    const float* x_image = x_data + n * w.height * w.width * in_ch;
    const float* g_image = g_data + n * w.out_h * w.out_w * out_ch;
    if (out_ch % kLanes != 0) {
      ForEachTap(w, [=](int64_t out_pixel, int64_t in_pixel, int64_t tap) {
        const float* __restrict g = g_image + out_pixel * out_ch;
        const float* xv = x_image + in_pixel * in_ch;
        for (int64_t ci = 0; ci < in_ch; ++ci) {
          const float value = xv[ci];
          float* __restrict wv = acc + (tap * in_ch + ci) * out_ch;
#pragma GCC ivdep
          for (int64_t co = 0; co < out_ch; ++co) wv[co] += value * g[co];
        }
      });
      return;
    }
    for (int64_t i = 0; i < w.out_h; ++i) {
      const float* g_row = g_image + i * w.out_w * out_ch;
      for (int64_t a = 0; a < w.k; ++a) {
        const int64_t row = w.stride * i + a - w.pad_top;
        if (row < 0 || row >= w.height) continue;
        const float* x_row = x_image + row * w.width * in_ch;
        for (int64_t b = 0; b < w.k; ++b) {
          // The output columns whose tap b reads inside the image.
          int64_t first = 0, last = w.out_w;
          while (first < last && w.stride * first + b - w.pad_left < 0) ++first;
          while (last > first && w.stride * (last - 1) + b - w.pad_left >= w.width) --last;
          for (int64_t ci = 0; ci < in_ch; ++ci) {
            float* wv = acc + ((a * w.k + b) * in_ch + ci) * out_ch;
            for (int64_t c0 = 0; c0 < out_ch; c0 += kLanes) {
              Lanes sum = {};
              for (int64_t j = first; j < last; ++j) {
                const float value = x_row[(w.stride * j + b - w.pad_left) * in_ch + ci];
                sum += value * LoadLanes(g_row + j * out_ch + c0);
              }
              StoreLanes(wv + c0, LoadLanes(wv + c0) + sum);
            }
          }
        }
      }
    }
  };
  SumOverBatch(pool, x.dimensions()[0], w.k * w.k * in_ch * out_ch, add_image, dk->typed_data());
  return ffi::Error::Success();
}

// Row-wise work on [rows, C] arrays is cut into this many slices: a fixed number (at most 16,
// at least 256 rows each), so that sums do not depend on the thread count.
inline int64_t RowSlices(int64_t rows) {
  return std::max<int64_t>(1, std::min<int64_t>(16, rows / 256));
}

// Two per-channel sums over the rows of [rows, C] arrays (BatchNorm's reductions) in one pass,
// instead of one XLA reduction per sum. `terms(row, c, sum0, sum1)` adds row `row`'s terms for
// channel c. Blocks of 64 rows are summed in float, row by row (a contiguous stream), then
// added to double accumulators, so the fast variance E[x^2] - E[x]^2 loses nothing to
// cancellation over ~10^5-10^6 rows. Rows are cut into a fixed number of slices, summed in a
// fixed order: the result does not depend on the thread count. All memory is allocated by the
// caller: pool threads allocate nothing (their glibc arenas would grow and shrink per step).
template <typename Terms>
void ChannelSumPair(ffi::ThreadPool& pool, int64_t rows, int64_t channels, Terms terms,
                    float* out0, float* out1) {
  constexpr int64_t kRowBlock = 64;
  const int64_t slices = RowSlices(rows);
  std::vector<double> partial(slices * 2 * channels, 0.0);
  std::vector<float> block_sums(slices * 2 * channels);
  double* partial_data = partial.data();
  float* block_data = block_sums.data();
  ParallelFor(pool, slices, [=](int64_t s) {
    double* acc0 = partial_data + s * 2 * channels;
    double* acc1 = acc0 + channels;
    float* __restrict sum0 = block_data + s * 2 * channels;
    float* __restrict sum1 = sum0 + channels;
    const int64_t end = (s + 1) * rows / slices;
    for (int64_t first = s * rows / slices; first < end; first += kRowBlock) {
      std::fill(sum0, sum0 + 2 * channels, 0.0f);
      for (int64_t row = first; row < std::min(end, first + kRowBlock); ++row) {
#pragma GCC ivdep
        for (int64_t c = 0; c < channels; ++c) terms(row, c, sum0[c], sum1[c]);
      }
      for (int64_t c = 0; c < channels; ++c) {
        acc0[c] += sum0[c];
        acc1[c] += sum1[c];
      }
    }
  });
  for (int64_t c = 0; c < channels; ++c) {
    double total0 = 0.0, total1 = 0.0;
    for (int64_t s = 0; s < slices; ++s) {
      total0 += partial_data[s * 2 * channels + c];
      total1 += partial_data[s * 2 * channels + channels + c];
    }
    out0[c] = static_cast<float>(total0);
    out1[c] = static_cast<float>(total1);
  }
}

ffi::Error CheckRowsByChannels(ffi::Buffer<ffi::F32>& x, int64_t channels) {
  auto dims = x.dimensions();
  if (dims.size() != 2 || dims[1] != channels) {
    return ffi::Error::InvalidArgument("expected a [rows, channels] float32 array");
  }
  return ffi::Error::Success();
}

// (sum_r x[r, c], sum_r x[r, c]^2): the batch statistics of BatchNorm's forward pass.
ffi::Error MomentSumsImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x,
                          ffi::ResultBuffer<ffi::F32> sum, ffi::ResultBuffer<ffi::F32> sum_sq) {
  const int64_t channels = sum->element_count();
  if (auto error = CheckRowsByChannels(x, channels); error.failure()) return error;
  const int64_t rows = x.dimensions()[0];
  const float* data = x.typed_data();
  ChannelSumPair(
      pool, rows, channels,
      [=](int64_t row, int64_t c, float& total, float& total_sq) {
        const float value = data[row * channels + c];
        total += value;
        total_sq += value * value;
      },
      sum->typed_data(), sum_sq->typed_data());
  return ffi::Error::Success();
}

// The backward pass of BatchNorm in training mode (+ ReLU6), `layers.batch_norm_in_training`:
//   g = grad_out, masked where relu6 is set to 0 < (x - mean) * gain + bias < 6, gain =
//   scale * inv_std (the pre-activation recomputed from x exactly as the forward pass rounds it);
//   dbias = sum_r g,  dscale = (sum_r g * x - mean * dbias) * inv_std,
//   dx = gain * (g - dbias / rows) - (x - mean) * (gain * inv_std * dscale / rows).
// Two passes over the activations: the sums, then dx. XLA would write g out for its two
// reductions, or, given the sums, fuse the elementwise dx into every consumer of it (the nine
// taps of a depthwise backward among them) and recompute it there.
template <bool kRelu6>  // a compile-time flag: a runtime one leaves conditional loads (gathers)
ffi::Error BatchNormBackwardPasses(ffi::ThreadPool& pool, ffi::Buffer<ffi::F32>& grad_out,
                             ffi::Buffer<ffi::F32>& x, ffi::Buffer<ffi::F32>& mean,
                             ffi::Buffer<ffi::F32>& inv_std, ffi::Buffer<ffi::F32>& scale,
                             ffi::Buffer<ffi::F32>& bias, ffi::ResultBuffer<ffi::F32>& grad_x,
                             ffi::ResultBuffer<ffi::F32>& grad_scale,
                             ffi::ResultBuffer<ffi::F32>& grad_bias) {
  const int64_t channels = grad_bias->element_count();
  if (auto error = CheckRowsByChannels(x, channels); error.failure()) return error;
  if (auto error = CheckRowsByChannels(grad_out, channels); error.failure()) return error;
  if (mean.element_count() != channels || inv_std.element_count() != channels ||
      scale.element_count() != channels || bias.element_count() != channels ||
      grad_scale->element_count() != channels || grad_x->element_count() != x.element_count() ||
      grad_out.dimensions()[0] != x.dimensions()[0]) {
    return ffi::Error::InvalidArgument("batch_norm_backward: inconsistent shapes");
  }
  const int64_t rows = x.dimensions()[0];
  const float* g_data = grad_out.typed_data();
  const float* x_data = x.typed_data();
  const float* mean_data = mean.typed_data();
  const float* bias_data = bias.typed_data();
  std::vector<float> gain_vector(channels);
  float* gain = gain_vector.data();
  for (int64_t c = 0; c < channels; ++c) gain[c] = scale.typed_data()[c] * inv_std.typed_data()[c];
  // g[c] of one row. Loads the gradient unconditionally (a load under the condition would not
  // vectorise), through row pointers (with flat indices GCC emits gathers).
  auto masked = [=](const float* __restrict g_row, const float* __restrict x_row, int64_t c) {
    const float upstream = g_row[c];
    if (!kRelu6) return upstream;
    const float pre = (x_row[c] - mean_data[c]) * gain[c] + bias_data[c];
    return (pre > 0.0f && pre < 6.0f) ? upstream : 0.0f;
  };
  float* sum_grad = grad_bias->typed_data();
  float* sum_grad_x = grad_scale->typed_data();
  auto terms = [=](int64_t row, int64_t c, float& total, float& total_x) {
    const float* x_row = x_data + row * channels;
    const float grad = masked(g_data + row * channels, x_row, c);
    total += grad;
    total_x += grad * x_row[c];
  };
  ChannelSumPair(pool, rows, channels, terms, sum_grad, sum_grad_x);

  std::vector<float> coefficients(2 * channels);
  float* centered_gain = coefficients.data();  // gain * inv_std * dscale / rows
  float* mean_grad = centered_gain + channels;  // dbias / rows
  for (int64_t c = 0; c < channels; ++c) {
    const float inv = inv_std.typed_data()[c];
    sum_grad_x[c] = (sum_grad_x[c] - mean_data[c] * sum_grad[c]) * inv;  // now dscale
    centered_gain[c] = gain[c] * inv * sum_grad_x[c] / static_cast<float>(rows);
    mean_grad[c] = sum_grad[c] / static_cast<float>(rows);
  }
  float* dx = grad_x->typed_data();
  const int64_t slices = RowSlices(rows);
  ParallelFor(pool, slices, [=](int64_t s) {
    for (int64_t row = s * rows / slices; row < (s + 1) * rows / slices; ++row) {
      const float* __restrict g_row = g_data + row * channels;
      const float* __restrict x_row = x_data + row * channels;
      float* __restrict dx_row = dx + row * channels;
#pragma GCC ivdep
      for (int64_t c = 0; c < channels; ++c) {
        dx_row[c] = gain[c] * (masked(g_row, x_row, c) - mean_grad[c]) -
                    (x_row[c] - mean_data[c]) * centered_gain[c];
      }
    }
  });
  return ffi::Error::Success();
}

ffi::Error BatchNormBackwardImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> grad_out,
                                 ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> mean,
                                 ffi::Buffer<ffi::F32> inv_std, ffi::Buffer<ffi::F32> scale,
                                 ffi::Buffer<ffi::F32> bias, ffi::ResultBuffer<ffi::F32> grad_x,
                                 ffi::ResultBuffer<ffi::F32> grad_scale,
                                 ffi::ResultBuffer<ffi::F32> grad_bias, bool relu6) {
  return relu6 ? BatchNormBackwardPasses<true>(pool, grad_out, x, mean, inv_std, scale, bias,
                                                grad_x, grad_scale, grad_bias)
               : BatchNormBackwardPasses<false>(pool, grad_out, x, mean, inv_std, scale, bias,
                                                 grad_x, grad_scale, grad_bias);
}

}  // namespace

// The binding of every convolution kernel: two operands, one result, the window's geometry.
auto ConvolutionBinding() {
  return ffi::Ffi::Bind()
      .Ctx<ffi::ThreadPool>()
      .Arg<ffi::Buffer<ffi::F32>>()
      .Arg<ffi::Buffer<ffi::F32>>()
      .Ret<ffi::Buffer<ffi::F32>>()
      .Attr<int64_t>("stride")
      .Attr<int64_t>("pad_top")
      .Attr<int64_t>("pad_left");
}

XLA_FFI_DEFINE_HANDLER_SYMBOL(DepthwiseConv, DepthwiseConvImpl, ConvolutionBinding());
XLA_FFI_DEFINE_HANDLER_SYMBOL(DepthwiseConvTranspose, DepthwiseConvTransposeImpl,
                              ConvolutionBinding());
XLA_FFI_DEFINE_HANDLER_SYMBOL(DepthwiseKernelGrad, DepthwiseKernelGradImpl, ConvolutionBinding());
XLA_FFI_DEFINE_HANDLER_SYMBOL(SmallInputConv, SmallInputConvImpl, ConvolutionBinding());
XLA_FFI_DEFINE_HANDLER_SYMBOL(SmallInputConvKernelGrad, SmallInputConvKernelGradImpl,
                              ConvolutionBinding());

XLA_FFI_DEFINE_HANDLER_SYMBOL(MomentSums, MomentSumsImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>());

XLA_FFI_DEFINE_HANDLER_SYMBOL(BatchNormBackward, BatchNormBackwardImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()  // grad_out
                                  .Arg<ffi::Buffer<ffi::F32>>()  // x
                                  .Arg<ffi::Buffer<ffi::F32>>()  // mean
                                  .Arg<ffi::Buffer<ffi::F32>>()  // inv_std
                                  .Arg<ffi::Buffer<ffi::F32>>()  // scale
                                  .Arg<ffi::Buffer<ffi::F32>>()  // bias
                                  .Ret<ffi::Buffer<ffi::F32>>()  // grad_x
                                  .Ret<ffi::Buffer<ffi::F32>>()  // grad_scale
                                  .Ret<ffi::Buffer<ffi::F32>>()  // grad_bias
                                  .Attr<bool>("relu6"));
