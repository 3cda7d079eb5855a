//! `se3 doctor`: what this build and machine offer: the CPU kernels' instruction set, whether
//! the CUDA backend is compiled in, and if so the driver, NVRTC and cuBLAS libraries found
//! (with versions) and the CUDA devices (name, memory, compute capability).

use se3_core::device::{cpu_instruction_set, probe_cuda, CudaReport};

/// The report, one fact a line.
pub fn report() -> String {
    let mut out = vec![
        format!("se3 {}", env!("CARGO_PKG_VERSION")),
        format!(
            "cpu: {} ({} threads), kernels use {}",
            std::env::consts::ARCH,
            std::thread::available_parallelism().map_or(1, |n| n.get()),
            cpu_instruction_set()
        ),
    ];
    match probe_cuda() {
        Err(_) => {
            out.push("cuda feature: not compiled (rebuild with `--features cuda`)".into());
        }
        Ok(r) => {
            out.push("cuda feature: compiled (driver, NVRTC and cuBLAS load at run time)".into());
            out.extend(cuda_lines(&r));
        }
    }
    out.join("\n")
}

fn cuda_lines(r: &CudaReport) -> Vec<String> {
    let mut out = vec![
        match r.driver {
            Some(v) => format!("cuda driver: found, CUDA {}.{}", v / 1000, (v % 1000) / 10),
            None => "cuda driver: not found (libcuda.so; no NVIDIA driver)".into(),
        },
        match r.nvrtc {
            Some((major, minor)) => format!("nvrtc: found, version {major}.{minor}"),
            None => "nvrtc: not found (libnvrtc.so)".into(),
        },
        format!(
            "cublas: {}",
            if r.cublas {
                "found"
            } else {
                "not found (libcublas.so)"
            }
        ),
    ];
    if r.devices.is_empty() {
        out.push(match &r.device_error {
            Some(e) => format!("devices: none ({e})"),
            None => "devices: none".into(),
        });
    }
    for d in &r.devices {
        out.push(format!(
            "device {}: {}, {:.1} GiB, compute capability {}.{}",
            d.ordinal,
            d.name,
            d.memory_bytes as f64 / (1u64 << 30) as f64,
            d.compute_capability.0,
            d.compute_capability.1
        ));
    }
    out
}

/// Prints the report.
///
/// # Errors
/// None today; the signature is that of every subcommand.
pub fn run() -> Result<(), super::CliError> {
    println!("{}", report());
    Ok(())
}
