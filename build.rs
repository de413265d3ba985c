//! Link-time plumbing for the `rankforge` binaries (build step, not part of the data flow).
//!
//! torch-sys finds libtorch and links it, but (a) it emits no rpath for the final binaries, so
//! they would need `LD_LIBRARY_PATH`, and (b) rustc links with `--as-needed`, which silently
//! drops `libtorch_cuda.so` because no symbol of it is referenced directly: CUDA then looks
//! absent at run time. We receive torch-sys's library directory as `DEP_TCH_LIBTORCH_LIB`
//! (its `links = "tch"` key) and fix both for every target of this package (bin, tests).
//!
//! It also compiles rankforge's native extension against the headers of the same libtorch with
//! the flags torch-sys uses for its own C++ (C++17, the wheel's C++11 ABI), one static library
//! per file so that each can fail alone: `csrc/fused_optim.cpp` (the fused AdamW kernel, see
//! src/optim/fused.rs) sets `cfg(rankforge_fused)` when it built, `csrc/grad_hooks.cpp` (the
//! gradient-ready hooks of the overlapped all-reduce, see src/dist/hooks.rs) sets
//! `cfg(rankforge_hooks)`. A compile failure is a warning, not an error: rankforge then uses its
//! per-tensor AdamW loop, or all-reduces the gradients after backward. The launcher crate is not
//! built from here and links no libtorch.

use std::path::{Path, PathBuf};

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=csrc/rf_errors.h");
    println!("cargo:rustc-check-cfg=cfg(rankforge_fused)");
    println!("cargo:rustc-check-cfg=cfg(rankforge_hooks)");
    let Some(lib) = std::env::var_os("DEP_TCH_LIBTORCH_LIB").map(PathBuf::from) else {
        println!("cargo:warning=DEP_TCH_LIBTORCH_LIB unset: torch-sys did not report libtorch; no rpath added");
        return;
    };
    // Resolve symlinks (.libtorch -> the cached venv) so the rpath survives a re-linked checkout.
    let lib = lib.canonicalize().unwrap_or(lib);
    build_extension(&lib, "fused_optim", "rankforge_fused", "AdamW falls back to its per-tensor loop");
    build_extension(&lib, "grad_hooks", "rankforge_hooks", "gradients are all-reduced after backward (no overlap)");
    println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib.display());
    for cuda_lib in ["torch_cuda", "torch_cuda_cu", "torch_cuda_cpp"] {
        if lib.join(format!("lib{cuda_lib}.so")).exists() {
            // The pip wheel's libtorch_cuda depends on the nvidia-* wheels beside torch; let the
            // linker resolve them through the library's own $ORIGIN runpath.
            println!("cargo:rustc-link-arg=-Wl,--no-as-needed");
            println!("cargo:rustc-link-arg=-l{cuda_lib}");
            println!("cargo:rustc-link-arg=-Wl,--as-needed");
        }
    }
}

/// Compiles `csrc/<name>.cpp` into a static library linked into rankforge (its symbols resolve
/// against the libtorch that torch-sys links); sets `cfg(<cfg>)` when it built, else warns that
/// `fallback` happens.
fn build_extension(lib: &Path, name: &str, cfg: &str, fallback: &str) {
    let file = format!("csrc/{name}.cpp");
    println!("cargo:rerun-if-changed={file}");
    println!("cargo:rerun-if-env-changed=LIBTORCH_CXX11_ABI");
    // `<torch>/lib` beside `<torch>/include` (the wheel and the libtorch zip alike).
    let include = lib.join("../include");
    // torch-sys's rule for a LIBTORCH directory: LIBTORCH_CXX11_ABI, else 1 (every torch 2.x
    // wheel since 2.7 uses the C++11 ABI).
    let abi = std::env::var("LIBTORCH_CXX11_ABI").unwrap_or_else(|_| "1".to_owned());
    let built = cc::Build::new()
        .cpp(true)
        .pic(true)
        .warnings(false)
        .include(&include)
        .include(include.join("torch/csrc/api/include"))
        .flag("-std=c++17")
        .flag(format!("-D_GLIBCXX_USE_CXX11_ABI={abi}"))
        .flag("-DGLOG_USE_GLOG_EXPORT")
        .file(&file)
        .try_compile(&format!("rankforge_{name}"));
    match built {
        Ok(()) => println!("cargo:rustc-cfg={cfg}"),
        Err(e) => println!("cargo:warning={file} did not compile ({e}); {fallback}"),
    }
}
