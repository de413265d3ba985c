// rankforge's native extension over libtorch's C++ API (compiled by build.rs, wrapped by
// src/optim/fused.rs): the multi-tensor AdamW kernel that tch does not expose.
//
// Tensors arrive as tch's handles: a tch `Tensor` holds a `torch::Tensor*` (= `at::Tensor*`,
// torch-sys's `torch_api.h`). Every C++ exception is caught here and returned as a message that
// the caller frees with rf_free_message; nothing is thrown across the C boundary.

#include <ATen/core/Tensor.h>
#include <ATen/core/grad_mode.h>
#include <ATen/ops/_fused_adamw.h>

#include <vector>

#include "rf_errors.h"

namespace {

std::vector<at::Tensor> gather(at::Tensor *const *ptrs, size_t n) {
  std::vector<at::Tensor> out;
  out.reserve(n);
  for (size_t i = 0; i < n; i++) {
    out.push_back(*ptrs[i]);
  }
  return out;
}

}  // namespace

// One `at::_fused_adamw_` call over `n` tensors of one device and dtype: `params` (updated in
// place; PyTorch's decoupled decay p *= 1 - lr*weight_decay), `grads`, the moments `exp_avgs`
// and `exp_avg_sqs` (updated in place), and `state_step`, a float32 scalar on the tensors'
// device holding the step number t of this update (bias corrections 1 - beta^t); the kernel
// reads it once per tensor and does not change it. Returns nullptr, or the error message.
extern "C" char *rf_fused_adamw_(at::Tensor *const *params, at::Tensor *const *grads,
                                 at::Tensor *const *exp_avgs, at::Tensor *const *exp_avg_sqs,
                                 size_t n, const at::Tensor *state_step, double lr, double beta1,
                                 double beta2, double weight_decay, double eps) {
  return rf::guarded(
      [&] {
        at::NoGradGuard no_grad;
        std::vector<at::Tensor> steps(n, *state_step);
        at::_fused_adamw_(gather(params, n), gather(grads, n), gather(exp_avgs, n),
                          gather(exp_avg_sqs, n), /*max_exp_avg_sqs=*/{}, steps, lr, beta1, beta2,
                          weight_decay, eps, /*amsgrad=*/false, /*maximize=*/false);
      },
      "unknown C++ exception in _fused_adamw_");
}

// Frees a message returned by rf_fused_adamw_.
extern "C" void rf_free_message(char *msg) { rf::free_message(msg); }
