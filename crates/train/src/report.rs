//! Reports of fine-tuning runs: the side-by-side table, the loss-curve plot (SVG, plotters) and
//! the JSON report.

use crate::TrainError;
use crate::checkpoint::write_atomic;
use crate::finetune::RunReport;
use plotters::prelude::*;
use std::path::Path;

fn mib(bytes: Option<u64>) -> String {
    bytes.map_or("-".into(), |b| {
        format!("{:.1}", b as f64 / (1024.0 * 1024.0))
    })
}

/// The runs side by side: trainable parameters, peak memory, median step time, wall time, the
/// peak learning rate, final losses, held-out accuracy and macro-F1 (chance for reference), and
/// a `!` where a run looks wrong (its warnings follow the table).
pub fn table(reports: &[RunReport]) -> String {
    let mut out = String::from(
        "method     trainable params    (%)  peak RSS MiB  device MiB  step ms   wall s  peak lr  train loss  eval loss  accuracy  macro-F1\n",
    );
    for r in reports {
        let last = r.last();
        out.push_str(&format!(
            "{:<9}{} {:>16} {:>6.2} {:>13} {:>11} {:>8.1} {:>8.1} {:>8} {:>11.4} {:>10.4} {:>9.3} {:>9.3}\n",
            r.method.name(),
            if r.warnings.is_empty() { ' ' } else { '!' },
            r.trainable_params,
            100.0 * r.trainable_params as f64 / r.total_params.max(1) as f64,
            mib(r.peak_rss_bytes),
            mib(r.device_peak_bytes),
            r.step_ms,
            r.wall_s,
            r.lr.map_or("-".into(), |s| format!("{:.0e}", s.lr)),
            last.map_or(f64::NAN, |e| e.train_loss),
            last.map_or(f64::NAN, |e| e.eval_loss),
            last.map_or(f64::NAN, |e| e.accuracy),
            last.map_or(f64::NAN, |e| e.macro_f1),
        ));
    }
    if let Some(r) = reports.first() {
        out.push_str(&format!(
            "(chance accuracy {:.3}, majority class {:.3}; device {}; data {})\n",
            r.chance, r.majority, r.device, r.data
        ));
        if let Some(s) = r.lr {
            out.push_str(&format!(
                "(learning rate: warm-up over {:.0}% of the steps, then {})\n",
                100.0 * s.warmup,
                match s.decay {
                    crate::config::Decay::Constant => "constant",
                    crate::config::Decay::Linear => "linear decay to 0",
                }
            ));
        }
    }
    for r in reports {
        for w in &r.warnings {
            out.push_str(&format!("! {}: {w}\n", r.method.name()));
        }
    }
    for r in reports.iter().filter(|r| r.replicas > 1) {
        let per: Vec<String> = r
            .replica_step_ms
            .iter()
            .map(|ms| format!("{ms:.1}"))
            .collect();
        out.push_str(&format!(
            "({}: {} replicas on {} node(s), {:.0} samples/s, step ms per replica of node 0: {}, {} bytes all-reduced per replica and step)\n",
            r.method.name(),
            r.replicas,
            r.nodes,
            r.samples_per_s,
            per.join(" / "),
            r.reduced_bytes_per_step
        ));
    }
    out
}

/// Exponential moving average (weight `alpha` on the new value) of a loss curve.
fn smooth(values: &[f32], alpha: f64) -> Vec<f64> {
    let mut acc = None;
    values
        .iter()
        .map(|&v| {
            let v = f64::from(v);
            let next = acc.map_or(v, |a: f64| a + alpha * (v - a));
            acc = Some(next);
            next
        })
        .collect()
}

/// The training-loss curves of `reports` (EMA-smoothed) as an SVG file at `path` (atomically).
pub fn plot(reports: &[RunReport], path: &Path) -> Result<(), TrainError> {
    let mut svg = String::new();
    draw(reports, &mut svg).map_err(|e| TrainError::Config {
        module: "plot",
        problem: e,
        fix: "report this: the plot could not be drawn",
    })?;
    write_atomic(path, svg.as_bytes())
}

fn draw(reports: &[RunReport], svg: &mut String) -> Result<(), String> {
    let curves: Vec<(String, Vec<f64>)> = reports
        .iter()
        .map(|r| (r.method.name().to_string(), smooth(&r.losses, 0.1)))
        .collect();
    let steps = curves
        .iter()
        .map(|(_, c)| c.len())
        .max()
        .unwrap_or(1)
        .max(2);
    let finite = curves
        .iter()
        .flat_map(|(_, c)| c.iter().copied())
        .filter(|v| v.is_finite());
    let top = finite.fold(0.1f64, f64::max) * 1.05;
    {
        let root = SVGBackend::with_string(svg, (900, 540)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| e.to_string())?;
        let mut chart = ChartBuilder::on(&root)
            .caption("sparsecube finetune: training loss", ("sans-serif", 22))
            .margin(16)
            .x_label_area_size(40)
            .y_label_area_size(56)
            .build_cartesian_2d(0..steps, 0.0..top)
            .map_err(|e| e.to_string())?;
        chart
            .configure_mesh()
            .x_desc("step")
            .y_desc("loss (EMA 0.1)")
            .draw()
            .map_err(|e| e.to_string())?;
        for (i, (name, curve)) in curves.iter().enumerate() {
            let color = Palette99::pick(i).to_rgba();
            chart
                .draw_series(LineSeries::new(
                    curve.iter().enumerate().map(|(x, &y)| (x, y.min(top))),
                    color.stroke_width(2),
                ))
                .map_err(|e| e.to_string())?
                .label(name.clone())
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2))
                });
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .draw()
            .map_err(|e| e.to_string())?;
        root.present().map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// The reports as pretty JSON at `path` (atomically).
pub fn json(reports: &[RunReport], path: &Path) -> Result<(), TrainError> {
    let text = serde_json::to_string_pretty(reports).unwrap_or_default();
    write_atomic(path, text.as_bytes())
}
