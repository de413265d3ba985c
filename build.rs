//! Link-time plumbing for the `rankforge` binaries (build step, not part of the data flow).
//!
//! torch-sys finds libtorch and links it, but (a) it emits no rpath for the final binaries, so
//! they would need `LD_LIBRARY_PATH`, and (b) rustc links with `--as-needed`, which silently
//! drops `libtorch_cuda.so` because no symbol of it is referenced directly: CUDA then looks
//! absent at run time. We receive torch-sys's library directory as `DEP_TCH_LIBTORCH_LIB`
//! (its `links = "tch"` key) and fix both for every target of this package (bin, tests).

use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    let Some(lib) = std::env::var_os("DEP_TCH_LIBTORCH_LIB").map(PathBuf::from) else {
        println!("cargo:warning=DEP_TCH_LIBTORCH_LIB unset: torch-sys did not report libtorch; no rpath added");
        return;
    };
    // Resolve symlinks (.libtorch -> the cached venv) so the rpath survives a re-linked checkout.
    let lib = lib.canonicalize().unwrap_or(lib);
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
