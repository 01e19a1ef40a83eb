//! Autotuning: the IR's schedule space of a spec ([`Schedule::space`]) is the candidate set, a
//! timed training step per candidate picks the fastest, and the choice persists per device.
//!
//! - **Candidates** come from the IR, not from the call site ([`Device::schedule_space`]: the
//!   IR's space less the points whose tiles overflow the device's shared memory): the spec's own
//!   schedule first (the fallback that runs when nothing is tuned; every candidate computes the
//!   same result, the kernel tests check every knob value of every space), then every other point of
//!   the knobs its op reads ([`kernels_ir::Knob`]).
//! - **Keys** ([`TuneKey`]) bucket the problem sizes to powers of two and include the op,
//!   direction, dtype and pattern; the device is the cache file's key.
//! - **The cache** ([`TuneCache`]) is one JSON file per device under the user cache directory
//!   (`$SPARSECUBE_CACHE_DIR`, else `$XDG_CACHE_HOME/sparsecube`, else `~/.cache/sparsecube`),
//!   named by device, driver and crate version and holding them in its header. An unreadable,
//!   corrupt or foreign file is ignored with a warning and rewritten on the next save; saves go
//!   to a temporary file renamed over the old one, so a reader never sees half a file. An entry
//!   whose candidate list differs from the current space is stale and tuned again.
//! - **Launches** ([`crate::run`]) go through [`resolve`]: with the policy `cached` (default) a
//!   spec whose schedule is the default one runs the cached winner of its key; `on` also tunes a
//!   key on its first launch; `off` runs every spec as written. A schedule set explicitly (any
//!   non-default one) is always respected.
//!
//! cubecl's own `LocalTuner` is not used: it has no time budget, no per-candidate report and no
//! "stale" answer, and its cache lives in cubecl's location under cubecl's version (see
//! docs/adr/0002-autotune.md).

use crate::{Device, RuntimeError};
use kernels_ir::{Direction, KernelSpec, Schedule};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// Version of the cache file layout.
const FORMAT: u32 = 1;

/// What launches do with the tuner.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Policy {
    /// Every spec runs with the schedule it was written with.
    Off,
    /// A default-schedule spec runs its key's cached winner, if any (nothing is timed).
    Cached,
    /// As `Cached`, and a key without an entry is tuned on its first launch.
    Tune,
}

impl Policy {
    /// The policy named by `SPARSECUBE_AUTOTUNE` (`off`, `cached` or `on`; default `cached`);
    /// an unknown value warns and means `cached`.
    pub fn from_env() -> Self {
        match std::env::var("SPARSECUBE_AUTOTUNE").ok().as_deref() {
            None | Some("cached") | Some("") => Policy::Cached,
            Some("off") | Some("0") => Policy::Off,
            Some("on") | Some("1") => Policy::Tune,
            Some(other) => {
                tracing::warn!(
                    "SPARSECUBE_AUTOTUNE={other} is not off, cached or on; using cached"
                );
                Policy::Cached
            }
        }
    }
}

static POLICY: Mutex<Option<Policy>> = Mutex::new(None);

/// Sets the policy of this process's launches (overrides `SPARSECUBE_AUTOTUNE`).
pub fn set_policy(policy: Policy) {
    *POLICY.lock().unwrap_or_else(|e| e.into_inner()) = Some(policy);
}

/// The policy of this process's launches.
pub fn policy() -> Policy {
    let mut p = POLICY.lock().unwrap_or_else(|e| e.into_inner());
    *p.get_or_insert_with(Policy::from_env)
}

/// The cache key of a spec: op, direction, dtype, pattern, and every size rounded up to a power
/// of two (problems in one bucket share a winner).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct TuneKey(pub String);

impl TuneKey {
    /// The key of `spec`.
    pub fn of(spec: &KernelSpec) -> Self {
        let dims: Vec<String> = spec
            .dims
            .iter()
            .map(|(n, v)| format!("{n}={}", bucket(*v)))
            .collect();
        TuneKey(format!(
            "{}/{}/{}/{}/{}",
            spec.op,
            spec.direction,
            spec.dtype,
            spec.pattern,
            dims.join(",")
        ))
    }
}

impl std::fmt::Display for TuneKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// The bucket of a size: the next power of two (0 stays 0).
pub fn bucket(v: usize) -> usize {
    if v == 0 { 0 } else { v.next_power_of_two() }
}

/// The device a cache belongs to.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceIdentity {
    /// Adapter or GPU name.
    pub device: String,
    /// Driver name and version.
    pub driver: String,
    /// The sparsecube version that wrote the cache (kernels change between versions).
    pub version: String,
}

impl DeviceIdentity {
    /// The identity of `device` with this crate's version.
    pub fn of(device: &Device) -> Self {
        let (name, driver) = crate::device_name_and_driver(device);
        DeviceIdentity {
            device: name,
            driver,
            version: env!("CARGO_PKG_VERSION").to_string(),
        }
    }

    /// The cache file's name: device, driver and version, reduced to `[a-z0-9.-]`.
    pub fn file_name(&self) -> String {
        let slug = |s: &str| {
            let mut out = String::new();
            for c in s.chars() {
                let c = c.to_ascii_lowercase();
                if c.is_ascii_alphanumeric() || c == '.' {
                    out.push(c);
                } else if !out.ends_with('-') {
                    out.push('-');
                }
            }
            out.trim_matches('-').chars().take(60).collect::<String>()
        };
        format!(
            "{}--{}--v{}.json",
            slug(&self.device),
            slug(&self.driver),
            slug(&self.version)
        )
    }
}

/// The user cache directory of sparsecube: `$SPARSECUBE_CACHE_DIR`, else
/// `$XDG_CACHE_HOME/sparsecube`, else `$HOME/.cache/sparsecube`, else the system temp directory.
pub fn cache_dir() -> PathBuf {
    let var = |n: &str| {
        std::env::var_os(n)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    if let Some(d) = var("SPARSECUBE_CACHE_DIR") {
        return d;
    }
    if let Some(d) = var("XDG_CACHE_HOME") {
        return d.join("sparsecube");
    }
    if let Some(h) = var("HOME") {
        return h.join(".cache").join("sparsecube");
    }
    std::env::temp_dir().join("sparsecube")
}

/// One tuned key.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    /// The candidates' labels, in space order (the first is the fallback).
    pub candidates: Vec<String>,
    /// Median step time per candidate, ms (`None`: not timed — over the budget, failed, or the
    /// only candidate).
    pub times_ms: Vec<Option<f64>>,
    /// Index of the fastest candidate.
    pub winner: usize,
}

impl Entry {
    /// The winner's label.
    pub fn winner_label(&self) -> &str {
        &self.candidates[self.winner]
    }
}

#[derive(Serialize, Deserialize)]
struct CacheFile {
    format: u32,
    identity: DeviceIdentity,
    entries: BTreeMap<String, Entry>,
}

/// What the cache holds for a key.
#[derive(Clone, Debug, PartialEq)]
pub enum Lookup {
    /// A winner for exactly this candidate set.
    Hit(Entry),
    /// An entry tuned over another candidate set (the space changed): tune again.
    Stale(Entry),
    /// Nothing.
    Miss,
}

/// The tuning results of one device, backed by a JSON file.
#[derive(Debug)]
pub struct TuneCache {
    path: PathBuf,
    identity: DeviceIdentity,
    entries: BTreeMap<String, Entry>,
    /// Keys [`insert`](Self::insert)ed since the file was read: what [`save`](Self::save)
    /// writes over another process's entries.
    tuned: std::collections::BTreeSet<String>,
    /// Why the file on disk was not used, if it was not.
    pub discarded: Option<String>,
}

impl TuneCache {
    /// The cache of `identity` in `dir` (see [`cache_dir`]). Never fails: a missing file is an
    /// empty cache; an unreadable, corrupt or foreign one is ignored with a warning (kept in
    /// [`discarded`](Self::discarded)) and replaced by the next [`save`](Self::save).
    pub fn open(dir: &Path, identity: DeviceIdentity) -> Self {
        let path = dir.join(identity.file_name());
        let mut cache = TuneCache {
            path,
            identity,
            entries: BTreeMap::new(),
            tuned: Default::default(),
            discarded: None,
        };
        match cache.read_file() {
            Ok(entries) => cache.entries = entries,
            Err(why) => cache.discard(why),
        }
        cache
    }

    /// The entries of the file on disk (none when there is no file), or why they cannot be used.
    fn read_file(&self) -> Result<BTreeMap<String, Entry>, String> {
        let text = match std::fs::read(&self.path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(BTreeMap::new()),
            Err(e) => return Err(format!("cannot be read ({e})")),
        };
        match serde_json::from_slice::<CacheFile>(&text) {
            Err(e) => Err(format!("is not a sparsecube tuning cache ({e})")),
            Ok(f) if f.format != FORMAT => Err(format!(
                "has layout {} (this build reads {FORMAT})",
                f.format
            )),
            Ok(f) if f.identity != self.identity => Err(format!(
                "belongs to another device or version ({:?}, this is {:?})",
                f.identity, self.identity
            )),
            Ok(f) => {
                let bad = f
                    .entries
                    .iter()
                    .find(|(_, e)| {
                        e.candidates.is_empty()
                            || e.winner >= e.candidates.len()
                            || e.times_ms.len() != e.candidates.len()
                    })
                    .map(|(k, _)| k.clone());
                match bad {
                    Some(k) => Err(format!("has an inconsistent entry for `{k}`")),
                    None => Ok(f.entries),
                }
            }
        }
    }

    fn discard(&mut self, why: String) {
        tracing::warn!(
            "ignoring the tuning cache {}: it {why}; it will be rebuilt",
            self.path.display()
        );
        self.discarded = Some(why);
    }

    /// The file this cache is saved to.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The device it belongs to.
    pub fn identity(&self) -> &DeviceIdentity {
        &self.identity
    }

    /// Tuned keys.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether nothing is tuned.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// What the cache holds for `key` over the candidate set `candidates`.
    pub fn lookup(&self, key: &TuneKey, candidates: &[String]) -> Lookup {
        match self.entries.get(&key.0) {
            Some(e) if e.candidates == candidates => Lookup::Hit(e.clone()),
            Some(e) => Lookup::Stale(e.clone()),
            None => Lookup::Miss,
        }
    }

    /// Records `entry` for `key` (in memory; [`save`](Self::save) writes it).
    pub fn insert(&mut self, key: &TuneKey, entry: Entry) {
        self.tuned.insert(key.0.clone());
        self.entries.insert(key.0.clone(), entry);
    }

    /// Writes the cache: under an exclusive lock on its directory (other `tune` processes wait),
    /// the file is read again and merged (keys this process tuned replace the file's, the file's
    /// other keys are kept, so concurrent tunes lose nothing), written to a temporary file in
    /// the same directory, flushed and renamed over the old one.
    pub fn save(&self) -> Result<(), TuneError> {
        let dir = match self.path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        let io = |what: &'static str| {
            let path = self.path.clone();
            move |source: std::io::Error| TuneError::Io { what, path, source }
        };
        std::fs::create_dir_all(dir).map_err(io("create the cache directory"))?;
        // flock(2) on the directory: released when `lock` is dropped (or the process dies).
        // Where a filesystem cannot lock a directory (NFS maps flock to write locks), the save
        // goes on unlocked: still atomic, but a concurrent tune's new keys may be lost.
        let lock = std::fs::File::open(dir).and_then(|f| f.lock().map(|()| f));
        if let Err(e) = &lock {
            tracing::warn!(
                "cannot lock the tuning cache directory {} ({e}); saving without the lock",
                dir.display()
            );
        }
        let mut entries = self.read_file().unwrap_or_default();
        entries.retain(|k, _| !self.tuned.contains(k));
        for (k, e) in &self.entries {
            if self.tuned.contains(k) || !entries.contains_key(k) {
                entries.insert(k.clone(), e.clone());
            }
        }
        let file = CacheFile {
            format: FORMAT,
            identity: self.identity.clone(),
            entries,
        };
        let text = serde_json::to_vec_pretty(&file).map_err(|e| TuneError::Io {
            what: "serialise the cache",
            path: self.path.clone(),
            source: std::io::Error::other(e),
        })?;
        let tmp = dir.join(format!(
            ".{}.{}.tmp",
            self.identity.file_name(),
            std::process::id()
        ));
        let written = std::fs::File::create(&tmp)
            .and_then(|mut f| {
                std::io::Write::write_all(&mut f, &text)?;
                f.sync_all()
            })
            .map_err(io("write the cache"))
            .and_then(|()| std::fs::rename(&tmp, &self.path).map_err(io("replace the cache")));
        if written.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        drop(lock);
        written
    }
}

/// Why tuning failed.
#[derive(Debug, thiserror::Error)]
pub enum TuneError {
    /// The cache file could not be written.
    #[error("cannot {what} {}: {source}", path.display())]
    Io {
        /// What was being done.
        what: &'static str,
        /// The cache file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The fallback candidate itself failed: nothing can be chosen.
    #[error("the fallback candidate `{label}` failed: {message}")]
    FallbackFailed {
        /// Its label.
        label: String,
        /// Its error.
        message: String,
    },
    /// The spec or device could not run.
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
}

/// One candidate of a sweep: a label and a function that times it (median ms).
pub struct Candidate<'a> {
    /// Its label (the schedule as its op reads it).
    pub label: String,
    /// Times one candidate; an error drops it from the choice.
    pub time: Box<dyn FnMut() -> Result<f64, String> + 'a>,
}

/// Times `candidates` in order and returns the entry of the fastest. The first (the fallback)
/// is always timed and must succeed; later ones are skipped (time `None`) once `budget` has
/// elapsed; a failing one is reported (`on_done` gets its error) and never chosen. With a single
/// candidate nothing is timed. `on_done(index, label, result)` follows each candidate.
pub fn sweep(
    candidates: Vec<Candidate<'_>>,
    budget: Option<Duration>,
    mut on_done: impl FnMut(usize, &str, &Result<Option<f64>, String>),
) -> Result<Entry, TuneError> {
    let labels: Vec<String> = candidates.iter().map(|c| c.label.clone()).collect();
    let mut times = vec![None; candidates.len()];
    if candidates.len() <= 1 {
        return Ok(Entry {
            candidates: labels,
            times_ms: times,
            winner: 0,
        });
    }
    let start = Instant::now();
    for (i, mut c) in candidates.into_iter().enumerate() {
        let over = i > 0 && budget.is_some_and(|b| start.elapsed() >= b);
        let result = if over { Ok(None) } else { (c.time)().map(Some) };
        on_done(i, &c.label, &result);
        match result {
            Ok(t) => times[i] = t.filter(|t| t.is_finite()),
            Err(message) if i == 0 => {
                return Err(TuneError::FallbackFailed {
                    label: c.label,
                    message,
                });
            }
            Err(message) => tracing::warn!("candidate {} failed: {message}", c.label),
        }
    }
    let winner = times
        .iter()
        .enumerate()
        .filter_map(|(i, t)| t.map(|t| (i, t)))
        .min_by(|a, b| a.1.total_cmp(&b.1).then(a.0.cmp(&b.0)))
        .map_or(0, |(i, _)| i);
    Ok(Entry {
        candidates: labels,
        times_ms: times,
        winner,
    })
}

/// How one key was settled.
#[derive(Clone, Debug, PartialEq)]
pub struct Tuned {
    /// The key.
    pub key: TuneKey,
    /// The result (from the cache or just measured).
    pub entry: Entry,
    /// The winner's schedule.
    pub schedule: Schedule,
    /// Whether the entry came from the cache (nothing was timed).
    pub cached: bool,
    /// Why an entry in the cache was not used (`stale`), if one was there.
    pub replaced: Option<String>,
}

/// Options of [`tune_spec`].
#[derive(Clone, Copy, Debug)]
pub struct TuneOptions {
    /// Stop starting new candidates after this long (the fallback is always timed).
    pub budget: Option<Duration>,
    /// Untimed steps per candidate.
    pub warmup: usize,
    /// Timed steps per candidate after the first (the median counts); fewer when the budget
    /// leaves no room for them (then the first step's time counts).
    pub repeats: usize,
    /// Tune again even when the cache has an entry.
    pub force: bool,
}

impl Default for TuneOptions {
    fn default() -> Self {
        TuneOptions {
            budget: None,
            warmup: 1,
            repeats: 3,
            force: false,
        }
    }
}

/// How [`settle`] answered.
#[derive(Clone, Debug, PartialEq)]
pub struct Settled {
    /// The entry (from the cache or just measured; recorded in the cache then).
    pub entry: Entry,
    /// Whether it came from the cache (no candidate ran).
    pub cached: bool,
    /// Why an entry in the cache was not used, if one was there.
    pub replaced: Option<String>,
}

/// Settles `key` over `candidates`: the cached entry when `cache` holds one for exactly these
/// candidate labels (no candidate runs) unless `force`, else a [`sweep`] whose entry is recorded
/// in `cache` (in memory; [`TuneCache::save`] writes it).
pub fn settle(
    cache: &mut TuneCache,
    key: &TuneKey,
    candidates: Vec<Candidate<'_>>,
    budget: Option<Duration>,
    force: bool,
    on_done: impl FnMut(usize, &str, &Result<Option<f64>, String>),
) -> Result<Settled, TuneError> {
    let labels: Vec<String> = candidates.iter().map(|c| c.label.clone()).collect();
    let mut replaced = None;
    match cache.lookup(key, &labels) {
        Lookup::Hit(entry) if !force => {
            return Ok(Settled {
                entry,
                cached: true,
                replaced,
            });
        }
        Lookup::Stale(old) => {
            replaced = Some(format!(
                "the candidate set changed: cached {:?}, now {:?}",
                old.candidates, labels
            ));
            tracing::info!("{key}: {}", replaced.as_deref().unwrap_or_default());
        }
        _ => {}
    }
    let entry = sweep(candidates, budget, on_done)?;
    cache.insert(key, entry.clone());
    Ok(Settled {
        entry,
        cached: false,
        replaced,
    })
}

/// Settles `spec`'s key on `device` ([`settle`]) over [`Device::schedule_space`], timing one
/// training step per candidate ([`crate::bench::step`]). A fresh result is recorded in `cache`
/// (not saved) for the forward and the backward key alike: a step times both.
pub fn tune_spec(
    device: &Device,
    spec: &KernelSpec,
    cache: &mut TuneCache,
    options: TuneOptions,
    on_done: impl FnMut(usize, &str, &Result<Option<f64>, String>),
) -> Result<Tuned, TuneError> {
    spec.verify().map_err(RuntimeError::from)?;
    // Sizes first: a problem the device cannot hold is refused before anything is generated or
    // timed (the step is the backward plan, which also holds the forward's saved buffers).
    if let Some(limits) = device.limits()
        && spec.op != kernels_ir::OpKind::MonarchProject
    {
        let step = KernelSpec {
            direction: if spec.op.has_backward() {
                Direction::Backward
            } else {
                Direction::Forward
            },
            ..spec.clone()
        };
        let options = sparsecube_codegen::plan::LowerOptions::new(limits);
        sparsecube_codegen::plan::lower(&step, &options).map_err(RuntimeError::from)?;
    }
    let space = device.schedule_space(spec);
    let key = TuneKey::of(spec);
    let deadline = options.budget.map(|b| Instant::now() + b);
    let count = space.len();
    let candidates = space
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let spec = KernelSpec {
                schedule: *s,
                ..spec.clone()
            };
            Candidate {
                label: s.label(spec.op),
                time: Box::new(move || {
                    timed_within(device, &spec, options, deadline, count - i)
                        .map_err(|e| e.to_string())
                }),
            }
        })
        .collect();
    let settled = settle(
        cache,
        &key,
        candidates,
        options.budget,
        options.force,
        on_done,
    )?;
    if !settled.cached {
        for direction in [Direction::Forward, Direction::Backward] {
            if direction == Direction::Backward && !spec.op.has_backward() {
                continue;
            }
            let twin = KernelSpec {
                direction,
                ..spec.clone()
            };
            cache.insert(&TuneKey::of(&twin), settled.entry.clone());
        }
    }
    Ok(Tuned {
        schedule: space[settled.entry.winner],
        key,
        entry: settled.entry,
        cached: settled.cached,
        replaced: settled.replaced,
    })
}

/// The step time (ms) of `spec` for a sweep: one step after `options.warmup` untimed ones gives
/// the cost; then up to `options.repeats` more, as many as fit this candidate's share of the
/// time left before `deadline` (what is left, divided among `remaining` candidates including this
/// one), and their median is the answer — the first alone when none fit. A sweep so stays near
/// its budget even when one step takes seconds.
fn timed_within(
    device: &Device,
    spec: &KernelSpec,
    options: TuneOptions,
    deadline: Option<Instant>,
    remaining: usize,
) -> Result<f64, RuntimeError> {
    const SEED: u64 = 0x7E57;
    let first = crate::bench::step(device, spec, options.warmup, 1, SEED)?.median_ms;
    let mut more = options.repeats;
    if let Some(deadline) = deadline {
        let share = deadline.saturating_duration_since(Instant::now()) / remaining.max(1) as u32;
        more = more.min((share.as_secs_f64() * 1e3 / first.max(1e-3)) as usize);
    }
    if more == 0 {
        return Ok(first);
    }
    Ok(crate::bench::step(device, spec, 0, more, SEED)?.median_ms)
}

/// The per-device caches of this process's launches, opened on first use.
fn process_cache(device: &Device) -> &'static Mutex<TuneCache> {
    static CUDA: OnceLock<Mutex<TuneCache>> = OnceLock::new();
    static WGPU: OnceLock<Mutex<TuneCache>> = OnceLock::new();
    let cell = match device {
        Device::Cuda(_) => &CUDA,
        _ => &WGPU,
    };
    cell.get_or_init(|| Mutex::new(TuneCache::open(&cache_dir(), DeviceIdentity::of(device))))
}

/// The spec a launch runs (see the module docs): `spec` itself unless its schedule is the
/// default one and the policy finds (or, with `on`, makes) a tuned winner for its key.
pub fn resolve(device: &Device, spec: &KernelSpec) -> KernelSpec {
    let policy = policy();
    if matches!(device, Device::Reference)
        || policy == Policy::Off
        || spec.schedule != Schedule::default()
        || kernels_ir::Knob::of(spec.op).is_empty()
    {
        return spec.clone();
    }
    let mut cache = process_cache(device)
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    let space = device.schedule_space(spec);
    let labels: Vec<String> = space.iter().map(|s| s.label(spec.op)).collect();
    let key = TuneKey::of(spec);
    let winner = match cache.lookup(&key, &labels) {
        Lookup::Hit(e) => Some(e.winner),
        _ if policy == Policy::Tune => {
            match tune_spec(
                device,
                spec,
                &mut cache,
                TuneOptions::default(),
                |_, _, _| {},
            ) {
                Ok(t) => {
                    if let Err(e) = cache.save() {
                        tracing::warn!("{e}");
                    }
                    tracing::info!("tuned {key}: {}", t.entry.winner_label());
                    Some(t.entry.winner)
                }
                Err(e) => {
                    tracing::warn!("tuning {key} failed ({e}); running the spec's schedule");
                    None
                }
            }
        }
        _ => None,
    };
    match winner {
        Some(w) => {
            tracing::debug!("{key}: tuned schedule {}", labels[w]);
            KernelSpec {
                schedule: space[w],
                ..spec.clone()
            }
        }
        None => spec.clone(),
    }
}
