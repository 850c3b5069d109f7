//! With the embedded engine, llama.cpp is built as shared libraries with ggml's CPU
//! variants as loadable modules (llama-cpp-2's `dynamic-backends`), so one binary runs on
//! any x86-64 and picks the best variant at run time. This script:
//! - sets an rpath to `$ORIGIN` (an installed layout: libraries beside the binary) and to
//!   the build's library directory (binaries and tests run in place from `target/`), as
//!   DT_RPATH, which the libraries' own dependencies are found by too;
//! - copies the CPU variants into `OUT_DIR/ggml-backends`, leaving out
//!   `libggml-cpu-sapphirerapids.so` (its AMX code dies with SIGILL on CPUs that report AMX
//!   but cannot run it, as measured in the engine notes), and tells the engine where.

use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    if std::env::var_os("CARGO_FEATURE_ENGINE").is_none() {
        return;
    }
    let Some(backends) = std::env::var_os("DEP_LLAMA_BACKENDS_DIR").map(PathBuf::from) else {
        println!("cargo:warning=llama-cpp-sys-2 did not report its backends directory");
        return;
    };
    let root = backends.parent().map(PathBuf::from).unwrap_or_default();
    // An RPATH, not a RUNPATH: it also serves the libraries' own dependencies
    // (libllama-common.so needs libllama.so, and a test binary that calls only the former has
    // no entry of its own for the latter).
    println!("cargo:rustc-link-arg=-Wl,--disable-new-dtags");
    println!("cargo:rustc-link-arg=-Wl,-rpath,$ORIGIN");
    for lib in ["lib", "lib64"] {
        let d = root.join(lib);
        if d.is_dir() {
            println!("cargo:rustc-link-arg=-Wl,-rpath,{}", d.display());
        }
    }
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR")).join("ggml-backends");
    let _ = std::fs::remove_dir_all(&out);
    std::fs::create_dir_all(&out).expect("OUT_DIR is writable");
    if let Ok(rd) = std::fs::read_dir(&backends) {
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.contains("sapphirerapids") {
                continue;
            }
            std::fs::copy(e.path(), out.join(&name)).expect("copy a ggml backend");
        }
    }
    println!("cargo:rustc-env=TOLLGATE_BUILD_GGML_BACKENDS={}", out.display());
    println!("cargo:rustc-env=TOLLGATE_BUILD_LLAMA_LIBS={}", root.join("lib").display());
}
