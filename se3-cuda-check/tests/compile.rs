//! Every CUDA kernel of se3 compiled with NVRTC to PTX for sm_80 and sm_90 and assembled with
//! ptxas; prints registers, stack and spills per kernel; fails on a compile or assembly error,
//! on a listed kernel missing from the PTX, or on a spill in a hot kernel.
//!
//! Without the tools (`scripts/install-cuda-compilers` not run) it prints a skip line and
//! passes, unless `SE3_REQUIRE_CUDA_COMPILERS` is set (CI sets it), where absence fails.

use se3_core::exec::kernels::{Hot, SOURCES};
use se3_cuda_check::compile::{assemble, find_tools, preload_nvrtc, to_ptx, tools_dir};

#[test]
fn every_kernel_compiles_for_sm80_and_sm90_without_hot_spills() {
    let dir = tools_dir();
    let Some(tools) = find_tools(&dir) else {
        assert!(
            std::env::var_os("SE3_REQUIRE_CUDA_COMPILERS").is_none(),
            "SE3_REQUIRE_CUDA_COMPILERS is set but NVRTC and ptxas are not in {} \
             (run scripts/install-cuda-compilers)",
            dir.display()
        );
        println!(
            "skip: NVRTC and ptxas not found in {} (run scripts/install-cuda-compilers)",
            dir.display()
        );
        return;
    };
    if let Err(e) = preload_nvrtc(&tools) {
        panic!("cannot load {}: {e}", tools.nvrtc.display());
    }
    let mut failures = Vec::new();
    println!(
        "{:<24} {:<6} {:>5} {:>6} {:>12} {:>11}",
        "kernel", "arch", "regs", "stack", "spill store", "spill load"
    );
    for sm in ["80", "90"] {
        for src in SOURCES {
            let tag = src.file.replace(['/', '.'], "_");
            let ptx = match to_ptx(src, sm) {
                Ok(p) => p,
                Err(log) => {
                    failures.push(format!("{} does not compile for sm_{sm}: {log}", src.file));
                    continue;
                }
            };
            let reports = match assemble(&tools, &ptx, sm, &tag) {
                Ok(r) => r,
                Err(log) => {
                    failures.push(format!("ptxas fails on {} for sm_{sm}: {log}", src.file));
                    continue;
                }
            };
            for (kernel, hot) in src.kernels {
                let Some(r) = reports.iter().find(|r| r.name == *kernel) else {
                    failures.push(format!("{kernel} missing from the PTX of {}", src.file));
                    continue;
                };
                println!(
                    "{:<24} sm_{:<3} {:>5} {:>6} {:>12} {:>11}{}",
                    kernel,
                    sm,
                    r.registers,
                    r.stack_bytes,
                    r.spill_store_bytes,
                    r.spill_load_bytes,
                    if *hot == Hot::Yes { "  hot" } else { "" }
                );
                if *hot == Hot::Yes && (r.spill_store_bytes > 0 || r.spill_load_bytes > 0) {
                    failures.push(format!("hot kernel {kernel} spills registers on sm_{sm}"));
                }
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
