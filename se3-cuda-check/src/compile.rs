//! The compile check: every kernel source through NVRTC to PTX for a GPU architecture, the
//! PTX through ptxas, and the registers, stack and spills ptxas reports per kernel.
//!
//! The tools come from NVIDIA's PyPI wheels (`nvidia-cuda-nvrtc-cu12`, `nvidia-cuda-nvcc-cu12`)
//! that `scripts/install-cuda-compilers` installs into `.cuda-tools/` at the workspace root (or
//! the folder in `SE3_CUDA_TOOLS`). NVRTC is loaded by absolute path before cudarc looks it up
//! by name, so no `LD_LIBRARY_PATH` is needed.

use std::path::{Path, PathBuf};
use std::process::Command;

use cudarc::nvrtc::{compile_ptx_with_opts, CompileOptions};
use se3_core::exec::kernels::{Hot, KernelSource, SOURCES};

/// The two tools, found on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tools {
    pub nvrtc: PathBuf,
    pub ptxas: PathBuf,
}

/// What ptxas reports for one kernel.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct KernelReport {
    pub name: String,
    pub registers: u32,
    pub stack_bytes: u32,
    pub spill_store_bytes: u32,
    pub spill_load_bytes: u32,
}

/// The folder the install script fills: `$SE3_CUDA_TOOLS`, else `<workspace>/.cuda-tools`.
pub fn tools_dir() -> PathBuf {
    std::env::var_os("SE3_CUDA_TOOLS")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../.cuda-tools"))
}

/// The NVRTC library and ptxas inside `dir`, if both are there.
pub fn find_tools(dir: &Path) -> Option<Tools> {
    let nvrtc = dir.join("nvidia/cuda_nvrtc/lib/libnvrtc.so.12");
    let ptxas = dir.join("nvidia/cuda_nvcc/bin/ptxas");
    (nvrtc.is_file() && ptxas.is_file()).then_some(Tools { nvrtc, ptxas })
}

/// Loads NVRTC (and its builtins library beside it) by absolute path and keeps it loaded, so
/// cudarc's lookup by soname finds it.
///
/// # Errors
/// The loader's message when a library cannot be loaded.
pub fn preload_nvrtc(tools: &Tools) -> Result<(), String> {
    let dir = tools.nvrtc.parent().unwrap_or(Path::new("."));
    let mut libs: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| e.to_string())?
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("libnvrtc-builtins.so"))
        })
        .collect();
    libs.push(tools.nvrtc.clone());
    for lib in libs {
        // SAFETY: NVIDIA's libraries run no unsound initialisers; the handle is leaked so the
        // library stays loaded for the process.
        let handle = unsafe { libloading::Library::new(&lib) }.map_err(|e| e.to_string())?;
        std::mem::forget(handle);
    }
    Ok(())
}

/// NVRTC's PTX for `src` on virtual architecture `compute_<sm>`.
///
/// # Errors
/// The NVRTC log when the source does not compile.
pub fn to_ptx(src: &KernelSource, sm: &'static str) -> Result<String, String> {
    let arch = match sm {
        "80" => "compute_80",
        "90" => "compute_90",
        other => return Err(format!("no architecture sm_{other} in the check")),
    };
    let opts = CompileOptions {
        arch: Some(arch),
        name: Some(src.file.to_string()),
        ..Default::default()
    };
    compile_ptx_with_opts(src.program(), opts)
        .map(|p| p.to_src())
        .map_err(|e| format!("{e:?}"))
}

/// Assembles `ptx` with ptxas for `sm_<sm>` and parses its per-kernel report.
///
/// # Errors
/// ptxas's output when it fails.
pub fn assemble(
    tools: &Tools,
    ptx: &str,
    sm: &str,
    tag: &str,
) -> Result<Vec<KernelReport>, String> {
    let dir = std::env::temp_dir().join(format!("se3-ptx-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let file = dir.join(format!("{tag}.sm_{sm}.ptx"));
    std::fs::write(&file, ptx).map_err(|e| e.to_string())?;
    let out = Command::new(&tools.ptxas)
        .arg(format!("-arch=sm_{sm}"))
        .arg("-v")
        .arg("-o")
        .arg(dir.join(format!("{tag}.sm_{sm}.cubin")))
        .arg(&file)
        .output()
        .map_err(|e| format!("cannot run {}: {e}", tools.ptxas.display()))?;
    let log = String::from_utf8_lossy(&out.stderr).into_owned();
    if !out.status.success() {
        return Err(log);
    }
    Ok(parse_ptxas(&log))
}

/// One kernel of one architecture in the compile check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompiledKernel {
    /// `80` or `90`.
    pub sm: &'static str,
    /// Whether a spill here fails the check.
    pub hot: Hot,
    pub report: KernelReport,
}

/// What compiling every kernel gave: ptxas's report of each listed kernel, and every problem
/// (a source that does not compile or assemble, a listed kernel missing from the PTX, a spill
/// in a hot kernel).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CompileSummary {
    pub kernels: Vec<CompiledKernel>,
    pub failures: Vec<String>,
}

/// Every source of [`SOURCES`] through NVRTC and ptxas for sm_80 and sm_90.
pub fn compile_every_kernel(tools: &Tools) -> CompileSummary {
    let mut out = CompileSummary::default();
    for sm in ["80", "90"] {
        for src in SOURCES {
            let tag = src.file.replace(['/', '.'], "_");
            let ptx = match to_ptx(src, sm) {
                Ok(p) => p,
                Err(log) => {
                    out.failures
                        .push(format!("{} does not compile for sm_{sm}: {log}", src.file));
                    continue;
                }
            };
            let reports = match assemble(tools, &ptx, sm, &tag) {
                Ok(r) => r,
                Err(log) => {
                    out.failures
                        .push(format!("ptxas fails on {} for sm_{sm}: {log}", src.file));
                    continue;
                }
            };
            for (kernel, hot) in src.kernels {
                let Some(r) = reports.iter().find(|r| r.name == *kernel) else {
                    out.failures
                        .push(format!("{kernel} missing from the PTX of {}", src.file));
                    continue;
                };
                if *hot == Hot::Yes && (r.spill_store_bytes > 0 || r.spill_load_bytes > 0) {
                    out.failures
                        .push(format!("hot kernel {kernel} spills registers on sm_{sm}"));
                }
                out.kernels.push(CompiledKernel {
                    sm,
                    hot: *hot,
                    report: r.clone(),
                });
            }
        }
    }
    out
}

fn number_before(line: &str, word: &str) -> Option<u32> {
    let at = line.find(word)?;
    line[..at].split_whitespace().last()?.parse().ok()
}

/// Parses `ptxas -v` output into one report per kernel.
pub fn parse_ptxas(log: &str) -> Vec<KernelReport> {
    let mut out: Vec<KernelReport> = Vec::new();
    for line in log.lines() {
        if let Some(rest) = line.split("Function properties for ").nth(1) {
            out.push(KernelReport {
                name: rest.trim().to_string(),
                ..Default::default()
            });
        } else if let Some(r) = out.last_mut() {
            if let Some(v) = number_before(line, "bytes stack frame") {
                r.stack_bytes = v;
            }
            if let Some(v) = number_before(line, "bytes spill stores") {
                r.spill_store_bytes = v;
            }
            if let Some(v) = number_before(line, "bytes spill loads") {
                r.spill_load_bytes = v;
            }
            if let Some(v) = number_before(line, "registers") {
                r.registers = v;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn parses_a_ptxas_report() {
        let log = "ptxas info    : 0 bytes gmem\n\
ptxas info    : Compiling entry function 'gather_rows' for 'sm_80'\n\
ptxas info    : Function properties for gather_rows\n\
    8 bytes stack frame, 4 bytes spill stores, 12 bytes spill loads\n\
ptxas info    : Used 17 registers, 388 bytes cmem[0]\n";
        let r = super::parse_ptxas(log);
        assert_eq!(r.len(), 1);
        assert_eq!(
            (r[0].name.as_str(), r[0].registers, r[0].stack_bytes),
            ("gather_rows", 17, 8)
        );
        assert_eq!((r[0].spill_store_bytes, r[0].spill_load_bytes), (4, 12));
    }
}
