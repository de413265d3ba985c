// rankforge's gradient-ready hooks over libtorch's autograd (compiled by build.rs, wrapped by
// src/dist/hooks.rs): the post-accumulate-grad hook PyTorch's DDP builds its overlap on
// (`Tensor.register_post_accumulate_grad_hook`), which tch does not expose.
//
// A hook is libtorch's `PostAccumulateGradHook` on a leaf parameter: AccumulateGrad calls it
// once per backward, right after it has added that backward's gradient into `param.grad`
// (a parameter used several times in the graph — tied weights — has one AccumulateGrad node,
// which runs after all of its uses). It calls back into Rust through a plain C function
// pointer with the parameter's index. Tensors arrive as tch's handles (`at::Tensor*`). Every
// C++ exception is caught and returned as a message freed with rf_hooks_free_message.

#include <ATen/core/Tensor.h>
#include <torch/csrc/autograd/function_hook.h>
#include <torch/csrc/autograd/variable.h>

#include <memory>

#include "rf_errors.h"

typedef void (*rf_grad_ready_fn)(void *ctx, size_t index);

namespace {

struct GradReadyHook : torch::autograd::PostAccumulateGradHook {
  GradReadyHook(rf_grad_ready_fn fn, void *ctx, size_t index) : fn(fn), ctx(ctx), index(index) {}
  void operator()(const torch::autograd::Variable & /*param*/) override { fn(ctx, index); }
  rf_grad_ready_fn fn;
  void *ctx;
  size_t index;
};

}  // namespace

// Sets `param`'s post-accumulate-grad hook (replacing any): `fn(ctx, index)` after each
// backward has accumulated into `param.grad`. `param` must be a leaf that requires grad.
extern "C" char *rf_set_grad_ready_hook(const at::Tensor *param, rf_grad_ready_fn fn, void *ctx, size_t index) {
  return rf::guarded(
      [&] {
        TORCH_CHECK(param->requires_grad() && param->is_leaf(), "a gradient-ready hook needs a leaf tensor that requires grad");
        torch::autograd::impl::set_post_acc_grad_hooks(*param, std::make_unique<GradReadyHook>(fn, ctx, index));
      },
      "unknown C++ exception while setting a gradient hook");
}

// Removes `param`'s post-accumulate-grad hook.
extern "C" char *rf_clear_grad_ready_hook(const at::Tensor *param) {
  return rf::guarded([&] { torch::autograd::impl::set_post_acc_grad_hooks(*param, nullptr); },
                 "unknown C++ exception while clearing a gradient hook");
}

// `param.grad = grad` (a parameter that had no gradient on this rank receives the ranks' sum).
extern "C" char *rf_set_grad(const at::Tensor *param, const at::Tensor *grad) {
  return rf::guarded([&] { const_cast<at::Tensor *>(param)->mutable_grad() = *grad; },
                 "unknown C++ exception while setting a gradient");
}

// Frees a message returned by the functions above.
extern "C" void rf_hooks_free_message(char *msg) { rf::free_message(msg); }
