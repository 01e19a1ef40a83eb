//! The fine-tuning loop behind `sparsecube finetune`: data, the method's model, AdamW over what
//! the method trains, the methods' schedules (PST's sparsity, SPT's codebook re-fits, SaRA's
//! nuclear-norm term and progressive re-masking), evaluation per epoch, atomic checkpoints and
//! resume.

use crate::TrainError;
use crate::checkpoint::{self, Tensors};
use crate::config::{ConfigFile, LrSchedule, Method};
use crate::data::{Batch, Dataset};
use crate::guard;
use crate::model::Encoder;
use crate::modules::linear::Linear;
use crate::parallel::Replica;
use crate::params::{self, Values};
use crate::{SparseBackend, bert};
use burn::module::AutodiffModule;
use burn::optim::{AdamWConfig, GradientsParams, Optimizer};
use burn::tensor::activation::log_softmax;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Int, Tensor, TensorData};
use kernels_ir::reference::rng::SplitMix64;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

/// The checkpoint format's name (the safetensors header's `format`).
pub const FORMAT: &str = "sparsecube-finetune/1";

/// Progress of a run, for a caller's progress display.
#[derive(Clone, Debug)]
pub enum Event {
    /// An epoch starts with this many steps.
    EpochStart {
        /// Epoch (from 0).
        epoch: usize,
        /// Steps in it.
        steps: usize,
    },
    /// One step finished.
    Step {
        /// Its training loss.
        loss: f32,
    },
    /// An epoch finished and was evaluated.
    EpochEnd(EpochEval),
    /// A checkpoint was written.
    Checkpoint(PathBuf),
    /// Every node of a multi-process run is connected (sent once, before training).
    Joined {
        /// This process's node rank.
        node_rank: usize,
        /// Nodes in the run.
        nodes: usize,
    },
}

/// The held-out evaluation after one epoch.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EpochEval {
    /// Epoch (from 0).
    pub epoch: usize,
    /// Mean training loss over the epoch.
    pub train_loss: f64,
    /// Mean cross-entropy on the held-out set.
    pub eval_loss: f64,
    /// Accuracy on the held-out set.
    pub accuracy: f64,
    /// Macro-averaged F1 on the held-out set (every class weighs the same).
    #[serde(default)]
    pub macro_f1: f64,
}

/// What a run measured.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RunReport {
    /// The method.
    pub method: Method,
    /// The device it ran on.
    pub device: String,
    /// Parameters the method trains.
    pub trainable_params: usize,
    /// Parameters of the model (float tensors).
    pub total_params: usize,
    /// Median wall time of one training step, synchronised (ms).
    pub step_ms: f64,
    /// Peak device memory in use (bytes), when the backend reports it.
    pub device_peak_bytes: Option<u64>,
    /// Peak resident memory of the process (bytes), when the OS reports it.
    pub peak_rss_bytes: Option<u64>,
    /// The training loss of every step.
    pub losses: Vec<f32>,
    /// One evaluation per epoch.
    pub epochs: Vec<EpochEval>,
    /// Chance accuracy of the task (1 / classes).
    pub chance: f64,
    /// The epoch the run resumed after (None: from the start).
    pub resumed_after: Option<usize>,
    /// Wall time of the whole run (s).
    pub wall_s: f64,
    /// Replicas that trained together (data parallel; 1: one device).
    #[serde(default = "one")]
    pub replicas: usize,
    /// Processes (nodes) the replicas ran in.
    #[serde(default = "one")]
    pub nodes: usize,
    /// Median step time of each replica of this process (ms), in local order.
    #[serde(default)]
    pub replica_step_ms: Vec<f64>,
    /// Training samples per second over all replicas (global batch / median step time).
    #[serde(default)]
    pub samples_per_s: f64,
    /// Bytes each replica sends into the all-reduce per step (the trained tensors' gradients
    /// and the loss, f32); 0 on one replica.
    #[serde(default)]
    pub reduced_bytes_per_step: u64,
    /// The learning-rate schedule the run used.
    #[serde(default)]
    pub lr: Option<LrSchedule>,
    /// The held-out evaluation before the first step (None when resumed).
    #[serde(default)]
    pub initial: Option<Eval>,
    /// The held-out share of the most frequent class: the accuracy of always guessing it.
    #[serde(default)]
    pub majority: f64,
    /// The data: `built-in` or the corpus, with its classes.
    #[serde(default)]
    pub data: String,
    /// What looks wrong with the run (accuracy at chance, a loss that did not fall); empty
    /// when nothing does.
    #[serde(default)]
    pub warnings: Vec<String>,
}

fn one() -> usize {
    1
}

impl RunReport {
    /// The last evaluation.
    pub fn last(&self) -> Option<&EpochEval> {
        self.epochs.last()
    }
}

/// How a run is set up besides its config.
pub struct RunOptions<'a> {
    /// The method.
    pub method: Method,
    /// The device's name, for the report.
    pub device_name: String,
    /// Where checkpoints go (None: no checkpoints).
    pub out_dir: Option<PathBuf>,
    /// Continue from the checkpoint in `out_dir` when there is one.
    pub resume: bool,
    /// Progress events.
    pub progress: &'a mut dyn FnMut(Event),
    /// Bytes of device memory in use now, when the backend reports it.
    pub memory_in_use: &'a dyn Fn() -> Option<u64>,
    /// Set (by a signal handler, say) to stop the run between two steps with
    /// [`TrainError::Interrupted`]; a checkpoint being written is finished first.
    pub stop: Option<&'a AtomicBool>,
}

/// The checkpoint file of `method` in `dir`.
pub fn checkpoint_path(dir: &Path, method: Method) -> PathBuf {
    dir.join(format!("checkpoint-{method}.safetensors"))
}

/// The dense starting model: the config's BERT checkpoint, else a fresh BERT initialisation.
pub fn base_model<B: Backend>(
    cfg: &ConfigFile,
    device: &B::Device,
) -> Result<Encoder<B>, TrainError> {
    match &cfg.model.checkpoint {
        Some(path) => bert::load(path, &cfg.model, cfg.train.seed, device),
        None => Ok(Encoder::init(&cfg.model, cfg.train.seed, device)),
    }
}

/// Cross-entropy of `logits` [B, K] against `labels` [B] (mean over the batch).
pub fn cross_entropy<B: Backend>(logits: Tensor<B, 2>, labels: Tensor<B, 1, Int>) -> Tensor<B, 1> {
    let [b, _] = logits.dims();
    let picked = log_softmax(logits, 1).gather(1, labels.reshape([b, 1]));
    picked.mean().neg()
}

fn ids<B: Backend>(tokens: &[i64], rows: usize, device: &B::Device) -> Tensor<B, 2, Int> {
    let cols = tokens.len() / rows.max(1);
    Tensor::from_data(TensorData::new(tokens.to_vec(), [rows, cols]), device)
}

/// A batch's ids and padding mask (1 real, 0 padding) on `device`.
fn inputs<B: Backend>(
    batch: &Batch,
    device: &B::Device,
) -> (Tensor<B, 2, Int>, Option<Tensor<B, 2>>) {
    let rows = batch.rows();
    let cols = batch.tokens.len() / rows.max(1);
    let valid = batch.valid.as_ref().map(|v| {
        let v: Vec<f32> = v.iter().map(|&m| f32::from(m)).collect();
        Tensor::from_data(TensorData::new(v, [rows, cols]), device)
    });
    (ids::<B>(&batch.tokens, rows, device), valid)
}

fn labels<B: Backend>(labels: &[i64], device: &B::Device) -> Tensor<B, 1, Int> {
    Tensor::from_data(TensorData::new(labels.to_vec(), [labels.len()]), device)
}

/// A held-out evaluation: mean loss, accuracy, macro-F1.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Eval {
    /// Mean cross-entropy.
    pub loss: f64,
    /// Accuracy.
    pub accuracy: f64,
    /// Macro-averaged F1 over `classes` (a class never predicted nor present is skipped).
    pub macro_f1: f64,
}

/// Macro-averaged F1 of predictions against labels over `classes` classes (classes with no
/// label and no prediction are left out of the mean).
pub fn macro_f1(pred: &[i64], truth: &[i64], classes: usize) -> f64 {
    if classes == 0 {
        return 0.0;
    }
    let (mut tp, mut fp, mut fnn) = (
        vec![0usize; classes],
        vec![0usize; classes],
        vec![0usize; classes],
    );
    for (&p, &t) in pred.iter().zip(truth) {
        let (p, t) = (p as usize, t as usize);
        if p == t {
            tp[t.min(classes - 1)] += 1;
        } else {
            if p < classes {
                fp[p] += 1;
            }
            if t < classes {
                fnn[t] += 1;
            }
        }
    }
    let f1s: Vec<f64> = (0..classes)
        .filter(|&c| tp[c] + fp[c] + fnn[c] > 0)
        .map(|c| 2.0 * tp[c] as f64 / (2 * tp[c] + fp[c] + fnn[c]) as f64)
        .collect();
    f1s.iter().sum::<f64>() / f1s.len().max(1) as f64
}

/// The held-out loss, accuracy and macro-F1 of `model` on `data`.
pub fn evaluate<B: SparseBackend>(
    model: &Encoder<B>,
    data: &Dataset,
    batch: usize,
    device: &B::Device,
) -> Eval {
    let (mut loss, mut correct) = (0.0, 0usize);
    let (mut preds, mut truth) = (Vec::new(), Vec::new());
    let mut classes = 1;
    for b in data.in_order(batch) {
        let (x, valid) = inputs::<B>(&b, device);
        let y = &b.labels;
        let out = model.forward_masked(x, valid, false);
        classes = out.logits.dims()[1];
        let l: f32 = cross_entropy(out.logits.clone(), labels::<B>(y, device))
            .into_scalar()
            .elem();
        loss += f64::from(l) * y.len() as f64;
        let pred = out
            .logits
            .argmax(1)
            .into_data()
            .convert::<i64>()
            .into_vec::<i64>()
            .unwrap_or_default();
        correct += pred.iter().zip(y).filter(|(a, b)| a == b).count();
        preds.extend(pred);
        truth.extend_from_slice(y);
    }
    let n = data.len().max(1) as f64;
    Eval {
        loss: loss / n,
        accuracy: correct as f64 / n,
        macro_f1: macro_f1(&preds, &truth, classes),
    }
}

/// The data a run trains and evaluates on.
pub struct Task {
    /// Training samples.
    pub train: Dataset,
    /// Held-out samples.
    pub eval: Dataset,
    /// `built-in`, or the corpus and its classes.
    pub describe: String,
}

/// The run's data: the built-in task, or the `[data]` corpus read and tokenised. Returns the
/// config with `model.classes` set to the corpus's class count (the head's width).
pub fn task(cfg: &ConfigFile) -> Result<(ConfigFile, Task), TrainError> {
    let (m, t) = (&cfg.model, &cfg.train);
    if cfg.data.is_text() {
        let text = crate::text::load(
            &cfg.data,
            m.seq_len,
            m.vocab,
            m.checkpoint.as_deref(),
            t.seed,
        )?;
        let mut cfg = cfg.clone();
        cfg.model.classes = text.classes.len();
        let describe = format!(
            "{} ({} classes: {}; {} train / {} held out; {} of them cut to {} tokens; tokenizer {})",
            cfg.data
                .source
                .as_deref()
                .unwrap_or(Path::new("?"))
                .display(),
            text.classes.len(),
            text.classes.join(", "),
            text.train.len(),
            text.eval.len(),
            text.truncated,
            m.seq_len,
            text.tokenizer.display()
        );
        return Ok((
            cfg,
            Task {
                train: text.train,
                eval: text.eval,
                describe,
            },
        ));
    }
    let need = 6 + 2 * m.classes.saturating_sub(1);
    if m.seq_len < need || m.vocab <= m.classes {
        return Err(TrainError::Config {
            module: "data",
            problem: format!(
                "the built-in task needs seq_len ≥ {need} and vocab > classes (seq_len = {}, vocab = {}, classes = {})",
                m.seq_len, m.vocab, m.classes
            ),
            fix: "raise seq_len or vocab, or lower classes",
        });
    }
    let train = Dataset::generate(t.train_samples, m.seq_len, m.vocab, m.classes, t.seed);
    let eval = Dataset::generate(
        t.eval_samples,
        m.seq_len,
        m.vocab,
        m.classes,
        t.seed.wrapping_add(1),
    );
    Ok((
        cfg.clone(),
        Task {
            train,
            eval,
            describe: "built-in".into(),
        },
    ))
}

/// What looks wrong with a finished run: held-out accuracy within 5% of the way from the better
/// of chance and the majority class to 1, or a loss that did not fall (the last quarter of the
/// training losses not below the first, or the held-out loss not below its value before
/// training).
pub fn warnings(report: &RunReport) -> Vec<String> {
    let mut out = Vec::new();
    let Some(last) = report.last() else {
        return out;
    };
    let base = report.chance.max(report.majority);
    if last.accuracy < base + 0.05 * (1.0 - base) {
        out.push(format!(
            "held-out accuracy {:.3} is at chance ({:.3}): the run learned nothing; try another learning rate (train.lr_by_method) or more epochs",
            last.accuracy, base
        ));
    }
    let n = report.losses.len();
    if n >= 8 {
        let mean = |s: &[f32]| s.iter().map(|&x| f64::from(x)).sum::<f64>() / s.len() as f64;
        let (first, late) = (
            mean(&report.losses[..n / 4]),
            mean(&report.losses[n - n / 4..]),
        );
        if late >= first {
            out.push(format!(
                "the training loss did not fall (first quarter {first:.4}, last quarter {late:.4})"
            ));
        }
    }
    if let Some(init) = &report.initial
        && last.eval_loss >= init.loss
    {
        out.push(format!(
            "the held-out loss did not fall ({:.4} before training, {:.4} after)",
            init.loss, last.eval_loss
        ));
    }
    out
}

use burn::tensor::ElementConversion;

/// Fine-tunes `cfg`'s model with `opts.method` on the built-in task and reports.
pub fn finetune<B>(
    cfg: &ConfigFile,
    device: &B::Device,
    opts: RunOptions<'_>,
) -> Result<RunReport, TrainError>
where
    B: AutodiffBackend + SparseBackend,
    B::InnerBackend: SparseBackend,
{
    finetune_replica::<B>(cfg, device, opts, None)
}

/// [`finetune`] as one replica of a data-parallel run (`crate::parallel`): it trains on its
/// slice of every global batch, averages gradients and loss with its peers before each optimizer
/// step and checks after it that every replica holds the same parameters. Only global rank 0
/// evaluates and writes checkpoints.
///
/// A failure inside the backend (a kernel launch the device refuses, its memory exhausted):
/// Burn's tensor operations cannot return errors, so our CubeCL ops panic with the device's
/// message; the run turns that panic into [`TrainError::Device`], naming the method, and the
/// last checkpoint on disk stays the last good one.
pub fn finetune_replica<B>(
    cfg: &ConfigFile,
    device: &B::Device,
    opts: RunOptions<'_>,
    replica: Option<&Replica>,
) -> Result<RunReport, TrainError>
where
    B: AutodiffBackend + SparseBackend,
    B::InnerBackend: SparseBackend,
{
    let method = opts.method;
    let ckpt = opts.out_dir.as_ref().map(|d| checkpoint_path(d, method));
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        run_replica::<B>(cfg, device, opts, replica)
    }))
    .unwrap_or_else(|payload| {
        let problem = payload
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "a backend operation panicked".into());
        Err(TrainError::Device {
            method: method.name().to_string(),
            problem,
            next: match ckpt.filter(|p| p.exists()) {
                Some(p) => format!(
                    "the last checkpoint, `{}`, is whole: free device memory or lower model.batch, then run again with --resume",
                    p.display()
                ),
                None => "free device memory or lower model.batch, then run again".into(),
            },
        })
    })
}

fn run_replica<B>(
    cfg: &ConfigFile,
    device: &B::Device,
    opts: RunOptions<'_>,
    replica: Option<&Replica>,
) -> Result<RunReport, TrainError>
where
    B: AutodiffBackend + SparseBackend,
    B::InnerBackend: SparseBackend,
{
    let started = Instant::now();
    let (world, rank) = replica.map_or((1, 0), |r| (r.world, r.rank));
    let lead = rank == 0;
    let (
        cfg,
        Task {
            train,
            eval,
            describe,
        },
    ) = task(cfg)?;
    let cfg = &cfg;
    let (m, t) = (&cfg.model, &cfg.train);
    let steps_per_epoch = train.len() / m.batch.max(1);
    if steps_per_epoch == 0 {
        return Err(TrainError::Config {
            module: "train",
            problem: format!(
                "{} training samples are less than one batch of {}",
                train.len(),
                m.batch
            ),
            fix: "raise train_samples (or the corpus's records per class) or lower batch",
        });
    }
    crate::parallel::check_split(m.batch, world)?;
    let per = m.batch / world;
    let total = steps_per_epoch * t.epochs;
    let method = opts.method;
    let mut model = base_model::<B>(cfg, device)?.with_method(m, method, &t.methods, t.seed)?;

    // Resume: the trained tensors of the last checkpoint, after the epoch it records.
    let mut first_epoch = 0;
    let mut resumed_after = None;
    let ckpt = opts.out_dir.as_ref().map(|d| checkpoint_path(d, method));
    if let (true, true, Some(path)) = (opts.resume, lead, ckpt.as_ref()) {
        checkpoint::remove_stale_temporaries(path);
    }
    if let (true, Some(path)) = (opts.resume, ckpt.as_ref())
        && path.exists()
    {
        let (tensors, meta) = checkpoint::load(path)?;
        let bad = |problem: String| TrainError::Checkpoint {
            path: path.clone(),
            problem,
            fix: "resume with the config and method that wrote it, or start afresh without --resume",
        };
        if meta.get("format").map(String::as_str) != Some(FORMAT) {
            return Err(bad(format!(
                "format {:?}, expected {FORMAT}",
                meta.get("format")
            )));
        }
        if meta.get("method").map(String::as_str) != Some(method.name()) {
            return Err(bad(format!("written by method {:?}", meta.get("method"))));
        }
        if meta.get("config").map(String::as_str) != Some(fingerprint(cfg).as_str()) {
            return Err(bad("written with another config".into()));
        }
        let epoch: usize = meta
            .get("epoch")
            .and_then(|e| e.parse().ok())
            .ok_or_else(|| bad("no epoch in its header".into()))?;
        // A rate that decays to 0 at the last step is tied to the run's length.
        let schedule = t.schedule(method, m.checkpoint.is_some());
        let written_for: Option<usize> = meta.get("epochs").and_then(|e| e.parse().ok());
        if let Some(old) = written_for
            && old != t.epochs
            && schedule.decay == crate::config::Decay::Linear
        {
            return Err(bad(format!(
                "written by a run of {old} epochs whose learning rate decays linearly to 0 at its last step; resuming it for {} epochs would restart the decay part-way (resume with --epochs {old}, or start afresh)",
                t.epochs
            )));
        }
        let (loaded, _) = params::load(model, &tensors).map_err(|e| {
            bad(e
                .iter()
                .map(|e| e.to_string())
                .collect::<Vec<_>>()
                .join("; "))
        })?;
        model = loaded;
        first_epoch = epoch + 1;
        resumed_after = Some(epoch);
    }
    // The epoch the checkpoint on disk was written after: what a stopped run can resume from.
    let mut saved_after = resumed_after;
    let after_stop = |saved_after: Option<usize>, fix: &str| match (&ckpt, saved_after) {
        (Some(path), Some(e)) if lead => format!(
            "The last checkpoint, `{}`, holds the model after epoch {}: {fix}run again with --resume to continue from it.",
            path.display(),
            e + 1
        ),
        _ if !lead => {
            format!("Node 0 writes the checkpoints: {fix}run every node again with --resume.")
        }
        _ => format!("No checkpoint was written yet: {fix}run again."),
    };

    if let Some(r) = replica {
        r.check_in_sync(&model, true, "before the first step", device)?;
    }
    let (trainable_params, total_params) = params::counts(&model);
    let mut reduced_bytes = 0;
    let mut optim = AdamWConfig::new()
        .with_weight_decay(t.weight_decay as f32)
        .init::<B, Encoder<B>>();
    let mut rng = SplitMix64::new(t.seed ^ 0xA11CE);
    let mut losses = Vec::new();
    let mut epochs = Vec::new();
    let mut step_times = Vec::new();
    let mut device_peak: Option<u64> = None;
    let opts_m = &t.methods;
    let schedule = t.schedule(method, m.checkpoint.is_some());
    let initial = (lead && first_epoch == 0 && t.epochs > 0)
        .then(|| evaluate(&model.valid(), &eval, m.batch, device));
    for epoch in first_epoch..t.epochs {
        let batches = train.batches(m.batch, t.seed, epoch);
        (opts.progress)(Event::EpochStart {
            epoch,
            steps: batches.len(),
        });
        let mut epoch_loss = 0.0;
        for (i, batch) in batches.iter().enumerate() {
            let step = epoch * steps_per_epoch + i;
            if opts.stop.is_some_and(|s| s.load(Ordering::SeqCst)) {
                return Err(TrainError::Interrupted {
                    method: method.name().to_string(),
                    step,
                    epoch: epoch + 1,
                    next: after_stop(saved_after, ""),
                });
            }
            // This replica's rows of the global batch; codebooks are fitted on all of it, so
            // every replica fits the same ones.
            let mine = batch.slice(rank * per..(rank + 1) * per);
            let (x, valid) = inputs::<B>(&mine, device);
            let y = &mine.labels;
            if method.is_spt()
                && (step == 0
                    || (opts_m.refit_every > 0 && step.is_multiple_of(opts_m.refit_every)))
            {
                let (all, all_valid) = if world > 1 {
                    inputs::<B>(batch, device)
                } else {
                    (x.clone(), valid.clone())
                };
                model = model.refit_codebooks(all, all_valid, 5);
            }
            if method == Method::Sara
                && opts_m.sara_progressive_step > 0
                && step == opts_m.sara_progressive_step
            {
                model = model.map_linears(|l| match l {
                    Linear::Sara(s) => s.remask().map(Linear::Sara),
                    other => Ok(other),
                })?;
            }
            model = model.at_step(step, total);
            let t0 = Instant::now();
            let out = model.forward_masked(x, valid, true);
            let loss = cross_entropy(out.logits, labels::<B>(y, device)) + out.aux;
            // Activations are all alive here, before the backward frees them.
            let mut sample = || {
                if let Some(bytes) = (opts.memory_in_use)() {
                    device_peak = Some(device_peak.map_or(bytes, |p: u64| p.max(bytes)));
                }
            };
            sample();
            let mut grads = GradientsParams::from_grads(loss.backward(), &model);
            if method == Method::Sara && opts_m.sara_nuclear > 0.0 {
                nuclear_term(&model, &mut grads, opts_m.sara_nuclear, &mut rng)?;
            }
            // The loss and the gradient norm (after the all-reduce: every replica sees the same
            // ones), read together; the optimizer never applies a non-finite step.
            let (l, norm) = match replica {
                Some(r) => {
                    let (g, l, bytes) = r.all_reduce(&model, grads, loss.inner(), step)?;
                    grads = g;
                    reduced_bytes = bytes;
                    let sq = guard::grad_sq_norm(&model, &grads, device)
                        .into_scalar()
                        .elem::<f32>();
                    (l, sq.sqrt())
                }
                None => {
                    let both = Tensor::cat(
                        vec![
                            loss.inner().reshape([1]),
                            guard::grad_sq_norm(&model, &grads, device),
                        ],
                        0,
                    )
                    .into_data()
                    .convert::<f32>()
                    .into_vec::<f32>()
                    .unwrap_or_default();
                    let at = |i: usize| both.get(i).copied().unwrap_or(f32::NAN);
                    (at(0), at(1).sqrt())
                }
            };
            for (what, value) in [("loss", l), ("gradient norm", norm)] {
                if !value.is_finite() {
                    return Err(TrainError::NonFinite {
                        method: method.name().to_string(),
                        what,
                        step,
                        epoch: epoch + 1,
                        value,
                        next: after_stop(
                            saved_after,
                            "lower train.lr or bound the gradients with --max-grad-norm (train.max_grad_norm), and ",
                        ),
                    });
                }
            }
            if let Some(factor) = t
                .max_grad_norm
                .and_then(|max| guard::clip_factor(norm, max))
            {
                guard::scale_grads(&model, &mut grads, factor);
            }
            model = optim.step(schedule.at(step, total), model, grads);
            if let Some(r) = replica
                && r.checks_after(step, total, trainable_params)
            {
                r.check_in_sync(&model, false, &format!("after step {step}"), device)?;
            }
            step_times.push(t0.elapsed().as_secs_f64() * 1e3);
            if let Some(bytes) = (opts.memory_in_use)() {
                device_peak = Some(device_peak.map_or(bytes, |p| p.max(bytes)));
            }
            losses.push(l);
            epoch_loss += f64::from(l);
            (opts.progress)(Event::Step { loss: l });
        }
        if !lead {
            continue;
        }
        let valid = model.valid();
        let ev = evaluate(&valid, &eval, m.batch, device);
        let e = EpochEval {
            epoch,
            train_loss: epoch_loss / batches.len().max(1) as f64,
            eval_loss: ev.loss,
            accuracy: ev.accuracy,
            macro_f1: ev.macro_f1,
        };
        (opts.progress)(Event::EpochEnd(e.clone()));
        epochs.push(e);
        if let Some(path) = &ckpt {
            save_checkpoint(&model, cfg, method, epoch, path)?;
            saved_after = Some(epoch);
            (opts.progress)(Event::Checkpoint(path.clone()));
        }
    }
    step_times.sort_by(f64::total_cmp);
    let step_ms = step_times.get(step_times.len() / 2).copied().unwrap_or(0.0);
    let majority = {
        let mut counts = std::collections::HashMap::new();
        for &y in &eval.labels {
            *counts.entry(y).or_insert(0usize) += 1;
        }
        counts.values().copied().max().unwrap_or(0) as f64 / eval.len().max(1) as f64
    };
    let mut report = RunReport {
        method,
        device: opts.device_name,
        trainable_params,
        total_params,
        step_ms,
        device_peak_bytes: device_peak,
        peak_rss_bytes: peak_rss(),
        losses,
        epochs,
        chance: 1.0 / m.classes as f64,
        resumed_after,
        wall_s: started.elapsed().as_secs_f64(),
        replicas: world,
        nodes: replica.map_or(1, |r| r.nodes),
        replica_step_ms: vec![step_ms],
        samples_per_s: if step_ms > 0.0 {
            m.batch as f64 / (step_ms / 1e3)
        } else {
            0.0
        },
        reduced_bytes_per_step: reduced_bytes,
        lr: Some(schedule),
        initial,
        majority,
        data: describe,
        warnings: Vec::new(),
    };
    report.warnings = warnings(&report);
    Ok(report)
}

/// Adds SaRA's nuclear-norm subgradient to the values' gradient of one randomly chosen SaRA
/// layer whose weight has min dim > 64 (the paper's rule; none qualifies in small models).
fn nuclear_term<B: AutodiffBackend>(
    model: &Encoder<B>,
    grads: &mut GradientsParams,
    lambda: f64,
    rng: &mut SplitMix64,
) -> Result<(), TrainError> {
    let eligible: Vec<_> = model
        .linears()
        .into_iter()
        .filter_map(|l| match l {
            Linear::Sara(s) if s.weight.dims().into_iter().min().unwrap_or(0) > 64 => Some(s),
            _ => None,
        })
        .collect();
    if eligible.is_empty() {
        return Ok(());
    }
    let layer = eligible[rng.below(eligible.len())];
    let sub = layer.nuclear_subgradient(lambda)?.inner();
    let id = layer.values.id;
    let g = match grads.remove::<B::InnerBackend, 1>(id) {
        Some(g) => g + sub,
        None => sub,
    };
    grads.register::<B::InnerBackend, 1>(id, g);
    Ok(())
}

/// Writes what `method` trains (trainable float tensors, integer index tensors) and the run's
/// position to `path`, atomically.
pub fn save_checkpoint<B: Backend, M: burn::module::Module<B>>(
    model: &M,
    cfg: &ConfigFile,
    method: Method,
    epoch: usize,
    path: &Path,
) -> Result<(), TrainError> {
    let tensors: Tensors = params::named(model)
        .into_iter()
        .filter(|p| p.trainable || matches!(p.values, Values::I64(_)))
        .map(|p| (p.name, (p.shape, p.values)))
        .collect();
    // A checkpoint is the last good state: one whose parameters went non-finite (an update
    // that overflowed) is not written over it.
    let bad = tensors.iter().find(|(_, (_, v))| match v {
        Values::F32(v) => v.iter().any(|x| !x.is_finite()),
        Values::I64(_) => false,
    });
    if let Some((name, _)) = bad {
        return Err(TrainError::Checkpoint {
            path: path.to_path_buf(),
            problem: format!(
                "after epoch {} the parameter `{name}` holds a non-finite value; the previous checkpoint is kept",
                epoch + 1
            ),
            fix: "the run diverged: lower train.lr or bound the gradients with --max-grad-norm, and resume from the kept checkpoint",
        });
    }
    let meta = HashMap::from([
        ("format".to_string(), FORMAT.to_string()),
        ("method".to_string(), method.name().to_string()),
        ("epoch".to_string(), epoch.to_string()),
        ("epochs".to_string(), cfg.train.epochs.to_string()),
        ("config".to_string(), fingerprint(cfg)),
    ]);
    checkpoint::save(path, &tensors, meta)
}

/// The config a checkpoint must be resumed with: everything but the epoch count (a resumed run
/// may go on for more epochs) and the gradient-norm bound (a run stopped by a non-finite step
/// resumes with one).
fn fingerprint(cfg: &ConfigFile) -> String {
    let mut cfg = cfg.clone();
    cfg.train.epochs = 0;
    cfg.train.max_grad_norm = None;
    serde_json::to_string(&cfg).unwrap_or_default()
}

/// The process's peak resident set (Linux `VmHWM`).
pub fn peak_rss() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}
