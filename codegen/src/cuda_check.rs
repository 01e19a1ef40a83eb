//! Offline check of generated CUDA C++ with NVIDIA's own compilers, no GPU needed: NVRTC compiles
//! each kernel for `compute_90`, `ptxas -arch=sm_90 -v` assembles the PTX and reports resources.
//! The compilers come from NVIDIA's PyPI wheels (`scripts/fetch-cuda-wheels.sh` unpacks them and
//! prints the folder; point `SPARSECUBE_CUDA_WHEELS` at it).

use std::ffi::{CStr, CString, c_char, c_int, c_void};
use std::fmt;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Environment variable naming the unpacked wheels (the folder holding `nvidia/cu13`).
pub const WHEELS_ENV: &str = "SPARSECUBE_CUDA_WHEELS";

/// Why a source did not make it to SASS.
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    /// The toolchain is not where it was said to be.
    #[error("CUDA toolchain: {0}")]
    Toolchain(String),
    /// NVRTC rejected the source; the log is NVRTC's own.
    #[error("NVRTC rejected `{kernel}`:\n{log}")]
    Nvrtc {
        /// Kernel name.
        kernel: String,
        /// NVRTC's compile log.
        log: String,
    },
    /// ptxas rejected the PTX; the log is ptxas's own.
    #[error("ptxas rejected `{kernel}`:\n{log}")]
    Ptxas {
        /// Kernel name.
        kernel: String,
        /// ptxas's output.
        log: String,
    },
}

/// What ptxas reports for one entry function.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Resources {
    /// Entry-point name.
    pub function: String,
    /// Registers per thread.
    pub registers: u32,
    /// Bytes of stack frame per thread (local arrays live here).
    pub stack_frame: u32,
    /// Bytes spilled to local memory.
    pub spill_stores: u32,
    /// Bytes reloaded from spills.
    pub spill_loads: u32,
    /// Bytes of static shared memory.
    pub shared: u32,
    /// Named barriers used.
    pub barriers: u32,
}

impl fmt::Display for Resources {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: {} registers, {} B stack, {}/{} B spill stores/loads, {} B smem, {} barriers",
            self.function,
            self.registers,
            self.stack_frame,
            self.spill_stores,
            self.spill_loads,
            self.shared,
            self.barriers
        )
    }
}

type NvrtcProgram = *mut c_void;
type VersionFn = unsafe extern "C" fn(*mut c_int, *mut c_int) -> c_int;
type CreateFn = unsafe extern "C" fn(
    *mut NvrtcProgram,
    *const c_char,
    *const c_char,
    c_int,
    *const *const c_char,
    *const *const c_char,
) -> c_int;
type CompileFn = unsafe extern "C" fn(NvrtcProgram, c_int, *const *const c_char) -> c_int;
type SizeFn = unsafe extern "C" fn(NvrtcProgram, *mut usize) -> c_int;
type GetFn = unsafe extern "C" fn(NvrtcProgram, *mut c_char) -> c_int;
type DestroyFn = unsafe extern "C" fn(*mut NvrtcProgram) -> c_int;

/// NVRTC and ptxas from unpacked wheels.
pub struct CudaToolchain {
    cu13: PathBuf,
    _builtins: libloading::Library,
    nvrtc: libloading::Library,
}

impl fmt::Debug for CudaToolchain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CudaToolchain({})", self.cu13.display())
    }
}

#[allow(unsafe_code)]
impl CudaToolchain {
    /// The toolchain named by `SPARSECUBE_CUDA_WHEELS`, `None` when the variable is unset.
    pub fn from_env() -> Result<Option<Self>, CheckError> {
        match std::env::var_os(WHEELS_ENV) {
            None => Ok(None),
            Some(dir) => Self::open(Path::new(&dir)).map(Some),
        }
    }

    /// Opens the toolchain under `dir`: the unpacked wheels (the folder holding `nvidia/cu13`,
    /// with `lib/`, `bin/`, `include/`) or a CUDA 13 toolkit (e.g. `/usr/local/cuda`, with
    /// `lib64/`), which is how the GPU machine's own NVRTC is checked.
    pub fn open(dir: &Path) -> Result<Self, CheckError> {
        let cu13 = if dir.join("nvidia/cu13").is_dir() {
            dir.join("nvidia/cu13")
        } else {
            dir.to_path_buf()
        };
        let lib = ["lib", "lib64"]
            .map(|l| cu13.join(l))
            .into_iter()
            .find(|l| l.join("libnvrtc.so.13").exists())
            .unwrap_or_else(|| cu13.join("lib"));
        let missing = |p: &Path| {
            CheckError::Toolchain(format!(
                "`{}` is missing; run scripts/fetch-cuda-wheels.sh",
                p.display()
            ))
        };
        for p in [
            lib.join("libnvrtc.so.13"),
            cu13.join("bin/ptxas"),
            cu13.join("include/cuda_runtime.h"),
            // WMMA's mma.h includes it; PyPI ships it in nvidia-cuda-crt, not the runtime wheel.
            cu13.join("include/crt/mma.h"),
        ] {
            if !p.exists() {
                return Err(missing(&p));
            }
        }
        // The builtins library is versioned by minor release (libnvrtc-builtins.so.13.0, .13.1…).
        let builtins_path = std::fs::read_dir(&lib)
            .ok()
            .into_iter()
            .flatten()
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("libnvrtc-builtins.so.13."))
            })
            .min()
            .ok_or_else(|| missing(&lib.join("libnvrtc-builtins.so.13.0")))?;
        // NVRTC loads its builtins library by soname at compile time; loading it first, globally,
        // by path makes that lookup succeed without LD_LIBRARY_PATH.
        let open_global = |p: PathBuf| -> Result<libloading::Library, CheckError> {
            // SAFETY: NVIDIA's NVRTC libraries; loading runs their initialisers only.
            unsafe {
                libloading::os::unix::Library::open(
                    Some(&p),
                    libloading::os::unix::RTLD_NOW | libloading::os::unix::RTLD_GLOBAL,
                )
                .map(libloading::Library::from)
                .map_err(|e| CheckError::Toolchain(format!("cannot load `{}`: {e}", p.display())))
            }
        };
        let builtins = open_global(builtins_path)?;
        let nvrtc = open_global(lib.join("libnvrtc.so.13"))?;
        Ok(Self {
            cu13,
            _builtins: builtins,
            nvrtc,
        })
    }

    fn sym<T: Copy>(&self, name: &[u8]) -> Result<T, CheckError> {
        // SAFETY: each symbol is looked up with its C prototype from nvrtc.h.
        unsafe { self.nvrtc.get::<T>(name).map(|s| *s) }.map_err(|e| {
            CheckError::Toolchain(format!(
                "NVRTC lacks `{}`: {e}",
                String::from_utf8_lossy(name)
            ))
        })
    }

    /// NVRTC's version, e.g. (13, 0).
    pub fn nvrtc_version(&self) -> Result<(i32, i32), CheckError> {
        let f: VersionFn = self.sym(b"nvrtcVersion\0")?;
        let (mut major, mut minor) = (0, 0);
        // SAFETY: two valid out-pointers.
        unsafe { f(&mut major, &mut minor) };
        Ok((major, minor))
    }

    /// ptxas's version line, e.g. `Cuda compilation tools, release 13.0, V13.0.88`.
    pub fn ptxas_version(&self) -> Result<String, CheckError> {
        let out = Command::new(self.cu13.join("bin/ptxas"))
            .arg("--version")
            .output()
            .map_err(|e| CheckError::Toolchain(format!("cannot run ptxas: {e}")))?;
        Ok(String::from_utf8_lossy(&out.stdout)
            .lines()
            .rfind(|l| l.contains("release"))
            .unwrap_or("unknown")
            .trim()
            .to_string())
    }

    /// Compiles CUDA C++ to PTX for `compute_90`; on failure, NVRTC's log.
    pub fn compile_ptx(&self, kernel: &str, source: &str) -> Result<String, CheckError> {
        let create: CreateFn = self.sym(b"nvrtcCreateProgram\0")?;
        let compile: CompileFn = self.sym(b"nvrtcCompileProgram\0")?;
        let log_size: SizeFn = self.sym(b"nvrtcGetProgramLogSize\0")?;
        let get_log: GetFn = self.sym(b"nvrtcGetProgramLog\0")?;
        let ptx_size: SizeFn = self.sym(b"nvrtcGetPTXSize\0")?;
        let get_ptx: GetFn = self.sym(b"nvrtcGetPTX\0")?;
        let destroy: DestroyFn = self.sym(b"nvrtcDestroyProgram\0")?;
        let bad = |what: &str| CheckError::Nvrtc {
            kernel: kernel.into(),
            log: what.into(),
        };
        let src = CString::new(source).map_err(|_| bad("the source holds a NUL byte"))?;
        let name = CString::new(format!("{kernel}.cu"))
            .map_err(|_| bad("the kernel name holds a NUL byte"))?;
        let include = format!("-I{}", self.cu13.join("include").display());
        let options: Vec<CString> = [
            "--gpu-architecture=compute_90",
            "--std=c++17",
            include.as_str(),
        ]
        .iter()
        .map(|o| CString::new(*o).expect("options hold no NUL"))
        .collect();
        let option_ptrs: Vec<*const c_char> = options.iter().map(|o| o.as_ptr()).collect();
        let mut prog: NvrtcProgram = std::ptr::null_mut();
        // SAFETY: NVRTC's documented call sequence; every pointer outlives the calls, buffers are
        // sized from NVRTC's own size queries, and the program is destroyed once.
        unsafe {
            if create(
                &mut prog,
                src.as_ptr(),
                name.as_ptr(),
                0,
                std::ptr::null(),
                std::ptr::null(),
            ) != 0
            {
                return Err(bad("nvrtcCreateProgram failed"));
            }
            let status = compile(prog, option_ptrs.len() as c_int, option_ptrs.as_ptr());
            let result = if status != 0 {
                let mut n = 0usize;
                log_size(prog, &mut n);
                let mut buf = vec![0 as c_char; n.max(1)];
                get_log(prog, buf.as_mut_ptr());
                Err(CheckError::Nvrtc {
                    kernel: kernel.into(),
                    log: CStr::from_ptr(buf.as_ptr()).to_string_lossy().into_owned(),
                })
            } else {
                let mut n = 0usize;
                ptx_size(prog, &mut n);
                let mut buf = vec![0 as c_char; n.max(1)];
                get_ptx(prog, buf.as_mut_ptr());
                Ok(CStr::from_ptr(buf.as_ptr()).to_string_lossy().into_owned())
            };
            destroy(&mut prog);
            result
        }
    }

    /// Assembles PTX for `sm_90` and returns ptxas's resource report per entry function.
    pub fn assemble(&self, kernel: &str, ptx: &str) -> Result<Vec<Resources>, CheckError> {
        let dir = tempfile::tempdir()
            .map_err(|e| CheckError::Toolchain(format!("no temporary folder: {e}")))?;
        let input = dir.path().join("k.ptx");
        std::fs::write(&input, ptx)
            .map_err(|e| CheckError::Toolchain(format!("cannot write PTX: {e}")))?;
        let out = Command::new(self.cu13.join("bin/ptxas"))
            .args(["-arch=sm_90", "-v", "-o"])
            .arg(dir.path().join("k.cubin"))
            .arg(&input)
            .output()
            .map_err(|e| CheckError::Toolchain(format!("cannot run ptxas: {e}")))?;
        let log = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        if !out.status.success() {
            return Err(CheckError::Ptxas {
                kernel: kernel.into(),
                log,
            });
        }
        Ok(parse_ptxas_report(&log))
    }

    /// NVRTC then ptxas.
    pub fn check(&self, kernel: &str, source: &str) -> Result<Vec<Resources>, CheckError> {
        let ptx = self.compile_ptx(kernel, source)?;
        self.assemble(kernel, &ptx)
    }
}

/// The numbers before `unit` in `text`, e.g. `number_before("16 registers", "registers")`.
fn number_before(text: &str, unit: &str) -> u32 {
    text.find(unit)
        .and_then(|at| text[..at].split_whitespace().last())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// Parses `ptxas -v` output into one report per entry function.
pub fn parse_ptxas_report(log: &str) -> Vec<Resources> {
    let mut out: Vec<Resources> = Vec::new();
    for line in log.lines() {
        if let Some(rest) = line.split("Compiling entry function '").nth(1) {
            let name = rest.split('\'').next().unwrap_or_default();
            out.push(Resources {
                function: name.to_string(),
                ..Resources::default()
            });
        } else if let Some(r) = out.last_mut() {
            if line.contains("bytes stack frame") {
                r.stack_frame = number_before(line, "bytes stack frame");
                r.spill_stores = number_before(line, "bytes spill stores");
                r.spill_loads = number_before(line, "bytes spill loads");
            } else if line.contains("Used") && line.contains("registers") {
                r.registers = number_before(line, "registers");
                r.barriers = number_before(line, "barriers");
                r.shared = number_before(line, "bytes smem");
            }
        }
    }
    out
}
