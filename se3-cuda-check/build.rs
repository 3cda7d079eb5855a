//! Builds the CPU shim: se3's CUDA kernel sources compiled as C++20 over `shim/cuda_shim.h`
//! with the system C++ compiler (tests only).

fn main() {
    let kernels = "../se3-core/src";
    cc::Build::new()
        .cpp(true)
        .std("c++20")
        .file("shim/launch.cpp")
        .include("shim")
        .include(kernels)
        .flag_if_supported("-pthread")
        .flag_if_supported("-Wno-unused-parameter")
        .opt_level(2)
        .compile("se3_cuda_shim");
    println!("cargo:rustc-link-lib=pthread");
    println!("cargo:rerun-if-changed=shim");
    for dir in ["ops", "exec/cuda"] {
        for cu in cu_files(&std::path::Path::new(kernels).join(dir)) {
            println!("cargo:rerun-if-changed={}", cu.display());
        }
    }
}

/// The `.cu` files below `dir`.
fn cu_files(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(cu_files(&p));
        } else if p.extension().is_some_and(|x| x == "cu" || x == "cuh") {
            out.push(p);
        }
    }
    out
}
