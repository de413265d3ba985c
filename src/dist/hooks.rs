//! Gradient-ready hooks: libtorch's post-accumulate-grad hooks (what PyTorch's DDP and
//! `Tensor.register_post_accumulate_grad_hook` use), reached through rankforge's native
//! extension `csrc/grad_hooks.cpp` because tch does not bind them. build.rs compiles it and
//! sets `cfg(rankforge_hooks)`; without it (a compile failure, reported as a build warning)
//! [`AVAILABLE`] is false and the step all-reduces after backward.
//!
//! [`GradReadyHooks::register`] sets a hook on each parameter that calls `on_ready(i)` once per
//! backward, right after that backward has accumulated into parameter `i`'s `.grad` — on the
//! thread that runs the parameter's backward (the caller's for CPU tensors, libtorch's device
//! thread for CUDA ones). Dropping the guard removes the hooks, so `on_ready` is never called
//! after it is gone.

use std::ffi::c_void;

use tch::{TchError, Tensor};

/// Whether this build has the hooks (the native extension's `grad_hooks.cpp`).
pub const AVAILABLE: bool = cfg!(rankforge_hooks);

/// The callback a hook calls: parameter index → ().
type OnReady<'a> = &'a (dyn Fn(usize) + Sync);

/// Hooks on a list of parameters, removed on drop.
pub struct GradReadyHooks<'a> {
    params: Vec<Tensor>,
    /// What the C side holds a pointer to (boxed: a thin pointer with a stable address).
    _target: Box<OnReady<'a>>,
}

impl<'a> GradReadyHooks<'a> {
    /// Sets on `params[i]` a hook calling `on_ready(i)`. Each must be a leaf that requires
    /// grad; any existing post-accumulate-grad hook of theirs is replaced.
    pub fn register(params: &[Tensor], on_ready: OnReady<'a>) -> Result<GradReadyHooks<'a>, TchError> {
        let target = Box::new(on_ready);
        let ctx = &*target as *const OnReady<'a> as *mut c_void;
        let mut hooks = GradReadyHooks { params: Vec::with_capacity(params.len()), _target: target };
        for (i, p) in params.iter().enumerate() {
            ffi::set_hook(p, ctx, i)?;
            hooks.params.push(p.shallow_clone());
        }
        Ok(hooks)
    }
}

impl Drop for GradReadyHooks<'_> {
    fn drop(&mut self) {
        for p in &self.params {
            if let Err(e) = ffi::clear_hook(p) {
                tracing::warn!("{e}");
            }
        }
    }
}

/// `param.grad = grad`.
pub fn set_grad(param: &Tensor, grad: &Tensor) -> Result<(), TchError> {
    ffi::set_grad(param, grad)
}

/// `param.grad = None` (without the extension: `param.grad.zero_()`).
pub fn clear_grad(param: &mut Tensor) {
    if AVAILABLE && ffi::set_grad(param, &Tensor::new()).is_ok() {
        return;
    }
    param.zero_grad();
}

/// The C side's `fn(ctx, index)`: `ctx` is a `GradReadyHooks::_target`.
extern "C" fn trampoline(ctx: *mut c_void, index: usize) {
    // SAFETY: ctx points to the boxed callback of a live `GradReadyHooks` (its Drop removes
    // every hook that holds the pointer before the box goes).
    let on_ready = unsafe { &*(ctx as *const OnReady<'_>) };
    // A panic must not unwind into libtorch's C++ frames.
    if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| on_ready(index))).is_err() {
        tracing::error!("a gradient-ready hook panicked (parameter {index})");
    }
}

#[cfg(rankforge_hooks)]
mod ffi {
    use std::ffi::{c_char, c_void, CStr};

    use tch::{TchError, Tensor};
    use torch_sys::C_tensor;

    extern "C" {
        fn rf_set_grad_ready_hook(param: *const C_tensor, f: extern "C" fn(*mut c_void, usize), ctx: *mut c_void, index: usize) -> *mut c_char;
        fn rf_clear_grad_ready_hook(param: *const C_tensor) -> *mut c_char;
        fn rf_set_grad(param: *const C_tensor, grad: *const C_tensor) -> *mut c_char;
        fn rf_hooks_free_message(msg: *mut c_char);
    }

    /// The extension's result: null, or an error message it allocated.
    fn check(what: &str, err: *mut c_char) -> Result<(), TchError> {
        if err.is_null() {
            return Ok(());
        }
        // SAFETY: a non-null return is a NUL-terminated string owned by the extension.
        let msg = unsafe { CStr::from_ptr(err) }.to_string_lossy().into_owned();
        unsafe { rf_hooks_free_message(err) };
        Err(TchError::Torch(format!("{what}: {msg}")))
    }

    pub fn set_hook(p: &Tensor, ctx: *mut c_void, index: usize) -> Result<(), TchError> {
        // SAFETY: `p` is a live tch handle; ctx outlives the hook (see `GradReadyHooks`).
        check("gradient hook", unsafe { rf_set_grad_ready_hook(p.as_ptr(), super::trampoline, ctx, index) })
    }

    pub fn clear_hook(p: &Tensor) -> Result<(), TchError> {
        // SAFETY: `p` is a live tch handle.
        check("gradient hook", unsafe { rf_clear_grad_ready_hook(p.as_ptr()) })
    }

    pub fn set_grad(p: &Tensor, g: &Tensor) -> Result<(), TchError> {
        // SAFETY: both are live tch handles; libtorch takes its own reference to `g`.
        check("set gradient", unsafe { rf_set_grad(p.as_ptr(), g.as_ptr()) })
    }
}

#[cfg(not(rankforge_hooks))]
mod ffi {
    use std::ffi::c_void;

    use tch::{TchError, Tensor};

    fn missing() -> TchError {
        TchError::Torch("this build has no gradient hooks (csrc/grad_hooks.cpp did not compile); set train.overlap_grad_reduce = false".into())
    }

    pub fn set_hook(_: &Tensor, _: *mut c_void, _: usize) -> Result<(), TchError> {
        let _ = super::trampoline; // referenced only by the real extension
        Err(missing())
    }

    pub fn clear_hook(_: &Tensor) -> Result<(), TchError> {
        Ok(())
    }

    /// Without the extension: `p.grad` (undefined) receives `g` through the backward of
    /// `sum(p * g)`, whose gradient is exactly `g`.
    pub fn set_grad(p: &Tensor, g: &Tensor) -> Result<(), TchError> {
        tch::with_grad(|| (p * g.detach().to_kind(p.kind())).sum(p.kind()).f_backward())
    }
}
