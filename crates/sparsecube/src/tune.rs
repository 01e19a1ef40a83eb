//! `sparsecube tune`: sweeps the IR's schedule space of each spec on one device, prints a table
//! of candidates, writes the device's tuning cache and, on request, a JSON report.

use anyhow::{Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use kernels_ir::KernelSpec;
use serde_json::{Value as Json, json};
use sparsecube_runtime::Device;
use sparsecube_runtime::tune::{
    DeviceIdentity, TuneCache, TuneError, TuneOptions, Tuned, cache_dir, tune_spec,
};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// What `tune` was asked.
pub struct Request<'a> {
    /// The specs, in order.
    pub specs: Vec<KernelSpec>,
    /// Total time for every sweep (the fallback of a started spec is always timed).
    pub budget: Option<Duration>,
    /// Timed steps per candidate.
    pub repeats: usize,
    /// Untimed steps per candidate.
    pub warmup: usize,
    /// Tune again even when cached.
    pub force: bool,
    /// Cache directory (default: the user cache directory).
    pub cache_dir: Option<&'a Path>,
    /// Where to write the JSON report.
    pub json: Option<&'a Path>,
}

fn fmt_ms(t: Option<f64>) -> String {
    t.map_or_else(|| "—".into(), |t| format!("{t:.3}"))
}

/// Runs the sweeps of `req` on `device`.
pub fn run(device: &Device, req: &Request<'_>) -> Result<()> {
    let dir: PathBuf = req
        .cache_dir
        .map(Path::to_path_buf)
        .unwrap_or_else(cache_dir);
    let identity = DeviceIdentity::of(device);
    let mut cache = TuneCache::open(&dir, identity.clone());
    if let Some(why) = &cache.discarded {
        eprintln!(
            "warning: the tuning cache {} {why}; rebuilding it",
            cache.path().display()
        );
    }
    let started = Instant::now();
    let mut results = Vec::new();
    let mut report = Vec::new();
    for spec in &req.specs {
        let remaining = req.budget.map(|b| b.saturating_sub(started.elapsed()));
        if remaining.is_some_and(|r| r.is_zero()) {
            tracing::warn!("budget spent: {} not tuned", spec.name);
            report.push(
                json!({"spec": spec.name, "op": spec.op.name(), "status": "skipped: budget spent"}),
            );
            println!(
                "\n{} ({}): not tuned, the budget is spent",
                spec.name, spec.op
            );
            continue;
        }
        let space = device.schedule_space(spec);
        let bar = ProgressBar::new(space.len() as u64).with_style(
            ProgressStyle::with_template("{prefix} [{bar:24}] {pos}/{len} {msg} ({elapsed})")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        bar.set_prefix(format!("{} {}", spec.name, spec.op));
        let options = TuneOptions {
            budget: remaining,
            warmup: req.warmup,
            repeats: req.repeats,
            force: req.force,
        };
        let tuned = tune_spec(device, spec, &mut cache, options, |_, label, result| {
            bar.inc(1);
            tracing::info!("{} candidate {label}: {result:?} (median ms)", spec.name);
            match result {
                Ok(Some(t)) => bar.set_message(format!("{label}: {t:.3} ms")),
                Ok(None) => bar.set_message(format!("{label}: not timed")),
                Err(e) => bar.println(format!("{label} failed: {e}")),
            }
        });
        bar.finish_and_clear();
        let tuned = match tuned {
            Ok(t) => t,
            Err(e) => {
                // What the earlier specs tuned is kept.
                if let Err(s) = cache.save() {
                    eprintln!("warning: cannot write the tuning cache: {s}");
                }
                let what = match e {
                    TuneError::Runtime(_) => format!("cannot tune {}", spec.name),
                    _ => format!("tuning {}", spec.name),
                };
                return Err(anyhow::Error::new(e).context(what));
            }
        };
        print_table(spec, &tuned);
        report.push(report_json(spec, &tuned));
        results.push(tuned);
    }
    cache
        .save()
        .with_context(|| "cannot write the tuning cache")?;
    let cached = results.iter().filter(|t| t.cached).count();
    println!(
        "\n{} key(s): {} from the cache, {} tuned; cache {}",
        results.len(),
        cached,
        results.len() - cached,
        cache.path().display()
    );
    if let Some(path) = req.json {
        let doc = json!({
            "device": identity.device,
            "driver": identity.driver,
            "version": identity.version,
            "cache": cache.path().display().to_string(),
            "budget_s": req.budget.map(|b| b.as_secs_f64()),
            "elapsed_s": started.elapsed().as_secs_f64(),
            "results": report,
        });
        crate::io::write_atomic(path, serde_json::to_string_pretty(&doc)?.as_bytes())
            .with_context(|| format!("cannot write the report `{}`", path.display()))?;
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}

fn print_table(spec: &KernelSpec, t: &Tuned) {
    let source = if t.entry.candidates.len() == 1 {
        "one candidate (its op reads no schedule field): recorded, nothing to time".to_string()
    } else if t.cached {
        "from the cache (nothing timed; --force tunes again)".to_string()
    } else if let Some(why) = &t.replaced {
        format!("tuned ({why})")
    } else {
        "tuned".to_string()
    };
    println!("\n{} ({}, {}): {source}", spec.name, spec.op, t.key);
    println!("| candidate | median ms | speed-up vs fallback | |");
    println!("|---|---|---|---|");
    let base = t.entry.times_ms.first().copied().flatten();
    for (i, (label, time)) in t.entry.candidates.iter().zip(&t.entry.times_ms).enumerate() {
        let speedup = match (base, time) {
            (Some(b), Some(x)) if *x > 0.0 => format!("{:.2}×", b / x),
            _ => "—".into(),
        };
        let mut marks = Vec::new();
        if i == 0 {
            marks.push("fallback");
        }
        if i == t.entry.winner {
            marks.push("chosen");
        }
        println!(
            "| {label} | {} | {speedup} | {} |",
            fmt_ms(*time),
            marks.join(", ")
        );
    }
}

fn report_json(spec: &KernelSpec, t: &Tuned) -> Json {
    let base = t.entry.times_ms.first().copied().flatten();
    let candidates: Vec<Json> = t
        .entry
        .candidates
        .iter()
        .zip(&t.entry.times_ms)
        .map(|(label, time)| {
            let speedup = match (base, time) {
                (Some(b), Some(x)) if *x > 0.0 => Some(b / x),
                _ => None,
            };
            json!({"candidate": label, "median_ms": time, "speedup_vs_fallback": speedup})
        })
        .collect();
    json!({
        "spec": spec.name,
        "op": spec.op.name(),
        "key": t.key.0,
        "status": if t.cached { "cached" } else { "tuned" },
        "replaced": t.replaced,
        "winner": t.entry.winner_label(),
        "schedule": t.schedule.to_string(),
        "candidates": candidates,
    })
}
