//! The text form of a plan (`sparsecube gen OP --plan`): the buffer table with bytes, the
//! launches with their kernels, grids and arguments, and the peak.

use super::{Arg, Cubes, LaunchPlan, Lowering, Role, Step, bytes_text, shape_text};
use kernels_ir::Extent;
use std::fmt::{self, Write as _};

fn cubes_text(c: &Cubes, units_per_cube: u32) -> String {
    match c {
        Cubes::Fixed(x, y, z) => format!("{x}×{y}×{z}"),
        Cubes::Units(Extent::Fixed(n), scale) => {
            let units = n * scale;
            format!("{}", units.div_ceil(units_per_cube as usize).max(1))
        }
        Cubes::Units(Extent::Nnz, scale) => {
            if *scale == 1 {
                format!("⌈nnz/{units_per_cube}⌉")
            } else {
                format!("⌈{scale}·nnz/{units_per_cube}⌉")
            }
        }
    }
}

impl fmt::Display for LaunchPlan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "plan {} ({})", self.label, self.dtype)?;
        if self.reads_nnz() {
            writeln!(
                f,
                "  nnz is read back from the device (at most {}); sizes below take the bound",
                self.nnz_bound
            )?;
        }
        writeln!(f, "buffers:")?;
        let rows: Vec<[String; 6]> = self
            .buffers
            .iter()
            .enumerate()
            .map(|(i, b)| {
                let role = match (&b.role, b.init.is_some()) {
                    (Role::Const, _) | (_, false) => b.role.name().to_string(),
                    (r, true) => format!("{} (initialised)", r.name()),
                };
                [
                    format!("{i}"),
                    b.name.clone(),
                    role,
                    b.elem.name(self.dtype),
                    shape_text(&b.shape),
                    bytes_text(self.bytes_of(i, self.nnz_bound) as u128),
                ]
            })
            .collect();
        let header = ["id", "name", "role", "elem", "shape", "bytes"].map(String::from);
        write_table(f, &header, &rows)?;
        writeln!(f, "steps:")?;
        let name = |b: usize| self.buffers[b].name.clone();
        for (i, step) in self.steps.iter().enumerate() {
            match step {
                Step::ReadNnz { buf, word } => {
                    writeln!(
                        f,
                        "  {i:>2}. read nnz = {}[{word}] back to the host",
                        name(*buf)
                    )?;
                }
                Step::Launch(l) => {
                    let args: Vec<String> = l
                        .args
                        .iter()
                        .map(|a| match a {
                            Arg::Buf(b) => name(*b),
                            Arg::Bufs(bs) => {
                                let names: Vec<String> = bs.iter().map(|b| name(*b)).collect();
                                format!("[{}]", names.join(", "))
                            }
                            Arg::U32(v) => v.to_string(),
                            Arg::Scalars(v) => format!("sizes {v:?}"),
                            Arg::F32(v) => format!("{v}f"),
                            Arg::Nnz => "nnz".into(),
                        })
                        .collect();
                    let float = if l.kernel.is_generic() {
                        match l.float {
                            super::Float::Storage => format!("<{}>", self.dtype),
                            super::Float::F32 => "<f32>".into(),
                        }
                    } else {
                        String::new()
                    };
                    writeln!(
                        f,
                        "  {i:>2}. {} = {}{float} on {} cubes of {}×{}×{}",
                        l.name,
                        l.kernel.function(),
                        cubes_text(&l.cubes, l.units_per_cube()),
                        l.dim.0,
                        l.dim.1,
                        l.dim.2
                    )?;
                    let config = l.config_text();
                    if !config.is_empty() {
                        writeln!(f, "      config: {config}")?;
                    }
                    writeln!(f, "      args: {}", args.join(", "))?;
                }
            }
        }
        writeln!(
            f,
            "peak: {} (scratch peak {}, saved {})",
            bytes_text(self.peak_bytes() as u128),
            bytes_text(self.scratch_peak() as u128),
            bytes_text(self.saved_bytes() as u128)
        )
    }
}

fn write_table(
    f: &mut fmt::Formatter<'_>,
    header: &[String; 6],
    rows: &[[String; 6]],
) -> fmt::Result {
    let mut widths = header.each_ref().map(|h| h.chars().count());
    for r in rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cells: &[String; 6]| {
        let mut s = String::from(" ");
        for (c, w) in cells.iter().zip(widths) {
            let pad = w - c.chars().count();
            let _ = write!(s, " {c}{}", " ".repeat(pad));
        }
        s.trim_end().to_string()
    };
    writeln!(f, "{}", line(header))?;
    for r in rows {
        writeln!(f, "{}", line(r))?;
    }
    Ok(())
}

impl fmt::Display for Lowering {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.plans().iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{p}")?;
        }
        if self.backward.is_some() {
            writeln!(
                f,
                "\nstep peak (forward + backward): {}",
                bytes_text(self.peak_bytes() as u128)
            )?;
        }
        Ok(())
    }
}
